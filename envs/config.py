"""The paint environment's options, as one frozen (hashable) dataclass shared by every engine.

``PaintConfig`` is what ``PaintEnv`` takes apart into keyword options, what the batched JAX engine
keeps as static (compile-time) data, and what ``render_program`` needs to replay strokes. It also
derives the few numbers that follow from the options: channels, the pixel radius of each brush
size at this canvas width, the ink and background values.

Resolution independence (SPIRAL++ renders at 256 and shows the agent 64): at ``canvas_width`` W
every length is scaled by ``W / 64``, grid positions as ``W * c / grid_width`` and brush radii as
``size * W / 64``, so one program looks the same at any resolution. The agent sees
``observation_width`` × ``observation_width`` (64 as in SPIRAL; 32, 16 or 8 for reduced
configurations that learn within minutes on a CPU): the exact area average of the rendered canvas,
quantised to k/255. Brush radii and grid positions do not depend on the observation width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple

from spiral.envs import specs

# Lengths (brush radii) are given in pixels of a canvas this wide (SPIRAL.md §1's 64×64 canvas).
REFERENCE_WIDTH = 64
# The agent's and the discriminator's canvas width in SPIRAL; smaller widths are for reduced runs.
DEFAULT_OBSERVATION_WIDTH = 64
OBSERVATION_WIDTHS = (64, 32, 16, 8)
BACKGROUNDS = ("white", "black")
RENDERERS = ("numba", "jax", "libmypaint")
JUMP_STARTS = ("corrected", "released")


@dataclasses.dataclass(frozen=True)
class PaintConfig:
    """Options of the paint environment (SPIRAL.md §1). Frozen and hashable: static under ``jit``.

    Attributes:
      canvas_width: rendering resolution W: 64, 128, 256 (64·2^k).
      grid_width: the `end` / `control` grid is grid_width × grid_width; cell c sits at W·c/grid_width.
      episode_length: steps per episode in the environment's count: reset + (episode_length − 1) actions.
      brush_sizes: brush radii in pixels of a 64-wide canvas (scaled by W/64).
      use_color: colour canvas (3 channels, `red`/`green`/`blue` actions) or grayscale (1 channel).
      use_pressure: expose the `pressure` key; without it pressure is 1.0.
      background: "white" (grayscale ink is black) or "black" (grayscale ink is white).
      conditional: observations carry a `target` image drawn from a dataset.
      l2_reward: conditional only: reward −Σ(canvas − target)² on the last step.
      observation_width: width of the observed canvas and of the targets: 64 (SPIRAL), 32, 16 or
        8; the exact area average of the W×W rendering (W must be a multiple of it).
      jump_start: "corrected" (default): a stroke after a jump to (y, x) starts at (y, x), and
        the brush is this project's (envs/README.md). "released": DeepMind's released environment
        exactly: after a jump to (y, x) the next stroke starts at (y, y) (its
        ``_update_brush_params(y=y, x=y)``), the brush follows libmypaint 1.3.0 (stroke speed in
        basic radii per second), ``dtime`` is the C float 0.1f (libmypaint's tablet workaround
        then moves the brush from (y, x) to (y, y) without paint), and an observation at the
        start of every episode after the first reports ``episode_step`` = episode_length.
    """

    canvas_width: int = 64
    grid_width: int = 32
    episode_length: int = 20
    brush_sizes: Tuple[float, ...] = specs.DEFAULT_BRUSH_SIZES
    use_color: bool = False
    use_pressure: bool = True
    background: str = "white"
    conditional: bool = False
    l2_reward: bool = False
    observation_width: int = DEFAULT_OBSERVATION_WIDTH
    jump_start: str = "corrected"

    def __post_init__(self):
        # Normalise sequences to tuples so the config stays hashable whatever the caller passed.
        object.__setattr__(self, "brush_sizes", tuple(float(s) for s in self.brush_sizes))
        w = self.canvas_width
        if not isinstance(w, int) or w < REFERENCE_WIDTH or w % REFERENCE_WIDTH or (w & (w - 1)):
            raise ValueError(f"canvas_width must be 64 times a power of two (64, 128, 256, ...), got {w!r}.")
        ow = self.observation_width
        if (not isinstance(ow, int) or isinstance(ow, bool) or ow not in OBSERVATION_WIDTHS
                or w % ow):
            raise ValueError(f"observation_width must be one of {OBSERVATION_WIDTHS} (a divisor of "
                             f"canvas_width={w}), got {ow!r}.")
        if not isinstance(self.grid_width, int) or self.grid_width < 2:
            raise ValueError(f"grid_width must be an int >= 2, got {self.grid_width!r}.")
        if not isinstance(self.episode_length, int) or self.episode_length < 2:
            raise ValueError(f"episode_length must be an int >= 2 (reset + at least one action), "
                             f"got {self.episode_length!r}.")
        if not self.brush_sizes or min(self.brush_sizes) <= 0 or not all(map(math.isfinite, self.brush_sizes)):
            raise ValueError(f"brush_sizes must be a non-empty list of positive radii, got {self.brush_sizes}.")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}.")
        if self.jump_start not in JUMP_STARTS:
            raise ValueError(f"jump_start must be one of {JUMP_STARTS}, got {self.jump_start!r}.")
        if self.l2_reward and not self.conditional:
            raise ValueError("l2_reward=True needs conditional=True (the reward compares to a target).")

    # ---- derived values -------------------------------------------------------------------
    @property
    def released(self) -> bool:
        """True in DeepMind's released mode (``jump_start="released"``)."""
        return self.jump_start == "released"

    @property
    def channels(self) -> int:
        return 3 if self.use_color else 1

    @property
    def scale(self) -> int:
        """Pixels of this canvas per pixel of a 64-wide canvas (brush radii scale by this)."""
        return self.canvas_width // REFERENCE_WIDTH

    @property
    def downsample(self) -> int:
        """Canvas pixels per observation pixel along each axis (the area-average block width)."""
        return self.canvas_width // self.observation_width

    @property
    def observation_shape(self) -> tuple:
        """(observation_width, observation_width, channels): the canvas and target shape."""
        return (self.observation_width, self.observation_width, self.channels)

    @property
    def action_keys(self) -> tuple:
        return specs.action_keys(self.brush_sizes, self.use_color, self.use_pressure)

    @property
    def pixel_radii(self) -> tuple:
        """Brush radius of each size index, in pixels of this canvas."""
        return tuple(s * self.scale for s in self.brush_sizes)

    @property
    def background_value(self) -> float:
        return 1.0 if self.background == "white" else 0.0

    @property
    def ink_value(self) -> float:
        """Grayscale ink: the opposite of the background (black on white, white on black)."""
        return 1.0 - self.background_value

    def action_spec(self):
        return specs.action_spec(self.grid_width, self.brush_sizes, self.use_color, self.use_pressure)

    def observation_spec(self):
        return specs.observation_spec(self.action_keys, self.channels, self.observation_width,
                                      self.conditional)
