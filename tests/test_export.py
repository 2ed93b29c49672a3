"""Exported programs reproduce the canvases: JSON replayed (engine and PaintEnv), SVG rasterised, GIF, grid.

The SVG is checked with a tiny independent rasteriser written here (xml + numpy: each path a
quadratic Bezier, every pixel within half the stroke width covered at the path's opacity),
against the environment's canvases of the same programs.
"""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageSequence

from spiral.envs import PaintConfig, Program, observe_canvas, render_program
from spiral.evaluation import export, painting

SVG = "{http://www.w3.org/2000/svg}"


def _rgb(text):
    return np.array(re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", text).groups(), float) / 255.0


def rasterise_svg(svg_text: str, width: int) -> np.ndarray:
    """A deliberately plain rasteriser of the exported SVG: float64 [width, width, 3]."""
    root = ET.fromstring(svg_text)
    scale = width / float(root.get("width"))
    canvas = np.ones((width, width, 3)) * _rgb(root.find(SVG + "rect").get("fill"))
    yy, xx = np.mgrid[0:width, 0:width] + 0.5
    for path in root.findall(SVG + "path"):
        numbers = [float(v) * scale for v in re.findall(r"-?\d+(?:\.\d+)?", path.get("d"))]
        assert path.get("d").startswith("M") and " Q " in path.get("d") and len(numbers) == 6
        sx, sy, cx, cy, ex, ey = numbers
        length = np.hypot(cx - sx, cy - sy) + np.hypot(ex - cx, ey - cy)
        t = np.linspace(0.0, 1.0, int(length * 8) + 2)[:, None]
        points = (1 - t) ** 2 * [sx, sy] + 2 * (1 - t) * t * [cx, cy] + t ** 2 * [ex, ey]
        distance2 = np.full((width, width), np.inf)
        for px, py in points:
            distance2 = np.minimum(distance2, (xx - px) ** 2 + (yy - py) ** 2)
        half = float(path.get("stroke-width")) * scale / 2
        cover = (distance2 <= half * half) * float(path.get("stroke-opacity"))
        canvas = canvas * (1 - cover[..., None]) + _rgb(path.get("stroke")) * cover[..., None]
    return canvas


@pytest.fixture(scope="module")
def sparse_episodes():
    """Random programs of 5 actions on a 16-cell grid (sparse enough to tell strokes apart)."""
    config = PaintConfig(episode_length=6, grid_width=16, brush_sizes=(1, 2, 4, 8))
    return config, painting.paint_episodes(config, painting.UniformPolicy(config, seed=7), 12, seed=11)


def test_json_program_replays_to_the_same_canvas(sparse_episodes):
    """JSON → Program → render_program (numba, the program's seed) → observation == the final canvas,
    bit for bit; and the same program stepped through a fresh PaintEnv as actions."""
    config, episodes = sparse_episodes
    painted = 0
    for i, program in enumerate(episodes.programs):
        restored = Program.from_json(program.to_json())
        assert restored == program
        _, levels = observe_canvas(render_program(restored, config.canvas_width), config.observation_width)
        np.testing.assert_array_equal(levels, episodes.final_canvases[i])
        env = painting.make_env(config, restored.seed)
        env.reset()
        for action in export.program_to_actions(restored, config):
            env.step(action)
        np.testing.assert_array_equal(env.canvas_uint8(), episodes.final_canvases[i])
        assert env.program == restored
        painted += len(program.strokes)
    assert painted > 10  # the check covered strokes, not only jumps


def test_replay_differs_with_another_seed(sparse_episodes):
    """The dab noise matters: the same strokes with another seed give another canvas (so the
    bit-exact replay above really depends on the recorded seed)."""
    config, episodes = sparse_episodes
    program = max(episodes.programs, key=lambda p: len(p.strokes))
    same = render_program(program, config.canvas_width)
    other = render_program(program, config.canvas_width, seed=program.seed + 1)
    assert np.abs(same - other).max() > 0.05


def test_program_to_actions_refuses_off_grid_points():
    config = PaintConfig(grid_width=16)
    program = Program(seed=1, episode=0, steps=[])
    from spiral.envs import Jump
    program.steps.append(Jump((0.5, 0.03)))
    with pytest.raises(ValueError, match="not a cell"):
        export.program_to_actions(program, config)


def test_svg_rasterised_matches_the_canvas(sparse_episodes):
    """Each program's SVG, rasterised independently, looks like its own canvas: its error is well
    below the blank canvas's, and below the error against any other program's canvas."""
    config, episodes = sparse_episodes
    width = config.canvas_width
    canvases = [render_program(p, width)[..., 0] for p in episodes.programs]
    rasters = [rasterise_svg(export.program_to_svg(p, 256), width).mean(axis=-1) for p in episodes.programs]
    errors = np.array([[np.abs(r - c).mean() for c in canvases] for r in rasters])
    blank = np.array([np.abs(1.0 - c).mean() for c in canvases])
    inked = blank > 0.02  # programs that painted something visible
    assert inked.sum() >= 6
    own = np.diag(errors)[inked]
    assert np.mean(own / blank[inked]) < 0.6, own / blank[inked]
    # Each canvas is best explained by its own SVG (a swapped x/y or a wrong scale fails this).
    best = np.argmin(errors[:, inked], axis=0)
    assert np.mean(best == np.flatnonzero(inked)) >= 0.8


def test_svg_holds_each_stroke_with_width_opacity_colour():
    program = Program(seed=3, episode=0, background="black", channels=3)
    from spiral.envs import Jump, Stroke
    program.steps += [Stroke((0.25, 0.5), (0.5, 0.5), (0.75, 0.25), (0.3, 0.7), 4 / 64, (1.0, 0.0, 0.5)),
                      Jump((0.1, 0.1))]
    root = ET.fromstring(export.program_to_svg(program, 128))
    assert root.find(SVG + "rect").get("fill") == "rgb(0,0,0)"
    (path,) = root.findall(SVG + "path")
    assert path.get("d") == "M 64.000 32.000 Q 64.000 64.000 32.000 96.000"   # x y order
    half, opacity = export.stroke_appearance(0.5)
    assert float(path.get("stroke-width")) == pytest.approx(2 * half * 4 / 64 * 128, abs=1e-3)
    assert float(path.get("stroke-opacity")) == pytest.approx(opacity, abs=1e-3)
    assert path.get("stroke") == "rgb(255,0,128)"


def test_stroke_appearance_table_is_what_the_engine_measures():
    half_widths, opacities = export.calibrate_stroke_appearance()
    np.testing.assert_allclose(half_widths, export.STROKE_HALF_WIDTH, atol=0.011)
    np.testing.assert_allclose(opacities, export.STROKE_OPACITY, atol=0.0011)
    # Higher pressure spreads the dabs: the fitted stroke widens monotonically.
    assert np.all(np.diff(half_widths) > 0)


def test_gif_frames_are_the_episode(sparse_episodes, tmp_path):
    config, episodes = sparse_episodes
    i = max(range(len(episodes)), key=lambda k: len(episodes.programs[k].strokes))
    path = export.save_gif(str(tmp_path / "e.gif"), episodes.frames[i], scale=2)
    frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(Image.open(path))]
    # Pillow merges identical consecutive frames (jumps paint nothing): compare the distinct ones.
    expected = [episodes.frames[i][0]]
    for frame in episodes.frames[i][1:]:
        if not np.array_equal(frame, expected[-1]):
            expected.append(frame)
    assert len(frames) == len(expected) >= 2
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got, export.enlarge(want, 2)[..., 0])


