"""Compatibility with DeepMind's released environment: the ``jump_start`` option on every engine,
the ``episode_step``/``episode_length`` observations, the action-mask mapping, the 0.1f dtime.

References: DeepMind's ``LibMyPaint`` (its ``ACTION_MASKS`` table and episode counter, typed here
from its source), libmypaint itself (Debian's 1.6 through ctypes), and ``libmypaint_130.py``'s
port of its call sequence.
"""

import dm_env
import numpy as np
import pytest

import libmypaint_130 as lm
from conftest import skip_unless
from spiral.envs import Jump, PaintConfig, PaintEnv, Program, render_program, specs
from spiral.envs import libmypaint_engine as le
from spiral.envs import stroke as spec
from spiral.launch import flags as launch_flags

CELL = 32
RENDERERS = ["numba", "jax", "libmypaint"]


def cell(y, x):
    return y * CELL + x


def _env(renderer, **kwargs):
    if renderer == "libmypaint":
        skip_unless(le.available(), f"libmypaint or dry_brush missing: {le.INSTALL_HINT}")
    return PaintEnv(renderer=renderer, **kwargs)


def test_jump_start_is_validated_and_flows_from_the_flag():
    with pytest.raises(ValueError, match="jump_start must be one of \\('corrected', 'released'\\)"):
        PaintConfig(jump_start="typo")
    assert not PaintConfig().released and PaintConfig(jump_start="released").released
    values = launch_flags.default_values("mnist", run_dir="x", jump_start="released")
    assert launch_flags.config_from_values(values).env.jump_start == "released"
    assert launch_flags.config_from_values(launch_flags.default_values("mnist", run_dir="x")).env.jump_start == "corrected"


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("jump_start", ["corrected", "released"])
def test_the_stroke_after_a_jump_starts_at_y_x_or_at_y_y(renderer, jump_start):
    """Jump to (8, 50), then paint down to (60, 50): corrected starts at (8, 50); released at
    (8, 8), and the brush's move from (8, 50) to (8, 8) leaves no ink (libmypaint: 0.1f's tablet
    workaround; numba/JAX: the modelled pressure-0 move)."""
    # episode_length 8 as in test_numba_and_jax_paint_env_agree: the same static config, one compile.
    env = _env(renderer, jump_start=jump_start, seed=0, episode_length=8)
    env.reset()
    env.step({"flag": 0, "end": cell(4, 25), "control": 0, "size": 0, "pressure": 0})
    env.step({"flag": 1, "end": cell(30, 25), "control": cell(16, 25), "size": 1, "pressure": 4})
    jump, stroke = env.program.steps
    assert isinstance(jump, Jump) and jump.end == (4 / 32, 25 / 32)
    released = jump_start == "released"
    assert stroke.start == ((4 / 32, 4 / 32) if released else (4 / 32, 25 / 32))
    full = env.full_canvas()[..., 0]
    near_y_y, near_y_x = full[4:13, 4:13], full[4:13, 46:55]
    assert (near_y_y.min() < 0.7) == released
    assert (near_y_x.min() < 0.7) != released
    if released:
        assert np.all(full[3:12, 28:46] == 1.0), "the move from (y, x) to (y, y) must paint nothing"


def test_libmypaints_tablet_workaround_needs_the_float_dtime():
    """With a double 0.1 the released start's move would paint a line whose pressure rises from 0:
    0.1f (just above 0.1) is what makes libmypaint split it off at pressure 0."""
    skip_unless(le.available(), f"libmypaint or dry_brush missing: {le.INSTALL_HINT}")
    ink = {}
    for dtime in (spec.RELEASED_DTIME, 0.1):
        env = PaintEnv(renderer="libmypaint", jump_start="released", seed=0, episode_length=4)
        env._engine.dtime = dtime
        env.reset()
        env.step({"flag": 0, "end": cell(4, 25), "control": 0, "size": 0, "pressure": 0})
        env.step({"flag": 1, "end": cell(30, 25), "control": cell(16, 25), "size": 1, "pressure": 4})
        ink[dtime] = float((1 - env.full_canvas()[3:12, 28:46, 0]).sum())
    assert spec.RELEASED_DTIME > 0.1
    assert ink[spec.RELEASED_DTIME] == 0.0 and ink[0.1] > 10.0


