"""The three kinds of worker, as plain classes that Ray (or the local backend) runs as actors.

* ``ActorWorker``: an ``EpisodeRunner`` that pulls the newest parameters at the start of each
  unroll, sends its final canvases to the discriminator's replay, and returns (metadata,
  trajectory) — two objects, so the learner can fetch the trajectory without the driver touching it.
* ``PolicyLearnerWorker``: a ``PolicyLearner``; trains on the trajectories it is handed and
  publishes each new parameter version.
* ``DiscriminatorWorker``: a ``DiscriminatorLearner`` with its replay and the real images; trains
  when asked and publishes its reward weights.

They hold no Ray code beyond the backend calls, so ``--runtime=local`` runs exactly this code.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from spiral.actors import backend as backend_lib
from spiral.actors.acting import CanvasRewards, EpisodeRunner
from spiral.discriminator import DiscriminatorLearner, Replay
from spiral.discriminator import learning as disc_learning
from spiral.learner import PolicyLearner, Trajectory

POLICY = "policy"
DISCRIMINATOR = "discriminator"

# Environment of a CPU actor process: XLA, BLAS and numba on one thread each, so N actors on N
# cores do not oversubscribe them (XLA's default thread pool uses every core).
SINGLE_THREAD_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "JAX_PLATFORMS": "cpu",
}


def make_backend(name: str):
    return backend_lib.RayBackend() if name == "ray" else backend_lib.LocalBackend()


def concat_trajectories(batches) -> Trajectory:
    """Batched records [K_i, ...] -> one batch [Σ K_i, ...] (numpy)."""
    if len(batches) == 1:
        return batches[0]
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *batches)


def _was_restarted() -> bool:
    """True in a Ray actor that Ray restarted after it died."""
    try:
        import ray  # pylint: disable=import-outside-toplevel
        if not ray.is_initialized():
            return False
        with warnings.catch_warnings():  # the property reads a deprecated field internally
            warnings.simplefilter("ignore")
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # pylint: disable=broad-except
        return False


class ParameterCache:
    """The newest published version of each parameter set, fetched once per version and kept on
    this process's default device.

    A published reference whose owner died (a learner restarting) cannot be fetched: the cache
    keeps the version it has and asks again next time; the restored learner publishes anew.
    """

    def __init__(self, backend, parameter_server):
        self._backend = backend
        self._server = parameter_server
        self._current = {}   # name -> (version, parameters)

    def get(self, name: str, timeout_s: float = 600.0):
        """(version, parameters): pulls a newer version if there is one; waits for the first."""
        start = time.monotonic()
        self._current.setdefault(name, (-1, None))
        while True:
            latest = self._backend.get(self._server.latest.remote(name, self._current[name][0]))
            if latest is not None:
                version, wrapped = latest
                try:
                    self._current[name] = (version, jax.device_put(self._backend.get(wrapped[0])))
                except Exception as e:  # pylint: disable=broad-except
                    if not self._backend.is_actor_error(e):
                        raise
            if self._current[name][1] is not None:
                return self._current[name]
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no {name} parameters were published within {timeout_s:.0f} s.")
            time.sleep(0.05)


class ActorWorker:
    """Paints ``envs_per_actor`` episodes per ``unroll`` call with the newest published policy."""

    def __init__(self, config, actor_index: int, parameter_server, discriminator_worker,
                 wrapped_targets: Optional[list], backend_name: str, unroll_index: int = 0,
                 policy_stream: str = POLICY):
        """``unroll_index``: where this actor's streams continue (a resumed run passes the
        ``metadata["unroll_index"] + 1`` of the actor's last unroll it kept). ``policy_stream``:
        the name its policy learner publishes under (one per member of a population)."""
        self._backend = make_backend(backend_name)
        self._policy_stream = policy_stream
        self._params = ParameterCache(self._backend, parameter_server)
        self._disc = discriminator_worker
        self.restarted = _was_restarted()
        self.incarnation = os.urandom(4).hex()  # tells the driver when an actor was restarted
        # A restarted actor must not replay the episodes it played before it died.
        seed_offset = int.from_bytes(os.urandom(2), "little") + 1 if self.restarted else 0
        targets = None if wrapped_targets is None else self._backend.get(wrapped_targets[0])
        self.runner = EpisodeRunner(config, actor_index, targets, unroll_index=unroll_index,
                                    seed_offset=seed_offset)
        # Rewards from the critic are computed here unless the learner computes them.
        self._needs_disc = config.uses_discriminator and config.runtime.rewards_on == "actors"
        self._last_end: Optional[float] = None

    def unroll(self):
        start = time.perf_counter()
        idle = 0.0 if self._last_end is None else start - self._last_end
        policy_version, params = self._params.get(self._policy_stream)
        disc_version, weights = self._params.get(DISCRIMINATOR) if self._needs_disc else (-1, None)
        result = self.runner.unroll(params, policy_version, weights, disc_version)
        if self._disc is not None:  # fire and forget: the replay copies them
            self._disc.add_fakes.remote(result.final_canvases, result.targets)
        self._last_end = time.perf_counter()
        metadata = dict(result.metadata, idle_seconds=idle,
                        unroll_seconds=self._last_end - start, restarted=self.restarted,
                        incarnation=self.incarnation)
        return metadata, result.trajectory


class PolicyLearnerWorker:
    """Trains the policy on batches of trajectories and publishes every new version.

    Restartable: a process Ray restarts after a crash re-runs ``__init__``; it then publishes
    nothing and refuses to train (``update`` returns ``{"awaiting_state": 1.0}``) until the
    runtime hands it the newest state it kept (``set_state``), so a restart never trains, or
    serves to the actors, a freshly initialised policy.
    """

    def __init__(self, config, parameter_server, backend_name: str, policy_stream: str = POLICY):
        """``policy_stream``: the name it publishes under (one per member of a population)."""
        self._backend = make_backend(backend_name)
        self._params = parameter_server
        self._policy_stream = policy_stream
        self.learner = PolicyLearner(config.agent, config.policy, seed=config.runtime.seed)
        self._config_hyperparams = self.learner.state.hyperparams
        self._rewards = None
        if config.runtime.rewards_on == "learner":
            self._rewards = CanvasRewards(config, device=jax.devices()[0])
            self._cache = ParameterCache(self._backend, parameter_server)
            self._uses_disc = config.uses_discriminator
        self.awaiting_state = _was_restarted()
        if not self.awaiting_state:
            self.publish()

    def publish(self, force: bool = False) -> int:
        """Publish the parameters (``force``: replace whatever the server holds, e.g. after a
        restore to an older version). Nothing while awaiting its state."""
        if self.awaiting_state:
            return -1
        params = jax.device_get(self.learner.params)
        self._params.publish.remote(self._policy_stream, self.learner.step,
                                    [self._backend.put(params)], force)
        return self.learner.step

    def update(self, *trajectories: Trajectory) -> dict:
        """One update on the unrolls given (each [K, ...]); returns metrics and timings."""
        if self.awaiting_state:
            return {"awaiting_state": 1.0}
        start = time.perf_counter()
        batch = concat_trajectories(trajectories)
        extra = {}
        if self._rewards is not None:  # add the critic's rewards to the actors' stroke penalties
            version, weights = self._cache.get(DISCRIMINATOR) if self._uses_disc else (-1, None)
            batch = batch._replace(reward=batch.reward + self._rewards(weights, batch))
            extra["reward_disc_version"] = float(version)
        ready = time.perf_counter()
        metrics = self.learner.update(batch)
        done = time.perf_counter()
        self.publish()
        metrics.update(extra, learner_prepare_seconds=ready - start,
                       learner_update_seconds=done - ready, version=float(self.learner.step),
                       batch_episodes=float(batch.reward.shape[0]))
        return metrics

    def update_keeping_state(self, *trajectories: Trajectory) -> tuple[dict, Any]:
        """``update``, then the state it left (None while awaiting its state): both results of
        one call, so a state never comes from a different process than its update."""
        metrics = self.update(*trajectories)
        return metrics, None if self.awaiting_state else self.get_state()

    def get_state(self):
        return jax.device_get(self.learner.state)

    def set_state(self, state, config_hyperparams: bool = False) -> int:
        """Continue from ``state`` (a ``get_state()``); ``config_hyperparams``: with this run's
        configured hyperparameters instead of the saved ones (a resume with new flags)."""
        state = jax.tree.map(jnp.asarray, state)
        if config_hyperparams:
            state = state._replace(hyperparams=self._config_hyperparams)
        self.learner.set_state(state)
        self.awaiting_state = False
        return self.publish(force=True)


class DiscriminatorWorker:
    """The discriminator learner, its replay of final canvases and the real images.

    Restartable as ``PolicyLearnerWorker``: after a restart ``train`` returns
    ``{"awaiting_state": 1.0}`` until ``set_state``; the replay refills from the actors.
    """

    def __init__(self, config, parameter_server, wrapped_real: list, backend_name: str):
        self._backend = make_backend(backend_name)
        self._params = parameter_server
        seed = config.runtime.seed
        self.learner = DiscriminatorLearner(config.discriminator, seed=seed)
        self.replay = Replay.from_config(config.discriminator, seed=seed)
        self.real = self._backend.get(wrapped_real[0])  # uint8 levels [N, 64, 64, C]
        self.awaiting_state = _was_restarted()
        if not self.awaiting_state:
            self.publish()

    def publish(self, force: bool = False) -> int:
        if self.awaiting_state:
            return -1
        version, weights = self.learner.publish()
        self._params.publish.remote(DISCRIMINATOR, version, [self._backend.put(weights)], force)
        return version

    def add_fakes(self, canvases: np.ndarray, targets: Optional[np.ndarray] = None) -> int:
        self.replay.add(canvases, targets)
        return len(self.replay)

    def train(self, num_updates: int) -> Optional[dict]:
        """``num_updates`` updates on replayed fakes and real images; None until the replay holds
        one batch (training on a few canvases repeated would overfit them)."""
        if self.awaiting_state:
            return {"awaiting_state": 1.0}
        if num_updates < 1 or len(self.replay) < self.learner.config.batch_size:
            return None
        start = time.perf_counter()
        for _ in range(num_updates):
            metrics = self.learner.train_step(self.replay, self.real)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        version = self.publish()
        metrics.update(version=float(version), replay_size=float(len(self.replay)),
                       replay_added=float(self.replay.num_added),
                       disc_seconds=time.perf_counter() - start)
        return metrics

    def train_keeping_state(self, num_updates: int) -> tuple[Optional[dict], Any]:
        """``train``, then the state it left (as ``PolicyLearnerWorker.update_keeping_state``)."""
        metrics = self.train(num_updates)
        return metrics, None if self.awaiting_state else self.get_state()

    def get_state(self) -> Any:
        return jax.device_get(disc_learning.state_to_tree(self.learner.state))

    def get_replay_state(self) -> dict:
        return self.replay.get_state()

    def set_replay_state(self, state: dict) -> int:
        self.replay.set_state(state)
        return len(self.replay)

    def set_state(self, tree) -> int:
        self.learner.set_state(disc_learning.state_from_tree(tree, self.learner.state))
        self.awaiting_state = False
        return self.publish(force=True)
