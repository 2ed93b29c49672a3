"""Paint evaluation episodes: every frame, every program, with a trained agent or a random policy.

``paint_episodes(env_config, policy, num_episodes, seed, targets)`` plays ``num_episodes`` whole
episodes in ``PaintEnv`` (numba engine), a batch of them at a time through one batched policy
call per step, and returns an ``Episodes`` record: the observed canvas after every step (the
frames of a stroke-by-stroke GIF), the targets, and each episode's ``Program`` (its strokes, as
JSON/SVG and for re-rendering at any resolution).

Unlike ``spiral.actors.acting.EpisodeRunner`` (whose K environments each draw a random training
target and whose rewards need the discriminator), evaluation paints a *fixed* list of targets,
episode i painting ``targets[i]``, and computes no reward. Each episode gets its own
environment, seeded from (seed, i) and holding only its own target, so its canvases do not
depend on the batch size, and replaying its program with that seed (``render_program``)
reproduces it exactly.

Policies: ``AgentPolicy`` (the agent's sampling mode, jitted once per network shape and batch
size) and ``UniformPolicy`` (every sub-action uniform at random: the "random policy" that the
metrics are put beside for scale).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Protocol, Sequence

import jax
import numpy as np

from spiral.envs import PaintConfig, PaintEnv, Program
from spiral.learner import Agent, Observation


class Policy(Protocol):
    """Acts for a batch of environments, one step at a time."""

    def reset(self, batch_size: int) -> None:
        """Start B new episodes."""

    def act(self, observations: Sequence[dict], is_first: bool) -> list[dict]:
        """One action dict (key -> int) per observation."""


@functools.lru_cache(maxsize=8)
def _compiled(agent_config, compute_dtype: str, transposed_conv: str):
    """One agent and its jitted sampling functions per network shape (reused across calls)."""
    agent = Agent(agent_config, compute_dtype, transposed_conv)
    return agent, jax.jit(agent.sample_step), jax.jit(agent.sample_noise, static_argnums=1)


class AgentPolicy:
    """The agent's sampling mode with fixed parameters.

    Batches are padded to ``batch_size`` (repeating the last observation) so one compiled
    function serves every call.
    """

    def __init__(self, agent: Agent, params, seed: int, batch_size: int = 64):
        self.agent, self._sample, self._noise = _compiled(agent.config, agent.compute_dtype,
                                                          agent.transposed_conv)
        self.params = jax.device_put(params)
        self.batch_size = batch_size
        self._rng = jax.random.PRNGKey(seed)
        self._keys = agent.config.action_keys
        self._conditional = agent.config.conditional
        self._state = self._noise_vectors = None
        self._active = 0

    def reset(self, batch_size: int) -> None:
        if not 1 <= batch_size <= self.batch_size:
            raise ValueError(f"batch_size must be in [1, {self.batch_size}], got {batch_size}.")
        self._active = batch_size
        self._rng, key = jax.random.split(self._rng)
        self._noise_vectors = self._noise(key, self.batch_size)
        self._state = self.agent.initial_state(self.batch_size)

    def _stack(self, observations, name):
        rows = [o[name] for o in observations]
        rows += [rows[-1]] * (self.batch_size - len(rows))
        return np.stack(rows)

    def act(self, observations: Sequence[dict], is_first: bool) -> list[dict]:
        if len(observations) != self._active:
            raise ValueError(f"expected {self._active} observations (the reset batch), got {len(observations)}.")
        observation = Observation(self._stack(observations, "canvas"),
                                  self._stack(observations, "action_mask"),
                                  self._stack(observations, "target") if self._conditional else None)
        self._rng, key = jax.random.split(self._rng)
        out, self._state = self._sample(self.params, observation,
                                        np.full((self.batch_size,), is_first), self._state,
                                        self._noise_vectors, key)
        actions = jax.device_get(out.action)
        return [{k: int(actions[k][i]) for k in self._keys} for i in range(self._active)]


class UniformPolicy:
    """Every sub-action drawn uniformly from its range: the random policy of the metrics."""

    def __init__(self, env_config: PaintConfig, seed: int):
        self._sizes = {k: s.num_values for k, s in env_config.action_spec().items()}
        self._rng = np.random.default_rng(seed)

    def reset(self, batch_size: int) -> None:
        del batch_size

    def act(self, observations: Sequence[dict], is_first: bool) -> list[dict]:
        return [{k: int(self._rng.integers(n)) for k, n in self._sizes.items()} for _ in observations]


@dataclasses.dataclass
class Episodes:
    """``num_episodes`` painted episodes.

    frames: uint8 levels [N, T+1, w, w, C]: the observed canvas at reset and after each of the T
      actions (w = the observation width); ``frames[:, -1]`` are the final canvases.
    targets: uint8 [N, w, w, C] (conditional) or None.
    programs: each episode's strokes and jumps (normalised coordinates, with its env seed).
    """
    frames: np.ndarray
    targets: Optional[np.ndarray]
    programs: list

    @property
    def final_canvases(self) -> np.ndarray:
        return self.frames[:, -1]

    def __len__(self) -> int:
        return len(self.frames)


def episode_seed(seed: int, index: int) -> int:
    """The uint32 environment seed of evaluation episode ``index``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_env(env_config: PaintConfig, seed: int, targets: Optional[np.ndarray] = None) -> PaintEnv:
    """A numba ``PaintEnv`` with ``env_config``'s options (``l2_reward`` off: no reward needed)."""
    return PaintEnv(canvas_width=env_config.canvas_width, grid_width=env_config.grid_width,
                    episode_length=env_config.episode_length, brush_sizes=env_config.brush_sizes,
                    use_color=env_config.use_color, use_pressure=env_config.use_pressure,
                    background=env_config.background, renderer="numba", seed=seed, targets=targets,
                    observation_width=env_config.observation_width, jump_start=env_config.jump_start)


