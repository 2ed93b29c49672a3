"""The brush spec (RENDERER.md) against independent references, and the numba engine against it.

References: mypaint's own two-segment ``calculate_opa`` and general-angle
``calculate_rr_antialiased`` (written as mypaint's control flow, float64), explicit float64
sequential "over" blending, the closed-form dab count, and a plain-Python hash.
"""

import math

import numpy as np
import pytest

from spiral.envs import numba_engine as ne
from spiral.envs import stroke as spec

F32 = np.float32


def test_branch_free_mask_equals_mypaints_two_segments():
    rr = np.linspace(0.0, 1.5, 30001)
    np.testing.assert_allclose(spec.opacity_branch_free(rr), spec.opacity_two_segments(rr), atol=1e-12)
    # The knee sits at rr = hardness with opacity = hardness, and nothing is painted beyond rr = 1.
    assert spec.opacity_two_segments(spec.HARDNESS) == pytest.approx(spec.HARDNESS)
    assert np.all(spec.opacity_two_segments(rr[rr > 1.0]) == 0.0)
    assert spec.opacity_two_segments(0.0) == 1.0


def test_numba_antialiased_select_form_equals_mypaints_control_flow():
    """The engines' branch-free AA rr (round dab at 90°) against mypaint's general-angle code."""
    rng = np.random.default_rng(0)
    factors = np.empty(64, F32)
    for _ in range(300):
        r = F32(rng.uniform(0.6, 2.99))
        cy, cx = F32(rng.uniform(3, 13)), F32(rng.uniform(3, 13))
        x0, y0 = int(math.floor(cx - r)) - 1, int(math.floor(cy - r)) - 1
        rm1 = r - F32(1)
        aa_start = rm1 * rm1 if r > 1 else F32(0)
        alpha = F32(1.0)
        ne._antialiased_factors(factors, 64, ne._LANE_X8, ne._LANE_Y8, x0, y0, cx, cy, F32(1) / (r * r),
                                aa_start, alpha)
        for p in range(64):
            xp, yp = x0 + p % 8, y0 + p // 8
            expected = spec.opacity_two_segments(spec.rr_antialiased(xp, yp, float(cx), float(cy), float(r)))
            assert 1.0 - factors[p] == pytest.approx(float(expected), abs=2e-6), (r, cx, cy, xp, yp)


def test_antialiased_rr_is_zero_inside_and_matches_plain_far_from_the_edge():
    # A pixel containing the dab centre has rr_near = 0 (full opacity there unless the far sample
    # says otherwise); for big radii the AA rr approaches the plain centre distance.
    assert spec.rr_antialiased(5, 5, 5.5, 5.5, 2.0) < 0.1
    plain = ((5 + 0.5 - 9.3) ** 2 + (5 + 0.5 - 9.1) ** 2) / 30.0 ** 2
    assert spec.rr_antialiased(5, 5, 9.3, 9.1, 30.0) == pytest.approx(plain, rel=0.5)


