"""The run loop: everything a training run does besides training, written once for every runtime.

``train(config)`` runs one experiment. The loop owns the bookkeeping: the counters and rates,
the budget (``max_updates`` / ``max_minutes``), resume (choosing the checkpoint, checking it,
falling back past damaged ones, printing the settings that changed), the timed checkpoint and
its evaluation hook, the progress line and TensorBoard, Ctrl-C / SIGTERM, the checks that stop a
run whose numbers went bad, and the result. A runtime supplies only what differs between them,
through the seam of ``spiral.actors.runtime``: ``step``, ``flush``, ``state``, ``restore``,
``summary`` and ``close``. ``RUNTIMES`` names them: "ray" and "local" are
``spiral.actors.driver.DistributedRuntime`` (workers on Ray, or the same workers called in this
process), "fused" is ``spiral.actors.fused.FusedRuntime`` (one jitted program); with
``--population_size`` > 1, "ray" and "local" run ``spiral.actors.population.PopulationRuntime``
(its ``max_updates`` counts each member's updates). The runtimes do
not import this module, and it does not import the evaluation: the launcher passes
``on_checkpoint`` (``spiral.evaluation.log_checkpoint_metrics``).

Resume policy: the flags given to a resumed run are the ones in force. Settings that define the
task, the networks or the reward (``MUST_MATCH``) must equal the checkpoint's, else the resume
is refused naming them; every other difference (learning rates, entropy cost, budgets, ...) is
applied and printed in one line, including hyperparameters the learners keep in their state.

Errors: ``RunError`` is a failure with a cause a user can act on (one line); the launcher prints
it as ``error: ...`` and the traceback of anything else goes to a log file.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import threading
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from spiral.actors import checkpointing, monitoring
from spiral.actors.driver import DistributedRuntime
from spiral.actors.fused import FusedRuntime
from spiral.actors.population import PopulationRuntime
from spiral.actors.runtime import RunError, StepReport, load_run_data

# Config fields that must equal the checkpoint's to resume from it: the task, the networks and
# the reward. Anything else may change and is then applied (and printed).
MUST_MATCH = ("dataset", "reward", "normalise_l2", "temporal_credit_assignment", "env", "agent",
              "population.size",
              "discriminator.loss", "discriminator.image_channels", "discriminator.image_size",
              "discriminator.conditional",
              "discriminator.complement", "discriminator.channels",
              "discriminator.leaky_relu_slope", "discriminator.spectral_norm",
              "discriminator.sngan_reward")
# Differences never worth a word (they say how this run was started, not what it trains).
_NOT_SHOWN = ("runtime.resume", "runtime.auto_resume")
# A run whose policy updates are refused this many times in a row (non-finite loss, gradients or
# parameters) stops with an error: the refusals will not cure themselves.
MAX_REFUSED_IN_A_ROW = 10


RUNTIMES = {"ray": DistributedRuntime, "local": DistributedRuntime, "fused": FusedRuntime}


def runtime_class(config) -> type:
    """The runtime a config runs on: ``RUNTIMES``, or a population of policy learners."""
    return PopulationRuntime if config.population.size > 1 else RUNTIMES[config.runtime.runtime]


@dataclasses.dataclass
class Counters:
    """Cumulative counters of a run; checkpointed, so a resumed run continues them."""
    updates: int = 0           # policy updates done (refused ones included)
    refused_updates: int = 0   # policy updates refused for non-finite numbers
    disc_updates: int = 0
    agent_steps: int = 0       # agent steps the policy learned from
    episodes: int = 0
    elapsed_s: float = 0.0     # training time over every session of the run


def say(message: str) -> None:
    """One line for the user, now."""
    print(message, flush=True)


# ----------------------------------------------------------------------------------- resume

class Resume(NamedTuple):
    path: str
    counters: dict
    changes: list  # [(field, checkpoint's value, this run's value)]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def config_changes(saved: dict, config) -> tuple[list, list]:
    """(refused, applied): the fields that differ between a checkpoint's config dict and
    ``config``, as [(field, saved value, new value)], split by ``MUST_MATCH``."""
    old, new = _flatten(saved), _flatten(config.to_dict())
    refused, applied = [], []
    for key in sorted(set(old) | set(new)):
        if key in _NOT_SHOWN or old.get(key) == new.get(key):
            continue
        if key not in old:  # a setting newer than the checkpoint: its default was in force
            continue
        entry = (key, old.get(key), new.get(key))
        must = any(key == m or key.startswith(m + ".") for m in MUST_MATCH)
        (refused if must else applied).append(entry)
    return refused, applied


def find_resume(config, say_fn: Callable[[str], None] = say) -> Optional[Resume]:
    """The checkpoint a run resumes from (None: start afresh), checked before anything starts.

    ``--resume`` needs a checkpoint (an error names the folder searched); ``--auto_resume``
    starts afresh when there is none. A damaged checkpoint (unreadable ``run.json``, a missing
    or altered file) is named and skipped for the newest intact one.
    """
    rt = config.runtime
    if not (rt.resume or rt.auto_resume):
        return None
    found = checkpointing.list_checkpoints(rt.checkpoint_dir)
    if not found:
        if rt.auto_resume:
            say_fn(f"auto_resume: no checkpoint in {rt.checkpoint_dir} yet; starting afresh.")
            return None
        raise RunError(f"--resume: no checkpoint in {os.path.abspath(rt.checkpoint_dir)} (no "
                       f"ckpt_NNNNNNNN folder with a {checkpointing.RUN_FILE}). Check --run_dir / "
                       f"--checkpoint_dir, or use --auto_resume to start afresh when there is none.")
    for path in reversed(found):
        problem = checkpointing.verify_checkpoint(path)
        if problem:
            say_fn(f"resume: checkpoint {os.path.basename(path)} is damaged: {problem}. Trying "
                   f"the one before it.")
            continue
        saved_config, counters = checkpointing.read_run_info(path)
        refused, applied = config_changes(saved_config, config)
        if refused:
            raise RunError(
                f"cannot resume from {path}: it was trained with other "
                + "; ".join(f"{k}={a!r} (now {b!r})" for k, a, b in refused)
                + ". Use the original flags, or another --run_dir to start afresh.")
        try:
            type(config).from_dict(saved_config)
        except (ValueError, TypeError) as e:
            raise RunError(f"cannot resume from {path}: its config does not load ({e}).") from None
        if path != found[-1]:
            say_fn(f"resume: falling back to {path}, the newest intact checkpoint.")
        return Resume(path, counters, applied)
    raise RunError(f"resume: all {len(found)} checkpoints in {rt.checkpoint_dir} are damaged (see "
                   f"above); start afresh in another --run_dir.")


# ----------------------------------------------------------------------------------- signals

class StopSignals:
    """Ctrl-C / SIGTERM ask the run to stop at the next step (checkpoint, then exit); a second
    signal exits at once (``KeyboardInterrupt``). Installed only in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say_fn: Callable[[str], None] = say):
        self.received: Optional[str] = None
        self._say = say_fn
        self._previous = {}

    def __enter__(self):
        self.install()
        return self

    def install(self):
        """Take the signals (again: ``ray.init`` installs its own SIGTERM handler)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"{name} again: stopping at once, without a checkpoint")
        self.received = name
        self._say(f"{name}: finishing the update in flight, then a checkpoint and exit "
                  f"({name} again to exit at once).")


# ----------------------------------------------------------------------------------- the loop

class Rates:
    """Amount per second over the last ``window_s`` seconds (or since the start, if shorter)."""

    def __init__(self, window_s: float = 30.0):
        self._events = collections.deque()
        self._window = window_s
        self._start = time.monotonic()

    def add(self, amount: float, now: Optional[float] = None):
        now = time.monotonic() if now is None else now
        self._events.append((now, amount))
        while self._events and now - self._events[0][0] > self._window:
            self._events.popleft()

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        since = max(self._start, now - self._window)
        total = sum(a for t, a in self._events if t >= since)
        return total / max(now - since, 1e-9)


def check_writable(folder: str, what: str) -> None:
    """Create ``folder`` and prove a file can be written in it, or raise RunError."""
    probe = os.path.join(folder, f".write_test_{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise RunError(f"cannot write the {what} to {os.path.abspath(folder)} ({e.strerror or e}); "
                       f"choose a writable --run_dir.") from None


def train(config, *, make_runtime: Optional[Callable] = None,
          on_checkpoint: Optional[Callable] = None,
          say_fn: Callable[[str], None] = say) -> dict:
    """Run one experiment to its budget (or a stop signal); returns its counters and metrics.

    Args:
      config: the ``ExperimentConfig``.
      make_runtime: ``(config, data, say) -> Runtime``; default ``RUNTIMES`` by
        ``config.runtime.runtime`` (benchmarks pass one with a different policy learner).
      on_checkpoint: called after each checkpoint as ``on_checkpoint(config, policy_params,
        counters, monitor)`` (the launcher passes the evaluation's ``log_checkpoint_metrics``).
      say_fn: where the run's one-line messages go.

    Returns {"counters", "policy_metrics", "disc_metrics", "progress" (the last progress
    values), "checkpoint" (the newest), "interrupted" (the signal's name, or None)} and the
    runtime's ``summary()``.
    """
    return RunLoop(config, make_runtime, on_checkpoint, say_fn).run()


class RunLoop:

    def __init__(self, config, make_runtime=None, on_checkpoint=None, say_fn=say):
        self.config = config
        self.rt = config.runtime
        self.say = say_fn
        self.on_checkpoint = on_checkpoint
        self.make_runtime = make_runtime or runtime_class(config)
        self.counters = Counters()
        self.last_checkpoint_path: Optional[str] = None
        self.policy_metrics: dict = {}
        self.disc_metrics: dict = {}
        self.runtime_values: dict = {}
        self.refused_in_a_row = 0
        self.returns = collections.deque(maxlen=200)
        self.acted, self.learned = Rates(), Rates()

    # ------------------------------------------------------------------ preflight
    def _prepare(self):
        """Everything that can fail before a process starts or a folder is made."""
        resume = find_resume(self.config, self.say)
        data = load_run_data(self.config)
        if self.rt.checkpoint_dir:
            check_writable(self.rt.checkpoint_dir, "checkpoints")
        if self.rt.logdir:
            check_writable(self.rt.logdir, "TensorBoard logs")
        return resume, data

    def _restore(self, runtime, resume: Resume):
        saved = resume.counters
        self.counters = Counters(**{f.name: type(f.default)(saved.get(f.name, f.default))
                                    for f in dataclasses.fields(Counters)})
        runtime.restore(resume.path, saved)
        self.last_checkpoint_path = resume.path
        self.say(f"Resumed from {resume.path} at {self.counters.updates} policy updates.")
        if resume.changes:
            self.say("resume: settings changed since the checkpoint, now in force: " + "; ".join(
                f"{k} {a!r} -> {b!r}" for k, a, b in resume.changes))

    # ------------------------------------------------------------------ bookkeeping
    def _account(self, report: StepReport, now: float):
        c = self.counters
        c.updates += report.updates
        c.refused_updates += report.applied.count(False)
        c.disc_updates += report.disc_updates
        c.agent_steps += report.agent_steps
        c.episodes += report.episodes
        self.acted.add(report.acted_steps, now)
        self.learned.add(report.agent_steps, now)
        self.returns.extend(r for r in report.returns if np.isfinite(r))
        if report.policy_metrics:
            self.policy_metrics = report.policy_metrics
        if report.disc_metrics:
            self.disc_metrics = report.disc_metrics
            loss = report.disc_metrics.get("loss", 0.0)
            if not np.isfinite(loss):
                raise RunError(f"the discriminator's loss is {loss} after {c.disc_updates} updates: "
                               f"its parameters are no longer finite. Lower --disc_learning_rate "
                               f"or resume from the last checkpoint ({self.last_checkpoint_path}).")
        self.runtime_values.update(report.values)
        for applied in report.applied:
            self.refused_in_a_row = 0 if applied else self.refused_in_a_row + 1
        if self.refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
            metrics = self.policy_metrics
            raise RunError(
                f"the last {self.refused_in_a_row} policy updates were refused: their loss "
                f"({metrics.get('total_loss')}), gradient norm ({metrics.get('grad_norm')}) or new "
                f"parameters were not finite. Lower --learning_rate or check the rewards; the "
                f"last checkpoint is {self.last_checkpoint_path}.")

    def _values(self, now: float) -> dict:
        c = self.counters
        values = {"updates": c.updates, "disc_updates": c.disc_updates, "agent_steps": c.agent_steps,
                  "actor_steps_per_s": self.acted.rate(now),
                  "learner_steps_per_s": self.learned.rate(now),
                  "refused_updates": c.refused_updates,
                  "mean_episode_return": float(np.mean(self.returns)) if self.returns else math.nan}
        policy = self.policy_metrics
        if not np.isfinite(values["mean_episode_return"]) and "mean_reward_per_unroll" in policy:
            values["mean_episode_return"] = policy["mean_reward_per_unroll"]  # rewards on the learner
        values.update(monitoring.learner_values(
            policy, self.disc_metrics,
            ("learner_update_seconds", "policy_lag_mean", "policy_lag_max")))
        values.update(self.runtime_values)
        return values

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, runtime, monitor, final: bool) -> Optional[str]:
        """Flush, save, evaluate. A save that fails is reported and retried at the next period
        (earlier checkpoints are untouched); returns the new path or None."""
        self._account(runtime.flush(), time.monotonic())
        if not self.rt.checkpoint_dir:
            return None
        self.counters.elapsed_s = self._elapsed()
        state = runtime.state()
        counters = dataclasses.asdict(self.counters) | state.counters
        try:
            path = checkpointing.save_checkpoint(self.rt.checkpoint_dir, self.counters.updates,
                                                 self.config.to_dict(), counters, state.trees)
        except OSError as e:
            when = "" if final else (f"; training goes on and the next attempt is in "
                                     f"{self.rt.checkpoint_every_minutes:g} min")
            self.say(f"checkpoint at update {self.counters.updates} failed: {e}{when}. The newest "
                     f"checkpoint is {self.last_checkpoint_path}.")
            if final:
                raise RunError(f"the final checkpoint could not be written ({e}); the newest "
                               f"checkpoint is {self.last_checkpoint_path}.") from None
            return None
        self.last_checkpoint_path = path
        self.say(f"checkpoint: {path}")
        policy = state.trees.get("policy")
        # A runtime with several policies (a population) exports and evaluates each itself.
        after_checkpoint = getattr(runtime, "after_checkpoint", None)
        try:
            if after_checkpoint is not None:
                after_checkpoint(path, counters, self.on_checkpoint)
            elif self.on_checkpoint is not None and policy is not None:
                self.on_checkpoint(self.config, policy.params, counters, monitor)
        except OSError as e:
            self.say(f"evaluation at update {self.counters.updates} could not be written: {e}.")
        return path

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._start

    def _budget_left(self) -> Optional[int]:
        """Policy updates still allowed (None: no limit); 0 when the budget is spent."""
        rt = self.rt
        if rt.max_minutes and time.monotonic() - self._start >= 60 * rt.max_minutes:
            return 0
        if rt.max_updates:   # a population's budget is per member
            return max(rt.max_updates * self.config.population.size - self.counters.updates, 0)
        return None

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        rt = self.rt
        self._start = time.monotonic()
        resume, data = self._prepare()
        monitor = None
        runtime = None
        interrupted = None
        with StopSignals(self.say) as signals:
            try:
                runtime = self.make_runtime(self.config, data, self.say)
                signals.install()
                if resume is not None:
                    self._restore(runtime, resume)
                self._elapsed_before = self.counters.elapsed_s
                monitor = monitoring.Monitor(rt.logdir or None, rt.log_every_seconds,
                                             say_fn=self.say)
                last_save = time.monotonic()
                samples_due = self.counters.updates == 0
                while signals.received is None:
                    left = self._budget_left()
                    if left == 0:
                        break
                    report = runtime.step(left, samples_due)
                    now = time.monotonic()
                    self._account(report, now)
                    if report.samples is not None:
                        monitor.images(self.counters.updates, "samples/final_canvas", report.samples)
                        samples_due = False
                    if report.updates and (self.counters.updates % rt.image_every_updates
                                           < report.updates):
                        samples_due = True
                    self.counters.elapsed_s = self._elapsed()
                    monitor.progress(self.counters.updates, self._values(now))
                    if rt.checkpoint_dir and now - last_save >= 60 * rt.checkpoint_every_minutes:
                        self._checkpoint(runtime, monitor, final=False)
                        last_save = time.monotonic()
                interrupted = signals.received
                self._account(runtime.flush(final=True), time.monotonic())
                self.counters.elapsed_s = self._elapsed()
                final_values = self._values(time.monotonic())
                monitor.progress(self.counters.updates, final_values, force=True)
                self._checkpoint(runtime, monitor, final=True)
                summary = runtime.summary()
            finally:
                if monitor is not None:
                    monitor.close()
                if runtime is not None:
                    runtime.close()
        if interrupted:
            self.say(f"{interrupted}: stopped at {self.counters.updates} policy updates; "
                     f"checkpoint {self.last_checkpoint_path}.")
        counters = dataclasses.asdict(self.counters) | summary.pop("counters", {})
        return {"counters": counters, "policy_metrics": self.policy_metrics,
                "disc_metrics": self.disc_metrics, "progress": final_values,
                "checkpoint": checkpointing.latest_checkpoint(rt.checkpoint_dir) if rt.checkpoint_dir else None,
                "interrupted": interrupted, **summary}
