"""The released mode's brush (libmypaint 1.3.0's speed term, DeepMind's 0.1f dtime) against an
explicit port of libmypaint 1.3.0 (``libmypaint_130.py``), and the engines against the spec.

References: the port runs DeepMind's environment call sequence one motion event and one dab at a
time (slow tracking, the tablet workaround, the speed filters, the input curve); the spec's float64
``reference_released_path``; the numba engine for the JAX twin (RENDERER.md's contract).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import libmypaint_130 as lm
from spiral.envs import Jump, PaintConfig, PaintEnv, specs
from spiral.envs import jax_engine as je
from spiral.envs import numba_engine as ne
from spiral.envs import stroke as spec

F32 = np.float32
SIZES = specs.DEFAULT_BRUSH_SIZES


# ---- the radius formula ------------------------------------------------------------------------
def _port_radius(size, speed):
    """The port's actual radius after one update at filtered speed ``speed`` (no motion)."""
    brush = lm.Brush130()
    brush.set_base_value("radius_logarithmic", math.log(size))
    brush.states["norm_speed2_slow"] = speed
    brush.update_states_and_setting_values(0.0, 0.0, 0.0, 0.1)
    return brush.states["actual_radius"]


@pytest.mark.parametrize("size", [1.0, 3.0, 24.0, 96.0])
def test_actual_radius_formula_matches_the_ports_input_curve(size):
    for speed in (0.0, 0.3, 2.0, 17.5, 45.0, 300.0):
        expected = _port_radius(size, speed)
        assert spec.released_actual_radius(size, speed) == pytest.approx(expected, rel=1e-6)
        assert float(ne.released_radius(F32(size), F32(speed))) == pytest.approx(expected, rel=2e-6)
        got = float(je.released_radius(jnp.float32(size), jnp.float32(speed)))
        assert got == pytest.approx(expected, rel=2e-6)
    # libmypaint's fixed point: the speed2 input is 0.5 at 45 radii/s, where the curve gives 0.
    assert spec.released_actual_radius(size, 45.0) == pytest.approx(size, rel=1e-5)
    # Slow strokes are wider than fast ones; at rest the term is e^0.077.
    assert spec.released_actual_radius(size, 0.0) / size == pytest.approx(math.exp(0.07699), rel=1e-4)


# ---- the engine against the port, stroke by stroke ------------------------------------------------
def _random_actions(n, seed):
    rng = np.random.default_rng(seed)
    return [dict(flag=int(rng.random() < 0.7), end=int(rng.integers(1024)), control=int(rng.integers(1024)),
                 size=int(rng.integers(len(SIZES))), pressure=int(rng.integers(10))) for _ in range(n)]


def _stamp(rows):
    t = np.ones((64, 64), F32)
    if len(rows):
        ne.stamp_dabs(t, np.asarray(rows, F32), np.array([64, -1, 64, -1]))
    return t


def _compare_episode(actions, model_lead=True):
    """Play ``actions`` on the port (DeepMind's call sequence) and on PaintEnv's released program
    with the numba engine's noise-free path; per stroke: (size, port dabs, engine dabs, port S,
    engine S, port T, engine T)."""
    port = lm.DeepMindEnv(SIZES)
    port.reset()
    env = PaintEnv(jump_start="released", seed=0)
    env.reset()
    carry, speed, pen, lifted = 0.0, 0.0, (0.0, 0.0), True
    out = []
    for a in actions:
        dabs = port.step(a["flag"], a["end"], a["control"], a["size"],
                         float(specs.PRESSURE_VALUES[a["pressure"]]))
        env.step(a)
        step = env.program.steps[-1]
        px = lambda point: (point[0] * 64, point[1] * 64)
        if isinstance(step, Jump):
            carry, speed, pen, lifted = 0.0, 0.0, px(step.end), True
            continue
        start = px(step.start)
        lead = math.hypot(start[0] - pen[0], start[1] - pen[1]) if lifted and model_lead else 0.0
        path, carry, speed = ne.numba_released_path(start, px(step.control), px(step.end), *step.pressure,
                                                    step.radius * 64, carry, speed, lead)
        pen, lifted = px(step.end), False
        painted = [d for d in dabs if d.pressure > 0]            # the workaround's dabs paint nothing
        opaque = np.clip((0.8 + 0.2 * path[:, 2]) * path[:, 2], 0, 1)
        out.append((step.radius * 64, painted, path, port.brush.states["norm_speed2_slow"], speed,
                    _stamp([(d.y, d.x, d.actual_radius, d.opaque) for d in dabs]),
                    _stamp(np.stack([path[:, 0], path[:, 1], path[:, 3], opaque], 1))))
    return out


