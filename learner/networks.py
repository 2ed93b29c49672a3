"""The Flax modules of SPIRAL's agent network (SPIRAL.md §2), one module per part.

``spiral.learner.agent.Agent`` composes them into pure functions (sampling and teacher-forced
modes); nothing here knows about time, episodes or losses. All modules take a ``dtype`` (the
compute dtype, float32 or bfloat16) and keep their parameters in float32.

Layout follows the released agent (deepmind/spiral ``agents/default.py``, ``agents/utils.py``):
Sonnet's defaults map to Flax's (SAME padding, truncated-normal fan-in initialisers, zero biases),
the LSTM adds +1 to the forget gate as Sonnet's ``forget_bias`` did.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spiral.envs import specs
from spiral.learner.config import NARROW_CONV_IMPLS

Array = jax.Array


class MLP(nn.Module):
    """Sonnet-style MLP: ReLU between layers, none after the last."""
    sizes: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.sizes):
            x = nn.Dense(size, dtype=self.dtype, name=f"linear_{i}")(x)
            if i + 1 < len(self.sizes):
                x = nn.relu(x)
        return x


class ResidualStack(nn.Module):
    """ResNet-v2 blocks: h += Conv1×1(relu(Conv3×3(relu(h)))), then a final ReLU."""
    channels: int
    num_blocks: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        for i in range(self.num_blocks):
            r = nn.relu(h)
            r = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name=f"res_3x3_{i}")(r)
            r = nn.relu(r)
            r = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name=f"res_1x1_{i}")(r)
            h = h + r
        return nn.relu(h)


# Which 4×4 kernel tap feeds each 3×3 tap, per output phase, for a stride-2 SAME transposed conv:
# output row 2p   = x[p-1]·K[0] + x[p]·K[2]   -> 3×3 taps (-1, 0, +1) use K rows (0, 2, -)
# output row 2p+1 = x[p]·K[1]   + x[p+1]·K[3] -> 3×3 taps (-1, 0, +1) use K rows (-, 1, 3)
# (derived from lax.conv_transpose's SAME padding (2, 2) on the 2×-dilated input; the test
# tests/test_agent.py checks both forms agree.)
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 0] = _PHASE_TAPS[0, 1, 2] = 1.0
_PHASE_TAPS[1, 1, 1] = _PHASE_TAPS[1, 2, 3] = 1.0


def conv_transpose_direct(x: Array, kernel: Array) -> Array:
    """4×4 stride-2 SAME transposed convolution (Sonnet/TF ``Conv2DTranspose`` shape rule: 2× size)."""
    return jax.lax.conv_transpose(x, kernel, strides=(2, 2), padding="SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_transpose_depth_to_space(x: Array, kernel: Array) -> Array:
    """The same function as ``conv_transpose_direct``, as a 3×3 conv to 4× channels + depth-to-space.

    Each of the four output phases (row parity a, column parity b) is a 3×3 convolution of the
    input whose taps are a subset of the 4×4 kernel; the 3×3 kernel is assembled from the same
    parameters, so both forms share parameters and gradients. On CPU XLA computes the weight
    gradient of this form much faster than that of the transposed conv (SPIRAL.md §2).
    """
    cin, cout = kernel.shape[2], kernel.shape[3]
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    # w[u, v, i, a, b, o] = Σ_jk taps[a, u, j] taps[b, v, k] kernel[j, k, i, o]
    w = jnp.einsum("auj,bvk,jkio->uviabo", taps, taps, kernel)
    w = w.reshape(3, 3, cin, 4 * cout)
    y = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, wd, _ = y.shape
    y = y.reshape(n, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * wd, cout)


INPUT_CONV_SIZE = 5


def coordinate_planes(height: int, width: int, dtype=jnp.float32) -> Array:
    """[1, H, W, 2]: each pixel's (y, x) in [-1, 1], the two planes the torso appends to the image."""
    ys = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, height)[None, :, None, None], (1, height, width, 1))
    xs = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, width)[None, None, :, None], (1, height, width, 1))
    return jnp.concatenate([ys, xs], axis=-1).astype(dtype)


