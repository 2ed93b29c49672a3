"""Image levels: the one home of the conversions between float images and uint8 levels.

Canvases, targets and dataset images travel as **uint8 levels**: level k means the intensity
k/255. Three conversions, used by the environment, the runtimes and the evaluation alike:

* ``quantise(values)``: float values in [0, 1] -> levels, round half to even of float32(v·255)
  (the canvas rule of ``numba_engine.observe``);
* ``to_float(levels)``: levels -> float32, the nearest float32 to k/255 (what observations hold,
  so ``to_float(x) * 255`` rounds back to x);
* ``area_downsample(levels, width)``: [N, W, W, C] -> [N, width, width, C] by the exact mean of
  each (W/width)² block, re-quantised: how a run's conditional targets are made from 64×64 data.
"""

from __future__ import annotations

import numpy as np

# LEVELS[k] is the float32 nearest k/255.
LEVELS = (np.arange(256) / 255.0).astype(np.float32)


def quantise(values) -> np.ndarray:
    """float values in [0, 1] -> uint8 levels, round half to even of float32(v · 255)."""
    return np.rint(np.asarray(values, np.float32) * np.float32(255.0)).astype(np.uint8)


def to_float(levels) -> np.ndarray:
    """uint8 levels -> float32 k/255 (the nearest float32)."""
    levels = np.asarray(levels)
    if levels.dtype != np.uint8:
        raise ValueError(f"to_float takes uint8 levels (0..255), got dtype {levels.dtype}; float "
                         f"images in [0, 1] are already in the float form.")
    return LEVELS[levels]


def area_downsample(levels: np.ndarray, width: int) -> np.ndarray:
    """uint8 levels [N, W, W, C] -> [N, width, width, C]: exact block mean, re-quantised.

    W must be a multiple of ``width``; ``width == W`` returns ``levels`` itself.
    """
    levels = np.asarray(levels)
    if levels.ndim != 4 or levels.shape[1] != levels.shape[2]:
        raise ValueError(f"area_downsample takes square images [N, W, W, C], got shape {levels.shape}.")
    n, w, _, c = levels.shape
    if w == width:
        return levels
    if width < 1 or w % width:
        raise ValueError(f"cannot area-average {w}×{w} images to {width}×{width}: the width must "
                         f"divide {w}.")
    f = w // width
    blocks = levels.reshape(n, width, f, width, f, c).astype(np.float32).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)
