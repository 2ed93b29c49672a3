"""What the critic sees: image validation, uint8/float conversion, and (canvas, target) pairs.

Images are [N, 64, 64, C], either uint8 (0..255, as canvases travel in trajectories and live in the
replay) or float32 in [0, 1]. Ink is dark on white for MNIST/Omniglot, as the environment paints.

Input pairs (SPIRAL.md §3):
* unconditional: the image itself;
* conditional: channels ``concat(canvas, target)``; the real pair is ``(real, real)``;
* complement (SPIRAL++): for a half mask m (1 on one half: left, right, top or bottom),
  ``concat((1-m)·target, m·canvas)``; the real pair is ``((1-m)·real, m·real)``. The critic sees one
  half of the target and must judge whether the other half of the canvas completes it.
  The hidden parts are 0, which on a dark-ink-on-white canvas reads as solid ink; real and fake
  pairs are hidden alike, so this tells the critic only where the mask is.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from spiral.discriminator.config import IMAGE_SIZE, DiscriminatorConfig
from spiral.envs.levels import quantise

NUM_HALF_MASKS = 4  # left, right, top, bottom.


def check_images(images, name: str, channels: Optional[int] = None, size: int = IMAGE_SIZE) -> None:
    """Raises a clear error unless ``images`` is [N, size, size, C] uint8, or float32 in [0, 1].

    Shape and dtype are checked always (also on tracers, at trace time); the value range only on
    concrete arrays, since a jitted function cannot raise on data.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise TypeError(f"{name} must be an array [N, {size}, {size}, C], got {type(images).__name__}.")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1:3] != (size, size):
        raise ValueError(f"{name} must have shape [N, {size}, {size}, C] (the critic's image_size), "
                         f"got {shape}; add a batch axis for one image, resize other sizes to "
                         f"{size}x{size}.")
    if channels is not None and shape[3] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) (the config's image_channels), got {shape[3]}.")
    if shape[3] not in (1, 3):
        raise ValueError(f"{name} must have 1 (grayscale) or 3 (colour) channels, got {shape[3]}.")
    dtype = np.dtype(images.dtype)
    if dtype == np.uint8:
        return
    if dtype != np.float32:
        raise ValueError(f"{name} must be uint8 (0..255) or float32 in [0, 1], got dtype {dtype}; "
                         f"cast with .astype(np.float32) (and divide by 255 if the values are 0..255).")
    if isinstance(images, jax.core.Tracer):
        return
    values = np.asarray(images)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"float32 {name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
                         f"divide 0..255 data by 255, or pass uint8.")


def to_float(images) -> jax.Array:
    """uint8 0..255 → float32 [0, 1]; float32 passes through. Works inside jit."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return jnp.asarray(images, jnp.float32)


def to_uint8(images) -> np.ndarray:
    """Validated images → uint8 0..255 on the host (float32 is rounded to the nearest level)."""
    if np.dtype(images.dtype) == np.uint8:
        return np.asarray(images)
    return quantise(images)


def half_masks(size: int = IMAGE_SIZE) -> jax.Array:
    """The four half masks [4, size, size, 1]: 1 on the left, right, top, bottom half."""
    coordinate = jnp.arange(size) < size // 2
    left = jnp.broadcast_to(coordinate[None, :], (size, size))
    top = jnp.broadcast_to(coordinate[:, None], (size, size))
    masks = jnp.stack([left, ~left, top, ~top]).astype(jnp.float32)
    return masks[..., None]


def random_half_masks(rng: jax.Array, count: int, size: int = IMAGE_SIZE) -> jax.Array:
    """``count`` masks [count, size, size, 1], each one of the four halves uniformly at random."""
    choice = jax.random.randint(rng, (count,), 0, NUM_HALF_MASKS)
    return half_masks(size)[choice]


def critic_input(images: jax.Array, targets: Optional[jax.Array], masks: Optional[jax.Array],
                 config: DiscriminatorConfig) -> jax.Array:
    """The critic's input for float images [N, 64, 64, C] (see the module docstring).

    ``targets`` is needed when ``config.conditional``; ``masks`` [N, 64, 64, 1] when
    ``config.complement``. For a real pair pass the real images as both ``images`` and ``targets``.
    """
    if not config.conditional:
        return images
    if targets is None:
        raise ValueError("A conditional discriminator scores (canvas, target) pairs: pass targets.")
    if targets.shape != images.shape:
        raise ValueError(f"targets must match the images' shape {tuple(images.shape)}, got {tuple(targets.shape)}.")
    if not config.complement:
        return jnp.concatenate([images, targets], axis=-1)
    if masks is None:
        raise ValueError("A complement discriminator needs half masks [N, 64, 64, 1].")
    return jnp.concatenate([(1.0 - masks) * targets, masks * images], axis=-1)
