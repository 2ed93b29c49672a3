"""The distributed runtime ("ray") and its in-process twin ("local"): the workers and the data flow.

``DistributedRuntime`` is a ``spiral.actors.runtime.Runtime``; the run loop
(``spiral.actors.run_loop``) drives it. With "ray" the actors, the policy learner, the
discriminator learner and the parameter server are Ray actors (a local Ray starts unless
``ray_address`` is given) and this process moves object references only; with "local" the very
same worker classes run in this process, each call when it is made, in a fixed order:
deterministic, for debugging and tests.

One ``step`` is one policy update: a batch of unrolls from the bounded ``TrajectoryQueue``
(actor -> queue), whose references go to the policy learner, which fetches them itself while its
previous update runs (two updates in flight: the next batch is prefetched at the cost of one
step of policy lag) and publishes each new version to the parameter server, from which the
actors pull the newest at the start of each unroll. The actors also send their final canvases
to the discriminator's replay; every policy update earns ``disc_updates_per_policy_update``
discriminator updates (fractions accumulate), run while the policy learns, and the
discriminator publishes its reward weights the same way.

Faults, on Ray (each learner and the parameter server is restartable, ``max_restarts``):

* an actor that dies is restarted by Ray, its unroll retried: nothing is lost or duplicated;
* the policy learner or the discriminator learner: each update returns the state it left,
  kept here by reference (``*_keeping_state``); a restarted learner refuses to work until it is
  handed the newest of those states, then the policy updates in flight are redone (the
  discriminator's in-flight update is lost, and its replay refills from the actors);
* the parameter server: it comes back empty with a new incarnation, and the learners publish
  again; actors keep painting with the parameters they hold meanwhile.

Each is reported in one line. Learner states returned per update cost one copy of the state
into the object store per update, which is what makes "lose at most the update in flight" hold.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import time
import warnings
from typing import Any, Callable, Optional

import numpy as np

from spiral.actors.parameter_server import ParameterServer
from spiral.actors.runtime import (RunData, RunError, RuntimeState, StepReport, check_local_gpu,
                                   restore_part, restore_replay)
from spiral.actors.trajectory_queue import TrajectoryQueue
from spiral.actors.workers import (POLICY, SINGLE_THREAD_ENV, ActorWorker, DiscriminatorWorker,
                                   PolicyLearnerWorker, make_backend)

# A learner restarted this many times in a row without finishing an update is not recovering.
MAX_RESTARTS_IN_A_ROW = 3
# How often (seconds) the runtime checks whether the parameter server was restarted.
SERVER_CHECK_EVERY_S = 2.0


# ----------------------------------------------------------------------------------- Ray

def check_ray_address(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would retry for minutes)."""
    if not address or address == "auto":
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RunError(f"--ray_address={address!r} is not host:port (or 'auto' on a cluster node).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RunError(f"no Ray cluster answers at --ray_address={address} ({e.strerror or e}, "
                       f"within {timeout_s:g} s): start one there (`ray start --head`), fix the "
                       f"address, or leave the flag out to start Ray on this machine.") from None


def init_ray(config) -> None:
    """Join (or start) Ray and check that it has the CPUs and GPUs the run asks for."""
    import ray  # pylint: disable=import-outside-toplevel
    rt = config.runtime
    # Ray starts its processes with fork+exec, which is safe even though JAX has threads here.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    if not ray.is_initialized():
        check_ray_address(rt.ray_address)
        try:
            if rt.ray_address:
                ray.init(address=rt.ray_address, log_to_driver=True)
            else:
                ray.init(num_cpus=rt.ray_num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=True)
        except ConnectionError as e:
            raise RunError(f"cannot join Ray at --ray_address={rt.ray_address}: {e}") from None
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    actors = rt.num_actors * config.population.size
    needed_cpus = actors + learner_cpus(config)
    if needed_cpus > cpus:
        raise RunError(
            f"{actors} actors (1 CPU each) and the learners ({learner_cpus(config)} CPU) need "
            f"{needed_cpus:g} CPUs but the Ray cluster has {cpus:g}. Lower --num_actors, or (local Ray "
            f"only) raise --ray_num_cpus to oversubscribe the cores deliberately.")
    if rt.num_gpus > gpus:
        raise RunError(f"--num_gpus={rt.num_gpus:g} but the Ray cluster has {gpus:g} GPU(s). Use "
                       f"--num_gpus=0 to train on CPU, or start Ray where the GPUs are.")


def learner_cpus(config) -> float:
    """CPU reservation of the learner workers: none with GPUs; without, half a core each (one
    core for a policy learner and the discriminator, more for a population's learners)."""
    return 0.0 if config.runtime.num_gpus > 0 else 0.5 * (config.population.size + 1)


def _learner_env(share: float) -> dict:
    if 0 < share < 1:  # two JAX processes on one GPU: neither may take 75% of its memory
        return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 * share:.3f}"}
    if share == 0:
        return {"JAX_PLATFORMS": "cpu"}
    return {}


