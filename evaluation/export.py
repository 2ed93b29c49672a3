"""Write what an agent painted: PNG grids, stroke-by-stroke GIFs, programs as JSON and SVG, 256×256 re-renders.

* JSON: ``Program.to_json`` (``spiral.envs.program``): every stroke and jump, resolution-free, with
  the env seed; ``Program.from_json`` + ``render_program`` replays it exactly (numba engine).
* SVG: each stroke one ``<path d="M start Q control end">`` with ``stroke-width``,
  ``stroke-opacity`` and ``stroke`` colour, on a background ``<rect>``; jumps draw nothing. The
  brush is a spray of soft, jittered dabs (``spiral.envs.stroke``), which no SVG primitive draws,
  so each path is the **box that best fits** the brush's mean ink profile across a straight
  stroke at that pressure (``STROKE_APPEARANCE``, measured with the numba engine by
  ``calibrate_stroke_appearance`` and checked by a test): width = 2 · k(p) · radius, opacity a(p),
  p = the stroke's mean pressure. Exact attributes (radius, pressures) ride along as ``data-*``.
* Re-render: ``render_program(program, 256)``, SPIRAL++'s resolution independence: the same
  program at 4× the pixels (dab noise and all).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from spiral.actors.monitoring import image_grid
from spiral.envs import Program, Stroke, render_program
from spiral.envs import stroke as brush_spec
from spiral.envs.config import REFERENCE_WIDTH, PaintConfig
from spiral.envs.engines import make_engine
from spiral.envs.levels import quantise

# The brush's look per pressure (PRESSURE_VALUES 0.1 … 1.0): best-fitting box half-width in units
# of the brush radius, and its opacity. From ``calibrate_stroke_appearance()`` (4 seeds, radius
# 16 px on a 256 canvas); tests/test_export.py re-measures it. Higher pressure jitters the dabs
# further (offset 1.4·p·radius), so strokes widen with pressure.
STROKE_PRESSURES = tuple(np.round(np.linspace(0.1, 1.0, 10), 3).tolist())
STROKE_HALF_WIDTH = (0.54, 0.72, 0.97, 1.16, 1.41, 1.66, 1.97, 2.22, 2.47, 2.79)
STROKE_OPACITY = (0.376, 0.531, 0.588, 0.637, 0.657, 0.673, 0.675, 0.687, 0.697, 0.695)


def calibrate_stroke_appearance(pressures: Sequence[float] = STROKE_PRESSURES, seeds: int = 4,
                                radius: float = 16.0, width: int = 256):
    """Measure (half-width / radius, opacity) of the best box fit to a straight stroke's ink profile.

    A horizontal stroke across a ``width`` canvas, constant pressure, black ink on white; the ink
    (1 − canvas) is averaged along its middle half and over ``seeds`` dab-noise seeds, then fitted
    by a box: for each half-width h the least-squares opacity is the mean ink inside; the h with the
    smallest squared error wins.
    """
    config = PaintConfig(canvas_width=width)
    middle, d = width // 2, (np.arange(width) + 0.5 - width / 2) / radius
    half_widths, opacities = [], []
    for p in pressures:
        profile = np.zeros(width)
        for seed in range(seeds):
            engine = make_engine("numba", config)
            engine.reset()
            engine.paint((middle, 0.08 * width), (middle, 0.5 * width), (middle, 0.92 * width), p, p,
                         radius, (0.0,), brush_spec.stroke_key(seed, 0, 0))
            canvas = engine.full_canvas()[:, int(0.25 * width):int(0.75 * width), 0]
            profile += (1.0 - canvas).mean(axis=1) / seeds
        best = (np.inf, 0.0, 0.0)
        for h in np.linspace(0.2, 6.0, 581):
            inside = np.abs(d) < h
            a = profile[inside].mean()
            error = np.sum((profile - a * inside) ** 2)
            if error < best[0]:
                best = (error, h, a)
        half_widths.append(best[1])
        opacities.append(best[2])
    return np.array(half_widths), np.array(opacities)


def stroke_appearance(pressure: float) -> tuple[float, float]:
    """(half-width / radius, opacity) of the SVG box for a stroke of this mean pressure."""
    if not 0.0 <= pressure <= 1.0:
        raise ValueError(f"pressure must be in [0, 1], got {pressure}.")
    return (float(np.interp(pressure, STROKE_PRESSURES, STROKE_HALF_WIDTH)),
            float(np.interp(pressure, STROKE_PRESSURES, STROKE_OPACITY)))


def _rgb(values: Sequence[float]) -> str:
    levels = [int(round(255 * float(v))) for v in values]
    if len(levels) == 1:
        levels = levels * 3
    if len(levels) != 3 or min(levels) < 0 or max(levels) > 255:
        raise ValueError(f"a colour needs 1 (gray) or 3 (RGB) values in [0, 1], got {values}.")
    return f"rgb({levels[0]},{levels[1]},{levels[2]})"


def program_to_svg(program: Program, size: int = 256) -> str:
    """The program as an SVG document, ``size`` user units (pixels) square; one path per stroke."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    background = _rgb([1.0 if program.background == "white" else 0.0])
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
             f'viewBox="0 0 {size} {size}">',
             f'<rect x="0" y="0" width="{size}" height="{size}" fill="{background}"/>']

    def xy(point) -> str:  # program points are (y, x) / canvas width; SVG wants x y
        return f"{point[1] * size:.3f} {point[0] * size:.3f}"

    for i, step in enumerate(program.steps):
        if not isinstance(step, Stroke):
            continue
        pressure = 0.5 * (step.pressure[0] + step.pressure[1])
        half_width, opacity = stroke_appearance(pressure)
        lines.append(
            f'<path d="M {xy(step.start)} Q {xy(step.control)} {xy(step.end)}" fill="none" '
            f'stroke="{_rgb(step.color)}" stroke-width="{2 * half_width * step.radius * size:.3f}" '
            f'stroke-opacity="{opacity:.3f}" stroke-linecap="round" data-step="{i}" '
            f'data-radius="{step.radius:.6g}" data-pressure="{step.pressure[0]:.4g} {step.pressure[1]:.4g}"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _index(values: Sequence[float], value: float, what: str, step: int) -> int:
    """The index of ``value`` in ``values`` (to float32 rounding); ValueError if it is not one."""
    i = int(np.argmin(np.abs(np.asarray(values, np.float64) - value)))
    if abs(values[i] - value) > 1e-5 * max(1.0, abs(value)):
        raise ValueError(f"program step {step}: {what} {value} is not one of the action values {list(values)}.")
    return i


def program_to_actions(program: Program, env_config: PaintConfig) -> list[dict]:
    """The ``PaintEnv`` actions that paint ``program`` (the inverse of what the environment records).

    Grid cells come back from the normalised points (c / grid_width), sizes from the radii
    (radius · 64 = brush size), pressures and colours from their value tables; keys that a jump
    ignores are 0. Stepping a ``PaintEnv`` with ``env_config``'s options and the program's seed
    through these actions repaints the program's canvas exactly. Raises ValueError for a program
    that does not fit the action space (off-grid points, unknown radii).
    """
    from spiral.envs import specs  # pylint: disable=import-outside-toplevel
    g = env_config.grid_width
    keys = env_config.action_keys

    def cell(point, step: int) -> int:
        y, x = point[0] * g, point[1] * g
        if abs(y - round(y)) > 1e-6 or abs(x - round(x)) > 1e-6 or not (0 <= round(y) < g and 0 <= round(x) < g):
            raise ValueError(f"program step {step}: point {point} is not a cell of the {g}×{g} grid.")
        return int(round(y)) * g + int(round(x))

    actions = []
    for i, step in enumerate(program.steps):
        action = {k: 0 for k in keys}
        action["end"] = cell(step.end, i)
        if isinstance(step, Stroke):
            action["flag"] = specs.PAINT
            action["control"] = cell(step.control, i)
            if "size" in keys:
                action["size"] = _index(env_config.brush_sizes, step.radius * REFERENCE_WIDTH,
                                        "radius·64", i)
            if "pressure" in keys:
                action["pressure"] = _index(specs.PRESSURE_VALUES.tolist(), step.pressure[1], "pressure", i)
            if env_config.use_color:
                for key, value in zip(specs.COLOR_KEYS, step.color):
                    action[key] = _index(specs.COLOR_VALUES.tolist(), value, key, i)
        actions.append(action)
    return actions


# ------------------------------------------------------------------------------------- pictures

def to_uint8(image) -> np.ndarray:
    """float [0, 1] or uint8 image → uint8 (values outside [0, 1] raise: nothing is clipped)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.size and (np.isnan(image).any() or image.min() < 0.0 or image.max() > 1.0):
        raise ValueError("float images must lie in [0, 1].")
    return quantise(image)


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [H, W, C] by an integer ``scale`` (pixels stay visible)."""
    if scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale}.")
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1) if scale > 1 else image


