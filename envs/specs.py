"""SPIRAL's action space and observation layout: the contract between the environment and the agent.

Everything that must agree between ``PaintEnv``, the batched JAX engine, the agent and the learner
lives here, as plain values and small pure functions (SPIRAL.md §1):

* the sub-action keys, in the order the agent samples them (``ACTION_ORDER``);
* their sizes, built from the environment options (``action_spec``);
* the action masks after a paint step and after a jump or reset (``action_mask``);
* how a grid index becomes a canvas position (``grid_to_canvas``);
* DeepMind's form of the action mask, a dict of scalars (``action_mask_dict``).
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np
from dm_env import specs

# The order in which the agent samples the sub-actions (the released agent's order).
ACTION_ORDER = ("flag", "end", "control", "size", "pressure", "red", "green", "blue")
# The order of DeepMind's environment's action spec and action-mask dict.
DEEPMIND_ACTION_ORDER = ("control", "end", "flag", "pressure", "size", "red", "green", "blue")
LOCATION_KEYS = ("end", "control")
COLOR_KEYS = ("red", "green", "blue")
# Keys that still matter after a jump (flag = 0) and at reset: a jump only uses `end`.
JUMP_KEYS = ("flag", "end")

DEFAULT_BRUSH_SIZES = (1, 2, 4, 8, 12, 24)
PRESSURE_VALUES = np.linspace(0.1, 1.0, 10).astype(np.float32)
COLOR_VALUES = np.linspace(0.0, 1.0, 20).astype(np.float32)
# Pressure used when the environment does not expose the `pressure` key (as the released env).
FIXED_PRESSURE = 1.0

PAINT = 1  # value of `flag` that paints a stroke; 0 lifts the brush and jumps to `end`.


def action_keys(brush_sizes: Sequence[float] = DEFAULT_BRUSH_SIZES,
                use_color: bool = False, use_pressure: bool = True) -> tuple[str, ...]:
    """The sub-action keys present for these options, in sampling order."""
    keys = []
    for key in ACTION_ORDER:
        if key == "size" and len(brush_sizes) < 2:
            continue
        if key == "pressure" and not use_pressure:
            continue
        if key in COLOR_KEYS and not use_color:
            continue
        keys.append(key)
    return tuple(keys)


def action_spec(grid_width: int = 32,
                brush_sizes: Sequence[float] = DEFAULT_BRUSH_SIZES,
                use_color: bool = False,
                use_pressure: bool = True) -> dict[str, specs.DiscreteArray]:
    """SPIRAL's action spec: an ordered dict of ``DiscreteArray`` (int32), one per sub-action."""
    if grid_width < 2:
        raise ValueError(f"grid_width must be >= 2, got {grid_width}.")
    if len(brush_sizes) < 1 or min(brush_sizes) <= 0:
        raise ValueError(f"brush_sizes must be a non-empty list of positive radii, got {brush_sizes}.")
    sizes = {
        "flag": 2,
        "end": grid_width * grid_width,
        "control": grid_width * grid_width,
        "size": len(brush_sizes),
        "pressure": len(PRESSURE_VALUES),
        "red": len(COLOR_VALUES),
        "green": len(COLOR_VALUES),
        "blue": len(COLOR_VALUES),
    }
    return {k: specs.DiscreteArray(num_values=sizes[k], dtype=np.int32, name=k)
            for k in action_keys(brush_sizes, use_color, use_pressure)}


def action_mask(keys: Sequence[str], painted: bool) -> np.ndarray:
    """The observation's `action_mask`: one float per key in ``keys``.

    After a paint step every key mattered (all ones). After a jump, and at reset, only ``flag`` and
    ``end`` did: the agent zeroes the embeddings of the other previous sub-actions.
    """
    if painted:
        return np.ones(len(keys), np.float32)
    return np.array([1.0 if k in JUMP_KEYS else 0.0 for k in keys], np.float32)


def action_mask_dict(keys: Sequence[str], mask) -> "collections.OrderedDict[str, float]":
    """DeepMind's form of an action mask: {sub-action name: 0.0 or 1.0}, in its key order.

    ``mask`` is this project's vector (one float per key of ``keys``, ``action_spec`` order); the
    dict has the same keys and values, ordered as DeepMind's ``LibMyPaint.ACTION_MASKS``.
    """
    mask = np.asarray(mask, np.float32)
    if mask.shape != (len(keys),):
        raise ValueError(f"mask must have one value per key {list(keys)}, got shape {mask.shape}.")
    value = dict(zip(keys, mask.tolist()))
    return collections.OrderedDict((k, value[k]) for k in DEEPMIND_ACTION_ORDER if k in value)


def observation_spec(keys: Sequence[str], channels: int, width: int = 64,
                     conditional: bool = False) -> dict[str, specs.Array]:
    """Observation spec: `canvas` (width, width, C) float32 in [0, 1], `action_mask`, DeepMind's
    `episode_step` and `episode_length` (int32 scalars), and `target` in conditional mode."""
    out = {
        "canvas": specs.BoundedArray((width, width, channels), np.float32, 0.0, 1.0, name="canvas"),
        "action_mask": specs.BoundedArray((len(keys),), np.float32, 0.0, 1.0, name="action_mask"),
        "episode_step": specs.Array((), np.int32, name="episode_step"),
        "episode_length": specs.Array((), np.int32, name="episode_length"),
    }
    if conditional:
        out["target"] = specs.BoundedArray((width, width, channels), np.float32, 0.0, 1.0,
                                           name="target")
    return out


def grid_to_canvas(index, grid_width: int, canvas_width: int):
    """Grid index (row-major, y first) -> (y, x) canvas coordinates: pixel = canvas_width·c/grid_width.

    Works on Python ints and on numpy/JAX integer arrays alike.
    """
    scale = canvas_width / grid_width
    return (index // grid_width) * scale, (index % grid_width) * scale


def check_action(action: Mapping[str, object], spec: Mapping[str, specs.DiscreteArray]) -> dict:
    """Validate one action against the spec; return it as plain ints.

    Raises ``ValueError`` naming the key, the value and the valid range for a missing key, an
    unknown key, a non-integer dtype or a value out of range. Nothing is clipped.
    """
    if not isinstance(action, Mapping):
        raise ValueError(f"An action must be a dict with keys {list(spec)}, got {type(action).__name__}.")
    missing = [k for k in spec if k not in action]
    if missing:
        raise ValueError(f"Action is missing key(s) {missing}; an action needs all of {list(spec)}.")
    unknown = [k for k in action if k not in spec]
    if unknown:
        raise ValueError(f"Action has unknown key(s) {unknown}; valid keys are {list(spec)}.")
    out = {}
    for key, s in spec.items():
        value = action[key]
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            # Fast path for plain integer scalars (what actors send); same checks, no array.
            v = int(value)
            if not 0 <= v < s.num_values:
                raise ValueError(f"Action key '{key}' = {v} is out of range; valid range is "
                                 f"[0, {s.num_values - 1}].")
            out[key] = v
            continue
        arr = np.asarray(value)
        if arr.shape != ():
            raise ValueError(f"Action key '{key}' must be a scalar integer in [0, {s.num_values - 1}], "
                             f"got shape {arr.shape}.")
        if not (np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_)):
            raise ValueError(f"Action key '{key}' must be an integer in [0, {s.num_values - 1}], "
                             f"got {value!r} of dtype {arr.dtype}.")
        v = int(arr)
        if not 0 <= v < s.num_values:
            raise ValueError(f"Action key '{key}' = {v} is out of range; valid range is "
                             f"[0, {s.num_values - 1}].")
        out[key] = v
    return out
