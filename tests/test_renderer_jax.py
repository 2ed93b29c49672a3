"""The JAX engine against the numba engine, by RENDERER.md's test contract (CPU).

Contract: equal dab counts (a rare ±1 at a length boundary; >= 99% equal); dab parameters within
1e-4 px; T within 1e-4; uint8 observations differ by at most one level on < 1e-3 of pixels.
"""

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.envs import PaintConfig, PaintEnv
from spiral.envs import jax_engine as je
from spiral.envs import numba_engine as ne
from spiral.envs import specs
from spiral.envs import stroke as spec

F32 = np.float32
CONFIG = PaintConfig()


def _random_strokes(n, seed=0):
    """Random SPIRAL strokes: every size and pressure, plus zero-length and control-on-end cases."""
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 32, (n, 3, 2)).astype(F32) * 2
    pts[0:10, 1] = pts[0:10, 0]          # control on the start point
    pts[10:20, 1] = pts[10:20, 2]        # control on the end point
    pts[20:30, 1:] = pts[20:30, :1]      # zero length
    radii = rng.choice(CONFIG.pixel_radii, n).astype(F32)
    pressures = rng.choice(specs.PRESSURE_VALUES, (n, 2))
    keys = rng.integers(0, 2 ** 32, n, dtype=np.uint64)
    carries = rng.random(n).astype(F32)
    return pts, radii, pressures, keys, carries


def _jax_strokes(pts, radii, pressures, keys, colors):
    consts = [spec.brush_constants(float(r)) for r in radii]
    col = lambda i: jnp.asarray([c[i] for c in consts], jnp.float32)
    return je.Strokes(jnp.asarray(pts[:, 0]), jnp.asarray(pts[:, 1]), jnp.asarray(pts[:, 2]),
                      jnp.asarray(pressures[:, 0]), jnp.asarray(pressures[:, 1]), col(0), col(1),
                      jnp.asarray([F32(1.0 / float(c.spacing)) for c in consts]), col(2),
                      jnp.asarray(colors, jnp.float32), jnp.asarray(keys.astype(np.uint32)),
                      jnp.ones(len(radii), bool))


def test_numba_and_jax_agree_on_200_random_strokes():
    n = 200
    pts, radii, pressures, keys, carries = _random_strokes(n)
    strokes = _jax_strokes(pts, radii, pressures, keys, np.zeros((n, 1), F32))
    dabs, carry = jax.jit(je.stroke_dabs, static_argnums=2)(strokes, jnp.asarray(carries), je.max_dabs(CONFIG))
    transmittance = {c: np.asarray(jax.jit(je.transmittance, static_argnums=(1, 2, 3))(dabs, 64, 64, c))
                     for c in je.COMBINES}
    valid = np.asarray(dabs.valid)
    params = np.stack([np.asarray(v) for v in (dabs.y, dabs.x, dabs.radius, dabs.alpha)], axis=-1)
    equal_counts, worst_param, worst_t = 0, 0.0, {c: 0.0 for c in je.COMBINES}
    for i in range(n):
        expected, numba_carry = ne.numba_dabs(pts[i, 0], pts[i, 1], pts[i, 2], pressures[i, 0],
                                              pressures[i, 1], float(radii[i]), int(keys[i]), carries[i])
        got = params[i][valid[i]]
        assert abs(len(got) - len(expected)) <= 1, (i, len(got), len(expected))
        if len(got) == len(expected):
            equal_counts += 1
            if len(got):
                worst_param = max(worst_param, float(np.abs(got - expected).max()))
            assert float(carry[i]) == pytest.approx(numba_carry, abs=1e-3)
        # T from the same (numba) dabs: isolates the stamping.
        t = np.ones((64, 64), F32)
        ne.stamp_dabs(t, expected, np.array([64, -1, 64, -1]))
        if len(got) == len(expected):
            for c in je.COMBINES:
                worst_t[c] = max(worst_t[c], float(np.abs(transmittance[c][i] - t).max()))
    assert equal_counts >= 0.99 * n
    assert worst_param <= 1e-4
    assert max(worst_t.values()) <= 1e-4, worst_t
    assert np.all(np.asarray(dabs.alpha)[~valid] == 0), "padding dabs must paint nothing"


def test_jax_stamping_equals_numba_on_the_same_dabs_including_edges():
    """Dabs half off the canvas, on borders and corners, every radius class."""
    rng = np.random.default_rng(3)
    n = 300
    d = np.stack([rng.uniform(-30, 94, n), rng.uniform(-30, 94, n),
                  rng.choice([0.7, 1.2, 2.0, 2.9, 3.0, 5.0, 13.0, 30.0], n), rng.uniform(0.05, 1, n)], 1)
    d[:20, :2] = rng.choice([0.0, 63.0, 63.99, 64.0, -0.5], (20, 2))
    d = d.astype(F32)
    t = np.ones((64, 64), F32)
    ne.stamp_dabs(t, d, np.array([64, -1, 64, -1]))
    dabs = je.Dabs(*(jnp.asarray(d[None, :, i]) for i in range(4)), jnp.ones((1, n), bool))
    for c in je.COMBINES:
        got = np.asarray(jax.jit(je.transmittance, static_argnums=(1, 2, 3))(dabs, 64, 64, c))[0]
        np.testing.assert_allclose(got, t, atol=1e-4)


