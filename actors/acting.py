"""One actor's work, without Ray: K paint environments, a batched policy step, and the rewards.

``EpisodeRunner.unroll`` plays one whole episode in each of its K environments (reset + T actions,
T = episode_length − 1): per step, one batched call of the agent's sampling mode for all K and one
call of ``BatchedPaintEnv`` (one numba kernel for all K), and returns the learner's trajectory record for the K episodes (``spiral.learner.Trajectory``,
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

from spiral.discriminator import make_episode_reward_fn
from spiral.envs import BatchedPaintEnv, specs
from spiral.learner import (FIRST, LAST, MID, Agent, Observation, Trajectory,
                            zero_agent_state)


def reward_mode(config) -> str:
    """The reward module's mode (``spiral.discriminator.episode_rewards``) for an ExperimentConfig."""
    if config.reward == "l2":
        return "l2_tca" if config.temporal_credit_assignment else "l2"
    return "tca" if config.temporal_credit_assignment else "final"


def stroke_penalties(flags, new_stroke_penalty: float, blank_penalty: float, xp=np):
    """Extra rewards float32 [T, B] from the `flag` actions [T, B] (1 = paint, 0 = jump).

    ``new_stroke_penalty`` is added at each paint step that starts a new continuous stroke (the
    first step, or one after a jump); ``blank_penalty`` at the last step of an episode with no
    paint step at all. SPIRAL used both on MNIST with small negative values. ``xp``: the array
    module, numpy (the CPU actors) or jax.numpy (the fused runtime, inside its jitted step).
    """
    painting = xp.asarray(flags) == specs.PAINT
    previous = xp.concatenate([xp.zeros_like(painting[:1]), painting[:-1]], axis=0)
    out = xp.where(painting & ~previous, xp.float32(new_stroke_penalty), xp.float32(0.0))
    blank = xp.where(painting.any(axis=0), xp.float32(0.0), xp.float32(blank_penalty))
    return xp.concatenate([out[:-1], out[-1:] + blank], axis=0).astype(xp.float32)


