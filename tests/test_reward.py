"""Rewards: final-step, TCA (telescoping), L2 (by hand), complement averaging, CPU wrappers, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.discriminator import (DiscriminatorConfig, episode_rewards, init_critic, make_episode_reward_fn,
                                  make_reward_fn, networks)
from spiral.discriminator import reward as reward_lib

SMALL = DiscriminatorConfig().small()
COMPLEMENT = SMALL.small(conditional=True, complement=True)


def weights_for(config, seed=0):
    params, _ = init_critic(jax.random.PRNGKey(seed), config)
    return jax.tree_util.tree_map(lambda a: a + 0.02 if a.ndim == 1 else a, params)


def episode(rng, steps=5, batch=3, channels=1):
    return rng.integers(0, 256, (steps + 1, batch, 64, 64, channels), dtype=np.uint8)


forward = jax.jit(networks.critic_forward)


def test_tca_rewards_are_score_differences_and_telescope():
    rng = np.random.default_rng(0)
    weights, canvases = weights_for(SMALL), episode(rng)
    rewards = np.asarray(jax.jit(lambda w, c: episode_rewards(w, c, config=SMALL, mode="tca"))(weights, canvases))
    assert rewards.shape == (5, 3)
    scores = np.stack([np.asarray(forward(weights, c.astype(np.float32) / 255)) for c in canvases])  # [T+1, B]
    for t in range(1, 6):
        np.testing.assert_allclose(rewards[t - 1], scores[t] - scores[t - 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards.sum(0), scores[-1] - scores[0], rtol=1e-4, atol=1e-5)
    # The return differs from the final-only return by the initial canvas's score, a constant.
    final = np.asarray(episode_rewards(weights, canvases, config=SMALL, mode="final"))
    np.testing.assert_allclose(rewards.sum(0), final.sum(0) - scores[0], rtol=1e-4, atol=1e-5)


def test_final_rewards_are_zero_until_the_last_step():
    rng = np.random.default_rng(1)
    weights, canvases = weights_for(SMALL), episode(rng, steps=19, batch=4)
    rewards = np.asarray(episode_rewards(weights, canvases, config=SMALL, mode="final"))
    assert rewards.shape == (19, 4)
    np.testing.assert_array_equal(rewards[:-1], 0.0)
    np.testing.assert_allclose(rewards[-1], forward(weights, canvases[-1].astype(np.float32) / 255), rtol=1e-5)
    assert np.all(rewards[-1] != 0)


def test_l2_reward_by_hand():
    config = SMALL.small(image_channels=3, conditional=True)
    canvases = np.ones((3, 2, 64, 64, 3), np.float32)  # white, T = 2, B = 2
    targets = np.ones((2, 64, 64, 3), np.float32)
    targets[0, 10:15, 20:27, 1] = 0.0     # a 5x7 black patch in the green channel: distance 35
    targets[1, :, :, :] = 0.5             # every value off by 0.5: 64*64*3*0.25 = 3072
    canvases[1] = 0.0                      # only the last canvas counts
    rewards = np.asarray(episode_rewards(None, canvases, targets, config=config, mode="l2",
                                         normalise_l2=False))
    np.testing.assert_allclose(rewards, [[0.0, 0.0], [-35.0, -3072.0]], rtol=1e-6)
    # uint8 inputs give the same (255 ↔ 1.0) through the CPU wrapper.
    rewards_u8 = make_episode_reward_fn(config, "l2", normalise_l2=False)(
        None, (canvases * 255).astype(np.uint8), np.rint(targets * 255).astype(np.uint8))
    np.testing.assert_allclose(rewards_u8[-1], [-35.0, -64 * 64 * 3 * (128 / 255 - 1) ** 2], rtol=1e-5)
    # Normalised by the reset canvas's distance (here the same white canvas): the blank canvas
    # scores -1 whatever the target.
    rewards = np.asarray(episode_rewards(None, canvases, targets, config=config, mode="l2"))
    np.testing.assert_allclose(rewards, [[0.0, 0.0], [-1.0, -1.0]], rtol=1e-6)


def test_normalised_and_per_step_l2_rewards_against_an_explicit_loop():
    """Any width (here 16); per-step rewards d_{t-1} - d_t telescope to the final reward + 1."""
    rng = np.random.default_rng(5)
    t_plus_1, batch, width = 4, 3, 16
    canvases = rng.random((t_plus_1, batch, width, width, 1), dtype=np.float32)
    targets = rng.random((batch, width, width, 1), dtype=np.float32)
    targets[2] = canvases[0, 2]            # a target equal to the blank canvas: raw scale (÷ 1)
    dist = np.zeros((t_plus_1, batch))
    for t in range(t_plus_1):
        for b in range(batch):
            for y in range(width):
                for x in range(width):
                    dist[t, b] += (float(canvases[t, b, y, x, 0]) - float(targets[b, y, x, 0])) ** 2
    scale = np.maximum(dist[0], 1.0)
    final = np.asarray(reward_lib.l2_rewards(canvases, targets))
    want = np.zeros((t_plus_1 - 1, batch))
    want[-1] = -dist[-1] / scale
    np.testing.assert_allclose(final, want, rtol=1e-5, atol=1e-6)
    per_step = np.asarray(reward_lib.l2_rewards(canvases, targets, per_step=True))
    for t in range(1, t_plus_1):
        np.testing.assert_allclose(per_step[t - 1], (dist[t - 1] - dist[t]) / scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(per_step.sum(axis=0), final.sum(axis=0) + dist[0] / scale, rtol=1e-4)
    raw = np.asarray(reward_lib.l2_rewards(canvases, targets, per_step=True, normalise=False))
    np.testing.assert_allclose(raw, dist[:-1] - dist[1:], rtol=1e-4, atol=1e-4)
    # The CPU wrapper takes uint8 canvases of any width for the L2 modes.
    fn = make_episode_reward_fn(SMALL.small(conditional=True), "l2_tca")
    got = fn(None, np.rint(canvases * 255).astype(np.uint8), np.rint(targets * 255).astype(np.uint8))
    assert got.shape == (t_plus_1 - 1, batch)
    with pytest.raises(ValueError, match="same image shape"):
        fn(None, canvases, targets[:, :8, :8])


def test_l2_reward_against_an_explicit_loop():
    rng = np.random.default_rng(2)
    canvas, target = rng.random((2, 1, 64, 64, 1), dtype=np.float32)
    want = 0.0
    for y in range(64):
        for x in range(64):
            want -= float(canvas[0, y, x, 0] - target[0, y, x, 0]) ** 2
    got = float(-reward_lib.l2_distance(jnp.asarray(canvas), jnp.asarray(target))[0])
    assert got == pytest.approx(want, rel=1e-5)


def test_complement_score_is_the_mean_over_the_four_half_masks():
    rng = np.random.default_rng(3)
    weights = weights_for(COMPLEMENT)
    canvases, targets = rng.random((2, 4, 64, 64, 1), dtype=np.float32)
    got = np.asarray(jax.jit(lambda w, c, t: reward_lib.canvas_scores(w, c, t, config=COMPLEMENT))(
        weights, canvases, targets))
    halves = [(slice(None), slice(0, 32)), (slice(None), slice(32, 64)),
              (slice(0, 32), slice(None)), (slice(32, 64), slice(None))]
    want = 0.0
    for rows, cols in halves:
        shown_target, shown_canvas = targets.copy(), np.zeros_like(canvases)
        shown_target[:, rows, cols] = 0.0                       # the target is hidden under m
        shown_canvas[:, rows, cols] = canvases[:, rows, cols]   # the canvas is shown only under m
        want = want + np.asarray(forward(weights, np.concatenate([shown_target, shown_canvas], -1))) / 4
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tca_with_complement_telescopes_per_target():
    rng = np.random.default_rng(4)
    weights, canvases = weights_for(COMPLEMENT), episode(rng, steps=4, batch=2)
    targets = rng.integers(0, 256, (2, 64, 64, 1), dtype=np.uint8)
    rewards = make_episode_reward_fn(COMPLEMENT, "tca")(weights, canvases, targets)
    score = make_reward_fn(COMPLEMENT)
    np.testing.assert_allclose(rewards.sum(0), score(weights, canvases[-1], targets) - score(weights, canvases[0], targets),
                               rtol=1e-4, atol=1e-5)


def test_sngan_reward_is_log_sigmoid_of_the_logit_or_the_logit():
    rng = np.random.default_rng(5)
    canvases = rng.random((6, 64, 64, 1), dtype=np.float32)
    config = SMALL.small(loss="sngan")
    weights = weights_for(config)
    logits = np.asarray(forward(weights, canvases), np.float64)
    np.testing.assert_allclose(make_reward_fn(config)(weights, canvases), -np.logaddexp(0, -logits), rtol=1e-5)
    logit_config = SMALL.small(loss="sngan", sngan_reward="logit")
    np.testing.assert_allclose(make_reward_fn(logit_config)(weights, canvases), logits, rtol=1e-5)


def test_cpu_wrapper_matches_the_pure_function_for_uint8_and_float():
    rng = np.random.default_rng(6)
    weights = weights_for(SMALL)
    canvases = rng.integers(0, 256, (8, 64, 64, 1), dtype=np.uint8)
    reward = make_reward_fn(SMALL)
    from_uint8 = reward(jax.device_get(weights), canvases)
    from_float = reward(reward_lib.put_weights(weights), canvases.astype(np.float32) / 255)
    assert isinstance(from_uint8, np.ndarray) and from_uint8.shape == (8,)
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_uint8, forward(weights, canvases.astype(np.float32) / 255), rtol=1e-5, atol=1e-6)


def test_reward_bad_input_gets_a_clear_error():
    weights = weights_for(SMALL)
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="mode must be one of"):
        make_episode_reward_fn(SMALL, "dense")
    tca = make_episode_reward_fn(SMALL, "tca")
    with pytest.raises(ValueError, match=r"\[T\+1, B, 64, 64, C\]"):
        tca(weights, episode(rng)[0])
    with pytest.raises(ValueError, match="published weights"):
        tca(None, episode(rng))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tca(weights, episode(rng).astype(np.float32))
    with pytest.raises(ValueError, match="pass targets"):
        make_reward_fn(COMPLEMENT)(weights_for(COMPLEMENT), episode(rng)[0])
    with pytest.raises(ValueError, match="one per episode"):
        make_episode_reward_fn(COMPLEMENT, "tca")(weights_for(COMPLEMENT), episode(rng, batch=3),
                                                 episode(rng, batch=2)[0])
    with pytest.raises(ValueError, match="pass targets"):
        make_episode_reward_fn(SMALL, "l2")(None, episode(rng))
    with pytest.raises(ValueError, match="3 channel"):
        make_reward_fn(SMALL.small(image_channels=3))(weights, episode(rng)[0])