def _pil(image: np.ndarray) -> Image.Image:
    image = to_uint8(image)
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(path: str, image, scale: int = 1) -> str:
    _pil(enlarge(to_uint8(image), scale)).save(path)
    return path


def side_by_side(canvases: np.ndarray, targets: Optional[np.ndarray], pad: int = 1) -> np.ndarray:
    """[N, H, W, C] canvases with their targets to the right (gray ``pad`` between), uint8."""
    canvases = to_uint8(canvases)
    if targets is None:
        return canvases
    targets = to_uint8(targets)
    gap = np.full(canvases.shape[:2] + (pad,) + canvases.shape[3:], 128, np.uint8)
    return np.concatenate([canvases, gap, targets], axis=2)


def sample_grid(canvases: np.ndarray, targets: Optional[np.ndarray] = None, columns: Optional[int] = None,
                scale: int = 2) -> np.ndarray:
    """One uint8 image: the final canvases in a grid, each beside its target when conditional."""
    tiles = side_by_side(canvases, targets)
    if columns is None:
        columns = int(np.ceil(np.sqrt(len(tiles)))) if targets is None else max(
            1, int(np.ceil(np.sqrt(len(tiles) / 2))))
    # Pairs (canvas | target) are 1 pixel apart; a wider gap between pairs keeps them apart.
    return enlarge(image_grid(tiles, columns=columns, pad=2 if targets is None else 6), scale)


