"""BatchedPaintEnv: K environments in one numba call behave exactly as K PaintEnvs with the same seeds."""

import dataclasses

import numpy as np
import pytest

from spiral.envs import BatchedPaintEnv, PaintConfig, PaintEnv, render_program, specs
from spiral.envs.batched import FIRST, LAST, MID
from spiral.envs.levels import to_float as levels_to_float

SEEDS = (3, 2 ** 32 - 1, 12345)

# PaintConfig options the batched env must follow (each differs from the default in some way).
CONFIGS = {
    "default": PaintConfig(episode_length=7),
    "colour_black": PaintConfig(episode_length=6, use_color=True, background="black"),
    "no_pressure_one_size": PaintConfig(episode_length=5, use_pressure=False, brush_sizes=(3.0,)),
    "canvas128_obs32_grid10": PaintConfig(canvas_width=128, observation_width=32, grid_width=10,
                                          episode_length=5),
    "conditional_l2_obs16": PaintConfig(episode_length=6, observation_width=16, conditional=True,
                                        l2_reward=True, brush_sizes=(2.0, 24.0)),
    "two_steps": PaintConfig(episode_length=2, grid_width=5),
    "released": PaintConfig(episode_length=8, jump_start="released"),
    "released_colour_conditional_l2": PaintConfig(episode_length=6, jump_start="released",
                                                  use_color=True, conditional=True, l2_reward=True,
                                                  observation_width=32, brush_sizes=(1.0, 8.0)),
}


def paint_env(config, seed, targets):
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(PaintConfig)
              if f.name != "conditional"}
    return PaintEnv(seed=seed, targets=targets, **fields)


def make_targets(config, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + config.observation_shape, dtype=np.uint8)


def random_actions(config, k, rng, jump_fraction=0.3):
    actions = {key: rng.integers(0, s.num_values, k).astype(np.int32)
               for key, s in config.action_spec().items()}
    actions["flag"] = (rng.random(k) >= jump_fraction).astype(np.int32)
    return actions


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_env_equals_paint_envs_with_the_same_seeds(name):
    config = CONFIGS[name]
    targets = make_targets(config) if config.conditional else None
    batched = BatchedPaintEnv(config, SEEDS, targets)
    envs = [paint_env(config, seed, targets) for seed in SEEDS]
    rng = np.random.default_rng(7)
    ts = batched.reset()
    singles = [env.reset() for env in envs]
    steps = 2 * (config.episode_length - 1) + 2   # two whole episodes and a restart after LAST
    for step in range(steps + 1):
        assert ts.step_type.dtype == np.uint8 and ts.step_type.shape == (len(SEEDS),)
        for k, (env, single) in enumerate(zip(envs, singles)):
            assert ts.step_type[k] == int(single.step_type), (step, k)
            if single.first():
                assert ts.reward is None and ts.discount is None
            else:
                assert ts.reward[k] == single.reward, (step, k)
                assert ts.discount[k] == single.discount, (step, k)
            obs = ts.observation
            assert set(obs) == set(single.observation)
            np.testing.assert_array_equal(obs["canvas"][k], env.canvas_uint8())
            np.testing.assert_array_equal(levels_to_float(obs["canvas"][k]),
                                          single.observation["canvas"])
            np.testing.assert_array_equal(obs["action_mask"][k], single.observation["action_mask"])
            for key in ("episode_step", "episode_length"):
                assert obs[key].dtype == np.int32
                assert obs[key][k] == single.observation[key], (key, step, k)
            if config.conditional:
                assert batched.target_indices[k] == env.target_index
                np.testing.assert_array_equal(levels_to_float(obs["target"][k]),
                                              single.observation["target"])
            else:
                assert "target" not in obs
            assert batched.program(k) == env.program, (step, k)
            np.testing.assert_array_equal(batched.full_canvases()[k], env.full_canvas())
        assert batched.episode == envs[0].episode
        if step == steps:
            break
        actions = random_actions(config, len(SEEDS), rng)
        if step % 2:  # both input forms: a dict of [K] arrays and a [num_keys, K] array
            ts = batched.step(actions)
        else:
            ts = batched.step(np.stack([actions[key] for key in config.action_keys]))
        singles = [env.step({key: int(v[k]) for key, v in actions.items()})
                   for k, env in enumerate(envs)]
    assert batched.episode == 2


def test_step_types_rewards_and_the_step_after_last():
    config = PaintConfig(episode_length=4, conditional=True, l2_reward=True)
    env = BatchedPaintEnv(config, [1, 2], make_targets(config))
    rng = np.random.default_rng(0)
    ts = env.step(random_actions(config, 2, rng))   # before any reset: a reset, actions ignored
    assert ts.first() and env.episode == 0 and env.actions_in_episode == 0
    types = []
    for _ in range(3):
        ts = env.step(random_actions(config, 2, rng))
        types.append(int(ts.step_type[0]))
    assert types == [MID, MID, LAST] and ts.last()
    np.testing.assert_array_equal(ts.discount, 0.0)
    assert (ts.reward < 0).all()   # −Σ(canvas − target)² of random targets
    ts = env.step(random_actions(config, 2, rng))
    assert ts.first() and env.episode == 1
    assert (ts.observation["canvas"] == 255).all() and (env.program(0).steps == [])


