"""The policy update: loss against a numpy reference, masked keys, learning, checkpoints, refusals.

No environment: batches are random records or come from a tiny synthetic task driven by the
agent's own sampling mode.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.envs import specs
from spiral.learner import (FIRST, LAST, MID, AgentConfig, Observation, PolicyLearner,
                            PolicyLearnerConfig, stack_trajectories, zero_trajectory)
from spiral.learner import learning, losses

# flag, end, control: the smallest action space with both a jump-relevant and a masked key.
TINY = AgentConfig.small(use_pressure=False, brush_sizes=(1,))
# One learner configuration and one batch shape for all tests: XLA compiles the update once
# (PolicyLearner shares the jitted update between instances with equal configs).
CONFIG = PolicyLearnerConfig(learning_rate=3e-3, entropy_cost=1e-3)
B, T = 16, 2


def random_batch(config, batch_size, unroll_length, seed, paint_prob=0.5):
    """Episode-aligned random records: FIRST ... LAST, reward at the end only."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(batch_size):
        rec = zero_trajectory(config, unroll_length)
        rec.observation.canvas[:] = rng.integers(0, 256, rec.observation.canvas.shape)
        if rec.observation.target is not None:
            rec.observation.target[:] = rng.integers(0, 256, rec.observation.target.shape)
        for k, n in config.action_sizes.items():
            rec.action[k][:] = rng.integers(0, n, unroll_length)
            rec.behaviour_logits[k][:] = rng.normal(size=(unroll_length, n))
        rec.action["flag"][:] = rng.random(unroll_length) < paint_prob
        painted = np.concatenate([[False], rec.action["flag"] == specs.PAINT])
        rec.observation.action_mask[:] = [specs.action_mask(config.action_keys, p)
                                          for p in painted]
        rec.step_type[-1] = LAST
        rec.reward[-1] = rng.normal()
        rec.discount[:-1] = 1.0
        rec.noise[:] = rng.normal(size=config.noise_dim)
        records.append(rec)
    return stack_trajectories(records)


# ----------------------------------------------------------------------------- the loss
def numpy_loss(target_logits, behaviour_logits, action, values, reward, discount, valid,
               entropy_cost, baseline_cost, entropy_weights=None, entropy_sizes=None,
               value_mean=0.0, value_std=1.0):
    """The loss written out in float64 numpy: masked joint log-probs, V-trace by recursion.

    ``values`` are the value head's normalised outputs; V = value_std · values + value_mean.
    The entropy bonus is Σ_k w_k H_k (÷ log n_k with ``entropy_sizes``)."""
    f64 = lambda d: {k: np.asarray(v, np.float64) for k, v in d.items()}
    target_logits, behaviour_logits = f64(target_logits), f64(behaviour_logits)
    values, reward, discount, valid = (np.asarray(x, np.float64)
                                       for x in (values, reward, discount, valid))

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    t_len, batch = reward.shape
    paint = np.asarray(action["flag"]) == 1
    target_lp = np.zeros((t_len, batch))
    behaviour_lp = np.zeros((t_len, batch))
    entropy = np.zeros((t_len, batch))
    for k in target_logits:
        relevant = np.ones_like(paint) if k in ("flag", "end") else paint
        a = np.asarray(action[k])[..., None]
        lt, lb = log_softmax(target_logits[k]), log_softmax(behaviour_logits[k])
        target_lp += relevant * np.take_along_axis(lt, a, -1)[..., 0]
        behaviour_lp += relevant * np.take_along_axis(lb, a, -1)[..., 0]
        weight = (entropy_weights or {}).get(k, 1.0)
        if entropy_sizes is not None:
            weight /= np.log(entropy_sizes[k])
        entropy += weight * -(np.exp(lt) * lt).sum(-1)
    normalised_values = values
    values = value_std * values + value_mean
    rho = np.where(valid > 0, np.exp(target_lp - behaviour_lp), 1.0)
    vs = np.zeros((t_len + 1, batch))
    vs[t_len] = values[t_len]
    for t in reversed(range(t_len)):
        delta = min_(rho[t], 1.0) * (reward[t] + discount[t] * values[t + 1] - values[t])
        vs[t] = values[t] + delta + discount[t] * min_(rho[t], 1.0) * (vs[t + 1] - values[t + 1])
    pg_adv = min_(rho, 1.0) * (reward + discount * vs[1:] - values[:-1]) / value_std
    pg = -(valid * pg_adv * target_lp).sum() / batch
    baseline = 0.5 * (valid * ((vs[:-1] - value_mean) / value_std - normalised_values[:-1]) ** 2
                      ).sum() / batch
    ent = (valid * entropy).sum() / batch
    return pg + baseline_cost * baseline - entropy_cost * ent, pg, baseline, ent


