"""The critic network (SPIRAL.md §3) and spectral normalisation, as pure functions over dicts.

Critic for 64x64 inputs: 4 × (Conv 4x4 stride 2, padding 1; ``config.channels`` = 64, 128, 256,
512; LeakyReLU 0.2) → 4x4 → flatten → Linear(1). No batch norm (it would make the gradient penalty
of one sample depend on the others). Inputs in [0, 1] are mapped to [-1, 1] on entry [choice: the
usual GAN input range; the gradient penalty is still taken with respect to the [0, 1] image].

Parameters are a plain dict ``{"conv_0": {"kernel", "bias"}, ..., "linear": {...}}``, so they
travel to actors as numpy arrays and nest in any other pytree.

Spectral normalisation (Miyato et al. 2018, Algorithm 1): each kernel, reshaped to a matrix
M [fan_in, out], is divided by σ(M), its largest singular value, estimated by one power-iteration
step per update from a persistent vector u [out] (the ``spectral`` dict, part of the learner's
state, never trained). The estimate is differentiable in M with u and v held constant.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from spiral.discriminator.config import IMAGE_SIZE, DiscriminatorConfig

Params = dict  # {"conv_i": {"kernel": [4, 4, in, out], "bias": [out]}, "linear": {...}}
Spectral = dict  # {"conv_i": u [out], "linear": u [1]}; empty without spectral normalisation.

KERNEL_SIZE = 4
STRIDE = 2
# Small constant that keeps normalisations finite for an all-zero vector.
_NORM_EPS = 1e-12


def layer_names(config: DiscriminatorConfig) -> tuple[str, ...]:
    return tuple(f"conv_{i}" for i in range(len(config.channels))) + ("linear",)


def init_critic(rng: jax.Array, config: DiscriminatorConfig) -> tuple[Params, Spectral]:
    """Random critic parameters and power-iteration vectors.

    Kernels ~ N(0, 1/fan_in) (LeCun normal, untruncated: JAX's truncated normal costs seconds of
    compile time on CPU for no measurable benefit here), biases 0.
    """
    widths = (config.input_channels,) + config.channels
    final_size = IMAGE_SIZE // STRIDE ** len(config.channels)
    shapes = {f"conv_{i}": (KERNEL_SIZE, KERNEL_SIZE, widths[i], widths[i + 1])
              for i in range(len(config.channels))}
    shapes["linear"] = (final_size * final_size * config.channels[-1], 1)

    params, spectral = {}, {}
    keys = jax.random.split(rng, 2 * len(shapes))
    for i, (name, shape) in enumerate(shapes.items()):
        fan_in = math.prod(shape[:-1])
        params[name] = {"kernel": jax.random.normal(keys[2 * i], shape, jnp.float32) / math.sqrt(fan_in),
                        "bias": jnp.zeros((shape[-1],), jnp.float32)}
        if config.use_spectral_norm:
            spectral[name] = _normalize(jax.random.normal(keys[2 * i + 1], (shape[-1],), jnp.float32))
    return params, spectral


def _normalize(vector: jax.Array) -> jax.Array:
    return vector / jnp.sqrt(jnp.sum(vector * vector) + _NORM_EPS)


def kernel_matrix(kernel: jax.Array) -> jax.Array:
    """A conv kernel [kh, kw, in, out] (or a linear one [in, out]) as a matrix [fan_in, out]."""
    return kernel.reshape(-1, kernel.shape[-1])


def spectral_norm_estimate(kernel: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step: (σ estimate, new u), Miyato et al. 2018, Algorithm 1.

    With W = Mᵀ [out, fan_in]: v = Wᵀu/‖Wᵀu‖, u' = Wv/‖Wv‖, σ = u'ᵀWv. u and v are constants for
    the gradient (stop_gradient), so dσ/dW = u'vᵀ, as in the paper.
    """
    matrix = kernel_matrix(kernel)
    v = lax.stop_gradient(_normalize(matrix @ u))
    new_u = lax.stop_gradient(_normalize(matrix.T @ v))
    sigma = new_u @ (matrix.T @ v)
    return sigma, new_u


def normalized_weights(params: Params, spectral: Spectral) -> tuple[Params, Spectral]:
    """The weights the critic computes with, and the advanced power-iteration vectors.

    Without spectral normalisation (``spectral`` empty) the parameters are returned as they are.
    With it, each kernel is divided by its σ estimate after one power-iteration step. The learner
    stores the new vectors after each update; scoring uses the same step and discards them, so the
    published critic is exactly the one the next update starts from.
    """
    if not spectral:
        return params, spectral
    weights, new_spectral = {}, {}
    for name, layer in params.items():
        sigma, new_spectral[name] = spectral_norm_estimate(layer["kernel"], spectral[name])
        weights[name] = {"kernel": layer["kernel"] / sigma, "bias": layer["bias"]}
    return weights, new_spectral


def critic_forward(weights: Params, inputs: jax.Array, leaky_relu_slope: float = 0.2) -> jax.Array:
    """Critic scores [N] for inputs [N, 64, 64, channels] in [0, 1] (float32)."""
    x = inputs * 2.0 - 1.0
    conv_names = sorted((n for n in weights if n.startswith("conv_")), key=lambda n: int(n.split("_")[1]))
    for name in conv_names:
        x = lax.conv_general_dilated(
            x, weights[name]["kernel"], window_strides=(STRIDE, STRIDE), padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.leaky_relu(x + weights[name]["bias"], leaky_relu_slope)
    x = x.reshape(x.shape[0], -1)
    return (x @ weights["linear"]["kernel"] + weights["linear"]["bias"])[:, 0]
