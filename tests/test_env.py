"""PaintEnv: the dm_env contract, SPIRAL's episode semantics, programs and replay (numba engine)."""

import json

import dm_env
import numpy as np
import pytest

from spiral.envs import PaintEnv, Program, Stroke, Jump, observe_canvas, render_program, specs
from spiral.envs import stroke as spec

CELL = 32


def cell(y, x):
    return y * CELL + x


def paint(end, control=None, size=2, pressure=9, **extra):
    action = {"flag": 1, "end": end, "control": end if control is None else control, "size": size,
              "pressure": pressure}
    action.update(extra)
    return action


def jump(end):
    return {"flag": 0, "end": end, "control": 0, "size": 0, "pressure": 0}


def random_actions(env, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = {k: int(rng.integers(s.num_values)) for k, s in env.action_spec().items()}
        a["flag"] = int(rng.random() < 0.8)
        out.append(a)
    return out


def validate(env, timestep):
    for key, s in env.observation_spec().items():
        s.validate(timestep.observation[key])
    assert set(timestep.observation) == set(env.observation_spec())


def test_specs_and_every_observation_validate():
    env = PaintEnv(seed=0)
    assert env.action_spec() == specs.action_spec()
    ts = env.reset()
    validate(env, ts)
    for a in random_actions(env, 40):
        ts = env.step(a)
        validate(env, ts)
        canvas = ts.observation["canvas"]
        # Quantised: storing as uint8 is lossless, and canvas_uint8() is that storage.
        levels = env.canvas_uint8()
        assert levels.dtype == np.uint8 and levels.shape == (64, 64, 1)
        np.testing.assert_array_equal(levels.astype(np.float32) / np.float32(255), canvas)
        np.testing.assert_array_equal((canvas * 255).astype(np.uint8), levels)


def test_episode_sequence_counts_discounts_and_restart_after_last():
    env = PaintEnv(episode_length=20, seed=1)
    actions = random_actions(env, 60)
    ts = env.reset()
    assert ts.first() and ts.reward is None and ts.discount is None
    types = []
    for a in actions[:19]:
        ts = env.step(a)
        types.append(ts.step_type)
        assert ts.reward == 0.0
        assert ts.discount == (0.0 if ts.last() else 1.0)
    assert types == [dm_env.StepType.MID] * 18 + [dm_env.StepType.LAST]
    assert len(env.program.steps) == 19
    # A step after LAST starts a new episode and ignores its action.
    ts = env.step(actions[19])
    assert ts.first() and env.episode == 1
    assert np.all(ts.observation["canvas"] == 1.0)
    assert len(env.program.steps) == 0


def test_step_before_reset_starts_an_episode():
    env = PaintEnv(seed=0)
    ts = env.step(paint(cell(10, 10)))
    assert ts.first() and np.all(ts.observation["canvas"] == 1.0)


def test_masks_after_reset_paint_and_jump():
    env = PaintEnv(use_color=True, seed=0)
    keys = list(env.action_spec())
    jump_mask = [1.0 if k in ("flag", "end") else 0.0 for k in keys]
    assert list(env.reset().observation["action_mask"]) == jump_mask
    colour = dict(red=3, green=4, blue=5)
    assert list(env.step(paint(cell(5, 5), **colour)).observation["action_mask"]) == [1.0] * len(keys)
    assert list(env.step({**jump(cell(9, 9)), **colour}).observation["action_mask"]) == jump_mask


def test_brush_starts_at_origin_and_jump_moves_to_y_x_not_y_y():
    """The released env stored x as y after a jump; here a stroke after a jump starts at (y, x)."""
    env = PaintEnv(seed=0)
    env.reset()
    env.step(paint(cell(20, 20), control=cell(10, 10)))
    first = env.program.steps[0]
    assert first.start == (0.0, 0.0) and first.end == (20 / 32, 20 / 32)
    env.reset()
    env.step(jump(cell(4, 25)))                      # y ≠ x
    env.step(paint(cell(30, 25), control=cell(16, 25), size=1))
    stroke = env.program.steps[-1]
    assert isinstance(env.program.steps[0], Jump) and env.program.steps[0].end == (4 / 32, 25 / 32)
    assert stroke.start == (4 / 32, 25 / 32)
    # And the paint really starts there: ink near (8, 50) px, none near the buggy (8, 8).
    full = env.full_canvas()[..., 0]
    assert full[8:12, 49:53].min() < 0.6
    assert np.all(full[4:13, 4:13] == 1.0)


def test_pressure_runs_on_from_the_previous_stroke_and_is_constant_after_a_jump():
    env = PaintEnv(seed=0)
    env.reset()
    env.step(paint(cell(5, 5), pressure=2))       # after reset: constant
    env.step(paint(cell(9, 5), pressure=7))       # continues: 0.3 → 0.8
    env.step(jump(cell(20, 20)))
    env.step(paint(cell(25, 25), pressure=4))     # after a jump: constant again
    p = specs.PRESSURE_VALUES
    strokes = env.program.strokes
    assert strokes[0].pressure == (p[2], p[2])
    assert strokes[1].pressure == (p[2], p[7])
    assert strokes[2].pressure == (p[4], p[4])


def test_without_pressure_and_with_one_size_the_keys_are_absent():
    env = PaintEnv(use_pressure=False, brush_sizes=(3,), seed=0)
    assert list(env.action_spec()) == ["flag", "end", "control"]
    env.reset()
    env.step({"flag": 1, "end": cell(10, 10), "control": cell(0, 10)})
    stroke = env.program.strokes[0]
    assert stroke.pressure == (1.0, 1.0) and stroke.radius == 3 / 64


@pytest.mark.parametrize("action, message", [
    ({"flag": 1, "end": 3, "control": 4, "size": 0}, "missing"),
    ({"flag": 1, "end": 1024, "control": 4, "size": 0, "pressure": 1}, "'end' = 1024 is out of range; valid range is \\[0, 1023\\]"),
    ({"flag": 1, "end": 3, "control": 4, "size": 6, "pressure": 1}, "'size' = 6"),
    ({"flag": 1, "end": 3.0, "control": 4, "size": 0, "pressure": 1}, "'end' must be an integer"),
    ({"flag": True, "end": 3, "control": 4, "size": 0, "pressure": 1}, "'flag' must be an integer"),
    ({"flag": 1, "end": 3, "control": 4, "size": 0, "pressure": 1, "red": 0}, "unknown"),
])
def test_bad_actions_are_rejected(action, message):
    env = PaintEnv(seed=0)
    env.reset()
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="canvas_width"):
        PaintEnv(canvas_width=100)
    with pytest.raises(ValueError, match="background"):
        PaintEnv(background="grey")
    with pytest.raises(ValueError, match="renderer"):
        PaintEnv(renderer="cairo")
    with pytest.raises(ValueError, match="seed"):
        PaintEnv(seed=-1)
    with pytest.raises(ValueError, match="l2_reward"):
        PaintEnv(l2_reward=True)
    with pytest.raises(ValueError, match="uint8 levels .* or float32"):
        PaintEnv(targets=np.zeros((2, 64, 64, 1), np.float64))
    with pytest.raises(ValueError, match="shape"):
        PaintEnv(targets=np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        PaintEnv(targets=np.full((2, 64, 64, 1), 2.0, np.float32))


def test_same_seed_same_canvas_other_seed_other_noise():
    canvases = []
    for seed in (5, 5, 6):
        env = PaintEnv(seed=seed)
        env.reset()
        for a in random_actions(env, 19, seed=3):
            ts = env.step(a)
        canvases.append(ts.observation["canvas"])
    np.testing.assert_array_equal(canvases[0], canvases[1])
    assert not np.array_equal(canvases[0], canvases[2])


def test_program_replay_json_round_trip_and_other_resolutions():
    env = PaintEnv(use_color=True, seed=9)
    env.reset()
    for a in random_actions(env, 19, seed=4):
        ts = env.step(a)
    program = Program.from_json(env.program.to_json())
    assert program == env.program
    json.loads(env.program.to_json())   # plain JSON
    replay = render_program(program)
    np.testing.assert_array_equal(replay, env.full_canvas())
    np.testing.assert_array_equal(observe_canvas(replay)[0], ts.observation["canvas"])
    # Another seed: the same strokes, different dab noise.
    assert not np.array_equal(render_program(program, seed=10), replay)
    # At 256 the program looks the same: its 64×64 view is close to the 64 render.
    big = observe_canvas(render_program(program, canvas_width=256))[0]
    assert np.abs(big - ts.observation["canvas"]).mean() < 0.03


def test_large_canvas_observation_is_the_exact_area_average():
    env = PaintEnv(canvas_width=128, seed=2)
    env.reset()
    for a in random_actions(env, 10, seed=6):
        env.step(a)
    full = env.full_canvas().astype(np.float64)
    average = full.reshape(64, 2, 64, 2, 1).mean(axis=(1, 3))
    np.testing.assert_array_equal(env.canvas_uint8(), np.rint(average * 255).astype(np.uint8))
    assert env.program.strokes[0].radius in {s / 64 for s in specs.DEFAULT_BRUSH_SIZES}


def test_black_background_paints_white_ink():
    env = PaintEnv(background="black", seed=0)
    assert np.all(env.reset().observation["canvas"] == 0.0)
    ts = env.step(paint(cell(20, 20), control=cell(0, 20), size=3))
    assert ts.observation["canvas"].max() == 1.0 and env.program.strokes[0].color == (1.0,)


def test_conditional_targets_l2_reward_and_fixed_target_index():
    rng = np.random.default_rng(0)
    # Float targets on the k/255 grid (off-grid floats are quantised: test_env_observation.py).
    targets = (rng.integers(0, 256, (7, 64, 64, 1)) / 255).astype(np.float32)
    env = PaintEnv(targets=targets, l2_reward=True, episode_length=5, seed=3)
    assert "target" in env.observation_spec()
    ts = env.reset()
    validate(env, ts)
    index = env.target_index
    assert index == spec.target_index(3, 0, 7)
    np.testing.assert_array_equal(ts.observation["target"], targets[index])
    for a in random_actions(env, 4, seed=1):
        ts = env.step(a)
        validate(env, ts)
    assert ts.last()
    expected = -np.sum((ts.observation["canvas"].astype(np.float64) - targets[index]) ** 2)
    assert ts.reward == pytest.approx(expected)
    env.set_next_target(6)
    ts = env.step(random_actions(env, 1)[0])
    assert ts.first() and env.target_index == 6
    np.testing.assert_array_equal(ts.observation["target"], targets[6])
    with pytest.raises(ValueError, match="target index"):
        env.set_next_target(7)
    # Without l2_reward the conditional env's reward stays 0.
    env = PaintEnv(targets=targets, episode_length=2, seed=3)
    env.reset()
    assert env.step(random_actions(env, 1)[0]).reward == 0.0


def test_episode_targets_are_drawn_per_episode():
    targets = np.zeros((50, 64, 64, 1), np.float32)
    env = PaintEnv(targets=targets, episode_length=2, seed=8)
    drawn = set()
    for _ in range(20):
        env.reset()
        drawn.add(env.target_index)
    assert len(drawn) > 5


def test_program_rejects_unknown_versions_and_steps():
    data = Program(0, 0, steps=[Stroke((0, 0), (0, 0), (0.5, 0.5), (1, 1), 1 / 64, (0.0,))]).to_dict()
    Program.from_dict(data)
    with pytest.raises(ValueError, match="version"):
        Program.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="type"):
        Program.from_dict({**data, "steps": [{"type": "circle"}]})
