"""V-trace against independent references: IMPALA eq. 1 as a plain double loop, rlax, n-step returns."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

with warnings.catch_warnings():  # rlax imports tensorflow_probability, which warns on import
    warnings.simplefilter("ignore", DeprecationWarning)
    import rlax

from spiral.learner import vtrace


def vtrace_double_loop(log_rhos, discounts, rewards, values, bootstrap_value,
                       clip_rho_threshold, clip_pg_rho_threshold, clip_c_threshold=1.0):
    """IMPALA eq. 1 written out: v_s = V(x_s) + Σ_{t≥s} (Π_{i=s}^{t-1} γ_i c_i) δ_t, in float64."""
    log_rhos, discounts, rewards, values = (np.asarray(x, np.float64)
                                            for x in (log_rhos, discounts, rewards, values))
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    t_len, batch = rewards.shape
    rhos = np.exp(log_rhos)
    values_ext = np.concatenate([values, bootstrap_value[None]], axis=0)
    vs = np.zeros((t_len, batch))
    pg = np.zeros((t_len, batch))
    for b in range(batch):
        for s in range(t_len):
            v_s = values[s, b]
            weight = 1.0  # Π_{i=s}^{t-1} γ_i c_i
            for t in range(s, t_len):
                rho_t = min(rhos[t, b], clip_rho_threshold)
                delta = rho_t * (rewards[t, b] + discounts[t, b] * values_ext[t + 1, b]
                                 - values[t, b])
                v_s += weight * delta
                weight *= discounts[t, b] * min(rhos[t, b], clip_c_threshold)
            vs[s, b] = v_s
    vs_ext = np.concatenate([vs, bootstrap_value[None]], axis=0)
    for b in range(batch):
        for s in range(t_len):
            pg[s, b] = min(rhos[s, b], clip_pg_rho_threshold) * (
                rewards[s, b] + discounts[s, b] * vs_ext[s + 1, b] - values[s, b])
    return vs, pg


def make_inputs(t_len, batch, seed):
    rng = np.random.default_rng(seed)
    log_rhos = rng.uniform(-2.5, 2.5, (t_len, batch)).astype(np.float32)
    # Per-step discounts including zeros (episode ends inside the unroll).
    discounts = rng.choice(np.array([0.0, 0.9, 0.99, 1.0], np.float32), (t_len, batch))
    rewards = rng.normal(size=(t_len, batch)).astype(np.float32)
    values = rng.normal(size=(t_len, batch)).astype(np.float32)
    bootstrap = rng.normal(size=(batch,)).astype(np.float32)
    return log_rhos, discounts, rewards, values, bootstrap


CASES = [(t, b, th) for t in (1, 5, 20) for b in (1, 5) for th in ((1.0, 1.0), (3.7, 2.2))]


@pytest.mark.parametrize("t_len,batch,thresholds", CASES)
def test_vtrace_matches_double_loop(t_len, batch, thresholds):
    inputs = make_inputs(t_len, batch, seed=t_len * 10 + batch)
    log_rhos = inputs[0]
    # The inputs must actually exercise the clipping.
    assert (np.exp(log_rhos) > thresholds[1]).any() or t_len * batch < 5
    want_vs, want_pg = vtrace_double_loop(*inputs, *thresholds)
    got = vtrace(*map(jnp.asarray, inputs), *thresholds)
    np.testing.assert_allclose(got.vs, want_vs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.pg_advantages, want_pg, atol=1e-5, rtol=0)


def test_vtrace_under_jit_matches_eager_and_loop():
    inputs = tuple(map(jnp.asarray, make_inputs(20, 5, seed=7)))
    jitted = jax.jit(vtrace, static_argnums=(5, 6))
    got_jit = jitted(*inputs, 3.7, 2.2)
    want_vs, want_pg = vtrace_double_loop(*inputs, 3.7, 2.2)
    np.testing.assert_allclose(got_jit.vs, want_vs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_jit.pg_advantages, want_pg, atol=1e-5, rtol=0)


def test_vtrace_non_default_c_threshold_matches_loop():
    inputs = make_inputs(5, 5, seed=3)
    want_vs, want_pg = vtrace_double_loop(*inputs, 3.7, 2.2, clip_c_threshold=1.7)
    got = vtrace(*map(jnp.asarray, inputs), 3.7, 2.2, clip_c_threshold=1.7)
    np.testing.assert_allclose(got.vs, want_vs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.pg_advantages, want_pg, atol=1e-5, rtol=0)


@pytest.mark.parametrize("thresholds", [(1.0, 1.0), (3.7, 2.2)])
def test_vtrace_matches_rlax(thresholds):
    log_rhos, discounts, rewards, values, bootstrap = map(jnp.asarray, make_inputs(20, 5, seed=11))
    got = vtrace(log_rhos, discounts, rewards, values, bootstrap, *thresholds)
    values_tp1 = jnp.concatenate([values[1:], bootstrap[None]], axis=0)

    def one_column(v_tm1, v_t, r_t, discount_t, rho_tm1):
        return rlax.vtrace_td_error_and_advantage(
            v_tm1, v_t, r_t, discount_t, rho_tm1, clip_rho_threshold=thresholds[0],
            clip_pg_rho_threshold=thresholds[1])

    # rlax takes rank-1 [T] inputs and importance ratios (not log-ratios): vmap over the batch.
    ref = jax.vmap(one_column, in_axes=1, out_axes=1)(values, values_tp1, rewards, discounts,
                                                       jnp.exp(log_rhos))
    np.testing.assert_allclose(got.vs, ref.errors + values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.pg_advantages, ref.pg_advantage, atol=1e-5, rtol=0)


def test_on_policy_vtrace_is_the_n_step_return():
    _, discounts, rewards, values, bootstrap = make_inputs(20, 5, seed=5)
    got = vtrace(jnp.zeros_like(rewards), discounts, rewards, values, bootstrap)
    # n-step return: Σ_{t=s}^{T-1} (Π_{i=s}^{t-1} γ_i) r_t + (Π_{i=s}^{T-1} γ_i) V(x_T).
    t_len = rewards.shape[0]
    want = np.zeros(rewards.shape, np.float64)
    for s in range(t_len):
        ret, weight = 0.0, 1.0
        for t in range(s, t_len):
            ret = ret + weight * rewards[t].astype(np.float64)
            weight = weight * discounts[t]
        want[s] = ret + weight * bootstrap
    np.testing.assert_allclose(got.vs, want, atol=1e-5, rtol=0)
    # On-policy the advantage is the one-step-bootstrapped return minus the value.
    vs_tp1 = np.concatenate([want[1:], bootstrap[None]], axis=0)
    np.testing.assert_allclose(got.pg_advantages, rewards + discounts * vs_tp1 - values,
                               atol=1e-5, rtol=0)


def test_vtrace_blocks_gradients():
    inputs = list(map(jnp.asarray, make_inputs(5, 2, seed=1)))

    def total(values, bootstrap):
        out = vtrace(inputs[0], inputs[1], inputs[2], values, bootstrap)
        return jnp.sum(out.vs) + jnp.sum(out.pg_advantages)

    grads = jax.grad(total, argnums=(0, 1))(inputs[3], inputs[4])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_vtrace_rejects_bad_shapes_and_dtypes():
    log_rhos, discounts, rewards, values, bootstrap = map(jnp.asarray, make_inputs(5, 2, seed=2))
    with pytest.raises(AssertionError, match="rank"):
        vtrace(log_rhos[:, 0], discounts, rewards, values, bootstrap)
    with pytest.raises(AssertionError):
        vtrace(log_rhos, discounts[:4], rewards, values, bootstrap)
    with pytest.raises(AssertionError):
        vtrace(log_rhos, discounts, rewards.astype(jnp.int32), values, bootstrap)
    with pytest.raises(AssertionError):
        vtrace(log_rhos, discounts, rewards, values, bootstrap[:1])
