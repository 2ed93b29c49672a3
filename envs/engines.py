"""Choosing a brush engine by name: "numba" (default), "jax" or "libmypaint".

Every engine is a canvas plus a brush with the same small interface, in pixel coordinates of
its own canvas (``config.canvas_width``):

* ``reset()``: clear to the background; the brush is lifted at (0, 0);
* ``jump(y, x)``: lift the brush and move it (ends a connected run of strokes);
* ``paint(start, control, end, p0, p1, radius, color, key)``: one Bezier stroke, pressure
  p0 → p1, ``key`` = the 32-bit hash-RNG key of its dab noise (libmypaint ignores it). A stroke
  after a jump starts at the jump's point, except in the released mode (``config.jump_start``),
  where ``PaintEnv`` passes DeepMind's (y, y) and the engine moves the brush there from (y, x)
  without paint, as libmypaint's tablet workaround does;
* ``observe(out_u8, out_f32)``: write the (ow, ow, C) observation, ow = ``config.observation_width``
  (exact area average of the canvas, uint8 levels and level / 255);
* ``full_canvas()``: the full-resolution float32 canvas (W, W, C).

Imports are lazy, so that an actor using numba never imports JAX and a machine without
libmypaint can still use the other two.
"""

from __future__ import annotations

from spiral.envs.config import RENDERERS, PaintConfig


def make_engine(renderer: str, config: PaintConfig):
    """A fresh engine of the named kind for ``config``."""
    if renderer == "numba":
        from spiral.envs.numba_engine import NumbaCanvas
        return NumbaCanvas(config)
    if renderer == "jax":
        from spiral.envs.jax_engine import JaxCanvas
        return JaxCanvas(config)
    if renderer == "libmypaint":
        from spiral.envs.libmypaint_engine import LibMyPaintCanvas
        return LibMyPaintCanvas(config)
    raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}.")