# ----------------------------------------------------------------------------------- runtime

@dataclasses.dataclass
class _Update:
    """A policy update in flight."""
    result: Any          # ref of the metrics, or of (metrics, state) when states are kept
    refs: list           # the batch's trajectory references (to redo it after a restart)
    steps: int
    episodes: int


class DistributedRuntime:
    """Actors, the two learners and the parameter server, on Ray or in this process."""

    def __init__(self, config, data: RunData, say: Callable[[str], None],
                 policy_learner_worker: type = PolicyLearnerWorker,
                 join: Optional["DistributedRuntime"] = None, policy_stream: str = POLICY,
                 recent_batches: int = 0):
        """``join``: another runtime whose parameter server, discriminator and targets this one
        shares (a member of a population, ``spiral.actors.population``): it runs its own policy
        learner and actors only, and ``join`` trains, checkpoints and closes the shared parts.
        ``policy_stream``: the name its policy is published under. ``recent_batches``: how many
        of the newest batches' trajectory references ``self.recent_batches`` keeps."""
        self.config, self.say = config, say
        self.joined = join is not None
        self.policy_stream = policy_stream
        self.recent_batches: collections.deque = collections.deque(maxlen=recent_batches)
        rt = config.runtime
        self.be = be = make_backend(rt.runtime)
        self.on_ray = rt.runtime == "ray"
        if self.on_ray:
            init_ray(config)
        elif rt.num_gpus > 0:
            check_local_gpu(rt.num_gpus)
        # On Ray the learners keep their newest state here (by reference) to survive restarts.
        self.keep_states = self.on_ray
        restarts = -1 if self.on_ray else 0
        policy_gpu, disc_gpu = rt.learner_gpus()
        policy_gpu /= config.population.size   # a population's policy learners share its share
        learner_cpu = learner_cpus(config) / (config.population.size + 1)
        if join is not None:
            self.param_server, self.disc, self._targets_ref = (join.param_server, join.disc,
                                                               join._targets_ref)
        else:
            self.param_server = be.create(ParameterServer, num_cpus=0, max_restarts=restarts)
            self.disc = None
            if config.uses_discriminator:
                self.disc = be.create(DiscriminatorWorker, config, self.param_server,
                                      [be.put(data.images)], rt.runtime, num_cpus=learner_cpu,
                                      num_gpus=disc_gpu, max_restarts=restarts,
                                      runtime_env={"env_vars": _learner_env(disc_gpu)})
            self._targets_ref = None if data.targets is None else [be.put(data.targets)]
        self.learner = be.create(policy_learner_worker, config, self.param_server, rt.runtime,
                                 policy_stream, num_cpus=learner_cpu, num_gpus=policy_gpu,
                                 max_restarts=restarts,
                                 runtime_env={"env_vars": _learner_env(policy_gpu)})
        self.actors: list = []
        self.queue: Optional[TrajectoryQueue] = None
        self._first_unrolls = [0] * rt.num_actors
        self.counters = {"unrolls_dropped_stale": 0, "actor_failures": 0, "actor_restarts": 0,
                         "learner_restarts": 0, "disc_restarts": 0, "server_restarts": 0}
        self._disc_credit = 0.0
        self._submitted = 0          # policy updates started
        self._finished = 0           # policy updates finished
        self._skipped = 0            # of which refused by the learner's guard
        self._pending: collections.deque[_Update] = collections.deque()
        self._disc_future = None     # (result ref, number of updates)
        self._restarts_in_a_row = {"policy": 0, "disc": 0}
        self._policy_state = self.learner.get_state.remote() if self.keep_states else None
        self._disc_state = (self.disc.get_state.remote()
                            if self.keep_states and self.disc and not self.joined else None)
        if self.keep_states:  # the learners started (else their error is raised here, not later)
            be.get([ref for ref in (self._policy_state, self._disc_state) if ref is not None])
        self._server_incarnation = (be.get(self.param_server.get_incarnation.remote())
                                    if self.on_ray else None)
        self._server_checked = time.monotonic()
        self._start = time.monotonic()
        self._incarnations = collections.defaultdict(set)
        self._versions = collections.defaultdict(lambda: collections.deque(maxlen=1000))
        self._unroll_indices = collections.defaultdict(lambda: collections.deque(maxlen=1000))
        self._busy = collections.deque(maxlen=200)
        self._idle = collections.deque(maxlen=200)

    # ------------------------------------------------------------------ actors
    def _start_actors(self):
        """Actors start at the first step, at the unroll positions a restore may have set."""
        if self.queue is not None:
            return
        config, be, rt = self.config, self.be, self.config.runtime
        self.actors = [
            be.create(ActorWorker, config, i, self.param_server, self.disc, self._targets_ref,
                      rt.runtime, self._first_unrolls[i], self.policy_stream, num_cpus=1,
                      max_restarts=-1, runtime_env={"env_vars": SINGLE_THREAD_ENV})
            for i in range(rt.num_actors)]
        self.queue = TrajectoryQueue(be, self.actors, rt.capacity, rt.max_policy_lag,
                                     on_actor_failure=self._on_actor_failure,
                                     first_unrolls=self._first_unrolls, prefetch=self.on_ray)

    def _on_actor_failure(self, index: int, error: BaseException):
        self.counters["actor_failures"] += 1
        self.say(f"actor {index} failed an unroll ({type(error).__name__}: {error}); it is "
                 f"restarted and used again.")

    def _take_batch(self, report: StepReport) -> list:
        """One batch of unroll references from the queue, with its bookkeeping."""
        version = self._submitted - self._skipped  # the learner's version counts applied updates
        items = self.queue.get(self.config.runtime.unrolls_per_batch, learner_version=version)
        for meta, _ in items:
            actor = meta["actor"]
            report.acted_steps += meta["agent_steps"]
            report.returns.append(meta["mean_return"])
            self._busy.append(meta["unroll_seconds"])
            self._idle.append(meta["idle_seconds"])
            self._versions[actor].append(meta["policy_version"])
            self._unroll_indices[actor].append(meta.get("unroll_index", -1))
            seen = self._incarnations[actor]
            if meta["restarted"] and meta["incarnation"] not in seen:
                self.counters["actor_restarts"] += 1
                self.say(f"actor {actor} is back after a restart.")
            seen.add(meta["incarnation"])
        return items

    # ------------------------------------------------------------------ policy updates
    def _submit_update(self, refs: list, steps: int, episodes: int):
        if self.keep_states:
            result = self.learner.update_keeping_state.options(num_returns=2).remote(*refs)
        else:
            result = self.learner.update.remote(*refs)
        self._pending.append(_Update(result, refs, steps, episodes))

    def _finish_updates(self, report: StepReport, keep: int):
        """Wait for policy updates until at most ``keep`` are in flight."""
        while len(self._pending) > keep:
            update = self._pending[0]
            try:
                if self.keep_states:
                    metrics_ref, state_ref = update.result
                    metrics = self.be.get(metrics_ref)
                else:
                    metrics, state_ref = self.be.get(update.result), None
            except Exception as e:  # pylint: disable=broad-except
                if not self.be.is_actor_error(e):
                    raise
                metrics = {"awaiting_state": 1.0}
            if metrics.get("awaiting_state"):
                self._recover_policy_learner()
                continue
            self._pending.popleft()
            self._restarts_in_a_row["policy"] = 0
            if state_ref is not None:
                self._policy_state = state_ref
            self._finished += 1
            self._skipped = int(metrics.get("skipped_updates", self._skipped))
            report.applied.append(metrics.get("update_applied", 1.0) > 0)
            report.agent_steps += update.steps
            report.episodes += update.episodes
            report.policy_metrics = metrics

    def _recover_policy_learner(self):
        """The policy learner's process was restarted: hand it the newest state and redo the
        updates that were in flight."""
        self.counters["learner_restarts"] += 1
        self._restarts_in_a_row["policy"] += 1
        if self._restarts_in_a_row["policy"] > MAX_RESTARTS_IN_A_ROW:
            raise RunError(f"the policy learner was restarted {self._restarts_in_a_row['policy']} "
                           f"times in a row without finishing an update; see its log (`ray logs`).")
        redo = list(self._pending)
        self._pending.clear()
        self.learner.set_state.remote(self._policy_state)
        for update in redo:
            self._submit_update(update.refs, update.steps, update.episodes)
        self.say(f"policy learner restarted (its process died): restored to its state after "
                 f"update {self._finished}; redoing the {len(redo)} update(s) in flight.")

    # ------------------------------------------------------------------ discriminator
    def _disc_step(self, report: StepReport):
        """Earn this policy update's discriminator updates; start them when the last finished."""
        rate = self.config.runtime.disc_updates_per_policy_update
        if self.disc is None or rate <= 0 or self.joined:
            return
        self._disc_credit += rate
        if self._disc_future is None or self.be.wait([self._disc_future[0][0]], timeout=0)[0]:
            self._finish_disc(report)
            n = int(self._disc_credit)
            if n >= 1:
                if self.keep_states:
                    result = self.disc.train_keeping_state.options(num_returns=2).remote(n)
                else:
                    result = (self.disc.train.remote(n), None)
                self._disc_future = (result, n)
                self._disc_credit -= n

    def _finish_disc(self, report: StepReport):
        if self._disc_future is None:
            return
        (metrics_ref, state_ref), n = self._disc_future
        self._disc_future = None
        try:
            metrics = self.be.get(metrics_ref)
        except Exception as e:  # pylint: disable=broad-except
            if not self.be.is_actor_error(e):
                raise
            metrics = {"awaiting_state": 1.0}
        if metrics is not None and metrics.get("awaiting_state"):
            self.counters["disc_restarts"] += 1
            self._restarts_in_a_row["disc"] += 1
            if self._restarts_in_a_row["disc"] > MAX_RESTARTS_IN_A_ROW:
                raise RunError(f"the discriminator learner was restarted "
                               f"{self._restarts_in_a_row['disc']} times in a row without "
                               f"finishing an update; see its log (`ray logs`).")
            self.disc.set_state.remote(self._disc_state)
            self.say("discriminator learner restarted (its process died): restored to its state "
                     "after its last finished update; its replay refills from the actors.")
            return
        self._restarts_in_a_row["disc"] = 0
        if metrics is not None:
            report.disc_metrics = metrics
            report.disc_updates += n
            if state_ref is not None:
                self._disc_state = state_ref

    # ------------------------------------------------------------------ parameter server
    def _check_server(self):
        if not self.on_ray or time.monotonic() - self._server_checked < SERVER_CHECK_EVERY_S:
            return
        self._server_checked = time.monotonic()
        incarnation = self.be.get(self.param_server.get_incarnation.remote())
        if incarnation != self._server_incarnation:
            self._server_incarnation = incarnation
            self.counters["server_restarts"] += 1
            self.learner.publish.remote()
            if self.disc is not None and not self.joined:
                self.disc.publish.remote()
            self.say("parameter server restarted (its process died): the learners published "
                     "their parameters again.")

    # ------------------------------------------------------------------ the seam
    def step(self, updates_left: Optional[int], want_samples: bool) -> StepReport:
        report = StepReport()
        self._start_actors()
        sample_ref = None
        if updates_left is None or updates_left > len(self._pending):
            items = self._take_batch(report)
            refs = [ref for _, ref in items]
            self._submit_update(refs, sum(m["agent_steps"] for m, _ in items),
                                sum(m["episodes"] for m, _ in items))
            self._submitted += 1
            self.recent_batches.append(refs)
            sample_ref = refs[0] if want_samples else None
            self._finish_updates(report, keep=1)
            self._disc_step(report)
        else:  # the budget allows no new update: finish one in flight
            self._finish_updates(report, keep=len(self._pending) - 1)
        if sample_ref is not None:
            report.samples = _final_canvases(self.be.get(sample_ref))
        self._check_server()
        report.values = self._values()
        return report

    def flush(self, final: bool = False) -> StepReport:
        report = StepReport()
        if final:   # the run ends: stop acting (unrolls in flight would never be learned)
            for actor in self.actors:
                self.be.kill(actor, no_restart=True)
        self._finish_updates(report, keep=0)
        self._finish_disc(report)
        report.values = self._values()
        return report

    @property
    def updates_started(self) -> int:
        """Policy updates started so far (finished or in flight)."""
        return self._submitted

    def policy_state(self):
        """After a flush, the policy learner's state (``LearnerState`` of numpy arrays)."""
        if self.keep_states:   # the state the last update left
            return self.be.get(self._policy_state)
        return self.be.get(self.learner.get_state.remote())

    def set_policy_state(self, state, config_hyperparams: bool = False) -> None:
        """After a flush, continue from another policy learner state (a restore, or a
        population's exploit); ``config_hyperparams``: with this run's configured
        hyperparameters instead of the state's."""
        self.be.get(self.learner.set_state.remote(state, config_hyperparams))
        if self.keep_states:
            self._policy_state = self.learner.get_state.remote()
        self._skipped = int(np.asarray(state.skipped_updates))

    def state(self) -> RuntimeState:
        be = self.be
        trees = {"policy": self.policy_state()}
        if self.disc is not None and not self.joined:
            trees["discriminator"] = be.get(self._disc_state if self.keep_states
                                            else self.disc.get_state.remote())
            trees["replay"] = be.get(self.disc.get_replay_state.remote())
        next_unrolls = self._first_unrolls if self.queue is None else self.queue.next_unrolls
        counters = dict(self.counters, disc_credit=self._disc_credit, next_unrolls=list(next_unrolls))
        return RuntimeState(trees, counters)

    def restore(self, path: str, counters: dict, policy_tree: str = "policy",
                config_hyperparams: bool = True) -> None:
        """``restore`` of the seam; ``policy_tree``: the policy's tree in the checkpoint;
        ``config_hyperparams``: continue with this run's hyperparameters (else the saved ones,
        e.g. a population member's)."""
        be = self.be
        template = be.get(self.learner.get_state.remote())
        policy = restore_part(path, policy_tree, template, "policy learner")
        self.set_policy_state(policy, config_hyperparams)
        if self.disc is not None and not self.joined:
            template = be.get(self.disc.get_state.remote())
            tree = restore_part(path, "discriminator", template, "discriminator")
            be.get(self.disc.set_state.remote(tree))
            if self.keep_states:
                self._disc_state = self.disc.get_state.remote()
            # The critic resumes on the fakes it had, not none.
            replay = restore_replay(path, be.get(self.disc.get_replay_state.remote()), self.say)
            if replay is not None:
                be.get(self.disc.set_replay_state.remote(replay))
        for key in self.counters:
            self.counters[key] = int(counters.get(key, 0))
        self._disc_credit = float(counters.get("disc_credit", 0.0))
        saved = list(counters.get("next_unrolls", []))
        self._first_unrolls = [int(saved[i]) if i < len(saved) else 0
                               for i in range(self.config.runtime.num_actors)]
        self._submitted = self._finished = int(counters.get("updates", 0))

    def summary(self) -> dict:
        stats = None if self.queue is None else self.queue.stats
        return {"policy_versions_by_actor": {a: list(v) for a, v in self._versions.items()},
                "unroll_indices_by_actor": {a: list(v) for a, v in self._unroll_indices.items()},
                "counters": dict(self.counters),
                "queue": {} if stats is None else dataclasses.asdict(stats) | {"lags": list(stats.lags)}}

    def close(self):
        """End every worker of this run, so a later run in the same Ray session starts clean."""
        shared = [] if self.joined else [self.disc, self.param_server]
        for handle in self.actors + [self.learner] + shared:
            if handle is not None:
                try:
                    self.be.kill(handle, no_restart=True)
                except Exception:  # pylint: disable=broad-except
                    pass  # already gone

    def _values(self) -> dict:
        if self.queue is None:
            return {}
        self.counters["unrolls_dropped_stale"] = self.queue.stats.unrolls_dropped_stale
        wall = max(time.monotonic() - self._start, 1e-9)
        busy, idle = sum(self._busy), sum(self._idle)
        values = {"consumer_wait_frac": self.queue.stats.consumer_wait_s / wall,
                  "producer_wait_frac": idle / max(idle + busy, 1e-9),
                  "dropped_stale": self.counters["unrolls_dropped_stale"]}
        values.update({k: v for k, v in self.counters.items() if k != "unrolls_dropped_stale"})
        values.update(self.queue.lag_summary())
        return values


def _final_canvases(trajectory) -> np.ndarray:
    """The final canvases of an unroll (beside their targets when conditional), uint8."""
    canvases = trajectory.observation.canvas[:, -1]
    if trajectory.observation.target is not None:
        canvases = np.concatenate([canvases, trajectory.observation.target[:, 0]], axis=2)
    return canvases
