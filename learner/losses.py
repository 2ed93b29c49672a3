"""The IMPALA/V-trace actor-critic loss over SPIRAL's autoregressive action, as small pure functions.

The joint action is a tuple of sub-actions; its log-probability is the sum of the sub-actions'
log-probabilities along the sampled path. **Masked keys** [choice, SPIRAL.md §2]: when the taken
action is a jump (``flag = 0``), only ``flag`` and ``end`` change the world; the other sub-actions
(control, size, pressure, colour) were sampled but are irrelevant. Their log-probabilities are
left out of both the importance ratio π/μ and the policy-gradient term, which removes pure noise
from both. Their **entropy is kept** in the entropy bonus, at every step: it keeps those heads
from collapsing while they are (temporarily) unused, and it is the sum of every sub-action's
entropy that SPIRAL's loss names.

Reductions [choice]: sums over time (one episode's return is the objective), means over the batch
(so the learning rate and the gradient clip do not depend on the batch size).

**Entropy per key.** The bonus is Σ_k w_k · H_k (optionally H_k / log n_k): one weight per
sub-action. The 2-way ``flag`` head needs far more than the 1024-way location heads: with a
reward that charges for every stroke (normalised L2), ``flag`` collapses to "never paint" within
a few thousand frames, long before the location heads have learned where to paint
(benchmarks/RESULTS.md, learning_curve).

**Value normalisation** (PopArt, van Hasselt et al. 2016; Hessel et al. 2019 for IMPALA). The
value head outputs a normalised value ṽ; the value in reward units is V = σ·ṽ + μ, with (μ, σ)
running statistics of the V-trace targets kept by the learner (``spiral.learner.learning``).
V-trace runs in reward units; the baseline regresses ṽ on (v_s − μ)/σ and the policy gradient uses
the advantage divided by σ, so neither the value's step size nor the policy gradient's scale
depends on the reward's scale (raw L2 sums in the hundreds, a WGAN critic that drifts). With
μ = 0, σ = 1 everything reduces to the plain IMPALA loss.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from spiral.envs import specs
from spiral.learner import vtrace as vtrace_lib

Array = jax.Array


def relevant_keys(action: Mapping[str, Array], keys: Sequence[str]) -> dict[str, Array]:
    """float32 mask per key: 1 where that sub-action of the taken action mattered.

    ``flag`` and ``end`` always matter; the others only when the action painted (``flag = 1``).
    """
    paints = (action["flag"] == specs.PAINT).astype(jnp.float32)
    return {k: jnp.ones_like(paints) if k in specs.JUMP_KEYS else paints for k in keys}


def log_prob(logits: Array, action: Array) -> Array:
    """log softmax(logits)[action] over the last axis."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits: Array) -> Array:
    """Entropy (nats) of softmax(logits) over the last axis."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def joint_log_prob(logits: Mapping[str, Array], action: Mapping[str, Array],
                   relevance: Mapping[str, Array]) -> Array:
    """Σ_k relevance_k · log π_k(a_k): the log-probability of the action's relevant part."""
    return sum(relevance[k] * log_prob(logits[k], action[k]) for k in logits)


def weighted_entropy(key_entropy: Mapping[str, Array], weights: Mapping[str, float],
                     action_sizes: Optional[Mapping[str, int]] = None) -> Array:
    """Σ_k w_k · H_k, each H_k divided by log n_k when ``action_sizes`` is given (so every key's
    term lies in [0, w_k]); keys missing from ``weights`` weigh 1."""
    total = 0.0
    for k, h in key_entropy.items():
        scale = weights.get(k, 1.0)
        if action_sizes is not None:
            scale = scale / math.log(action_sizes[k])
        total = total + scale * h
    return total


class ValueScale(NamedTuple):
    """The value head's normalisation: V = std · ṽ + mean (identity: mean 0, std 1)."""
    mean: Array | float = 0.0
    std: Array | float = 1.0