def min_(x, c):
    return np.minimum(x, c)


def random_loss_inputs(seed, t_len=6, batch=4):
    rng = np.random.default_rng(seed)
    sizes = {"flag": 2, "end": 64, "control": 64, "size": 6}
    target = {k: rng.normal(size=(t_len, batch, n)).astype(np.float32) for k, n in sizes.items()}
    behaviour = {k: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32)
                 for k, v in target.items()}
    action = {k: rng.integers(0, n, (t_len, batch)).astype(np.int32) for k, n in sizes.items()}
    values = rng.normal(size=(t_len + 1, batch)).astype(np.float32)
    reward = rng.normal(size=(t_len, batch)).astype(np.float32)
    discount = rng.choice(np.array([0.0, 1.0], np.float32), (t_len, batch), p=[0.2, 0.8])
    valid = rng.choice(np.array([0.0, 1.0], np.float32), (t_len, batch), p=[0.1, 0.9])
    return target, behaviour, action, values, reward, discount, valid


def test_loss_matches_numpy_reference():
    target, behaviour, action, values, reward, discount, valid = random_loss_inputs(0)
    assert 0 < np.mean(action["flag"]) < 1 and valid.min() == 0   # jumps, paints, invalid steps
    hyper = losses.LossHyperparams(entropy_cost=0.03, baseline_cost=0.5)
    loss, metrics = losses.impala_loss(target, behaviour, action, jnp.asarray(values),
                                       jnp.asarray(reward), jnp.asarray(discount),
                                       jnp.asarray(valid), hyper)
    want_loss, want_pg, want_baseline, want_entropy = numpy_loss(
        target, behaviour, action, values, reward, discount, valid, 0.03, 0.5)
    # float32 sums of O(50) terms: agreement to ~1e-6 of the terms' scale.
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(metrics["pg_loss"]), want_pg, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(metrics["baseline_loss"]), want_baseline, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(metrics["entropy_loss"]), -want_entropy, rtol=1e-5, atol=1e-4)


def test_per_key_entropy_weights_and_value_scale_enter_the_loss_as_specified():
    target, behaviour, action, values, reward, discount, valid = random_loss_inputs(3)
    reward = reward * 300.0 - 500.0          # a raw-L2-like scale; the value scale undoes it
    weights = {"flag": 100.0, "control": 0.0}
    sizes = {"flag": 2, "end": 64, "control": 64, "size": 6}
    for entropy_sizes in (None, sizes):
        hyper = losses.LossHyperparams(entropy_cost=0.03, baseline_cost=0.5,
                                       entropy_weights=weights, entropy_action_sizes=entropy_sizes)
        loss, metrics = losses.impala_loss(target, behaviour, action, jnp.asarray(values),
                                           jnp.asarray(reward), jnp.asarray(discount),
                                           jnp.asarray(valid), hyper,
                                           losses.ValueScale(-480.0, 250.0))
        want_loss, want_pg, want_baseline, want_entropy = numpy_loss(
            target, behaviour, action, values, reward, discount, valid, 0.03, 0.5, weights,
            entropy_sizes, value_mean=-480.0, value_std=250.0)
        np.testing.assert_allclose(float(metrics["pg_loss"]), want_pg, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(metrics["baseline_loss"]), want_baseline, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(metrics["entropy_loss"]), -want_entropy, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=1e-4)

    # A zero weight removes that key's entropy gradient; the others keep theirs.
    def entropy_only(target_logits, w):
        hyper = losses.LossHyperparams(1.0, entropy_weights=w)
        return losses.impala_loss(target_logits, behaviour, action, jnp.zeros_like(values),
                                  jnp.zeros_like(reward), jnp.asarray(discount),
                                  jnp.asarray(valid), hyper)[1]["entropy_loss"]
    grads = jax.grad(entropy_only)(target, {"control": 0.0})
    assert float(jnp.abs(grads["control"]).max()) == 0.0
    assert float(jnp.abs(grads["end"]).max()) > 0.0
    scaled = jax.grad(entropy_only)(target, {"flag": 7.0})
    np.testing.assert_allclose(scaled["flag"], 7.0 * jax.grad(entropy_only)(target, {})["flag"],
                               rtol=1e-5, atol=1e-7)


