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
from spiral.learner import losses

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
               entropy_cost, baseline_cost):
    """The loss written out in float64 numpy: masked joint log-probs, V-trace by recursion."""
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
        entropy += -(np.exp(lt) * lt).sum(-1)
    rho = np.where(valid > 0, np.exp(target_lp - behaviour_lp), 1.0)
    vs = np.zeros((t_len + 1, batch))
    vs[t_len] = values[t_len]
    for t in reversed(range(t_len)):
        delta = min_(rho[t], 1.0) * (reward[t] + discount[t] * values[t + 1] - values[t])
        vs[t] = values[t] + delta + discount[t] * min_(rho[t], 1.0) * (vs[t + 1] - values[t + 1])
    pg_adv = min_(rho, 1.0) * (reward + discount * vs[1:] - values[:-1])
    pg = -(valid * pg_adv * target_lp).sum() / batch
    baseline = 0.5 * (valid * (vs[:-1] - values[:-1]) ** 2).sum() / batch
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
    path = first.save(tmp_path / "ckpt")
    resumed = PolicyLearner(TINY, CONFIG, seed=99)   # different init, overwritten
    assert not params_equal(resumed.params, first.params)
    resumed.restore(path)
    assert resumed.step == 2
    assert params_equal(resumed.params, first.params)
    for batch in batches[2:]:
        resumed.update(batch)
    assert resumed.step == straight.step == 4
    assert params_equal(resumed.params, straight.params)
    assert params_equal(resumed.state.opt_state, straight.state.opt_state)
    np.testing.assert_array_equal(resumed.state.rng, straight.state.rng)
    with pytest.raises(ValueError, match="exists"):
        first.save(path)


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
