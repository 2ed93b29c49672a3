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

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from spiral.discriminator.config import DiscriminatorConfig

Params = dict  # {"conv_i": {"kernel": [4, 4, in, out], "bias": [out]}, "linear": {...}}
Spectral = dict  # {"conv_i": u [out], "linear": u [1]}; empty without spectral normalisation.

KERNEL_SIZE = 4
STRIDE = 2
# Small constant that keeps normalisations finite for an all-zero vector.
_NORM_EPS = 1e-12


def layer_names(config: DiscriminatorConfig) -> tuple[str, ...]:
    return tuple(f"conv_{i}" for i in range(len(config.channels))) + ("linear",)


def layer_shapes(config: DiscriminatorConfig) -> dict[str, tuple[int, ...]]:
    """Kernel shape of each layer: conv [4, 4, in, out], then linear [4·4·512, 1]."""
    widths = (config.input_channels,) + config.channels
    final_size = config.image_size // STRIDE ** len(config.channels)
    shapes = {f"conv_{i}": (KERNEL_SIZE, KERNEL_SIZE, widths[i], widths[i + 1])
              for i in range(len(config.channels))}
    shapes["linear"] = (final_size * final_size * config.channels[-1], 1)
    return shapes


def init_critic(rng: jax.Array, config: DiscriminatorConfig) -> tuple[Params, Spectral]:
    """Random critic parameters and power-iteration vectors.

    Kernels ~ N(0, 1/fan_in) (LeCun normal), biases 0, vectors u uniform on the unit sphere.
    """
    return _init_critic(rng, config)


@functools.partial(jax.jit, static_argnums=1)
def _init_critic(rng, config):
    # One jitted draw, sliced: eager per-layer draws cost ~20 s of op-by-op compiles on a busy
    # 2-core CPU, this ~1 s.
    shapes = layer_shapes(config)
    sizes = [math.prod(shape) for shape in shapes.values()]
    if config.use_spectral_norm:
        sizes += [shape[-1] for shape in shapes.values()]
    flat = jax.random.normal(rng, (sum(sizes),), jnp.float32)
    pieces = iter(jnp.split(flat, list(itertools.accumulate(sizes))[:-1]))
    params = {name: {"kernel": next(pieces).reshape(shape) / math.sqrt(math.prod(shape[:-1])),
                     "bias": jnp.zeros((shape[-1],), jnp.float32)}
              for name, shape in shapes.items()}
    spectral = {name: _normalize(next(pieces)) for name in shapes} if config.use_spectral_norm else {}
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
