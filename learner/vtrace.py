"""V-trace off-policy targets (Espeholt et al. 2018, "IMPALA", arXiv 1802.01561, §4.1, eq. 1).

One function, one equation, time-major ``[T, B]`` like scalable_agent's ``vtrace.py`` (from which
the argument names come). ``rlax.vtrace_td_error_and_advantage`` computes the same quantities
from rank-1 inputs; the tests use it and an explicit double loop as independent references.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


class VTraceReturns(NamedTuple):
    vs: Array             # [T, B] V-trace value targets v_s
    pg_advantages: Array  # [T, B] policy-gradient advantages


def vtrace(log_rhos: Array, discounts: Array, rewards: Array, values: Array,
           bootstrap_value: Array, clip_rho_threshold: Optional[float] = 1.0,
           clip_pg_rho_threshold: Optional[float] = 1.0,
           clip_c_threshold: Optional[float] = 1.0) -> VTraceReturns:
    """V-trace targets and policy-gradient advantages.

    With ρ_t = min(ρ̄, π/μ), c_t = min(c̄, π/μ) and δ_t = ρ_t (r_t + γ_t V(x_{t+1}) − V(x_t)):

        v_s = V(x_s) + δ_s + γ_s c_s (v_{s+1} − V(x_{s+1})),     v_T = V(x_T) = bootstrap_value
        pg_advantage_s = min(ρ̄_pg, π/μ) (r_s + γ_s v_{s+1} − V(x_s))

    computed backwards in time with ``lax.scan``. Both outputs are targets: no gradient flows
    through them.

    Args:
      log_rhos: [T, B] log(π(a_t|x_t) / μ(a_t|x_t)) of the taken actions.
      discounts: [T, B] γ_t, received with r_t after a_t (0 where the episode ends).
      rewards: [T, B] r_t, received after a_t.
      values: [T, B] V(x_t) under the learner's parameters.
      bootstrap_value: [B] V(x_T).
      clip_rho_threshold: ρ̄ (None: no clipping).
      clip_pg_rho_threshold: ρ̄ of the policy-gradient ratio (None: no clipping).
      clip_c_threshold: c̄ (None: no clipping); 1.0 as in scalable_agent and rlax.
    Returns:
      ``VTraceReturns(vs, pg_advantages)``, both [T, B] and stop-gradient.
    """
    chex.assert_rank([log_rhos, discounts, rewards, values, bootstrap_value], [2, 2, 2, 2, 1])
    chex.assert_type([log_rhos, discounts, rewards, values, bootstrap_value], float)
    chex.assert_equal_shape([log_rhos, discounts, rewards, values])
    chex.assert_equal_shape_suffix([values, bootstrap_value], 1)

    def clip(x, threshold):
        return x if threshold is None else jnp.minimum(threshold, x)

    rhos = jnp.exp(log_rhos)
    clipped_rhos = clip(rhos, clip_rho_threshold)
    cs = clip(rhos, clip_c_threshold)
    values_tp1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)

    def backward(acc, inputs):
        # acc is v_{s+1} − V(x_{s+1}); returns v_s − V(x_s).
        delta, discount, c = inputs
        acc = delta + discount * c * acc
        return acc, acc

    _, vs_minus_values = jax.lax.scan(backward, jnp.zeros_like(bootstrap_value),
                                      (deltas, discounts, cs), reverse=True)
    vs = vs_minus_values + values
    vs_tp1 = jnp.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg_advantages = clip(rhos, clip_pg_rho_threshold) * (rewards + discounts * vs_tp1 - values)
    return VTraceReturns(jax.lax.stop_gradient(vs), jax.lax.stop_gradient(pg_advantages))