class LossHyperparams(NamedTuple):
    entropy_cost: Array | float
    baseline_cost: float = 0.5
    clip_rho_threshold: float = 1.0
    clip_pg_rho_threshold: float = 1.0
    clip_c_threshold: float = 1.0
    entropy_weights: Mapping[str, float] = {}        # key -> w_k (missing keys: 1)
    entropy_action_sizes: Optional[Mapping[str, int]] = None   # given: H_k / log n_k


def impala_loss(target_logits: Mapping[str, Array], behaviour_logits: Mapping[str, Array],
                action: Mapping[str, Array], values: Array, reward: Array, discount: Array,
                valid: Array, hyper: LossHyperparams,
                value_scale: ValueScale = ValueScale()) -> tuple[Array, dict]:
    """Policy gradient + baseline_cost · baseline − entropy_cost · entropy, with V-trace targets.

    Args:
      target_logits, behaviour_logits: key -> [T, B, n] logits of π (learner) and μ (actor)
        along the taken path.
      action: key -> int32 [T, B] taken actions.
      values: [T+1, B] the value head's normalised outputs ṽ(x_t) under π; values[T] bootstraps.
        The values in reward units are ``value_scale.std · values + value_scale.mean``.
      reward, discount: [T, B], received after action[t] (discount already includes γ).
      valid: [T, B] float, 0 where observation t is LAST (the action there does nothing).
      hyper: ``LossHyperparams``.
      value_scale: the value normalisation (PopArt's μ, σ); constants for the gradient.
    Returns:
      (scalar loss, metrics dict of scalars; ``mean_vs`` and ``mean_vs_squared`` are the first
      two moments of the V-trace targets over the valid steps, for the normalisation's update).
    """
    keys = list(target_logits)
    relevance = relevant_keys(action, keys)
    target_log_p = joint_log_prob(target_logits, action, relevance)
    behaviour_log_p = joint_log_prob(behaviour_logits, action, relevance)
    log_rhos = jnp.where(valid > 0, jax.lax.stop_gradient(target_log_p) - behaviour_log_p, 0.0)
    mean, std = (jax.lax.stop_gradient(jnp.asarray(x, jnp.float32)) for x in value_scale)
    reward_unit_values = std * values + mean
    returns = vtrace_lib.vtrace(log_rhos, discount, reward, reward_unit_values[:-1],
                                reward_unit_values[-1], hyper.clip_rho_threshold,
                                hyper.clip_pg_rho_threshold, hyper.clip_c_threshold)
    batch = reward.shape[1]

    pg_loss = -jnp.sum(valid * (returns.pg_advantages / std) * target_log_p) / batch
    value_error = (returns.vs - mean) / std - values[:-1]     # in normalised units
    baseline_loss = 0.5 * jnp.sum(valid * value_error ** 2) / batch
    key_entropy = {k: entropy(target_logits[k]) for k in keys}
    bonus = weighted_entropy(key_entropy, hyper.entropy_weights, hyper.entropy_action_sizes)
    entropy_sum = jnp.sum(valid * bonus) / batch
    loss = pg_loss + hyper.baseline_cost * baseline_loss - hyper.entropy_cost * entropy_sum

    num_valid = jnp.maximum(jnp.sum(valid), 1.0)
    mean = lambda x: jnp.sum(valid * x) / num_valid
    rhos = jnp.exp(log_rhos)
    metrics = {
        "total_loss": loss,
        "pg_loss": pg_loss,
        "baseline_loss": baseline_loss,
        "entropy_loss": -entropy_sum,
        "entropy": mean(sum(key_entropy.values())),
        **{f"entropy/{k}": mean(v) for k, v in key_entropy.items()},
        "mean_rho": mean(rhos),
        "clipped_rho_fraction": mean((rhos > hyper.clip_rho_threshold).astype(jnp.float32)),
        "value_mse": mean(value_error ** 2),
        "mean_value": mean(reward_unit_values[:-1]),
        "mean_vs": mean(returns.vs),
        "mean_vs_squared": mean(returns.vs ** 2),
        "mean_abs_advantage": mean(jnp.abs(returns.pg_advantages)),
        "mean_reward_per_unroll": jnp.sum(valid * reward) / batch,
        "paint_fraction": mean((action["flag"] == specs.PAINT).astype(jnp.float32)),
    }
    return loss, metrics