def test_popart_rescaling_preserves_the_value_outputs():
    rng = np.random.default_rng(4)
    params = {"kernel": jnp.asarray(rng.normal(size=(32, 1)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(1,)), jnp.float32)}
    z = jnp.asarray(rng.normal(size=(50, 32)), jnp.float32)
    old, new = losses.ValueScale(-3.0, 0.2), losses.ValueScale(120.0, 45.0)
    rescaled = learning.preserve_value_outputs(params, old, new)
    before = old.std * (z @ params["kernel"] + params["bias"]) + old.mean
    after = new.std * (z @ rescaled["kernel"] + rescaled["bias"]) + new.mean
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)


def test_value_statistics_average_exactly_then_exponentially():
    stats = learning.initial_value_stats()
    batch_means = [4.0, -2.0, 10.0, 1.0, 3.0, 7.0]
    mean, step = None, 0.25                    # exact average for 4 batches, then β = 0.25
    for n, m in enumerate(batch_means):
        stats = learning.update_value_stats(stats, jnp.float32(m), jnp.float32(m * m + 1.0), step)
        mean = m if n == 0 else mean + max(step, 1.0 / (n + 1)) * (m - mean)
        assert float(stats.mean) == pytest.approx(mean, rel=1e-6)
    assert float(np.mean(batch_means[:4])) == pytest.approx(
        float(learning.update_value_stats(learning.update_value_stats(learning.update_value_stats(
            learning.update_value_stats(learning.initial_value_stats(), 4.0, 0.0, step),
            -2.0, 0.0, step), 10.0, 0.0, step), 1.0, 0.0, step).mean), rel=1e-6)


def flag_task_batches(num, seed=7):
    """``num`` batches of the flag task acted by a fresh agent (the same data for every run)."""
    learner = PolicyLearner(TINY, CONFIG, seed=0)
    step = jax.jit(learner.agent.sample_step)
    rng, batches = jax.random.PRNGKey(seed), []
    for _ in range(num):
        batch, rng = flag_task_batch(learner.agent, learner.params, step, rng, B)
        batches.append(batch)
    return batches


def train_on(config, batches, reward_fn):
    learner = PolicyLearner(TINY, config, seed=0)
    metrics = []
    for batch in batches:
        batch = batch._replace(reward=reward_fn(batch).astype(np.float32),
                               policy_version=np.full(B, learner.step, np.int32))
        metrics.append(learner.update(batch))
        assert metrics[-1]["update_applied"] == 1.0
    return learner.params, metrics