def save_gif(path: str, frames: np.ndarray, target: Optional[np.ndarray] = None, scale: int = 4,
             frame_ms: int = 200, hold_ms: int = 1500) -> str:
    """An episode's frames [T+1, H, W, C] as an animated GIF (target beside each frame if given).

    The last frame (the finished painting) is held for ``hold_ms``.
    """
    frames = to_uint8(frames)
    if frames.ndim != 4 or len(frames) < 1:
        raise ValueError(f"frames must be [T+1, H, W, C], got shape {frames.shape}.")
    if target is not None:
        frames = side_by_side(frames, np.broadcast_to(to_uint8(target), frames.shape))
    images = [_pil(enlarge(f, scale)) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False)
    return path


def write_program(directory: str, name: str, program: Program, render_width: int = 256,
                  renderer: str = "numba") -> dict:
    """``name``.json, ``name``.svg and ``name``_<w>.png (re-rendered at ``render_width``) in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, f"{name}.json"),
             "svg": os.path.join(directory, f"{name}.svg"),
             "render": os.path.join(directory, f"{name}_{render_width}.png")}
    with open(paths["json"], "w") as f:
        f.write(program.to_json(indent=1))
    with open(paths["svg"], "w") as f:
        f.write(program_to_svg(program, render_width))
    save_png(paths["render"], render_program(program, render_width, renderer))
    return paths
