"""One actor's work, without Ray: K paint environments, a batched policy step, and the rewards.

``EpisodeRunner.unroll`` plays one whole episode in each of its K environments (reset + T actions,
T = episode_length − 1), sampling all K actions with one batched call of the agent's sampling mode,
and returns the learner's trajectory record for the K episodes (``spiral.learner.Trajectory``,
batch first, uint8 canvases), plus the final canvases for the discriminator's replay. Rewards are
computed here, by the actor, from the canvases it recorded: the discriminator's score of the final
canvas (SPIRAL), per-step score differences (SPIRAL++'s temporal credit assignment), or the L2
baseline, plus the optional stroke and blank-canvas penalties.

The same class runs inside a Ray actor (``spiral.actors.workers``), in the single-process runtime,
and in benchmarks, so every runtime acts the same way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import jax
import numpy as np

from spiral.discriminator import final_rewards, l2_distance, make_episode_reward_fn
from spiral.envs import PaintEnv
from spiral.learner import (FIRST, LAST, MID, Agent, Observation, Trajectory,
                            stack_trajectories, zero_trajectory)


def reward_mode(config) -> str:
    """The discriminator reward module's mode for an ExperimentConfig."""
    if config.reward == "l2":
        return "l2"
    return "tca" if config.temporal_credit_assignment else "final"


def stroke_penalties(flags: np.ndarray, new_stroke_penalty: float, blank_penalty: float) -> np.ndarray:
    """Extra rewards [T, B] from the `flag` actions [T, B] (1 = paint, 0 = jump).

    ``new_stroke_penalty`` is added at each paint step that starts a new continuous stroke (the
    first step, or one after a jump); ``blank_penalty`` at the last step of an episode with no
    paint step at all. SPIRAL used both on MNIST with small negative values.
    """
    flags = np.asarray(flags)
    painting = flags == 1
    previous = np.concatenate([np.zeros_like(painting[:1]), painting[:-1]], axis=0)
    out = np.where(painting & ~previous, np.float32(new_stroke_penalty), np.float32(0.0))
    out[-1] += np.where(painting.any(axis=0), np.float32(0.0), np.float32(blank_penalty))
    return out.astype(np.float32)


class CanvasRewards:
    """Scores episodes from their recorded canvases: the reward part that needs the critic.

    ``rewards(weights, trajectory)`` -> float32 [B, T] for a batch-first trajectory record: the
    discriminator's final-step score (SPIRAL), per-step differences (TCA) or the L2 baseline,
    computed on ``device`` (the actor's CPU, or the learner's accelerator with rewards_on=learner).
    The stroke penalties are not included (``stroke_penalties``).
    """

    def __init__(self, config, device=None):
        self.mode = reward_mode(config)
        self._scores = (None if self.mode == "l2"
                        else make_episode_reward_fn(config.discriminator, self.mode, device))

    def __call__(self, weights, trajectory: Trajectory) -> np.ndarray:
        canvas = trajectory.observation.canvas            # [B, T+1, W, W, C] uint8
        targets = trajectory.observation.target
        targets = None if targets is None else targets[:, 0]
        num_steps = canvas.shape[1] - 1
        if self.mode == "l2":  # any observation width (the critic's scorer wants 64)
            rewards = final_rewards(-l2_distance(canvas[:, -1], targets), num_steps)
        else:
            rewards = self._scores(weights, np.swapaxes(canvas, 0, 1), targets)
        return np.asarray(rewards, np.float32).T


@dataclasses.dataclass
class UnrollResult:
    trajectory: Trajectory            # [K, ...] record for the learner
    final_canvases: np.ndarray        # uint8 [K, W, W, C]
    targets: Optional[np.ndarray]     # uint8 [K, W, W, C] when conditional
    metadata: dict


