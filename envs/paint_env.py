"""``PaintEnv``: SPIRAL's paint environment as a ``dm_env.Environment`` (SPIRAL.md §1).

An episode is ``reset()`` (FIRST) then ``episode_length − 1`` actions, the last returning LAST
(discount 0); a ``step`` after LAST (or before any reset) starts a new episode and ignores its
action, as dm_env expects. Each action is a dict of int sub-actions (``spiral.envs.specs``):
``flag`` 1 paints a quadratic Bezier from the brush position through ``control`` to ``end``
with pressure interpolated from the previous stroke's (constant when the brush was lifted
before: after a reset or a jump) and the chosen ``size`` and colour; ``flag`` 0 lifts the brush
and moves it to ``end``. The brush starts at (0, 0). Grid index → (y, x) row-major, pixel
= canvas_width·c/grid_width; a jump moves the brush to (y, x). With ``jump_start="released"``
the environment is DeepMind's released one (``PaintConfig.jump_start``): the stroke after a jump
to (y, x) starts at (y, y), as its ``_update_brush_params(y=y, x=y)`` has it.

Polarity: grayscale canvases paint black ink on white (``background="white"``, SPIRAL's
libmypaint) or white ink on black (``background="black"``, as MNIST/Omniglot digits are stored);
colour strokes use the (red, green, blue) sub-actions on either background.

Observation: ``canvas`` (ow, ow, C) float32 with ow = ``observation_width`` (64 by default; 32,
16 or 8 for reduced runs), quantised to multiples of 1/255 (``k/255``, so ``obs * 255`` rounds back
to the uint8 level exactly; ``canvas_uint8()`` returns those levels for the last observation,
cheaply); a canvas wider than ow is area-averaged exactly (canvas_width / ow pixels square per
observed pixel) before quantising. ``action_mask`` (one float per key, in ``action_spec`` order):
all ones after a paint step; only ``flag`` and ``end`` after a jump and at reset. ``target`` in
conditional mode: (ow, ow, C) float32 level/255, read-only, the same array for a whole episode.
``episode_step`` and ``episode_length``: int32 scalars, as DeepMind's environment reports them:
``episode_step`` is 0 at reset and k + 1 after the episode's k-th action (``episode_length`` at
LAST); in the released mode a reset after the first episode reports ``episode_length`` (DeepMind's
counter is read before it is reset). The agent may ignore both.

DeepMind's ``action_mask`` is a dict of float scalars keyed by sub-action name; here it is a
vector in ``action_spec`` order, so ``dict(zip(env.action_spec(), mask))`` (or
``specs.action_mask_dict``) is DeepMind's dict, with the same keys and values.

Targets (``spiral.envs.targets``): uint8 levels [N, ow, ow, C] are used as given, not copied (a
read-only array shared between processes works); float32 targets in [0, 1] are quantised once, at
construction, to the nearest k/255 with the canvases' rounding (values outside [0, 1] raise).

Reward: 0.0, except in conditional mode with ``l2_reward=True``: on the LAST step
−Σ (canvas − target)², a **sum** over the ow×ow pixels and the channels of the observation (so
its scale depends on ow: a 32-wide observation sums a quarter as many pixels as a 64-wide one),
computed exactly from the uint8 levels as −Σ(ΔL)²/255² (float64).

Determinism: the dab noise of action i of episode e comes from the hash RNG keyed by
(seed, e, i) (``spiral.envs.stroke.stroke_key``), and a conditional episode's target index from
the same hash; the numba and JAX engines therefore give the same canvases for the same seed and
actions (to RENDERER.md's tolerances), and ``render_program(env.program)`` replays a canvas.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import dm_env
import numpy as np

from spiral.envs import specs
from spiral.envs import stroke as spec
from spiral.envs import targets as target_data
from spiral.envs.config import DEFAULT_OBSERVATION_WIDTH, OBSERVATION_WIDTHS, PaintConfig
from spiral.envs.engines import make_engine
from spiral.envs.levels import to_float
from spiral.envs.numba_engine import observe
from spiral.envs.program import Jump, Program, Stroke

MAX_SEED = 2 ** 32
_PRESSURES = tuple(specs.PRESSURE_VALUES.tolist())
_COLORS = tuple(specs.COLOR_VALUES.tolist())


@functools.lru_cache(maxsize=None)
def _cell_tables(canvas_width: int, grid_width: int):
    """(y, x) pixel of every grid cell (row-major, pixel = W·c/G), as tuples of Python floats."""
    cells = np.arange(grid_width * grid_width)
    return (tuple((canvas_width * (cells // grid_width) / grid_width).tolist()),
            tuple((canvas_width * (cells % grid_width) / grid_width).tolist()))


class PaintEnv(dm_env.Environment):
    """SPIRAL's stroke-by-stroke paint environment on the numba, JAX or libmypaint brush engine.

    Args:
      canvas_width: rendering resolution (64, 128, 256).
      grid_width: width of the `end`/`control` grid.
      episode_length: reset + (episode_length − 1) actions (SPIRAL: 20).
      brush_sizes: brush radii in pixels of a 64 canvas (scaled with the canvas).
      use_color: 3-channel canvas and colour sub-actions.
      use_pressure: expose `pressure`; otherwise pressure is 1.0.
      background: "white" (black ink) or "black" (white ink).
      renderer: "numba" (default), "jax" or "libmypaint".
      seed: uint32 seed of the hash RNG (dab noise, target draws); None draws one from the OS.
      targets: conditional mode, one target per episode: uint8 levels [N, ow, ow, C] (k means
        k/255; used without copying, may be read-only) or float32 in [0, 1] (quantised once to
        k/255 with the canvases' rounding).
      l2_reward: conditional only: reward −Σ(canvas − target)² at the last step.
      observation_width: ow, the observed canvas and target width: 64 (SPIRAL), 32, 16 or 8.
      jump_start: "corrected" (default) or "released" (DeepMind's released environment exactly;
        ``PaintConfig.jump_start``).
    """

    def __init__(self, canvas_width: int = 64, grid_width: int = 32, episode_length: int = 20,
                 brush_sizes: Sequence[float] = specs.DEFAULT_BRUSH_SIZES, use_color: bool = False,
                 use_pressure: bool = True, background: str = "white", renderer: str = "numba",
                 seed: Optional[int] = None, targets: Optional[np.ndarray] = None,
                 l2_reward: bool = False, observation_width: int = DEFAULT_OBSERVATION_WIDTH,
                 jump_start: str = "corrected"):
        self.config = PaintConfig(canvas_width=canvas_width, grid_width=grid_width,
                                  episode_length=episode_length, brush_sizes=tuple(brush_sizes),
                                  use_color=use_color, use_pressure=use_pressure,
                                  background=background, conditional=targets is not None,
                                  l2_reward=l2_reward, observation_width=observation_width,
                                  jump_start=jump_start)
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")
        self.seed = int(seed)
        self.renderer = renderer
        # uint8 levels [N, ow, ow, C]: the caller's array itself when it is uint8 (never copied).
        self._targets = (None if targets is None
                         else target_data.target_levels(targets, self.config.observation_shape))
        self._target = None   # the episode's target as float32 level/255, read-only
        self._engine = make_engine(renderer, self.config)
        self._action_spec = self.config.action_spec()
        self._observation_spec = self.config.observation_spec()
        self._observation_shape = self.config.observation_shape
        keys = self.config.action_keys
        self._paint_mask = specs.action_mask(keys, painted=True)
        self._jump_mask = specs.action_mask(keys, painted=False)
        # Per-index lookup tables (plain Python floats, shared by all envs of this geometry).
        self._cell_y, self._cell_x = _cell_tables(self.config.canvas_width, grid_width)
        self._pressures = _PRESSURES
        self._radii = list(self.config.pixel_radii)
        self._colors = _COLORS
        self._ink = (self.config.ink_value,) * self.config.channels
        self._episode_length = np.array(self.config.episode_length, np.int32)
        self._episode = -1
        self._t = 0
        self._step_type = None
        self._next_target: Optional[int] = None
        self._target_index: Optional[int] = None
        self._last_uint8 = None
        self._program = None

    # ---- dm_env API -------------------------------------------------------------------------
    def action_spec(self):
        return self._action_spec

    def observation_spec(self):
        return self._observation_spec

    def reset(self) -> dm_env.TimeStep:
        self._episode += 1
        self._t = 0
        self._engine.reset()
        self._brush = (0.0, 0.0)
        self._painting = False
        self._pressure = None
        if self._targets is not None:
            if self._next_target is not None:
                self._target_index, self._next_target = self._next_target, None
            else:
                self._target_index = spec.target_index(self.seed, self._episode, len(self._targets))
            target = to_float(self._targets[self._target_index])
            target.flags.writeable = False
            self._target = target
        self._program = Program(self.seed, self._episode, self.config.background, self.config.channels,
                                jump_start=self.config.jump_start)
        self._step_type = dm_env.StepType.FIRST
        return dm_env.restart(self._observation(self._jump_mask))

    def step(self, action) -> dm_env.TimeStep:
        if self._step_type is None or self._step_type == dm_env.StepType.LAST:
            return self.reset()
        a = specs.check_action(action, self._action_spec)
        end = (self._cell_y[a["end"]], self._cell_x[a["end"]])
        if a["flag"] == specs.PAINT:
            self._paint(a, end)
            mask = self._paint_mask
        else:
            self._engine.jump(*end)
            self._program.steps.append(Jump(self._normalise(end)))
            self._painting = False
            mask = self._jump_mask
            if self.config.released:
                end = (end[0], end[0])   # DeepMind's _update_brush_params(y=y, x=y)
        self._brush = end
        self._t += 1
        observation = self._observation(mask)
        if self._t == self.config.episode_length - 1:
            self._step_type = dm_env.StepType.LAST
            return dm_env.termination(self._final_reward(), observation)
        self._step_type = dm_env.StepType.MID
        return dm_env.transition(0.0, observation, discount=1.0)

    # ---- extras -----------------------------------------------------------------------------
    @property
    def program(self) -> Program:
        """The current (or just finished) episode's program: a copy, safe to keep."""
        if self._program is None:
            raise ValueError("No episode yet: call reset() first.")
        p = self._program
        return Program(p.seed, p.episode, p.background, p.channels, list(p.steps), p.jump_start)

    @property
    def episode(self) -> int:
        """Index of the current episode (0 for the first reset)."""
        return self._episode

    @property
    def target_index(self) -> Optional[int]:
        """Dataset index of the current episode's target (conditional mode)."""
        return self._target_index

    @property
    def targets(self) -> Optional[np.ndarray]:
        """The conditional targets as uint8 levels [N, ow, ow, C] (a read-only view), or None.

        For uint8 targets this shares memory with the array passed in (nothing was copied).
        """
        if self._targets is None:
            return None
        view = self._targets.view()
        view.flags.writeable = False
        return view

    def set_next_target(self, index: int):
        """Make the next episode paint ``targets[index]`` (e.g. evaluation on a fixed held-out set)."""
        if self._targets is None:
            raise ValueError("set_next_target needs conditional mode: pass targets=... to PaintEnv.")
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(self._targets):
            raise ValueError(f"target index must be an int in [0, {len(self._targets) - 1}], got {index!r}.")
        self._next_target = int(index)

    def canvas_uint8(self) -> np.ndarray:
        """The last observation's canvas as uint8 levels (ow, ow, C): ``canvas == levels / 255``."""
        if self._last_uint8 is None:
            raise ValueError("No observation yet: call reset() first.")
        return self._last_uint8

    def full_canvas(self) -> np.ndarray:
        """The full-resolution float32 canvas (canvas_width, canvas_width, C), unquantised."""
        return self._engine.full_canvas()

    def close(self):
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()

    # ---- internals ----------------------------------------------------------------------------
    def _paint(self, a, end):
        control = (self._cell_y[a["control"]], self._cell_x[a["control"]])
        p1 = self._pressures[a["pressure"]] if "pressure" in a else specs.FIXED_PRESSURE
        # Pressure runs on from the previous stroke; after a reset or a jump it is constant.
        p0 = self._pressure if self._painting else p1
        radius = self._radii[a["size"]] if "size" in a else self._radii[0]
        if self.config.use_color:
            color = (self._colors[a["red"]], self._colors[a["green"]], self._colors[a["blue"]])
        else:
            color = self._ink
        key = spec.stroke_key(self.seed, self._episode, self._t)
        self._engine.paint(self._brush, control, end, p0, p1, radius, color, key)
        self._program.steps.append(Stroke(self._normalise(self._brush), self._normalise(control),
                                          self._normalise(end), (p0, p1),
                                          radius / self.config.canvas_width, color))
        self._painting = True
        self._pressure = p1

    def _normalise(self, point):
        w = self.config.canvas_width
        return (point[0] / w, point[1] / w)

    def _observation(self, mask) -> dict:
        shape = self._observation_shape
        levels = np.empty(shape, np.uint8)
        canvas = np.empty(shape, np.float32)
        self._engine.observe(levels, canvas)
        self._last_uint8 = levels
        observation = {"canvas": canvas, "action_mask": mask.copy(),
                       "episode_step": np.array(self._episode_step(), np.int32),
                       "episode_length": self._episode_length.copy()}
        if self._targets is not None:
            observation["target"] = self._target
        return observation

    def _episode_step(self) -> int:
        if self._t == 0:
            # DeepMind's reset reports its counter before resetting it: the last episode's length.
            return self.config.episode_length if self.config.released and self._episode > 0 else 0
        return self._t + 1

    def _final_reward(self) -> float:
        if not self.config.l2_reward:
            return 0.0
        # canvas and target are level/255, so Σ(canvas − target)² = Σ(ΔL)² / 255²: an exact
        # integer sum (at most 64·64·3·255² < 2^31), one rounding at the end.
        difference = (self._last_uint8.astype(np.int32)
                      - self._targets[self._target_index].astype(np.int32)).ravel()
        return -float(np.dot(difference, difference)) / 255.0 ** 2


def observe_canvas(canvas: np.ndarray, observation_width: int = DEFAULT_OBSERVATION_WIDTH):
    """The agent's view of a full-resolution (W, W, C) canvas: (float32 (ow, ow, C), uint8 levels).

    ow = ``observation_width`` (64, 32, 16 or 8; W a multiple of it): the exact area average of
    each (W/ow)² block, quantised to k/255 as ``PaintEnv`` observes.
    """
    if observation_width not in OBSERVATION_WIDTHS:
        raise ValueError(f"observation_width must be one of {OBSERVATION_WIDTHS}, got {observation_width!r}.")
    canvas = np.asarray(canvas, np.float32)
    w = canvas.shape[0]
    if canvas.ndim != 3 or canvas.shape[1] != w or w < observation_width or w % observation_width:
        raise ValueError(f"canvas must be (W, W, C) with W a multiple of observation_width="
                         f"{observation_width}, got {canvas.shape}.")
    c = canvas.shape[2]
    levels = np.empty((observation_width, observation_width, c), np.uint8)
    out = np.empty((observation_width, observation_width, c), np.float32)
    observe(np.ascontiguousarray(canvas.transpose(2, 0, 1)), levels, out)
    return out, levels
