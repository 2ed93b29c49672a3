"""The training loop: starts the workers, moves trajectories to the learner, logs, checkpoints.

``train(config)`` runs one experiment with ``config.runtime.runtime``:

* "ray": actors, the policy learner and the discriminator learner are Ray actors (a local Ray is
  started unless ``ray_address`` is given); the driver moves object references only.
* "local": the same workers and the same loop in this process, one call at a time, in a fixed
  order: deterministic, for debugging and tests.
* "fused": the whole loop as one jitted program on one device (``spiral.actors.fused``).

Per policy update the driver takes one batch of unrolls from the bounded ``TrajectoryQueue``,
hands their references to the policy learner (which fetches them itself while its previous
update runs: two updates are kept in flight, which prefetches the next batch at the cost of one
step of policy lag), and asks the discriminator for ``disc_updates_per_policy_update`` updates.
Every few seconds it prints a progress line and writes TensorBoard scalars; it checkpoints both
learners every ``checkpoint_every_minutes`` and at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
import warnings
from typing import Optional

import numpy as np

from spiral.actors import checkpointing, monitoring
from spiral.actors.parameter_server import ParameterServer
from spiral.actors.trajectory_queue import TrajectoryQueue
from spiral.actors.workers import (SINGLE_THREAD_ENV, ActorWorker, DiscriminatorWorker,
                                   PolicyLearnerWorker, make_backend)

log = logging.getLogger(__name__)

# Config sections that must match a checkpoint to resume from it (the runtime may differ).
_MUST_MATCH = ("env", "agent", "discriminator", "dataset", "reward", "temporal_credit_assignment")


# ----------------------------------------------------------------------------------- data

def quantise(images: np.ndarray) -> np.ndarray:
    """float32 images in [0, 1] -> uint8 levels k (k/255 is what canvases hold)."""
    return np.rint(np.asarray(images, np.float32) * 255.0).astype(np.uint8)


def area_downsample(levels: np.ndarray, width: int) -> np.ndarray:
    """uint8 levels [N, W, W, C] -> [N, width, width, C] by exact area average, re-quantised."""
    n, w, _, c = levels.shape
    if w == width:
        return levels
    if w % width:
        raise ValueError(f"cannot area-average {w}×{w} images to {width}×{width}.")
    f = w // width
    blocks = levels.reshape(n, width, f, width, f, c).astype(np.float32).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)


def load_images(config, split: str = "train") -> np.ndarray:
    """The run's real images (and conditional targets) as uint8 levels at the agent's width."""
    from spiral.envs import datasets  # pylint: disable=import-outside-toplevel
    dataset = datasets.load_dataset(config.dataset, split=split, data_dir=config.data_dir,
                                    limit=config.dataset_limit or None)
    levels = quantise(dataset.images)
    if levels.shape[-1] != config.env.channels:
        raise ValueError(f"dataset {config.dataset!r} has {levels.shape[-1]} channel(s) but the "
                         f"environment paints {config.env.channels}: set --use_color accordingly.")
    return levels


# ----------------------------------------------------------------------------------- Ray

def _init_ray(config):
    import ray  # pylint: disable=import-outside-toplevel
    rt = config.runtime
    # Ray starts its processes with fork+exec, which is safe even though JAX has threads here.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    if not ray.is_initialized():
        if rt.ray_address:
            ray.init(address=rt.ray_address, log_to_driver=True)
        else:
            ray.init(num_cpus=rt.ray_num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=True)
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    needed_cpus = rt.num_actors + learner_cpus(config)
    if needed_cpus > cpus:
        raise ValueError(
            f"{rt.num_actors} actors (1 CPU each) and the learners ({learner_cpus(config)} CPU) need "
            f"{needed_cpus:g} CPUs but the Ray cluster has {cpus:g}. Lower --num_actors, or (local Ray "
            f"only) raise --ray_num_cpus to oversubscribe the cores deliberately.")
    if rt.num_gpus > gpus:
        raise ValueError(f"--num_gpus={rt.num_gpus:g} but the Ray cluster has {gpus:g} GPU(s). Use "
                         f"--num_gpus=0 to train on CPU, or start Ray where the GPUs are.")


def check_local_gpu(num_gpus: float) -> None:
    """The in-process runtimes use this process's JAX devices: fail early if a GPU was asked for
    and JAX sees none."""
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() == "cpu":
        raise ValueError(f"--num_gpus={num_gpus:g} but JAX sees no GPU in this process (backend "
                         f"'cpu'). Install the CUDA build (pip install -e '.[cuda]', see BUILD.md) "
                         f"or use --num_gpus=0.")


def learner_cpus(config) -> float:
    """CPU reservation of the two learner workers: none with GPUs, one core between them without."""
    return 0.0 if config.runtime.num_gpus > 0 else 1.0


def _learner_env(share: float) -> dict:
    if 0 < share < 1:  # two JAX processes on one GPU: neither may take 75% of its memory
        return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 * share:.3f}"}
    if share == 0:
        return {"JAX_PLATFORMS": "cpu"}
    return {}


# ----------------------------------------------------------------------------------- loop

@dataclasses.dataclass
class Counters:
    """Cumulative counters of a run; checkpointed, so a resumed run continues them."""
    updates: int = 0
    disc_updates: int = 0
    agent_steps: int = 0
    episodes: int = 0
    unrolls_dropped_stale: int = 0
    actor_failures: int = 0
    actor_restarts: int = 0
    elapsed_s: float = 0.0


class _Rates:
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


def _check_resumable(saved: dict, config) -> None:
    saved = type(config).from_dict(saved)
    different = [k for k in _MUST_MATCH if getattr(saved, k) != getattr(config, k)]
    if different:
        raise ValueError(f"Cannot resume: the checkpoint was trained with different {different} "
                         f"settings than these flags. Use the original flags, or a new "
                         f"--checkpoint_dir to start afresh.")


def train(config, policy_learner_worker: type = PolicyLearnerWorker) -> dict:
    """Run one experiment to its budget; returns the final counters and last metrics.

    ``policy_learner_worker``: the class the Ray and local runtimes make their policy learner from
    (``benchmarks/system_throughput.py`` passes one that only drains batches, to time the runtime
    alone); the fused runtime has no separate learner and ignores it.
    """
    if config.runtime.runtime == "fused":
        from spiral.actors import fused  # pylint: disable=import-outside-toplevel
        return fused.train(config)
    return _Driver(config, policy_learner_worker).run()


class _Driver:

    def __init__(self, config, policy_learner_worker: type = PolicyLearnerWorker):
        self.config = config
        self.policy_learner_worker = policy_learner_worker
        rt = config.runtime
        self.backend = make_backend(rt.runtime)
        if rt.runtime == "ray":
            _init_ray(config)
        elif rt.num_gpus > 0:
            check_local_gpu(rt.num_gpus)
        self.counters = Counters()
        self.resume_from = None
        if rt.resume:
            self.resume_from = checkpointing.latest_checkpoint(rt.checkpoint_dir)
            if self.resume_from is None:
                print(f"--resume: no checkpoint in {rt.checkpoint_dir} yet; starting afresh.", flush=True)
            else:
                saved_config, saved_counters = checkpointing.read_run_info(self.resume_from)
                _check_resumable(saved_config, config)
                self.counters = Counters(**{f.name: saved_counters.get(f.name, 0)
                                            for f in dataclasses.fields(Counters)})

    def _create_workers(self):
        config, be, rt = self.config, self.backend, self.config.runtime
        images = load_images(config)
        targets_ref = None
        if config.env.conditional:
            targets = area_downsample(images, config.observation_width)
            targets_ref = [be.put(targets)]
        policy_gpu, disc_gpu = rt.learner_gpus()
        learner_cpu = learner_cpus(config) / 2
        self.param_server = be.create(ParameterServer, num_cpus=0)
        self.disc = None
        if config.uses_discriminator:
            self.disc = be.create(DiscriminatorWorker, config, self.param_server, [be.put(images)],
                                  rt.runtime, num_cpus=learner_cpu, num_gpus=disc_gpu,
                                  runtime_env={"env_vars": _learner_env(disc_gpu)})
        self.learner = be.create(self.policy_learner_worker, config, self.param_server, rt.runtime,
                                 num_cpus=learner_cpu, num_gpus=policy_gpu,
                                 runtime_env={"env_vars": _learner_env(policy_gpu)})
        self.actors = [
            be.create(ActorWorker, config, i, self.param_server, self.disc, targets_ref, rt.runtime,
                      num_cpus=1, max_restarts=-1, runtime_env={"env_vars": SINGLE_THREAD_ENV})
            for i in range(rt.num_actors)]
        if self.resume_from:
            self._restore(self.resume_from)

    def _restore(self, path: str):
        be = self.backend
        template = be.get(self.learner.get_state.remote())
        state = checkpointing.restore_tree(os.path.join(path, "policy"), template)
        be.get(self.learner.set_state.remote(state))
        if self.disc is not None:
            template = be.get(self.disc.get_state.remote())
            state = checkpointing.restore_tree(os.path.join(path, "discriminator"), template)
            be.get(self.disc.set_state.remote(state))
            replay_path = os.path.join(path, "replay")
            if os.path.isdir(replay_path):  # the critic resumes on the fakes it had, not none
                template = be.get(self.disc.get_replay_state.remote())
                try:
                    be.get(self.disc.set_replay_state.remote(
                        checkpointing.restore_tree(replay_path, template)))
                except ValueError as e:
                    print(f"--resume: the saved replay does not fit this run's ({e}); the "
                          f"discriminator starts from an empty replay.", flush=True)
        print(f"Resumed from {path} at {self.counters.updates} policy updates.", flush=True)

    def _checkpoint(self, monitor=None) -> Optional[str]:
        rt = self.config.runtime
        if not rt.checkpoint_dir:
            return None
        be = self.backend
        policy_state = be.get(self.learner.get_state.remote())
        disc_state = replay_state = None
        if self.disc is not None:
            disc_state, replay_state = be.get([self.disc.get_state.remote(),
                                               self.disc.get_replay_state.remote()])
        path = checkpointing.save_checkpoint(rt.checkpoint_dir, self.counters.updates,
                                             self.config.to_dict(), dataclasses.asdict(self.counters),
                                             policy_state, disc_state, replay_state)
        # Evaluation at each checkpoint (spiral.evaluation): held-out metrics to
        # <checkpoint_dir>/eval_log.jsonl and TensorBoard eval/*; reports its own failures.
        from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
        log_checkpoint_metrics(self.config, policy_state.params, dataclasses.asdict(self.counters),
                               monitor)
        return path

    def _on_actor_failure(self, index: int, error: BaseException):
        self.counters.actor_failures += 1
        print(f"actor {index} failed an unroll ({type(error).__name__}: {error}); it is restarted "
              f"and used again.", flush=True)

    def _budget_left(self, start: float) -> bool:
        rt = self.config.runtime
        if rt.max_updates and self.counters.updates >= rt.max_updates:
            return False
        if rt.max_minutes and time.monotonic() - start >= 60 * rt.max_minutes:
            return False
        return True

    def run(self) -> dict:
        rt, be = self.config.runtime, self.backend
        start = time.monotonic()
        elapsed_before = self.counters.elapsed_s
        self._create_workers()
        queue = TrajectoryQueue(be, self.actors, rt.capacity, rt.max_policy_lag,
                                on_actor_failure=self._on_actor_failure)
        monitor = monitoring.Monitor(rt.logdir or None, rt.log_every_seconds)
        actor_rate, learner_rate = _Rates(), _Rates()
        returns = collections.deque(maxlen=200)
        actor_busy, actor_idle = collections.deque(maxlen=200), collections.deque(maxlen=200)
        pending = collections.deque()   # (policy update future, agent steps in its batch)
        disc_future, disc_credit = None, 0.0
        last = {"policy": {}, "disc": {}}
        last_checkpoint = time.monotonic()
        submitted = self.counters.updates
        sample_ref = None
        final_values = {}
        incarnations = collections.defaultdict(set)
        versions = collections.defaultdict(lambda: collections.deque(maxlen=1000))

        def finish_update(block: bool):
            while pending and (block or len(pending) >= 2):
                future, steps = pending.popleft()
                last["policy"] = be.get(future)
                self.counters.updates += 1
                learner_rate.add(steps)

        def finish_disc():
            nonlocal disc_future
            if disc_future is not None:
                metrics, n = be.get(disc_future[0]), disc_future[1]
                if metrics is not None:
                    last["disc"] = metrics
                    self.counters.disc_updates += n
                disc_future = None

        try:
            while self._budget_left(start) or pending:
                if not self._budget_left(start) or submitted >= (rt.max_updates or float("inf")):
                    finish_update(block=True)
                    break
                # The learner's version counts applied updates only (a refused update keeps it).
                version = submitted - int(last["policy"].get("skipped_updates", 0))
                items = queue.get(rt.unrolls_per_batch, learner_version=version)
                steps = 0
                for meta, _ in items:
                    steps += meta["agent_steps"]
                    self.counters.episodes += meta["episodes"]
                    returns.append(meta["mean_return"])
                    actor_busy.append(meta["unroll_seconds"])
                    actor_idle.append(meta["idle_seconds"])
                    actor_rate.add(meta["agent_steps"])
                    versions[meta["actor"]].append(meta["policy_version"])
                    seen = incarnations[meta["actor"]]
                    if meta["restarted"] and meta["incarnation"] not in seen:
                        self.counters.actor_restarts += 1
                        print(f"actor {meta['actor']} is back after a restart.", flush=True)
                    seen.add(meta["incarnation"])
                self.counters.agent_steps += steps
                refs = [ref for _, ref in items]
                pending.append((self.learner.update.remote(*refs), steps))
                submitted += 1
                if sample_ref is None and (submitted % rt.image_every_updates == 0 or submitted == 1):
                    sample_ref = refs[0]
                finish_update(block=False)

                if self.disc is not None and rt.disc_updates_per_policy_update > 0:
                    disc_credit += rt.disc_updates_per_policy_update
                    if disc_future is None or be.wait([disc_future[0]], timeout=0)[0]:
                        finish_disc()
                        n = int(disc_credit)
                        if n >= 1:
                            disc_future = (self.disc.train.remote(n), n)
                            disc_credit -= n

                now = time.monotonic()
                self.counters.elapsed_s = elapsed_before + now - start
                self.counters.unrolls_dropped_stale = queue.stats.unrolls_dropped_stale
                values = self._progress_values(queue, actor_rate, learner_rate, returns,
                                               actor_busy, actor_idle, last, now - start)
                monitor.progress(self.counters.updates, values)
                if sample_ref is not None and last["policy"]:
                    self._log_samples(monitor, be.get(sample_ref))
                    sample_ref = None
                if rt.checkpoint_dir and now - last_checkpoint >= 60 * rt.checkpoint_every_minutes:
                    finish_update(block=True)
                    finish_disc()
                    path = self._checkpoint(monitor)
                    last_checkpoint = time.monotonic()
                    print(f"checkpoint: {path}", flush=True)
            finish_update(block=True)
            finish_disc()
            self.counters.elapsed_s = elapsed_before + time.monotonic() - start
            values = self._progress_values(queue, actor_rate, learner_rate, returns, actor_busy,
                                           actor_idle, last, time.monotonic() - start)
            final_values = values
            monitor.progress(self.counters.updates, values, force=True)
            path = self._checkpoint(monitor)
            if path:
                print(f"checkpoint: {path}", flush=True)
        finally:
            monitor.close()
            self._stop_workers()
        return {"counters": dataclasses.asdict(self.counters), "policy_metrics": last["policy"],
                "progress": final_values,
                "policy_versions_by_actor": {a: list(v) for a, v in versions.items()},
                "disc_metrics": last["disc"], "checkpoint": self._last_checkpoint_path(),
                "queue": dataclasses.asdict(queue.stats) | {"lags": list(queue.stats.lags)}}

    def _stop_workers(self):
        """End every worker of this run, so a later run in the same Ray session starts clean."""
        for handle in getattr(self, "actors", []) + [getattr(self, name, None) for name in
                                                     ("learner", "disc", "param_server")]:
            if handle is not None:
                try:
                    self.backend.kill(handle, no_restart=True)
                except Exception:  # pylint: disable=broad-except
                    pass  # already gone

    def _last_checkpoint_path(self) -> Optional[str]:
        rt = self.config.runtime
        return checkpointing.latest_checkpoint(rt.checkpoint_dir) if rt.checkpoint_dir else None

    def _progress_values(self, queue, actor_rate, learner_rate, returns, busy, idle, last,
                         wall_s) -> dict:
        values = {
            "updates": self.counters.updates,
            "disc_updates": self.counters.disc_updates,
            "agent_steps": self.counters.agent_steps,
            "actor_steps_per_s": actor_rate.rate(),
            "learner_steps_per_s": learner_rate.rate(),
            "consumer_wait_frac": queue.stats.consumer_wait_s / max(wall_s, 1e-9),
            "producer_wait_frac": sum(idle) / max(sum(idle) + sum(busy), 1e-9),
            "dropped_stale": self.counters.unrolls_dropped_stale,
            "actor_failures": self.counters.actor_failures,
            "actor_restarts": self.counters.actor_restarts,
            "mean_episode_return": float(np.mean(returns)) if returns else float("nan"),
        }
        values.update(queue.lag_summary())
        policy, disc = last["policy"], last["disc"]
        if not np.isfinite(values["mean_episode_return"]) and "mean_reward_per_unroll" in policy:
            values["mean_episode_return"] = policy["mean_reward_per_unroll"]  # rewards_on=learner
        values.update(monitoring.learner_values(policy, disc, ("learner_update_seconds",)))
        return values

    def _log_samples(self, monitor, trajectory):
        canvases = trajectory.observation.canvas[:, -1]
        if trajectory.observation.target is not None:
            canvases = np.concatenate([canvases, trajectory.observation.target[:, 0]], axis=2)
        monitor.images(self.counters.updates, "samples/final_canvas", canvases)