class CanvasRewards:
    """Scores episodes from their recorded canvases: the reward part that needs the critic.

    ``rewards(weights, trajectory)`` -> float32 [B, T] for a batch-first trajectory record: the
    discriminator's final-step score (SPIRAL), per-step differences (TCA) or the L2 baseline (final
    or per-step, normalised by the blank canvas's distance unless ``normalise_l2`` is off),
    computed on ``device`` (the actor's CPU, or the learner's accelerator with rewards_on=learner).
    The stroke penalties are not included (``stroke_penalties``).
    """

    def __init__(self, config, device=None):
        self.mode = reward_mode(config)
        self._scores = make_episode_reward_fn(config.discriminator, self.mode, device,
                                              normalise_l2=config.normalise_l2)

    def __call__(self, weights, trajectory: Trajectory) -> np.ndarray:
        canvas = trajectory.observation.canvas            # [B, T+1, W, W, C] uint8
        targets = trajectory.observation.target
        targets = None if targets is None else targets[:, 0]
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

    Each step is one call of the jitted policy for all K environments (sampling, key split and
    action stacking in one compiled function) and one call of ``BatchedPaintEnv`` (the numba
    kernel steps all K); no Python runs per environment.

    Randomness is a function of (run seed, actor index, seed offset, unroll index): the
    environments' seeds come from the first three, and unroll u plays episode u of every
    environment (its dab noise and targets) with sampling keys and noise from
    ``fold_in(key, u)``. ``unroll_index`` advances by one per ``unroll``; a runner built with the
    ``unroll_index`` another had reached continues its streams (a resumed run plays new episodes,
    not the ones it played before).

    Args:
      config: the ``ExperimentConfig``.
      actor_index: this actor's index (seeds its environments and samples).
      targets: conditional runs: the dataset's images as uint8 levels [N, W, W, C].
      unroll_index: the index of the next unroll (0 for a new run; the saved value on resume).
      seed_offset: a different offset gives different streams: a Ray actor restarted after a
        crash (and not restored from a checkpoint) uses a fresh one, so it does not replay the
        episodes it played before.
    """

    def __init__(self, config, actor_index: int, targets: Optional[np.ndarray] = None,
                 unroll_index: int = 0, seed_offset: int = 0):
        if not isinstance(unroll_index, (int, np.integer)) or unroll_index < 0:
            raise ValueError(f"unroll_index must be an int >= 0, got {unroll_index!r}.")
        self.config = config
        self.actor_index = actor_index
        self.unroll_index = int(unroll_index)
        k = config.runtime.envs_per_actor
        env = config.env
        if env.conditional and targets is None:
            raise ValueError("A conditional run needs targets for its environments.")
        # Independent uint32 seeds for every environment and the sampler: no two actors (or
        # incarnations of one, through seed_offset) paint the same episodes.
        seeds = np.random.SeedSequence([config.runtime.seed, actor_index,
                                        seed_offset]).generate_state(k + 1)
        self.env = BatchedPaintEnv(env, seeds[:k], targets if env.conditional else None)
        self.num_envs = k
        self.num_steps = env.episode_length - 1
        # Sampling uses the direct transposed convolutions whatever the learner uses, and the
        # few-channel convolutions in the runtime's actor form: the same function and parameters,
        # in the forms that are faster at actor batch sizes (benchmarks/actor_throughput.py).
        self.agent = Agent(config.agent, config.policy.compute_dtype, "direct",
                           config.runtime.actor_narrow_convs)
        self._keys = config.agent.action_keys
        self._base_key = jax.random.PRNGKey(int(seeds[k]))
        self._policy_step = jax.jit(self._make_policy_step())
        self._begin = jax.jit(self._make_begin(k))
        self._first = np.ones(k, bool), np.zeros(k, bool)
        # With rewards_on="learner" the actor records only the stroke penalties; the learner adds
        # the critic's (or L2) rewards from the canvases before its update.
        self._rewards = CanvasRewards(config) if config.runtime.rewards_on == "actors" else None

    def _make_policy_step(self):
        agent, keys = self.agent, self._keys

        def policy_step(params, canvas, mask, target, is_first, state, noise, rng):
            rng, key = jax.random.split(rng)
            out, state = agent.sample_step(params, Observation(canvas, mask, target), is_first,
                                           state, noise, key)
            actions = jax.numpy.stack([out.action[name] for name in keys])   # [num_keys, K]
            return actions, out.logits, state, rng

        return policy_step

    def _make_begin(self, k: int):
        agent = self.agent

        def begin(base_key, unroll_index):
            noise_key, rng = jax.random.split(jax.random.fold_in(base_key, unroll_index))
            return agent.sample_noise(noise_key, k), agent.initial_state(k), rng

        return begin

    def unroll(self, policy_params: Any, policy_version: int,
               disc_weights: Any = None, disc_version: int = -1) -> UnrollResult:
        """Play one episode in each environment with ``policy_params``; return the record."""
        start = time.perf_counter()
        k, t_len, keys = self.num_envs, self.num_steps, self._keys
        unroll_index = self.unroll_index
        ts = self.env.reset(episode=unroll_index)
        # Time-major buffers (each step writes one contiguous slice), batch-first at the end.
        canvas = np.empty((t_len + 1,) + ts.observation["canvas"].shape, np.uint8)
        mask = np.empty((t_len + 1,) + ts.observation["action_mask"].shape, np.float32)
        discount = np.empty((t_len, k), np.float32)
        actions = np.empty((t_len, len(keys), k), np.int32)
        canvas[0], mask[0] = ts.observation["canvas"], ts.observation["action_mask"]
        target = ts.observation.get("target")
        noise, state, rng = self._begin(self._base_key, unroll_index)
        logits = []
        for t in range(t_len):
            action, step_logits, state, rng = self._policy_step(
                policy_params, canvas[t], mask[t], target, self._first[t > 0], state, noise, rng)
            actions[t] = action
            logits.append(step_logits)
            ts = self.env.step(actions[t])
            if (t == t_len - 1) != ts.last():
                raise RuntimeError(f"episode length mismatch: environment step {t + 1} of "
                                   f"{t_len} returned step type {ts.step_type[0]}.")
            canvas[t + 1], mask[t + 1] = ts.observation["canvas"], ts.observation["action_mask"]
            discount[t] = ts.discount
        logits = jax.device_get(logits)
        act_seconds = time.perf_counter() - start

        step_type = np.full((k, t_len + 1), MID, np.uint8)
        step_type[:, 0], step_type[:, t_len] = FIRST, LAST
        targets = None if target is None else np.broadcast_to(
            target[:, None], (k, t_len + 1) + target.shape[1:]).copy()
        action = {name: np.ascontiguousarray(actions[:, i].T) for i, name in enumerate(keys)}
        flags = actions[:, keys.index("flag")]
        traj = Trajectory(
            observation=Observation(np.ascontiguousarray(canvas.swapaxes(0, 1)),
                                    np.ascontiguousarray(mask.swapaxes(0, 1)), targets),
            step_type=step_type,
            action=action,
            behaviour_logits={name: np.stack([step[name] for step in logits], axis=1)
                              for name in keys},
            reward=np.ascontiguousarray(stroke_penalties(flags, self.config.new_stroke_penalty,
                                                         self.config.blank_penalty).T),
            discount=np.ascontiguousarray(discount.T),
            noise=np.broadcast_to(np.asarray(noise)[:, None], (k, t_len + 1, noise.shape[-1])).copy(),
            initial_state=zero_agent_state(self.config.agent, (k,)),
            policy_version=np.full((k,), policy_version, np.int32))
        if self._rewards is not None:
            traj.reward[:] += self._rewards(disc_weights, traj)
        reward_seconds = time.perf_counter() - start - act_seconds
        self.unroll_index += 1
        # Without the critic's part (rewards on the learner) the actor does not know the return.
        returns = traj.reward.sum(axis=1) if self._rewards is not None else np.full(k, np.nan)
        metadata = {
            "policy_version": int(policy_version),
            "disc_version": int(disc_version),
            "actor": self.actor_index,
            "unroll_index": unroll_index,
            "episodes": k,
            "agent_steps": k * t_len,
            "mean_return": float(returns.mean()),
            "act_seconds": act_seconds,
            "reward_seconds": reward_seconds,
        }
        return UnrollResult(traj, traj.observation.canvas[:, t_len].copy(),
                            None if target is None else target.copy(), metadata)