def test_released_engine_follows_libmypaint_130_stroke_by_stroke():
    """Random episodes (jumps, connected strokes, every size): the filtered speed after each stroke,
    the dab counts, the actual radii and the noise-free ink agree with the 1.3.0 port."""
    ink = {"port": 0.0, "engine": 0.0}
    for episode in range(6):
        canvas = {"port": np.ones((64, 64)), "engine": np.ones((64, 64))}
        for size, painted, path, port_speed, speed, t_port, t_engine in _compare_episode(
                _random_actions(19, episode)):
            # 1.3.0's normalisation: basic radii per second (1.6's pixels per second differ by s).
            assert speed == pytest.approx(port_speed, rel=2e-3, abs=1e-4), size
            assert abs(len(path) - len(painted)) <= 1 + 0.01 * len(painted), size
            if painted:
                radii = np.array([d.actual_radius for d in painted])
                assert np.mean(path[:, 3]) == pytest.approx(radii.mean(), rel=2e-3), size
            canvas["port"] *= t_port
            canvas["engine"] *= t_engine
        ink["port"] += (1 - canvas["port"]).sum()
        ink["engine"] += (1 - canvas["engine"]).sum()
        assert np.abs(canvas["port"] - canvas["engine"]).mean() < 0.01
    assert ink["engine"] == pytest.approx(ink["port"], rel=0.01)


def test_the_workaround_move_changes_the_next_strokes_radii_as_the_port_does():
    """After a jump to (y, x) the stroke starts at (y, y): libmypaint moves the brush there at
    pressure 0, which excites the speed filter. Modelled (``lead``), the radii at the stroke's
    start match the port's; without it they are measurably too large."""
    actions = [dict(flag=0, end=4 * 32 + 30, control=0, size=0, pressure=0),        # jump to (8, 60)
               dict(flag=1, end=30 * 32 + 4, control=20 * 32 + 4, size=0, pressure=9)]
    modelled = _compare_episode(actions)[0]
    ignored = _compare_episode(actions, model_lead=False)[0]
    port_radii = np.array([d.actual_radius for d in modelled[1]])[:50]
    # Per event the model holds the radius of the event's start; the port's moves dab by dab.
    assert np.abs(modelled[2][:50, 3] / port_radii - 1).max() < 0.01
    assert np.abs(ignored[2][:50, 3] / port_radii - 1).max() > 0.05
    assert modelled[4] == pytest.approx(modelled[3], rel=2e-3)


# ---- the engines against the spec and each other -------------------------------------------------
def _random_strokes(n, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 32, (n, 3, 2)).astype(F32) * 2
    pts[0:10, 1] = pts[0:10, 0]          # control on the start point
    pts[10:20, 1:] = pts[10:20, :1]      # zero length
    radii = rng.choice(SIZES, n).astype(F32)
    pressures = rng.choice(specs.PRESSURE_VALUES, (n, 2))
    keys = rng.integers(0, 2 ** 32, n, dtype=np.uint64)
    carries = rng.random(n).astype(F32)
    speeds = (rng.random(n) * rng.choice([0.0, 1.0, 40.0], n)).astype(F32)
    leads = np.where(rng.random(n) < 0.4, rng.integers(0, 60, n), 0).astype(F32)
    return pts, radii, pressures, keys, carries, speeds, leads