def paint_episodes(env_config: PaintConfig, policy: Policy, num_episodes: int, seed: int,
                   targets: Optional[np.ndarray] = None, batch_size: int = 64) -> Episodes:
    """Play ``num_episodes`` episodes, ``batch_size`` at a time; episode i paints ``targets[i]``.

    ``targets``: uint8 levels [N >= num_episodes, w, w, C] for a conditional ``env_config``, else None.
    """
    if num_episodes < 1 or batch_size < 1:
        raise ValueError(f"num_episodes and batch_size must be >= 1, got {num_episodes}, {batch_size}.")
    if env_config.conditional != (targets is not None):
        raise ValueError("pass targets exactly when the environment is conditional "
                         f"(env_config.conditional={env_config.conditional}).")
    if targets is not None and len(targets) < num_episodes:
        raise ValueError(f"{num_episodes} conditional episodes need as many targets, got {len(targets)}.")
    steps = env_config.episode_length - 1
    w, c = env_config.observation_width, env_config.channels
    frames = np.empty((num_episodes, steps + 1, w, w, c), np.uint8)
    programs: list[Program] = []
    for start in range(0, num_episodes, batch_size):
        indices = range(start, min(start + batch_size, num_episodes))
        envs = []
        for i in indices:
            env = make_env(env_config, episode_seed(seed, i),
                           None if targets is None else targets[i:i + 1])
            envs.append(env)
        timesteps = [env.reset() for env in envs]
        for j, env in enumerate(envs):
            frames[start + j, 0] = env.canvas_uint8()
        policy.reset(len(envs))
        for t in range(steps):
            actions = policy.act([ts.observation for ts in timesteps], is_first=t == 0)
            timesteps = [env.step(a) for env, a in zip(envs, actions)]
            for j, env in enumerate(envs):
                frames[start + j, t + 1] = env.canvas_uint8()
        if not all(ts.last() for ts in timesteps):
            raise RuntimeError("an evaluation episode did not end after episode_length - 1 actions.")
        programs.extend(env.program for env in envs)
    used_targets = None if targets is None else np.asarray(targets[:num_episodes])
    return Episodes(frames, used_targets, programs)
