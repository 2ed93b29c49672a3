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
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

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


class LossHyperparams(NamedTuple):
    entropy_cost: Array | float
    baseline_cost: float = 0.5
    clip_rho_threshold: float = 1.0
    clip_pg_rho_threshold: float = 1.0
    clip_c_threshold: float = 1.0


def impala_loss(target_logits: Mapping[str, Array], behaviour_logits: Mapping[str, Array],
                action: Mapping[str, Array], values: Array, reward: Array, discount: Array,
                valid: Array, hyper: LossHyperparams) -> tuple[Array, dict]:
    """Policy gradient + baseline_cost · baseline − entropy_cost · entropy, with V-trace targets.

    Args:
      target_logits, behaviour_logits: key -> [T, B, n] logits of π (learner) and μ (actor)
        along the taken path.
      action: key -> int32 [T, B] taken actions.
      values: [T+1, B] V(x_t) under π; values[T] bootstraps.
      reward, discount: [T, B], received after action[t] (discount already includes γ).
      valid: [T, B] float, 0 where observation t is LAST (the action there does nothing).
      hyper: ``LossHyperparams``.
    Returns:
      (scalar loss, metrics dict of scalars).
    """
    keys = list(target_logits)
    relevance = relevant_keys(action, keys)
    target_log_p = joint_log_prob(target_logits, action, relevance)
    behaviour_log_p = joint_log_prob(behaviour_logits, action, relevance)
    log_rhos = jnp.where(valid > 0, jax.lax.stop_gradient(target_log_p) - behaviour_log_p, 0.0)
    returns = vtrace_lib.vtrace(log_rhos, discount, reward, values[:-1], values[-1],
                                hyper.clip_rho_threshold, hyper.clip_pg_rho_threshold,
                                hyper.clip_c_threshold)
    batch = reward.shape[1]

    pg_loss = -jnp.sum(valid * returns.pg_advantages * target_log_p) / batch
    value_error = returns.vs - values[:-1]
    baseline_loss = 0.5 * jnp.sum(valid * value_error ** 2) / batch
    key_entropy = {k: entropy(target_logits[k]) for k in keys}
    entropy_sum = jnp.sum(valid * sum(key_entropy.values())) / batch
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
        "mean_value": mean(values[:-1]),
        "mean_vs": mean(returns.vs),
        "mean_reward_per_unroll": jnp.sum(valid * reward) / batch,
        "paint_fraction": mean((action["flag"] == specs.PAINT).astype(jnp.float32)),
    }
    return loss, metrics