def _random_actions(config, steps, batch, seed=0):
    rng = np.random.default_rng(seed)
    acts = {k: rng.integers(0, s.num_values, (steps, batch)).astype(np.int32)
            for k, s in config.action_spec().items()}
    acts["flag"] = (rng.random((steps, batch)) < 0.8).astype(np.int32)
    return acts


def _levels(canvas):
    return np.rint(np.asarray(canvas, np.float64) * 255)


@pytest.mark.parametrize("jump_start", ["corrected", "released"])
def test_batched_env_matches_paint_env_over_two_episodes(jump_start):
    """lax.scan over jax_engine.step (auto-reset after LAST) against B numba PaintEnvs."""
    config, batch, steps = PaintConfig(episode_length=8, jump_start=jump_start), 4, 17
    acts = _random_actions(config, steps, batch)
    state = je.reset(40, batch, config)
    first = je.timestep(state)
    final, timesteps = jax.jit(lambda s, a: jax.lax.scan(je.step, s, a))(state, acts)
    envs = [PaintEnv(episode_length=8, seed=40 + b, jump_start=jump_start) for b in range(batch)]
    differing, total = 0, 0
    for b, env in enumerate(envs):
        ts = env.reset()
        np.testing.assert_array_equal(_levels(ts.observation["canvas"]), _levels(first.observation["canvas"][b]))
        assert int(first.step_type[b]) == dm_env.StepType.FIRST
        for t in range(steps):
            ts = env.step({k: int(v[t, b]) for k, v in acts.items()})
            assert int(timesteps.step_type[t, b]) == int(ts.step_type), (t, b)
            assert float(timesteps.discount[t, b]) == (0.0 if ts.last() else 1.0)
            for key in ("action_mask", "episode_step", "episode_length"):
                np.testing.assert_array_equal(np.asarray(timesteps.observation[key][t, b]),
                                              ts.observation[key])
            diff = np.abs(_levels(ts.observation["canvas"]) - _levels(timesteps.observation["canvas"][t, b]))
            assert diff.max() <= 1
            differing += int((diff > 0).sum())
            total += diff.size
        assert int(final.episode[b]) == env.episode == 2
    assert differing < 1e-3 * total, differing / total


def test_paint_env_jax_renderer_matches_numba_colour_128():
    """PaintEnv(renderer="jax") at canvas 128 with colour: JaxCanvas, downsampling, colours."""
    kwargs = dict(canvas_width=128, use_color=True, episode_length=6, seed=5)
    envs = {r: PaintEnv(renderer=r, **kwargs) for r in ("numba", "jax")}
    acts = _random_actions(envs["numba"].config, 12, 1, seed=1)
    out = {}
    for name, env in envs.items():
        env.reset()
        out[name] = np.array([env.step({k: int(v[t, 0]) for k, v in acts.items()}).observation["canvas"]
                              for t in range(12)])
    diff = np.abs(_levels(out["numba"]) - _levels(out["jax"]))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.abs(envs["numba"].full_canvas() - envs["jax"].full_canvas()).max() < 1e-4


def test_conditional_batched_targets_and_l2_reward():
    config = PaintConfig(episode_length=4, conditional=True, l2_reward=True)
    rng = np.random.default_rng(0)
    dataset = (rng.integers(0, 256, (5, 64, 64, 1)) / 255).astype(F32)   # on the k/255 grid
    state = je.reset(9, 3, config, dataset=dataset)
    for b in range(3):   # the same hash draw as PaintEnv
        assert int(state.target_index[b]) == spec.target_index(9 + b, 0, 5)
    acts = _random_actions(config, 3, 3, seed=2)
    _, timesteps = jax.lax.scan(je.step, state, acts)
    last = timesteps.observation
    np.testing.assert_array_equal(np.asarray(last["target"][-1]), dataset[np.asarray(state.target_index)])
    expected = -np.sum((np.asarray(last["canvas"][-1], np.float64) - dataset[np.asarray(state.target_index)]) ** 2,
                       axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(timesteps.reward[-1]), expected, rtol=1e-4)
    assert np.all(np.asarray(timesteps.reward[:-1]) == 0)


def test_batched_step_rejects_bad_actions():
    state = je.reset(0, 2, CONFIG)
    good = {k: jnp.zeros(2, jnp.int32) for k in CONFIG.action_keys}
    with pytest.raises(ValueError, match="missing"):
        je.step(state, {k: v for k, v in good.items() if k != "end"})
    with pytest.raises(ValueError, match="action\\['size'\\] must be an integer array"):
        je.step(state, {**good, "size": jnp.zeros(2, jnp.float32)})
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        je.step(state, {**good, "flag": jnp.zeros(3, jnp.int32)})
    bad = {k: np.zeros(2, np.int32) for k in CONFIG.action_keys}
    bad["pressure"] = np.array([0, 10], np.int32)
    with pytest.raises(ValueError, match="action\\['pressure'\\] = 10 .* valid range is \\[0, 9\\]"):
        je.validate_action(bad, CONFIG, 2)
    with pytest.raises(ValueError, match="conditional"):
        je.reset(0, 2, CONFIG, dataset=np.zeros((1, 64, 64, 1), F32))