class EpisodeRunner:
    """K environments and a batched policy: one whole episode per ``unroll`` call.

    Args:
      config: the ``ExperimentConfig``.
      actor_index: this actor's index (seeds its environments and samples).
      targets: conditional runs: the dataset's images as uint8 levels [N, W, W, C].
      seed_offset: added to the seeds, e.g. after a restart, so a restarted actor does not replay
        the episodes it already played.
    """

    def __init__(self, config, actor_index: int, targets: Optional[np.ndarray] = None,
                 seed_offset: int = 0):
        self.config = config
        self.actor_index = actor_index
        k = config.runtime.envs_per_actor
        env = config.env
        if env.conditional and targets is None:
            raise ValueError("A conditional run needs targets for its environments.")
        # Independent uint32 seeds for every environment and the sampler, from (run seed, actor,
        # restart offset): no two actors (or incarnations of one) paint the same episodes.
        seeds = np.random.SeedSequence([config.runtime.seed, actor_index, seed_offset]).generate_state(k + 1)
        self.envs = [
            PaintEnv(canvas_width=env.canvas_width, grid_width=env.grid_width,
                     episode_length=env.episode_length, brush_sizes=env.brush_sizes,
                     use_color=env.use_color, use_pressure=env.use_pressure,
                     background=env.background, renderer="numba", seed=int(seeds[i]),
                     targets=targets if env.conditional else None,
                     observation_width=env.observation_width)
            for i in range(k)]
        self.num_steps = env.episode_length - 1
        # Sampling uses the direct transposed convolutions whatever the learner uses: the same
        # function and parameters, and the faster form at actor batch sizes (learner_throughput).
        self.agent = Agent(config.agent, config.policy.compute_dtype, "direct")
        self._sample = jax.jit(self.agent.sample_step)
        self._noise = jax.jit(self.agent.sample_noise, static_argnums=1)
        self._rng = jax.random.PRNGKey(int(seeds[k]))
        # With rewards_on="learner" the actor records only the stroke penalties; the learner adds
        # the critic's (or L2) rewards from the canvases before its update.
        self._rewards = CanvasRewards(config) if config.runtime.rewards_on == "actors" else None
        self._keys = config.agent.action_keys

    def unroll(self, policy_params: Any, policy_version: int,
               disc_weights: Any = None, disc_version: int = -1) -> UnrollResult:
        """Play one episode in each environment with ``policy_params``; return the record."""
        start = time.perf_counter()
        k, t_len = len(self.envs), self.num_steps
        traj = stack_trajectories([zero_trajectory(self.config.agent, t_len)] * k)
        canvas, mask = traj.observation.canvas, traj.observation.action_mask
        targets = traj.observation.target
        for i, env in enumerate(self.envs):
            ts = env.reset()
            canvas[i, 0] = env.canvas_uint8()
            mask[i, 0] = ts.observation["action_mask"]
            if targets is not None:
                targets[i, :] = np.rint(ts.observation["target"] * 255.0).astype(np.uint8)
        self._rng, noise_key = jax.random.split(self._rng)
        noise = self._noise(noise_key, k)
        state = self.agent.initial_state(k)
        is_first = np.ones((k,), bool)
        for t in range(t_len):
            observation = Observation(canvas[:, t], mask[:, t],
                                      None if targets is None else targets[:, t])
            self._rng, key = jax.random.split(self._rng)
            out, state = self._sample(policy_params, observation, is_first, state, noise, key)
            action, logits = jax.device_get((out.action, out.logits))
            for i, env in enumerate(self.envs):
                ts = env.step({name: action[name][i] for name in self._keys})
                canvas[i, t + 1] = env.canvas_uint8()
                mask[i, t + 1] = ts.observation["action_mask"]
                traj.discount[i, t] = ts.discount
                if (t == t_len - 1) != ts.last():
                    raise RuntimeError(f"episode length mismatch: environment step {t + 1} of "
                                       f"{t_len} returned step type {ts.step_type}.")
            for name in self._keys:
                traj.action[name][:, t] = action[name]
                traj.behaviour_logits[name][:, t] = logits[name]
            is_first = np.zeros((k,), bool)
        act_seconds = time.perf_counter() - start

        traj.step_type[:, 0] = FIRST
        traj.step_type[:, 1:t_len] = MID
        traj.step_type[:, t_len] = LAST
        traj.noise[:] = np.asarray(noise)[:, None, :]
        traj.policy_version[:] = policy_version
        episode_targets = None if targets is None else targets[:, 0]
        traj.reward[:] = stroke_penalties(traj.action["flag"].T, self.config.new_stroke_penalty,
                                          self.config.blank_penalty).T
        if self._rewards is not None:
            traj.reward[:] += self._rewards(disc_weights, traj)
        reward_seconds = time.perf_counter() - start - act_seconds
        # Without the critic's part (rewards on the learner) the actor does not know the return.
        returns = traj.reward.sum(axis=1) if self._rewards is not None else np.full(k, np.nan)
        metadata = {
            "policy_version": int(policy_version),
            "disc_version": int(disc_version),
            "actor": self.actor_index,
            "episodes": k,
            "agent_steps": k * t_len,
            "mean_return": float(returns.mean()),
            "act_seconds": act_seconds,
            "reward_seconds": reward_seconds,
        }
        return UnrollResult(traj, canvas[:, t_len].copy(),
                            None if episode_targets is None else episode_targets.copy(), metadata)