@pytest.mark.parametrize("mode", ["popart", "running"])
def test_value_normalisation_tracks_returns_of_scale_1_and_1000_alike(mode):
    """The same batches with rewards ×1 and ×1000 (returns 2 or 3 times the scale): with the value
    normalised the learner takes the same steps (parameters agree to float32 rounding), its
    values in reward units scale by 1000 and track the returns. The next test is the control."""
    config = dataclasses.replace(CONFIG, value_normalisation=mode, value_stats_step=0.05)
    batches = flag_task_batches(40)
    reward_fn = lambda scale: lambda b: scale * (b.reward + 2.0 * (b.step_type[:, 1:] == LAST))
    # Same steps: float32 rounding (μ ≈ 2,500 at ×1000) grows chaotically over many Adam steps,
    # so the runs are compared over the first 15 updates.
    (params_1, metrics_1), (params_k, metrics_k) = (
        train_on(config, batches[:15], reward_fn(scale)) for scale in (1.0, 1000.0))
    for m1, mk in zip(metrics_1, metrics_k):
        for name in ("value_mean", "value_std", "mean_value", "mean_vs"):
            np.testing.assert_allclose(mk[name] / 1000.0, m1[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mk["total_loss"], m1["total_loss"], rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_k)):
        if a.size > 1:   # not the value bias: its gradient is ~0, and Adam turns rounding into ±lr
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # Tracking, at both scales: returns are 2 or 3 (× scale); μ sits between, σ ≈ their spread,
    # and the values follow the V-trace targets.
    for scale in (1.0, 1000.0):
        _, metrics = train_on(config, batches, reward_fn(scale))
        assert 2.0 < metrics[-1]["value_mean"] / scale < 3.0
        assert 0.1 < metrics[-1]["value_std"] / scale < 0.6
        late_error = np.mean([abs(m["mean_value"] - m["mean_vs"]) for m in metrics[-10:]]) / scale
        assert late_error < 0.1, late_error


def test_without_value_normalisation_the_reward_scale_changes_the_updates():
    """The control for the test above: plain IMPALA takes different steps at ×1000."""
    batches = flag_task_batches(5)
    params_1, _ = train_on(CONFIG, batches, lambda b: b.reward)
    params_k, _ = train_on(CONFIG, batches, lambda b: 1000.0 * b.reward)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params_1),
                                                           jax.tree.leaves(params_k))]
    assert max(diffs) > 1e-2


def test_masked_keys_stay_out_of_the_policy_gradient_but_keep_their_entropy():
    target, behaviour, action, values, reward, discount, valid = random_loss_inputs(1)
    valid = np.ones_like(valid)
    jump = np.asarray(action["flag"]) == 0

    def loss_of(target_logits, behaviour_logits, entropy_cost):
        return losses.impala_loss(target_logits, behaviour_logits, action, jnp.asarray(values),
                                  jnp.asarray(reward), jnp.asarray(discount), jnp.asarray(valid),
                                  losses.LossHyperparams(entropy_cost))[0]

    grads = jax.grad(loss_of)(target, behaviour, 0.0)
    # No entropy term: at jump steps, control and size get no gradient; flag and end do.
    for k in ("control", "size"):
        assert float(jnp.abs(grads[k][jump]).max()) == 0.0, k
        assert float(jnp.abs(grads[k][~jump]).max()) > 0.0, k
    for k in ("flag", "end"):
        assert float(jnp.abs(grads[k][jump]).max()) > 0.0, k
    # With the entropy bonus the masked keys' entropies still pull on them.
    grads = jax.grad(loss_of)(target, behaviour, 0.1)
    assert float(jnp.abs(grads["control"][jump]).max()) > 0.0
    # The behaviour logits of masked keys do not enter the importance ratios.
    changed = dict(behaviour)
    changed["control"] = np.where(jump[..., None], behaviour["control"] + 3 * np.arange(64),
                                  behaviour["control"]).astype(np.float32)
    np.testing.assert_allclose(float(loss_of(target, changed, 0.0)),
                               float(loss_of(target, behaviour, 0.0)), rtol=1e-6)


def test_relevant_keys_follow_the_taken_flag():
    action = {"flag": jnp.array([0, 1]), "end": jnp.array([3, 4]), "control": jnp.array([5, 6]),
              "red": jnp.array([1, 2])}
    rel = losses.relevant_keys(action, list(action))
    np.testing.assert_array_equal(rel["flag"], [1, 1])
    np.testing.assert_array_equal(rel["end"], [1, 1])
    np.testing.assert_array_equal(rel["control"], [0, 1])
    np.testing.assert_array_equal(rel["red"], [0, 1])