def test_grid_puts_each_target_beside_its_canvas():
    canvases = np.zeros((3, 8, 8, 1), np.uint8)
    targets = np.full((3, 8, 8, 1), 255, np.uint8)
    tiles = export.side_by_side(canvases, targets)
    assert tiles.shape == (3, 8, 17, 1)
    assert (tiles[:, :, :8] == 0).all() and (tiles[:, :, 9:] == 255).all() and (tiles[:, :, 8] == 128).all()
    grid = export.sample_grid(canvases, targets, columns=3, scale=1)
    assert grid.shape == (6 + 8 + 6, 3 * (17 + 6) + 6, 1)
    with pytest.raises(ValueError, match="lie in"):
        export.to_uint8(np.full((2, 2, 1), 1.5))


def test_paint_episodes_checks_its_inputs():
    config = PaintConfig()
    policy = painting.UniformPolicy(config, 0)
    with pytest.raises(ValueError, match="targets exactly when"):
        painting.paint_episodes(config, policy, 2, 0, targets=np.zeros((2, 64, 64, 1), np.uint8))
    conditional = PaintConfig(conditional=True)
    with pytest.raises(ValueError, match="as many targets"):
        painting.paint_episodes(conditional, policy, 3, 0, targets=np.zeros((2, 64, 64, 1), np.uint8))


def test_conditional_episode_i_paints_target_i():
    """Episode i's observations carry targets[i] (what the policy is shown), in batches of 2."""
    config = PaintConfig(conditional=True, episode_length=3)
    targets = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 64, 64, 1), np.uint8)
    seen = []

    class Recording(painting.UniformPolicy):
        def act(self, observations, is_first):
            if is_first:
                seen.extend(float(o["target"].mean()) * 255 for o in observations)
            return super().act(observations, is_first)

    episodes = painting.paint_episodes(config, Recording(config, 0), 5, 0, targets, batch_size=2)
    np.testing.assert_allclose(seen, np.arange(5), atol=1e-4)
    np.testing.assert_array_equal(episodes.targets, targets)
    assert len(episodes.programs) == 5 and episodes.frames.shape == (5, 3, 64, 64, 1)
