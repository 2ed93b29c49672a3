"""Observation width and conditional targets: reduced observations (32, 16, 8) and uint8 targets.

References: the area average is checked against a plain numpy float64 block mean of the full
canvas; target quantisation against the canvases' own rounding (``observe_canvas`` of a canvas
holding the target values); the L2 reward against a sum over uint8 levels in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.envs import PaintConfig, PaintEnv, observe_canvas
from spiral.envs import jax_engine as je
from spiral.envs import stroke as spec
from spiral.envs import targets as target_data
from spiral.envs.numba_engine import observe as numba_observe

F32 = np.float32


def _play(env, steps, seed=0):
    """Reset, then ``steps`` random actions (80% paint); returns the last TimeStep."""
    rng = np.random.default_rng(seed)
    ts = env.reset()
    for _ in range(steps):
        action = {k: int(rng.integers(s.num_values)) for k, s in env.action_spec().items()}
        action["flag"] = int(rng.random() < 0.8)
        ts = env.step(action)
    return ts


def _reference_levels(full, width):
    """Exact area average in float64 by numpy (block mean), rounded half to even to 0..255."""
    s = full.shape[0] // width
    mean = full.astype(np.float64).reshape(width, s, width, s, -1).mean(axis=(1, 3))
    return mean * 255


def _assert_levels_match(levels, scaled_reference):
    """Equal levels, except within 1e-3 of a rounding tie (float32 sums), where ±1 is allowed."""
    expected = np.rint(scaled_reference)
    diff = np.abs(levels.astype(np.float64) - expected)
    near_tie = np.abs(np.abs(scaled_reference - np.floor(scaled_reference)) - 0.5) < 1e-3
    assert diff.max() <= 1
    assert np.all(diff[~near_tie] == 0)


# ---- observation width ---------------------------------------------------------------------------
@pytest.mark.parametrize("canvas_width, observation_width, use_color",
                         [(64, 32, False), (64, 16, True), (128, 32, True), (128, 16, False)])
def test_observation_is_the_exact_area_average_at_reduced_widths(canvas_width, observation_width, use_color):
    env = PaintEnv(canvas_width=canvas_width, observation_width=observation_width, use_color=use_color,
                   episode_length=12, seed=canvas_width + observation_width)
    ts = _play(env, 11, seed=observation_width)
    c = 3 if use_color else 1
    canvas, levels = ts.observation["canvas"], env.canvas_uint8()
    assert canvas.shape == levels.shape == (observation_width, observation_width, c)
    full = env.full_canvas()
    assert full.shape == (canvas_width, canvas_width, c)            # rendering stays at canvas_width
    assert (full < 1.0).mean() > 0.05 and len(np.unique(levels)) > 20, "a painted, varied canvas"
    _assert_levels_match(levels, _reference_levels(full, observation_width))
    np.testing.assert_array_equal(canvas, levels.astype(F32) / F32(255))
    # observe_canvas gives the same view of the same full canvas.
    view, view_levels = observe_canvas(full, observation_width)
    np.testing.assert_array_equal(view, canvas)
    np.testing.assert_array_equal(view_levels, levels)


def test_observation_width_leaves_the_rendering_alone():
    """The same seed and actions paint the same full canvas whatever the observation width."""
    full = {}
    for width in (64, 32, 8):
        env = PaintEnv(observation_width=width, episode_length=10, seed=4)
        _play(env, 9, seed=1)
        full[width] = env.full_canvas()
        assert env.program.strokes, "the episode should contain strokes"
    np.testing.assert_array_equal(full[64], full[32])
    np.testing.assert_array_equal(full[64], full[8])


@pytest.mark.parametrize("canvas_width, observation_width", [(64, 32), (64, 16), (128, 8), (256, 8)])
def test_jax_observe_equals_numba_observe(canvas_width, observation_width):
    """Same float32 row-major block sums: bit-equal levels (128→8 and 256→8 use the fori_loop path)."""
    rng = np.random.default_rng(canvas_width + observation_width)
    canvases = rng.random((2, canvas_width, canvas_width, 3)).astype(F32)
    canvases[1] = np.round(canvases[1] * 4) / 4          # many exact block averages and ties
    got_f32, got_u8 = jax.jit(je.observe, static_argnums=1)(jnp.asarray(canvases), observation_width)
    for b in range(2):
        levels = np.empty((observation_width, observation_width, 3), np.uint8)
        out = np.empty((observation_width, observation_width, 3), F32)
        numba_observe(np.ascontiguousarray(canvases[b].transpose(2, 0, 1)), levels, out)
        np.testing.assert_array_equal(np.asarray(got_u8[b]), levels)
        np.testing.assert_array_equal(np.asarray(got_f32[b]), out)
        _assert_levels_match(levels, _reference_levels(canvases[b], observation_width))


def test_batched_jax_env_matches_paint_env_at_observation_width_32():
    """Canvases, targets (uint8 levels, new one after the restart) and L2 rewards, B = 3."""
    targets = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    config = PaintConfig(observation_width=32, grid_width=16, episode_length=6, conditional=True,
                         l2_reward=True)
    batch, steps = 3, 8
    rng = np.random.default_rng(2)
    acts = {k: rng.integers(0, s.num_values, (steps, batch)).astype(np.int32)
            for k, s in config.action_spec().items()}
    state = je.reset(70, batch, config, dataset=targets)
    assert je.timestep(state).observation["canvas"].shape == (batch, 32, 32, 1)
    _, timesteps = jax.jit(lambda s, a: jax.lax.scan(je.step, s, a))(state, acts)
    assert timesteps.observation["canvas"].shape == (steps, batch, 32, 32, 1)
    differing, total, lasts = 0, 0, 0
    for b in range(batch):
        env = PaintEnv(observation_width=32, grid_width=16, episode_length=6, seed=70 + b,
                       targets=targets, l2_reward=True)
        env.reset()
        for t in range(steps):
            ts = env.step({k: int(v[t, b]) for k, v in acts.items()})
            assert int(timesteps.step_type[t, b]) == int(ts.step_type)
            np.testing.assert_array_equal(np.asarray(timesteps.observation["target"][t, b]),
                                          ts.observation["target"])
            jax_levels = np.rint(np.asarray(timesteps.observation["canvas"][t, b], np.float64) * 255)
            diff = np.abs(jax_levels - env.canvas_uint8())
            assert diff.max() <= 1
            differing += int((diff > 0).sum())
            total += diff.size
            if ts.last():
                lasts += 1
                assert float(timesteps.reward[t, b]) == pytest.approx(ts.reward, rel=1e-3)
            else:
                assert float(timesteps.reward[t, b]) == 0.0
    assert lasts == batch
    assert differing < 1e-3 * total


def test_specs_follow_observation_width_and_every_observation_validates():
    targets = np.zeros((3, 32, 32, 3), np.uint8)
    env = PaintEnv(observation_width=32, use_color=True, targets=targets, episode_length=4, seed=0)
    obs_spec = env.observation_spec()
    assert obs_spec["canvas"].shape == (32, 32, 3) and obs_spec["target"].shape == (32, 32, 3)
    assert env.config.observation_spec()["canvas"].shape == (32, 32, 3)
    assert PaintConfig().observation_spec()["canvas"].shape == (64, 64, 1)   # default unchanged
    rng = np.random.default_rng(0)
    ts = env.reset()
    for _ in range(4):
        for key, s in obs_spec.items():
            s.validate(ts.observation[key])
        ts = env.step({k: int(rng.integers(s.num_values)) for k, s in env.action_spec().items()})
    # A 64-wide canvas does not validate against the 32-wide spec: the spec really constrains.
    with pytest.raises(ValueError):
        obs_spec["canvas"].validate(np.zeros((64, 64, 3), F32))


@pytest.mark.parametrize("width", [48, 128, 4, 0, 32.0, True, "32"])
def test_bad_observation_widths_are_rejected(width):
    with pytest.raises(ValueError, match="observation_width must be one of \\(64, 32, 16, 8\\)"):
        PaintConfig(observation_width=width)
    with pytest.raises(ValueError, match="observation_width"):
        PaintEnv(observation_width=width)


def test_observe_canvas_rejects_bad_widths():
    with pytest.raises(ValueError, match="observation_width"):
        observe_canvas(np.ones((64, 64, 1), F32), 24)
    with pytest.raises(ValueError, match="multiple of observation_width=32"):
        observe_canvas(np.ones((48, 48, 1), F32), 32)


# ---- conditional targets -------------------------------------------------------------------------
def test_conditional_target_shape_follows_observation_width():
    env = PaintEnv(observation_width=16, targets=np.zeros((2, 16, 16, 1), np.uint8), seed=0)
    assert env.reset().observation["target"].shape == (16, 16, 1)
    with pytest.raises(ValueError, match="shape \\[N, 16, 16, 1\\]"):
        PaintEnv(observation_width=16, targets=np.zeros((2, 64, 64, 1), np.uint8))
    with pytest.raises(ValueError, match="shape \\[N, 64, 64, 1\\]"):
        PaintEnv(targets=np.zeros((2, 16, 16, 1), np.uint8))
    config = PaintConfig(observation_width=16, conditional=True)
    state = je.reset(0, 2, config, dataset=np.zeros((2, 16, 16, 1), np.uint8))
    assert je.timestep(state).observation["target"].shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="shape \\[N, 16, 16, 1\\]"):
        je.reset(0, 2, config, dataset=np.zeros((2, 64, 64, 1), np.uint8))


def test_l2_reward_at_observation_width_32():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    env = PaintEnv(observation_width=32, targets=targets, l2_reward=True, episode_length=6, seed=11)
    ts = _play(env, 5, seed=2)
    assert ts.last()
    # Independent: levels of the canvas and of the target, differences in float64.
    difference = (env.canvas_uint8().astype(np.float64) - targets[env.target_index]) / 255
    expected = -np.sum(difference ** 2)
    assert expected < -10, "random targets are far from a painted canvas"
    assert ts.reward == pytest.approx(expected, rel=1e-6)
    assert env.target_index == spec.target_index(11, 0, 4)


def test_uint8_and_float_targets_give_identical_observations_and_rewards():
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    floats = levels.astype(F32) / F32(255)
    runs = {}
    for name, targets in (("uint8", levels), ("float32", floats)):
        env = PaintEnv(observation_width=32, use_color=True, targets=targets, l2_reward=True,
                       episode_length=5, seed=6)
        env.set_next_target(2)
        observations = [env.reset().observation]
        rng_a = np.random.default_rng(0)
        for _ in range(4):
            ts = env.step({k: int(rng_a.integers(s.num_values)) for k, s in env.action_spec().items()})
            observations.append(ts.observation)
        runs[name] = (observations, ts.reward, env.targets)
    for a, b in zip(runs["uint8"][0], runs["float32"][0]):
        assert a["target"].dtype == np.float32
        np.testing.assert_array_equal(a["target"], b["target"])
        np.testing.assert_array_equal(a["canvas"], b["canvas"])
    np.testing.assert_array_equal(runs["uint8"][0][0]["target"], floats[2])
    assert runs["uint8"][1] == runs["float32"][1]
    np.testing.assert_array_equal(runs["uint8"][2], runs["float32"][2])
    # target * 255 rounds back to the level: the learner can store it as uint8 losslessly.
    target = runs["float32"][0][-1]["target"]
    np.testing.assert_array_equal(np.rint(target * 255).astype(np.uint8), levels[2])


def test_float_targets_are_quantised_like_canvases():
    """A float target becomes exactly the levels a canvas of the same values would observe as."""
    k = np.arange(255, dtype=np.float64)
    ties = ((k + 0.5) / 255).astype(F32)                    # float32 nearest the rounding ties
    values = np.concatenate([ties, np.nextafter(ties, F32(0)), np.nextafter(ties, F32(1)),
                             np.linspace(0, 1, 4096 - 3 * 255 - 2).astype(F32), [F32(0), F32(1)]])
    rng = np.random.default_rng(4)
    target = rng.permutation(values).astype(F32).reshape(64, 64, 1)
    env = PaintEnv(targets=target[None], seed=0)
    _, canvas_levels = observe_canvas(target)               # the canvases' rounding, numba observe
    np.testing.assert_array_equal(env.targets[0], canvas_levels)
    np.testing.assert_array_equal(env.reset().observation["target"], canvas_levels.astype(F32) / F32(255))
    # Exact ties of float32(v)·255 round half to even (0.5 → 0, 1.5 → 2, 2.5 → 2, ...).
    exact = ties[ties * F32(255) == (k + 0.5).astype(F32)]
    assert len(exact) > 10
    halves = exact.astype(np.float64) * 255 - 0.5            # the integer just below each tie
    even = np.where(np.rint(halves) % 2 == 0, np.rint(halves), np.rint(halves) + 1)
    np.testing.assert_array_equal(target_data.quantise(exact), even.astype(np.uint8))
    # Not the identity: off-grid values moved to their nearest k/255.
    assert not np.array_equal(env.reset().observation["target"], target)
    assert np.abs(env.reset().observation["target"] - target).max() <= 0.5 / 255 + 1e-7


def test_read_only_uint8_targets_are_used_without_copying():
    targets = np.random.default_rng(5).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    targets.flags.writeable = False                        # as Ray's object store hands it out
    env = PaintEnv(observation_width=32, targets=targets, episode_length=3, seed=2)
    assert np.shares_memory(env.targets, targets)
    assert not env.targets.flags.writeable
    for _ in range(3):
        ts = _play(env, 2)
        np.testing.assert_array_equal(ts.observation["target"], targets[env.target_index] / F32(255))
        assert not ts.observation["target"].flags.writeable
    # The batched engine takes the same read-only array.
    config = PaintConfig(observation_width=32, conditional=True)
    state = je.reset(2, 2, config, dataset=targets)
    assert state.dataset.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(je.timestep(state).observation["target"]),
                                  targets[np.asarray(state.target_index)] / F32(255))


def test_float_targets_are_stored_as_uint8_levels_in_both_engines():
    floats = np.random.default_rng(6).random((3, 32, 32, 1)).astype(F32)
    expected = np.stack([observe_canvas(f, 32)[1] for f in floats])   # the canvases' rounding
    env = PaintEnv(observation_width=32, targets=floats, seed=0)
    assert env.targets.dtype == np.uint8
    np.testing.assert_array_equal(env.targets, expected)
    state = je.reset(0, 1, PaintConfig(observation_width=32, conditional=True), dataset=jnp.asarray(floats))
    np.testing.assert_array_equal(np.asarray(state.dataset), expected)


def _bad_target_cases(width):
    shape = (2, width, width, 1)
    return [
        (np.zeros(shape, np.float64), "uint8 levels .* or float32 .* got dtype float64"),
        (np.zeros(shape, np.int32), "got dtype int32"),
        (np.zeros(shape, np.uint16), "got dtype uint16"),
        (np.zeros(shape, bool), "got dtype bool"),
        (np.zeros((2, width, width, 3), np.uint8), f"shape \\[N, {width}, {width}, 1\\]"),
        (np.zeros((width, width, 1), np.uint8), "with N >= 1"),
        (np.zeros((0, width, width, 1), np.uint8), "with N >= 1"),
        (np.full(shape, 1.5, F32), "must lie in \\[0, 1\\], got values in \\[1.5, 1.5\\]; nothing is clipped"),
        (np.full(shape, -0.01, F32), "must lie in \\[0, 1\\]"),
        (np.full(shape, np.nan, F32), "NaN"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_target_cases(32))))
def test_bad_targets_raise_clear_errors(case):
    targets, message = _bad_target_cases(32)[case]
    with pytest.raises(ValueError, match=message):
        PaintEnv(observation_width=32, targets=targets)
    config = PaintConfig(observation_width=32, conditional=True)
    with pytest.raises(ValueError, match=message):
        je.reset(0, 2, config, dataset=targets)


def test_bad_target_containers_raise():
    with pytest.raises(ValueError, match="numpy array"):
        PaintEnv(targets=[[0.0]])
    with pytest.raises(ValueError, match="dataset must be an array"):
        je.reset(0, 1, PaintConfig(conditional=True), dataset=[[0.0]])


def test_jitted_reset_takes_uint8_levels_but_not_float_targets():
    config = PaintConfig(observation_width=16, conditional=True)
    levels = np.random.default_rng(7).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    state = jax.jit(lambda d: je.reset(3, 2, config, dataset=d))(levels)
    np.testing.assert_array_equal(np.asarray(state.dataset), levels)
    with pytest.raises(ValueError, match="cannot be traced"):
        jax.jit(lambda d: je.reset(3, 2, config, dataset=d))(levels.astype(F32) / 255)
