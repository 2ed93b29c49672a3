"""The paint environment: SPIRAL's brush engine and action space, and the datasets it paints.

One job: turn a sequence of discrete brush actions into canvases, faithfully to SPIRAL
(see ``../shared/docs/SPIRAL.md`` §1 and ``RENDERER.md``), plus loaders for the real images
those canvases are compared with. No learning code lives here, and nothing here imports Ray.

Public API:

* ``PaintEnv``: the ``dm_env.Environment`` (engines "numba" (default), "jax", "libmypaint");
* ``BatchedPaintEnv``: K numba environments stepped in one call, arrays in and out (actors);
* ``PaintConfig``: its options as a frozen dataclass (static config of the batched JAX engine);
* ``Program``, ``Stroke``, ``Jump``, ``render_program``: an episode's strokes, JSON, replay;
* ``observe_canvas``: the agent's ow×ow quantised view of a full-resolution canvas (ow = 64 by default);
* ``spiral.envs.targets``: conditional targets as uint8 levels (checks, quantisation);
* ``spiral.envs.jax_engine``: the batched, jittable ``reset``/``step`` (imported on demand);
* ``spiral.envs.specs``: the action/observation contract; ``spiral.envs.stroke``: the brush spec.
"""

from spiral.envs.batched import BatchedPaintEnv
from spiral.envs.config import PaintConfig
from spiral.envs.paint_env import PaintEnv, observe_canvas
from spiral.envs.program import Jump, Program, Stroke, render_program

__all__ = ["BatchedPaintEnv", "PaintConfig", "PaintEnv", "observe_canvas", "Program", "Stroke", "Jump", "render_program"]
