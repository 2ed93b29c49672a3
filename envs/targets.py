"""Conditional targets: checked once, kept as uint8 levels (k means k/255), like every observed canvas.

A conditional environment shows the agent a target image of the observation's shape
(observation_width, observation_width, C). Targets are stored as **uint8 levels**:

* uint8 targets are used as given, never copied (the runtime shares one read-only array between
  actors through Ray's object store), and need no scan of their values;
* float32 targets in [0, 1] are quantised to levels **once, at construction**, with the rounding
  of the canvases: level = round-half-to-even(float32(v) · 255), as ``numba_engine.observe`` does.
  This is a stated transformation (a float target becomes the nearest k/255, exactly what a
  canvas of the same picture would be), not clipping: values outside [0, 1] (or NaN) raise.

The observation's ``target`` is then ``spiral.envs.levels.to_float(level)``, the float32 nearest k/255, the
same numbers a canvas uses: a learner may store both as uint8 losslessly.
"""

from __future__ import annotations

import numpy as np

from spiral.envs.levels import quantise

TARGET_DTYPES = (np.uint8, np.float32)


def check_target_layout(shape, dtype, observation_shape, name: str = "targets"):
    """Raise ValueError unless (shape, dtype) is uint8 or float32 [N >= 1, *observation_shape]."""
    expected = ", ".join(map(str, observation_shape))
    if np.dtype(dtype) not in TARGET_DTYPES:
        raise ValueError(f"{name} must be uint8 levels (k means k/255) or float32 in [0, 1], of shape "
                         f"[N, {expected}]; got dtype {np.dtype(dtype)}. Convert with "
                         f"images.astype(np.uint8) for 0..255 levels or .astype(np.float32) for [0, 1].")
    if len(shape) != 4 or tuple(shape[1:]) != tuple(observation_shape) or shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, {expected}] with N >= 1 (observation_width × "
                         f"observation_width × channels), got {tuple(shape)}.")


def target_levels(targets, observation_shape, name: str = "targets") -> np.ndarray:
    """Checked uint8 levels [N, *observation_shape] of ``targets`` (uint8: the same array, uncopied).

    Raises ValueError for a non-array, another dtype, another shape, and float values outside
    [0, 1] or NaN (naming the problem and the fix); never clips.
    """
    if not isinstance(targets, np.ndarray):
        raise ValueError(f"{name} must be a numpy array [N, {', '.join(map(str, observation_shape))}], "
                         f"got {type(targets).__name__}.")
    check_target_layout(targets.shape, targets.dtype, observation_shape, name)
    if targets.dtype == np.uint8:
        return targets
    if np.isnan(targets).any():
        raise ValueError(f"float32 {name} hold NaN values; they must lie in [0, 1].")
    low, high = float(targets.min()), float(targets.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"float32 {name} must lie in [0, 1], got values in [{low}, {high}]; "
                         f"nothing is clipped: rescale them, or pass uint8 levels 0..255.")
    return quantise(targets)