@pytest.mark.parametrize("radius", [1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
def test_dab_count_matches_closed_form(radius):
    # A straight stroke: the polyline length is exact, so n = floor(L·(6/r_a + 6/s)).
    start, end = (5.0, 3.0), (50.0, 61.0)
    control = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    expected = math.floor(length * (6 / spec.actual_radius(radius) + 6 / radius))
    dabs = spec.reference_dabs(start, control, end, 0.5, 0.5, radius, key=1)
    assert dabs.count == expected
    numba_dabs, _ = ne.numba_dabs(start, control, end, 0.5, 0.5, radius, key=1)
    assert abs(len(numba_dabs) - expected) <= 1


def test_carry_continues_the_dab_spacing_across_strokes():
    """Two connected halves of a straight line place their dabs where one whole stroke does."""
    r, key = 4.0, 3
    # Pressure 0 switches the positional jitter off (offset ∝ pressure): positions are the path's.
    whole = spec.reference_dabs((10, 10), (30, 30), (50, 50), 0.0, 0.0, r, key)
    first = spec.reference_dabs((10, 10), (20, 20), (30, 30), 0.0, 0.0, r, key)
    second = spec.reference_dabs((30, 30), (40, 40), (50, 50), 0.0, 0.0, r, key, carry=first.carry)
    assert first.count + second.count == whole.count
    np.testing.assert_allclose(np.concatenate([first.y, second.y]), whole.y, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([first.x, second.x]), whole.x, atol=1e-9)
    assert 0 <= first.carry < 1 and second.carry == pytest.approx(whole.carry)
    # The numba engine carries the same fraction.
    _, numba_carry = ne.numba_dabs((10, 10), (20, 20), (30, 30), 0.0, 0.0, r, key)
    assert numba_carry == pytest.approx(first.carry, abs=1e-4)


def test_transmittance_composite_equals_sequential_over():
    """One stroke through numba (T then composite) against per-dab sequential "over" in float64."""
    rng = np.random.default_rng(1)
    for radius in (1.0, 2.0, 4.0, 8.0):
        key = int(rng.integers(2 ** 32))
        start, control, end = (10.0, 8.0), (54.0, 20.0), (20.0, 56.0)
        for color in ((0.0,), (0.2, 0.9, 0.4)):
            canvas = np.full((len(color), 64, 64), 0.7, np.float32)
            transmittance = np.ones((64, 64), np.float32)
            b = spec.brush_constants(radius)
            ne.render_stroke(canvas, transmittance, F32(start[0]), F32(start[1]), F32(control[0]),
                             F32(control[1]), F32(end[0]), F32(end[1]), F32(0.3), F32(0.9),
                             b.actual_radius, b.spacing, F32(1 / float(b.spacing)), b.offset_scale,
                             np.asarray(color, F32), np.uint64(key), F32(0.0), spec.bezier_weights())
            dabs = spec.reference_dabs(start, control, end, F32(0.3), F32(0.9), radius, key)
            expected = spec.reference_render(np.full((len(color), 64, 64), 0.7), dabs, color)
            np.testing.assert_allclose(canvas, expected, atol=5e-5)
            assert np.all(transmittance == 1.0), "T must be reset to 1 after the composite"


def test_numba_dabs_match_float64_reference():
    rng = np.random.default_rng(2)
    for _ in range(40):
        start, control, end = (tuple(rng.integers(0, 32, 2) * 2.0) for _ in range(3))
        radius = float(rng.choice([1, 2, 4, 8, 12, 24]))
        p0, p1 = (float(v) for v in rng.choice(np.linspace(0.1, 1, 10).astype(F32), 2))
        key, carry = int(rng.integers(2 ** 32)), float(rng.random())
        ref = spec.reference_dabs(start, control, end, p0, p1, radius, key, carry)
        got, new_carry = ne.numba_dabs(start, control, end, p0, p1, radius, key, carry)
        if len(got) != ref.count:   # a dab exactly at the end of the path may round either way
            assert abs(len(got) - ref.count) == 1
            continue
        np.testing.assert_allclose(got, np.stack([ref.y, ref.x, ref.radius, ref.alpha], 1), atol=1e-4)
        assert new_carry == pytest.approx(ref.carry, abs=1e-3)


def test_hash_rng_is_the_same_function_everywhere():
    keys = [0, 1, 12345, 2 ** 32 - 1]
    for k in keys:
        assert spec.mix32_int(k) == int(spec.mix32(k))
    # Known values pin the function (a change would silently change every canvas).
    assert spec.stroke_key(0, 0, 0) == spec.mix32_int(spec.mix32_int(spec.mix32_int(spec.GOLDEN) + spec.GOLDEN)
                                                       + spec.GOLDEN)
    u = spec.dab_uniforms(7, np.arange(2000))
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert np.all(u * 2 ** 22 == np.floor(u * 2 ** 22)), "uniforms must be 22-bit"
    g = spec.dab_gaussians(7, np.arange(20000)).ravel()
    assert abs(g.mean()) < 0.02 and abs(g.std() - 1.0) < 0.02   # rand_gauss: mean 0, variance 1
    assert np.all(np.abs(g) <= 2 * math.sqrt(3))


def test_numba_noise_equals_numpy_hash():
    key = spec.stroke_key(3, 4, 5)
    noise = np.empty((3, 100), F32)
    ne._dab_noise(np.uint64(key), 100, noise)
    np.testing.assert_array_equal(noise.T, spec.dab_gaussians(key, np.arange(100)))


def test_zero_length_and_degenerate_strokes():
    # A stroke that does not move paints nothing (no arc length, no dabs), carry unchanged.
    dabs, carry = ne.numba_dabs((20, 20), (20, 20), (20, 20), 1.0, 1.0, 4.0, key=9, carry=0.25)
    assert len(dabs) == 0 and carry == pytest.approx(0.25)
    # Control point on an end point: a straight segment, dabs along it.
    dabs, _ = ne.numba_dabs((0, 0), (0, 0), (0, 40), 1.0, 1.0, 4.0, key=9)
    ref = spec.reference_dabs((0, 0), (0, 0), (0, 40), 1.0, 1.0, 4.0, key=9)
    assert len(dabs) == ref.count > 0


def test_max_dabs_bounds_the_longest_stroke():
    # Corner to far corner and back through the opposite corner: near the control-polygon bound.
    for radius in (1.0, 2.0):
        dabs, _ = ne.numba_dabs((0, 0), (62, 62), (0, 62), 1.0, 1.0, radius, key=1, carry=0.99)
        bound = spec.max_dabs(radius, spec.max_path_length(64, 32))
        assert len(dabs) <= bound