def _random_actions(config, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = {k: int(rng.integers(s.num_values)) for k, s in config.action_spec().items()}
        a["flag"] = int(rng.random() < 0.6)
        out.append(a)
    return out


def test_paint_env_strokes_are_deepminds_in_the_released_mode():
    """The released PaintEnv's program has the strokes DeepMind's call sequence (the port's
    ``DeepMindEnv``, with its own typo) sends to libmypaint: same start, control, end, pressures."""
    env = PaintEnv(jump_start="released", seed=1)
    port = lm.DeepMindEnv(specs.DEFAULT_BRUSH_SIZES)
    env.reset()
    port.reset()
    for a in _random_actions(env.config, 19, seed=4):
        before = dict(port.params)
        port.step(a["flag"], a["end"], a["control"], a["size"], float(specs.PRESSURE_VALUES[a["pressure"]]))
        env.step(a)
        step = env.program.steps[-1]
        if a["flag"]:
            assert step.start == (before["y"] / 64, before["x"] / 64)
            assert step.end == (port.params["y"] / 64, port.params["x"] / 64)
            assert step.pressure[1] == pytest.approx(port.params["pressure"])
    assert any(isinstance(s, Jump) for s in env.program.steps)


@pytest.mark.parametrize("jump_start", ["corrected", "released"])
def test_episode_step_and_length_follow_deepminds_counter(jump_start):
    """0 at reset, k + 1 after k actions, episode_length at LAST; DeepMind's reset after the first
    episode reports its stale counter (the episode length) in the released mode."""
    env = PaintEnv(jump_start=jump_start, episode_length=5, seed=0)
    spec_ = env.observation_spec()
    assert spec_["episode_step"] == dm_env.specs.Array((), np.int32, name="episode_step")
    assert spec_["episode_length"] == dm_env.specs.Array((), np.int32, name="episode_length")
    steps, lengths = [], []
    ts = env.reset()
    for a in _random_actions(env.config, 10, seed=0):
        for key, s in spec_.items():
            s.validate(ts.observation[key])
        steps.append((int(ts.step_type), int(ts.observation["episode_step"])))
        lengths.append(int(ts.observation["episode_length"]))
        ts = env.step(a)
    first_again = 5 if jump_start == "released" else 0
    assert steps == [(0, 0), (1, 2), (1, 3), (1, 4), (2, 5), (0, first_again), (1, 2), (1, 3), (1, 4), (2, 5)]
    assert lengths == [5] * 10


def test_action_mask_dict_is_deepminds_table():
    """DeepMind's LibMyPaint.ACTION_MASKS, with keys removed as its constructor removes them."""
    deepmind = {
        "paint": dict(control=1.0, end=1.0, flag=1.0, pressure=1.0, size=1.0, red=1.0, green=1.0, blue=1.0),
        "move": dict(control=0.0, end=1.0, flag=1.0, pressure=0.0, size=0.0, red=0.0, green=0.0, blue=0.0),
    }
    for kwargs in (dict(use_color=True), dict(), dict(use_pressure=False, brush_sizes=(2,))):
        env = PaintEnv(seed=0, **kwargs)
        keys = list(env.action_spec())
        ts = env.reset()
        got = specs.action_mask_dict(keys, ts.observation["action_mask"])
        assert list(got) == [k for k in specs.DEEPMIND_ACTION_ORDER if k in keys]
        assert got == {k: deepmind["move"][k] for k in keys}
        ts = env.step({**{k: 0 for k in keys}, "flag": 1, "end": cell(10, 10)})
        assert specs.action_mask_dict(keys, ts.observation["action_mask"]) == {k: deepmind["paint"][k] for k in keys}
    with pytest.raises(ValueError, match="one value per key"):
        specs.action_mask_dict(["flag", "end"], np.ones(3))


def test_released_programs_replay_exactly_and_old_json_reads_as_corrected():
    env = PaintEnv(jump_start="released", seed=3)
    env.reset()
    for a in _random_actions(env.config, 19, seed=2):
        env.step(a)
    program = Program.from_json(env.program.to_json())
    assert program == env.program and program.jump_start == "released"
    np.testing.assert_array_equal(render_program(program), env.full_canvas())
    corrected = Program(program.seed, program.episode, steps=program.steps)
    assert not np.array_equal(render_program(corrected), env.full_canvas())
    data = program.to_dict()
    del data["jump_start"]
    assert Program.from_dict(data).jump_start == "corrected"


@pytest.mark.parametrize("jump_start", ["corrected", "released"])
def test_numba_and_jax_paint_env_agree(jump_start):
    """RENDERER.md's uint8 contract between the numba and JAX engines through PaintEnv: levels
    differ at < 1e-3 of pixels, by more than one level only rarely (mypaint's anti-aliased mask is
    discontinuous where a small dab's centre crosses a pixel edge, so the engines' ~1e-5 px
    differences can flip such a pixel: here 1 pixel of 57k, in a 970-dab size-1 stroke)."""
    envs = {r: PaintEnv(renderer=r, jump_start=jump_start, episode_length=8, seed=7) for r in ("numba", "jax")}
    actions = _random_actions(envs["numba"].config, 14, seed=5)
    levels = {}
    for name, env in envs.items():
        env.reset()
        levels[name] = np.array([np.rint(env.step(a).observation["canvas"] * 255) for a in actions])
    diff = np.abs(levels["numba"] - levels["jax"])
    assert (diff > 0).mean() < 1e-3 and (diff > 1).mean() < 1e-4