def test_numba_released_path_matches_the_float64_spec():
    pts, radii, pressures, _, carries, speeds, leads = _random_strokes(60, seed=1)
    for i in range(60):
        args = (pts[i, 0], pts[i, 1], pts[i, 2], pressures[i, 0], pressures[i, 1], float(radii[i]))
        ref = spec.reference_released_path(*args, float(carries[i]), float(speeds[i]), float(leads[i]))
        path, carry, speed = ne.numba_released_path(*args, carries[i], speeds[i], leads[i])
        assert abs(len(path) - ref.count) <= 1, i
        if len(path) == ref.count:
            expected = np.stack([ref.y, ref.x, ref.pressure, ref.actual_radius], 1)
            np.testing.assert_allclose(path, expected, atol=1e-3, rtol=1e-5)
            assert carry == pytest.approx(ref.carry, abs=2e-3)
        assert speed == pytest.approx(ref.speed, rel=1e-5, abs=1e-6)


def test_numba_released_dabs_match_the_float64_spec_with_noise():
    pts, radii, pressures, keys, carries, speeds, leads = _random_strokes(30, seed=2)
    for i in range(30):
        args = (pts[i, 0], pts[i, 1], pts[i, 2], pressures[i, 0], pressures[i, 1], float(radii[i]), int(keys[i]))
        ref, ref_speed = spec.reference_dabs_released(*args, float(carries[i]), float(speeds[i]),
                                                      float(leads[i]))
        dabs, _, speed = ne.numba_dabs_released(*args, carries[i], speeds[i], leads[i])
        if len(dabs) == ref.count:
            np.testing.assert_allclose(dabs, np.stack([ref.y, ref.x, ref.radius, ref.alpha], 1), atol=1e-3)
        assert speed == pytest.approx(ref_speed, rel=1e-5, abs=1e-6)


def test_numba_and_jax_agree_in_the_released_mode_on_200_random_strokes():
    """RENDERER.md's contract: equal counts (a rare ±1), dab parameters within 1e-4 px, carry and speed."""
    n = 200
    pts, radii, pressures, keys, carries, speeds, leads = _random_strokes(n, seed=3)
    consts = [spec.released_brush_constants(float(r)) for r in radii]
    col = lambda i: jnp.asarray([c[i] for c in consts], jnp.float32)
    strokes = je.Strokes(jnp.asarray(pts[:, 0]), jnp.asarray(pts[:, 1]), jnp.asarray(pts[:, 2]),
                         jnp.asarray(pressures[:, 0]), jnp.asarray(pressures[:, 1]),
                         jnp.zeros(n), jnp.ones(n), jnp.ones(n), col(4), jnp.zeros((n, 1)),
                         jnp.asarray(keys.astype(np.uint32)), jnp.ones(n, bool), col(0), col(1), col(2), col(3))
    config = PaintConfig(jump_start="released")
    dabs, carry, speed = jax.jit(je.stroke_dabs_released, static_argnums=4)(
        strokes, jnp.asarray(carries), jnp.asarray(speeds), jnp.asarray(leads), je.max_dabs(config))
    valid = np.asarray(dabs.valid)
    params = np.stack([np.asarray(v) for v in (dabs.y, dabs.x, dabs.radius, dabs.alpha)], axis=-1)
    equal = 0
    for i in range(n):
        expected, numba_carry, numba_speed = ne.numba_dabs_released(
            pts[i, 0], pts[i, 1], pts[i, 2], pressures[i, 0], pressures[i, 1], float(radii[i]), int(keys[i]),
            carries[i], speeds[i], leads[i])
        got = params[i][valid[i]]
        assert abs(len(got) - len(expected)) <= 1, i
        assert float(speed[i]) == pytest.approx(numba_speed, rel=1e-5, abs=1e-6)
        if len(got) == len(expected):
            equal += 1
            if len(got):
                assert np.abs(got - expected).max() <= 1e-4, i
            assert float(carry[i]) == pytest.approx(numba_carry, abs=1e-3)
    assert equal >= 0.99 * n
    assert np.all(np.asarray(dabs.alpha)[~valid] == 0)


def test_released_padding_holds_the_densest_stroke():
    """max_dabs covers the fastest filtered speed: a full-diagonal stroke at size 1 after the
    longest workaround move fits, and the released bound exceeds the corrected one."""
    config = PaintConfig(jump_start="released")
    path, _, _ = ne.numba_released_path((0.0, 0.0), (62.0, 62.0), (0.0, 0.0), 1.0, 1.0, 1.0, lead=62.0)
    assert len(path) <= je.max_dabs(config)
    assert je.max_dabs(config) > je.max_dabs(PaintConfig())
