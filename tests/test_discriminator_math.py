"""The critic's math against independent references: an explicit numpy network, finite
differences, an SVD, hand-written losses; the complement masks; bad-input errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.discriminator import inputs as inputs_lib
from spiral.discriminator import learning, losses, networks
from spiral.discriminator.config import DiscriminatorConfig

SMALL = DiscriminatorConfig().small()


def reference_critic(weights, images, slope=0.2):
    """The critic written out in float64 numpy: each 4x4 stride-2 conv as 16 shifted slices."""
    h = np.asarray(images, np.float64) * 2.0 - 1.0
    for i in range(4):
        kernel = np.asarray(weights[f"conv_{i}"]["kernel"], np.float64)
        bias = np.asarray(weights[f"conv_{i}"]["bias"], np.float64)
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        size = h.shape[1] // 2
        out = np.zeros((h.shape[0], size, size, kernel.shape[-1]))
        for dy in range(4):
            for dx in range(4):
                window = padded[:, dy:dy + 2 * size:2, dx:dx + 2 * size:2, :]
                out += np.einsum("nijc,co->nijo", window, kernel[dy, dx])
        out += bias
        h = np.where(out > 0, out, slope * out)
    linear = weights["linear"]
    return h.reshape(h.shape[0], -1) @ np.asarray(linear["kernel"], np.float64)[:, 0] + float(linear["bias"][0])


@pytest.mark.parametrize("config", [SMALL, SMALL.small(conditional=True), SMALL.small(image_size=32),
                                    SMALL.small(image_size=16, conditional=True)],
                         ids=["uncond", "cond", "uncond32", "cond16"])
def test_critic_matches_explicit_numpy_network(config):
    params, _ = networks.init_critic(jax.random.PRNGKey(0), config)
    # Non-zero biases so that the bias path is checked too.
    params = jax.tree_util.tree_map(lambda a: a + 0.05 if a.ndim == 1 else a, params)
    size = config.image_size
    images = np.random.default_rng(0).random((3, size, size, config.input_channels), dtype=np.float32)
    got = np.asarray(jax.jit(networks.critic_forward)(params, images))
    want = reference_critic(params, images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.shape == (3,)


def test_spectral_norm_estimate_converges_to_largest_singular_value():
    kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 8, 16))
    u = networks._normalize(jax.random.normal(jax.random.PRNGKey(2), (16,)))
    iterate = jax.jit(lambda k, u: jax.lax.fori_loop(
        0, 200, lambda _, su: networks.spectral_norm_estimate(k, su[1]), (0.0, u)))
    sigma, u = iterate(kernel, u)
    singular_values = np.linalg.svd(np.asarray(kernel, np.float64).reshape(-1, 16), compute_uv=False)
    np.testing.assert_allclose(float(sigma), singular_values[0], rtol=1e-4)
    # The normalised kernel then has spectral norm 1.
    normalized = np.asarray(kernel / sigma, np.float64).reshape(-1, 16)
    np.testing.assert_allclose(np.linalg.svd(normalized, compute_uv=False)[0], 1.0, rtol=1e-4)
    # One step from a random u only gives a lower bound (the paper relies on u persisting).
    first, _ = networks.spectral_norm_estimate(kernel, networks._normalize(jnp.ones(16)))
    assert float(first) <= singular_values[0] * (1 + 1e-5)


def test_spectral_norm_gradient_is_outer_product_of_singular_vectors():
    """Miyato et al.: ∂σ/∂W = u vᵀ with u, v held constant (here M = Wᵀ, so ∂σ/∂M = v uᵀ)."""
    kernel = jax.random.normal(jax.random.PRNGKey(3), (2, 2, 3, 5))
    u0 = networks._normalize(jax.random.normal(jax.random.PRNGKey(4), (5,)))
    grad = jax.grad(lambda k: networks.spectral_norm_estimate(k, u0)[0])(kernel)
    matrix = np.asarray(kernel, np.float64).reshape(-1, 5)
    v = matrix @ np.asarray(u0, np.float64)
    v /= np.linalg.norm(v)
    u1 = matrix.T @ v
    u1 /= np.linalg.norm(u1)
    np.testing.assert_allclose(np.asarray(grad).reshape(-1, 5), np.outer(v, u1), rtol=1e-4, atol=1e-6)


def test_spectral_normalisation_covers_every_layer_and_keeps_state():
    config = SMALL.small(loss="sngan")
    state = learning.init_state(config, jax.random.PRNGKey(0))
    assert set(state.spectral) == set(networks.layer_names(config))
    weights, new_spectral = networks.normalized_weights(state.params, state.spectral)
    for name in networks.layer_names(config):
        sigma, u = networks.spectral_norm_estimate(state.params[name]["kernel"], state.spectral[name])
        np.testing.assert_allclose(weights[name]["kernel"], state.params[name]["kernel"] / sigma, rtol=1e-6)
        np.testing.assert_allclose(new_spectral[name], u, rtol=1e-6)
    # Without spectral normalisation the weights are the parameters.
    plain = learning.init_state(SMALL, jax.random.PRNGKey(0))
    assert plain.spectral == {}
    assert networks.normalized_weights(plain.params, plain.spectral)[0] is plain.params


def test_gradient_penalty_norm_matches_finite_differences():
    """‖∇ₓD(x̂)‖ from autodiff against finite differences over all 4096 pixels, in float64.

    The critic is piecewise linear (LeakyReLU), so a one-sided difference with a tiny step is
    exact up to rounding unless the step crosses a kink, which a 1e-7 step almost never does.
    """
    with jax.enable_x64(True):
        params, _ = networks.init_critic(jax.random.PRNGKey(5), SMALL)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) + (0.03 if a.ndim == 1 else 0), params)
        forward = jax.jit(networks.critic_forward)

        def critic(x):
            return networks.critic_forward(params, x)

        rng = np.random.default_rng(1)
        real = rng.random((2, 64, 64, 1))
        fake = rng.random((2, 64, 64, 1))
        alpha = np.array([0.3, 0.8])
        penalty, norms = jax.jit(lambda p, r, f, a: losses.gradient_penalty(
            lambda x: networks.critic_forward(p, x), r, f, a, 1.0))(params, real, fake, alpha)

        interpolates = alpha[:, None, None, None] * real + (1 - alpha[:, None, None, None]) * fake
        h, chunk = 1e-7, 1024
        fd_norms = []
        for x in interpolates:
            base = float(forward(params, x[None])[0])
            grad = []
            for start in range(0, 4096, chunk):
                steps = np.zeros((chunk, 4096))
                steps[np.arange(chunk), start + np.arange(chunk)] = h
                grad.append((np.asarray(forward(params, x[None] + steps.reshape(chunk, 64, 64, 1))) - base) / h)
            fd_norms.append(np.linalg.norm(np.concatenate(grad)))
        fd_norms = np.array(fd_norms)
    np.testing.assert_allclose(np.asarray(norms), fd_norms, rtol=1e-5)
    np.testing.assert_allclose(float(penalty), np.mean((fd_norms - 1.0) ** 2), rtol=1e-5)
    assert fd_norms.min() > 0.05  # a real gradient, not a degenerate zero
    assert abs(fd_norms[0] - fd_norms[1]) > 1e-3  # per-sample norms, not one shared value


def test_loss_terms_against_hand_formulas():
    rng = np.random.default_rng(2)
    real = rng.normal(2.0, 3.0, 64).astype(np.float32)
    fake = rng.normal(-1.0, 30.0, 64).astype(np.float32)  # includes large logits
    np.testing.assert_allclose(losses.wasserstein_critic_loss(real, fake), fake.mean() - real.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.mean_output_penalty(real, fake), (0.5 * (real.mean() + fake.mean())) ** 2, rtol=1e-5)
    r64, f64 = real.astype(np.float64), fake.astype(np.float64)
    # −log σ(r) = log(1 + e^{−r}) and −log(1 − σ(f)) = log(1 + e^{f}), exact for large |logit|.
    want = np.mean(np.logaddexp(0, -r64)) + np.mean(np.logaddexp(0, f64))
    np.testing.assert_allclose(losses.non_saturating_discriminator_loss(real, fake), want, rtol=1e-5)


# ---- complement masks ----------------------------------------------------------------------

def test_half_masks_are_the_four_halves():
    masks = np.asarray(inputs_lib.half_masks())[..., 0]
    left = np.zeros((64, 64)); left[:, :32] = 1
    top = np.zeros((64, 64)); top[:32, :] = 1
    np.testing.assert_array_equal(masks, np.stack([left, 1 - left, top, 1 - top]))


def test_random_half_masks_draw_both_orientations_uniformly():
    masks = np.asarray(inputs_lib.random_half_masks(jax.random.PRNGKey(0), 4000))[..., 0]
    assert np.all(masks.sum(axis=(1, 2)) == 64 * 32)
    kinds = np.stack([masks[:, 0, 0] == 1, masks[:, 0, -1] == 1, masks[:, 0, 0] == masks[:, 0, -1]], 1)
    # (left half: [1, 0, False]; right: [0, 1, False]; top: [1, 1, True]; bottom: [0, 0, True])
    codes = kinds[:, 0] * 1 + kinds[:, 1] * 2
    counts = np.bincount(codes, minlength=4)
    assert np.all(np.abs(counts / 4000 - 0.25) < 0.03), counts
    vertical = kinds[:, 2]
    assert 0.45 < vertical.mean() < 0.55  # top/bottom and left/right both occur, about equally


def test_complement_pairs_never_leak_the_hidden_half():
    config = SMALL.small(conditional=True, complement=True)
    rng = np.random.default_rng(3)
    targets = rng.random((64, 64, 64, 1), dtype=np.float32) * 0.5 + 0.5   # in [0.5, 1]
    canvases_a = rng.random((64, 64, 64, 1), dtype=np.float32) * 0.5       # in [0, 0.5)
    canvases_b = 1 - canvases_a
    key = jax.random.PRNGKey(7)
    real_a, fake_a = learning._pairs(config, canvases_a, None, targets, key)
    real_b, fake_b = learning._pairs(config, canvases_b, None, targets, key)
    # The real pair never depends on the canvas.
    np.testing.assert_array_equal(real_a, real_b)
    masks = np.asarray(inputs_lib.random_half_masks(key, 64))
    real_a, fake_a = np.asarray(real_a), np.asarray(fake_a)
    # Fake pair: the target's visible half and the canvas's complementary half, zero elsewhere.
    np.testing.assert_array_equal(fake_a[..., :1], (1 - masks) * targets)
    np.testing.assert_array_equal(fake_a[..., 1:], masks * canvases_a)
    # Real pair: the same target half, and the target itself where the fake shows the canvas.
    np.testing.assert_array_equal(real_a[..., :1], fake_a[..., :1])
    np.testing.assert_array_equal(real_a[..., 1:], masks * targets)
    # The canvas's values (< 0.5) appear nowhere in the real input, target values nowhere under m.
    assert not np.any((real_a > 0) & (real_a < 0.5))
    assert not np.any((fake_a[..., 1:] >= 0.5))
    orientation = masks[:, 0, 0, 0] == masks[:, 0, -1, 0]
    assert orientation.any() and (~orientation).any()


def test_conditional_pairs_are_canvas_target_and_target_target():
    config = SMALL.small(conditional=True)
    rng = np.random.default_rng(4)
    canvases, targets = rng.random((2, 5, 64, 64, 1), dtype=np.float32)
    real, fake = learning._pairs(config, canvases, None, targets, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(fake, np.concatenate([canvases, targets], -1))
    np.testing.assert_array_equal(real, np.concatenate([targets, targets], -1))


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("images, message", [
    (np.zeros((64, 64, 1), np.float32), r"shape \[N, 64, 64, C\]"),
    (np.zeros((2, 28, 28, 1), np.float32), r"resize"),
    (np.zeros((2, 64, 64, 3), np.float32), r"1 channel"),
    (np.full((2, 64, 64, 1), 255.0, np.float32), r"\[0, 1\].*divide"),
    (np.full((2, 64, 64, 1), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((2, 64, 64, 1), np.nan, np.float32), r"NaN"),
    (np.zeros((2, 64, 64, 1), np.float64), r"float64.*astype"),
    (np.zeros((2, 64, 64, 1), np.int32), r"uint8"),
    ([[0.0]], r"must be an array"),
])
def test_bad_images_get_a_clear_error(images, message):
    with pytest.raises((ValueError, TypeError), match=message):
        inputs_lib.check_images(images, "fake", channels=1)


def test_good_images_pass_validation():
    inputs_lib.check_images(np.zeros((2, 64, 64, 1), np.uint8), "fake", 1)
    inputs_lib.check_images(np.ones((2, 64, 64, 3), np.float32), "fake", 3)
    np.testing.assert_allclose(inputs_lib.to_float(jnp.full((1, 64, 64, 1), 51, jnp.uint8)), 0.2, rtol=1e-6)


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="loss"):
        DiscriminatorConfig(loss="hinge")
    with pytest.raises(ValueError, match="complement=True needs conditional"):
        DiscriminatorConfig(complement=True)
    with pytest.raises(ValueError, match="channels"):
        DiscriminatorConfig(channels=(8, 16))
    assert DiscriminatorConfig().replay_capacity == 1280
    assert DiscriminatorConfig(loss="sngan").use_spectral_norm and not DiscriminatorConfig().use_spectral_norm


def test_discriminator_never_imports_ray():
    """learner/ and discriminator/ must run without Ray (SPIRAL's runtime wraps them)."""
    code = "import sys, spiral.discriminator; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