def test_reset_to_a_chosen_episode_continues_that_episode_s_streams():
    config = PaintConfig(episode_length=3, conditional=True)
    targets = make_targets(config, n=50)
    batched = BatchedPaintEnv(config, [8, 9], targets)
    ts = batched.reset(episode=3)
    actions = random_actions(config, 2, np.random.default_rng(0))
    ts = batched.step(actions)
    for k, seed in enumerate((8, 9)):
        env = paint_env(config, seed, targets)
        for _ in range(4):
            env.reset()
        env.step({key: int(v[k]) for key, v in actions.items()})
        assert env.episode == batched.episode == 3 and env.target_index == batched.target_indices[k]
        np.testing.assert_array_equal(ts.observation["canvas"][k], env.canvas_uint8())


def test_programs_replay_the_canvases():
    config = PaintConfig(episode_length=8, use_color=True)
    env = BatchedPaintEnv(config, [5, 6, 7])
    env.reset()
    rng = np.random.default_rng(1)
    for _ in range(7):
        env.step(random_actions(config, 3, rng))
    for k in range(3):
        np.testing.assert_array_equal(render_program(env.program(k)), env.full_canvases()[k])


def test_chosen_target_indices_and_draws_per_episode():
    config = PaintConfig(episode_length=3, conditional=True)
    targets = make_targets(config, n=50)
    env = BatchedPaintEnv(config, [1, 2, 3], targets)
    ts = env.reset(target_indices=[4, 0, 49])
    np.testing.assert_array_equal(env.target_indices, [4, 0, 49])
    np.testing.assert_array_equal(ts.observation["target"], targets[[4, 0, 49]])
    drawn = {tuple(env.reset().observation["target"][:, 0, 0, 0]) for _ in range(4)}
    assert len(drawn) > 1


BAD_ACTIONS = [
    (lambda a: a.pop("size"), "missing \\['size'\\]"),
    (lambda a: a.update(red=np.zeros(2, np.int32)), "unknown \\['red'\\]"),
    (lambda a: a.update(end=np.array([0, 1024])), "'end' = 1024 in environment 1 is out of range; "
                                                  "valid range is \\[0, 1023\\]"),
    (lambda a: a.update(flag=np.array([-1, 0])), "'flag' = -1 in environment 0"),
    (lambda a: a.update(size=np.zeros(3, np.int32)), "shape \\(2,\\)"),
    (lambda a: a.update(pressure=np.zeros(2, np.float32)), "integer array"),
    (lambda a: a.update(flag=np.zeros(2, bool)), "integer array"),
]


@pytest.mark.parametrize("change,message", BAD_ACTIONS)
def test_bad_actions_raise_and_change_nothing(change, message):
    config = PaintConfig(episode_length=4)
    env = BatchedPaintEnv(config, [1, 2])
    env.reset()
    actions = {key: np.ones(2, np.int32) for key in config.action_keys}
    change(actions)
    with pytest.raises(ValueError, match=message):
        env.step(actions)
    assert env.actions_in_episode == 0 and (env.canvas_uint8() == 255).all()
    with pytest.raises(ValueError, match="shape \\(5, 2\\)"):
        env.step(np.zeros((4, 2), np.int32))


def test_bad_construction_raises():
    config = PaintConfig()
    with pytest.raises(ValueError, match="seeds must lie in"):
        BatchedPaintEnv(config, [0, 2 ** 32])
    with pytest.raises(ValueError, match="one seed per environment"):
        BatchedPaintEnv(config, [])
    with pytest.raises(ValueError, match="targets exactly when"):
        BatchedPaintEnv(config, [1], targets=make_targets(config))
    conditional = PaintConfig(conditional=True)
    with pytest.raises(ValueError, match="targets exactly when"):
        BatchedPaintEnv(conditional, [1])
    with pytest.raises(ValueError, match="shape"):
        BatchedPaintEnv(conditional, [1], targets=np.zeros((3, 32, 32, 1), np.uint8))
    env = BatchedPaintEnv(conditional, [1, 2], targets=make_targets(conditional, n=3))
    with pytest.raises(ValueError, match="target_indices must lie in \\[0, 2\\]"):
        env.reset(target_indices=[0, 3])
    with pytest.raises(ValueError, match="episode must be an int >= 0"):
        env.reset(episode=-1)
    with pytest.raises(ValueError, match="No observation yet"):
        BatchedPaintEnv(config, [1]).canvas_uint8()
    env.reset()
    with pytest.raises(ValueError, match="index must be"):
        env.program(2)
