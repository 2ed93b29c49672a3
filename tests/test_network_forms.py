"""The "taps" form of the agent's few-channel convolutions computes the same function, with the
same parameters, as the direct convolutions (checked against an explicit numpy loop and XLA)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.actors.config import RuntimeConfig
from spiral.learner import Agent, AgentConfig, Observation
from spiral.learner.networks import InputConv, NarrowConv, conv_taps


def numpy_conv_same(image, kernel):
    """SAME, stride-1 convolution written out (the independent reference), float64."""
    n, h, w, c = image.shape
    size, _, _, f = kernel.shape
    pad = size // 2
    padded = np.pad(image.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((n, h, w, f))
    for dy in range(size):
        for dx in range(size):
            out += np.einsum("nyxc,cf->nyxf", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out


@pytest.mark.parametrize("size,channels,features", [(5, 1, 8), (5, 6, 4), (3, 8, 1)])
def test_conv_taps_is_the_convolution(size, channels, features):
    rng = np.random.default_rng(0)
    image = rng.random((2, 9, 7, channels), np.float32)
    kernel = rng.normal(size=(size, size, channels, features)).astype(np.float32)
    expected = numpy_conv_same(image, kernel)
    np.testing.assert_allclose(jax.jit(conv_taps)(image, kernel), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_input_conv_forms_equal_nn_conv_over_image_and_coordinates(channels):
    rng = np.random.default_rng(channels)
    image = jnp.asarray(rng.random((3, 16, 16, channels), np.float32))
    params = InputConv(8).init(jax.random.PRNGKey(0), image)
    params = jax.tree.map(lambda p: p + 0.1, params)   # a non-zero bias too

    def stacked(image):
        ys = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, 16)[None, :, None, None], (3, 16, 16, 1))
        xs = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, 16)[None, None, :, None], (3, 16, 16, 1))
        return jnp.concatenate([image, ys, xs], axis=-1)

    # The torso's former layer, one nn.Conv of the stacked input: the "direct" form is it exactly.
    reference = jax.jit(lambda p, x: nn.Conv(8, (5, 5)).apply(p, stacked(x)))(params, image)
    np.testing.assert_array_equal(jax.jit(InputConv(8, "direct").apply)(params, image), reference)
    np.testing.assert_allclose(jax.jit(InputConv(8, "taps").apply)(params, image), reference,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference, numpy_conv_same(np.asarray(stacked(image)),
                                                          np.asarray(params["params"]["kernel"]))
                               + 0.1, rtol=1e-4, atol=1e-4)


def test_narrow_conv_forms_share_parameters_with_nn_conv():
    x = jnp.asarray(np.random.default_rng(1).random((2, 8, 8, 8), np.float32))
    params = nn.Conv(1, (3, 3)).init(jax.random.PRNGKey(0), x)
    reference = jax.jit(nn.Conv(1, (3, 3)).apply)(params, x)
    np.testing.assert_array_equal(jax.jit(NarrowConv(1, 3, "direct").apply)(params, x), reference)
    np.testing.assert_allclose(jax.jit(NarrowConv(1, 3, "taps").apply)(params, x), reference,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="narrow_convs must be one of"):
        NarrowConv(1, 3, "fft").apply(params, x)


@pytest.mark.parametrize("conditional", [False, True])
def test_agent_forms_sample_and_unroll_the_same_function(conditional):
    config = AgentConfig.small(conditional=conditional)
    direct, taps = Agent(config), Agent(config, narrow_convs="taps")
    params = direct.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(2)
    b = 3
    canvas = jnp.asarray(rng.integers(0, 256, (b, 16, 16, 1)), jnp.uint8)
    obs = Observation(canvas, jnp.ones((b, len(config.action_keys))),
                      canvas[::-1] if conditional else None)
    noise = jnp.asarray(rng.normal(size=(b, config.noise_dim)), jnp.float32)
    first = jnp.ones(b, bool)
    outs = [jax.jit(agent.sample_step)(params, obs, first, agent.initial_state(b), noise,
                                       jax.random.PRNGKey(1))[0] for agent in (direct, taps)]
    for key in config.action_keys:
        np.testing.assert_allclose(outs[0].logits[key], outs[1].logits[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0].value, outs[1].value, rtol=1e-4, atol=1e-5)


def test_unknown_forms_are_rejected():
    with pytest.raises(ValueError, match="actor_narrow_convs must be one of"):
        RuntimeConfig(actor_narrow_convs="winograd", max_updates=1)
    with pytest.raises(ValueError, match="narrow_convs must be one of"):
        Agent(AgentConfig.small(), narrow_convs="winograd")