def conv_taps(image: Array, kernel: Array) -> Array:
    """A SAME, stride-1 convolution of a few-channel image as a sum of shifted, scaled copies.

    out[n, y, x, o] = Σ_{dy, dx, c} image[n, y + dy − p, x + dx − p, c] · kernel[dy, dx, c, o]
    (zero outside the image): the same function as ``lax.conv_general_dilated``, summed in another
    order. XLA's CPU convolution is slow with 1–6 input or output channels; this form is one
    fused loop.
    """
    size, channels = kernel.shape[0], kernel.shape[2]
    pad = size // 2
    _, height, width, _ = image.shape
    padded = jnp.pad(image, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = None
    for dy in range(size):
        for dx in range(size):
            for c in range(channels):
                term = padded[:, dy:dy + height, dx:dx + width, c:c + 1] * kernel[dy, dx, c]
                out = term if out is None else out + term
    return out


def _conv_same(x: Array, kernel: Array) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class NarrowConv(nn.Module):
    """A SAME, stride-1 convolution with ``nn.Conv``'s parameters ("kernel", "bias"), computed
    "direct" (one convolution) or as "taps" (``conv_taps``: faster on a CPU when the input or
    the output has few channels, as the location decoders' final 3×3 conv to one channel)."""
    features: int
    kernel_size: int
    impl: str = "direct"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        size = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (size, size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
        return _narrow_conv(x, kernel, self.impl) + bias


def _narrow_conv(x: Array, kernel: Array, impl: str) -> Array:
    if impl == "direct":
        return _conv_same(x, kernel)
    if impl == "taps":
        return conv_taps(x, kernel)
    raise ValueError(f"narrow_convs must be one of {NARROW_CONV_IMPLS}, got {impl!r}.")


class InputConv(nn.Module):
    """The torso's 5×5 convolution of [image, y, x] (SAME, stride 1), with ``nn.Conv``'s
    parameters (kernel [5, 5, C + 2, F], bias) and two forms of the same function:

    * "direct": one convolution of the image concatenated with the coordinate planes;
    * "taps": the image's part as ``conv_taps`` and the coordinates' part once for the whole
      batch (it does not depend on the image), broadcast: several times faster on a CPU for
      the agent's 1–6 channel images (benchmarks/learner_throughput.py).
    """
    features: int
    impl: str = "direct"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image):
        n, height, width, channels = image.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (INPUT_CONV_SIZE, INPUT_CONV_SIZE, channels + 2, self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        image, kernel, bias = (t.astype(self.dtype) for t in (image, kernel, bias))
        coords = coordinate_planes(height, width, self.dtype)
        if self.impl == "direct":
            x = jnp.concatenate([image, jnp.broadcast_to(coords, (n, height, width, 2))], axis=-1)
            y = _conv_same(x, kernel)
        else:
            y = (_narrow_conv(image, kernel[:, :, :channels], self.impl)
                 + _conv_same(coords, kernel[:, :, channels:]))
        return y + bias


class ConvTranspose4x4(nn.Module):
    """4×4 stride-2 transposed conv with one parameter layout and two interchangeable forms."""
    features: int
    impl: str = "direct"  # "direct" or "depth_to_space"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, cin, self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
        if self.impl == "direct":
            y = conv_transpose_direct(x, kernel)
        elif self.impl == "depth_to_space":
            y = conv_transpose_depth_to_space(x, kernel)
        else:
            raise ValueError(f"ConvTranspose4x4.impl must be 'direct' or 'depth_to_space', "
                             f"got {self.impl!r}.")
        return y + bias


def _num_halvings(factor: int) -> int:
    return factor.bit_length() - 1


class Torso(nn.Module):
    """Canvas (+target) and coordinates -> 5×5 conv, + conditioning on previous action and noise,
    -> strided encoder to 8×8 -> residual blocks -> flatten -> ReLU -> Linear."""
    action_sizes: Mapping[str, int]   # ordered key -> number of values
    grid_width: int
    channels: int = 32
    residual_blocks: int = 8
    output_size: int = 256
    embed_dim: int = 16
    condition_hidden: Sequence[int] = (64, 32)
    narrow_convs: str = "direct"   # InputConv's form: "direct" or "taps" (same function)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image, action_mask, prev_action, noise):
        """image: [N, H, W, C] float in [0, 1]; action_mask: [N, K]; prev_action: key -> int [N];
        noise: [N, D]. Returns [N, output_size]."""
        n, height, width, _ = image.shape
        h = InputConv(self.channels, self.narrow_convs, self.dtype, name="input_conv")(image)

        # Previous action: embed each sub-action, zero it where the mask says it did not matter.
        embeds = []
        for i, (key, size) in enumerate(self.action_sizes.items()):
            a_vec = embed_sub_action(key, prev_action[key], size, self.grid_width)
            e = nn.Dense(self.embed_dim, dtype=self.dtype, name=f"prev_{key}_embed")(a_vec)
            embeds.append(e * action_mask[:, i:i + 1].astype(e.dtype))
        sizes = tuple(self.condition_hidden) + (self.channels,)
        cond = MLP(sizes, self.dtype, name="action_mlp")(jnp.concatenate(embeds, axis=-1))
        # Per-episode noise: as in a GAN generator, the agent's second source of variety.
        cond = cond + MLP(sizes, self.dtype, name="noise_mlp")(noise)
        h = nn.relu(h + cond[:, None, None, :])

        for i in range(_num_halvings(height // 8)):
            h = nn.Conv(self.channels, (4, 4), strides=(2, 2), dtype=self.dtype,
                        name=f"strided_{i}")(h)
            h = nn.relu(h)
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="pre_stack")(h)
        h = ResidualStack(self.channels, self.residual_blocks, self.dtype, name="residual_stack")(h)
        h = h.reshape(n, -1)
        return nn.Dense(self.output_size, dtype=self.dtype, name="linear")(nn.relu(h))


def lstm_gate_bias(size: int) -> Array:
    """Initial bias of the fused gates (input, candidate, forget, output: Sonnet's order): +1 on
    the forget gate, zero elsewhere."""
    return jnp.zeros((4 * size,), jnp.float32).at[2 * size:3 * size].set(1.0)


class LSTMCore(nn.Module):
    """LSTM with one fused gate matrix over [x, h]; +1 on the forget gate's bias (Sonnet's
    ``forget_bias=1``), so the cell keeps its memory at the start of training. The recurrent
    state stays float32 whatever the compute dtype."""
    size: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, hidden, cell):
        bias_init = lambda key, shape, dtype=jnp.float32: lstm_gate_bias(self.size)
        gates = nn.Dense(4 * self.size, dtype=self.dtype, bias_init=bias_init, name="gates")(
            jnp.concatenate([x.astype(self.dtype), hidden.astype(self.dtype)], axis=-1))
        i, g, f, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return hidden, cell


class LocationDecoder(nn.Module):
    """z -> 4×4×(z/16) -> Conv 3×3 -> residual blocks -> transposed convs up to the grid -> Conv 3×3
    to one channel -> grid_width² logits, row-major (y, x) like the grid index."""
    grid_width: int
    channels: int = 32
    residual_blocks: int = 8
    transposed_conv: str = "direct"
    narrow_convs: str = "direct"   # the final conv's form: "direct" or "taps" (same function)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        n = z.shape[0]
        h = z.reshape(n, 4, 4, -1)
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="pre_stack")(h)
        h = ResidualStack(self.channels, self.residual_blocks, self.dtype, name="residual_stack")(h)
        for i in range(_num_halvings(self.grid_width // 4)):
            h = ConvTranspose4x4(self.channels, self.transposed_conv, self.dtype,
                                 name=f"strided_transpose_{i}")(h)
            h = nn.relu(h)
        h = NarrowConv(1, 3, self.narrow_convs, self.dtype, name="final")(h)
        return h.reshape(n, -1)


def embed_sub_action(key: str, action: Array, size: int, grid_width: int) -> Array:
    """A sub-action as the network sees it: a location as (y, x) in [-1, 1]; others one-hot."""
    if key in specs.LOCATION_KEYS:
        y = -1.0 + 2.0 * (action // grid_width).astype(jnp.float32) / (grid_width - 1)
        x = -1.0 + 2.0 * (action % grid_width).astype(jnp.float32) / (grid_width - 1)
        return jnp.stack([y, x], axis=-1)
    return jax.nn.one_hot(action, size, dtype=jnp.float32)


# choose(key, logits) -> int32 action of that key, [N]: sample it, or read the taken one.
ChooseFn = Callable[[str, Array], Array]


class AutoregressiveHead(nn.Module):
    """Sub-actions in order; after each, z <- relu(z + MLP(concat[z, Linear(embed(a_k))])).

    ``choose`` decides the sub-action from its logits: sampling (actors) or the behaviour
    action (teacher forcing, learner). The same code computes the logits in both modes. The
    released agent also built the embedding and residual MLP after the last key, whose output
    nothing reads; here they are not created: at the default sizes 13,536 fewer parameters
    grayscale (1,537,605 vs the released 1,551,141) and 13,696 fewer colour (1,599,633 vs
    1,613,329).
    """
    action_sizes: Mapping[str, int]
    grid_width: int
    decoder_channels: int = 32
    decoder_residual_blocks: int = 8
    embed_dim: int = 16
    mlp_hidden: Sequence[int] = (16, 32)
    transposed_conv: str = "direct"
    narrow_convs: str = "direct"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, choose: ChooseFn):
        logits, actions = {}, {}
        keys = list(self.action_sizes)
        for idx, key in enumerate(keys):
            size = self.action_sizes[key]
            if key in specs.LOCATION_KEYS:
                out = LocationDecoder(self.grid_width, self.decoder_channels,
                                      self.decoder_residual_blocks, self.transposed_conv,
                                      self.narrow_convs, self.dtype, name=f"{key}_decoder")(z)
            else:
                out = nn.Dense(size, dtype=self.dtype, name=f"{key}_logits")(z)
            logits[key] = out.astype(jnp.float32)
            actions[key] = choose(key, logits[key])
            if idx + 1 < len(keys):   # the last key's update would feed nothing
                a_vec = embed_sub_action(key, actions[key], size, self.grid_width)
                e = nn.Dense(self.embed_dim, dtype=self.dtype, name=f"{key}_embed")(a_vec)
                sizes = tuple(self.mlp_hidden) + (z.shape[-1],)
                r = MLP(sizes, self.dtype, name=f"{key}_residual_mlp")(
                    jnp.concatenate([z.astype(self.dtype), e], axis=-1))
                z = nn.relu(z + r)
        return logits, actions