# ----------------------------------------------------------------------------- the learner
def params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoint_restore_continues_bit_identically(tmp_path):
    batches = [random_batch(TINY, B, T, seed=s) for s in range(4)]
    straight = PolicyLearner(TINY, CONFIG, seed=3)
    for batch in batches:
        straight.update(batch)

    first = PolicyLearner(TINY, CONFIG, seed=3)
    for batch in batches[:2]:
        first.update(batch)
    first.set_hyperparameters(learning_rate=3e-3)
    # The one on-disk format (the runtimes' checkpoints), from and back into the learner's state.
    from spiral.actors import checkpointing
    path = checkpointing.save_checkpoint(str(tmp_path / "ckpt"), 2, {}, {},
                                         {"policy": first.get_state()})
    resumed = PolicyLearner(TINY, CONFIG, seed=99)   # different init, overwritten
    assert not params_equal(resumed.params, first.params)
    resumed.set_state(jax.tree.map(jnp.asarray, checkpointing.restore_tree(
        f"{path}/policy", resumed.get_state())))
    assert resumed.step == 2
    assert params_equal(resumed.params, first.params)
    for batch in batches[2:]:
        resumed.update(batch)
    assert resumed.step == straight.step == 4
    assert params_equal(resumed.params, straight.params)
    assert params_equal(resumed.state.opt_state, straight.state.opt_state)
    np.testing.assert_array_equal(resumed.state.rng, straight.state.rng)
    assert float(resumed.state.hyperparams.learning_rate) == pytest.approx(3e-3)


def test_non_finite_batch_is_refused_and_counted():
    learner = PolicyLearner(TINY, CONFIG, seed=0)
    good = random_batch(TINY, B, T, seed=0)
    learner.update(good)
    before = jax.device_get(learner.state)   # a host copy: on GPU the update donates the state
    bad = good._replace(reward=np.where(np.arange(T) == T - 1, np.nan, good.reward).astype(np.float32))
    metrics = learner.update(bad)
    assert metrics["update_applied"] == 0.0 and metrics["skipped_updates"] == 1.0
    assert not np.isfinite(metrics["total_loss"])
    assert learner.step == 1 and learner.skipped_updates == 1
    assert params_equal(learner.params, before.params)
    assert params_equal(learner.state.opt_state, before.opt_state)
    metrics = learner.update(good)      # and it carries on
    assert metrics["update_applied"] == 1.0 and learner.step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(learner.params))


def test_bad_batches_get_clear_errors():
    learner = PolicyLearner(TINY, CONFIG, seed=0)
    good = random_batch(TINY, B, T, seed=0)
    float_canvas = good._replace(observation=good.observation._replace(
        canvas=good.observation.canvas.astype(np.float32) / 255))
    with pytest.raises(ValueError, match=r"observation\.canvas.*uint8"):
        learner.update(float_canvas)
    short_action = good._replace(action={**good.action, "end": good.action["end"][:, :1]})
    with pytest.raises(ValueError, match=r"action\['end'\].*shape"):
        learner.update(short_action)
    with pytest.raises(ValueError, match="action keys"):
        learner.update(good._replace(action={k: v for k, v in good.action.items()
                                             if k != "control"}))
    with pytest.raises(ValueError, match="target"):
        learner.update(good._replace(observation=good.observation._replace(
            target=good.observation.canvas)))
    with pytest.raises(ValueError, match="reward"):
        learner.update(good._replace(reward=good.reward[0]))
    wrong_dtype = good._replace(discount=good.discount.astype(np.float64))
    with pytest.raises(ValueError, match="discount.*float32"):
        learner.update(wrong_dtype)
    assert learner.step == 0 and learner.num_calls == 0


def test_bfloat16_compute_keeps_float32_parameters():
    batch = random_batch(TINY, B, T, seed=5)
    f32 = PolicyLearner(TINY, CONFIG, seed=1)
    bf16 = PolicyLearner(TINY, dataclasses.replace(CONFIG, compute_dtype="bfloat16"), seed=1)
    assert params_equal(f32.params, bf16.params)
    m32, m16 = f32.update(batch), bf16.update(batch)
    assert m16["update_applied"] == 1.0
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
    assert not params_equal(bf16.params, f32.params)      # bf16 arithmetic really was used
    # ... and computes nearly the same loss (bf16 has ~3 significant digits).
    for name in ("total_loss", "entropy", "baseline_loss"):
        assert abs(m16[name] - m32[name]) <= 0.05 * abs(m32[name]) + 0.05, name


# ----------------------------------------------------------------------------- learning
def flag_task_batch(agent, params, step, rng, batch_size):
    """Synthetic task: 2 actions per episode, reward 1 (with the LAST step) iff the first
    action's flag is 1. Canvases stay blank; masks follow the taken flag."""
    keys = agent.action_keys
    records = [zero_trajectory(agent.config, 2) for _ in range(batch_size)]
    state = agent.initial_state(batch_size)
    rng, noise_key = jax.random.split(rng)
    noise = agent.sample_noise(noise_key, batch_size)
    canvas = jnp.full((batch_size,) + records[0].observation.canvas.shape[1:], 255, jnp.uint8)
    mask = np.tile(specs.action_mask(keys, False), (batch_size, 1))
    flags = []
    for t in range(2):
        rng, key = jax.random.split(rng)
        out, state = step(params, Observation(canvas, jnp.asarray(mask)),
                          jnp.full(batch_size, t == 0), state, noise, key)
        out = jax.tree.map(np.asarray, out)
        for b, rec in enumerate(records):
            rec.observation.action_mask[t] = mask[b]
            for k in keys:
                rec.action[k][t] = out.action[k][b]
                rec.behaviour_logits[k][t] = out.logits[k][b]
        mask = np.stack([specs.action_mask(keys, f == specs.PAINT) for f in out.action["flag"]])
        flags.append(out.action["flag"])
    for b, rec in enumerate(records):
        rec.observation.canvas[:] = 255
        rec.observation.action_mask[2] = mask[b]
        rec.step_type[:] = (FIRST, MID, LAST)
        rec.reward[:] = (0.0, float(flags[0][b] == 1))
        rec.discount[:] = (1.0, 0.0)
        rec.noise[:] = np.asarray(noise[b])
    return stack_trajectories(records), rng


def expected_reward(agent, params, step, batch_size, rng):
    """E[reward] = E_noise π(flag = 1 | first observation), computed exactly from the logits."""
    canvas = jnp.full((batch_size, TINY.canvas_width, TINY.canvas_width, 1), 255, jnp.uint8)
    mask = jnp.asarray(np.tile(specs.action_mask(agent.action_keys, False), (batch_size, 1)))
    noise = agent.sample_noise(rng, batch_size)
    out, _ = step(params, Observation(canvas, mask), jnp.ones(batch_size, bool),
                  agent.initial_state(batch_size), noise, rng)
    return float(jnp.mean(jax.nn.softmax(out.logits["flag"])[:, 1]))


def test_learning_raises_the_expected_reward_and_not_without_learning():
    learner = PolicyLearner(TINY, CONFIG, seed=0)
    agent = learner.agent
    step = jax.jit(agent.sample_step)
    eval_key = jax.random.PRNGKey(123)
    start = expected_reward(agent, learner.params, step, B, eval_key)

    def train(num_updates, seed):
        rng = jax.random.PRNGKey(seed)
        rewards = []
        for _ in range(num_updates):
            batch, rng = flag_task_batch(agent, learner.params, step, rng, B)
            batch = batch._replace(policy_version=np.full(B, learner.step, np.int32))
            metrics = learner.update(batch)
            assert metrics["update_applied"] == 1.0
            rewards.append(metrics["mean_reward_per_unroll"])
        return rewards

    # Control: the same loop with learning rate 0 leaves the policy where it was.
    learner.set_hyperparameters(learning_rate=0.0)
    train(20, seed=1)
    compiled = learner._jitted_update._cache_size()
    assert expected_reward(agent, learner.params, step, B, eval_key) == pytest.approx(start,
                                                                                      abs=1e-6)
    learner.set_hyperparameters(learning_rate=3e-3)
    rewards = train(100, seed=2)
    end = expected_reward(agent, learner.params, step, B, eval_key)
    assert 0.2 < start < 0.8
    assert end > 0.9 and end - start > 0.15, (start, end)   # typically 0.5 -> 0.99
    assert np.mean(rewards[-20:]) > np.mean(rewards[:5]) + 0.2
    # Changing the learning rate did not recompile the update.
    assert learner._jitted_update._cache_size() == compiled
