"""The brush spec (RENDERER.md): constants, the hash RNG, and a float64 reference renderer.

One job: say exactly what a stroke paints, in small numpy functions that the numba and JAX
engines implement again (float32, fast) and that the tests use as the independent reference.

A stroke (all lengths in pixels of the canvas being rendered, coordinates as (y, x)):

1. Path: Q_k = B(k/50), k = 0..50, the quadratic Bezier from the brush position P0 through the
   control point P1 to the end P2; S_k = cumulative polyline length, summed sequentially.
2. Spacing: r_a = s·e^0.07 (libmypaint's radius with dry_brush's speed term), Δ = 1/(6/r_a + 6/s).
   Dab i sits at arc length σ_i = (i + 1 − carry)·Δ for every σ_i ≤ S_50, where ``carry`` is the
   fraction of a dab travelled since the last dab of the previous, connected stroke (0 after a
   reset or a jump), as mypaint carries partial dabs across motion events.
3. Dab centre and pressure: linear along segment k (S_k < σ ≤ S_k+1) with fraction f; pressure
   p0 + (p1 − p0)(k + f)/50.
4. Noise: three mypaint ``rand_gauss`` values per dab, each √3·(u1+u2+u3+u4 − 2), from a
   counter-based hash (``dab_uniforms``). Offset (y, x) += 1.4·π·s·(g0, g1); radius
   r = r_a·exp(0.1·g2) with exp as a cubic polynomial; opacity α = (0.8 + 0.2π)·π·min(1, (r_a/r)²).
5. Mask, hardness 0.2: m = max(1 − 4q, 0.25 − 0.25q, 0) with q = |pixel centre − dab centre|²/r²;
   for r < 3 mypaint's anti-aliased ``rr`` replaces q (``rr_antialiased``).
6. Composite: T = Π(1 − α·m) over the stroke's dabs, canvas ← canvas·T + colour·(1 − T), which is
   sequential "over" blending of every dab when a stroke has one colour.

RNG: the dab noise is a pure function of (env seed, episode index, step index within the episode,
dab index, draw index) through ``stroke_key`` and ``dab_uniforms``; nothing else is random, so a
replayed program with the same seed reproduces the canvas exactly.

The released mode (``PaintConfig.jump_start="released"``, envs/README.md) replaces step 2's
constant r_a by libmypaint 1.3.0's speed term, per stroke_to event: the filtered speed S (basic
radii per second, carried across connected strokes) gives the event's actual radius and dab
density, and a pressure-0 move (the ``lead``) before a stroke after a jump moves the carry and S on
(``reference_released_path``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

F32 = np.float32

# ---- dry_brush and spec constants (RENDERER.md "The dab-stamping spec") ----------------------
N_SEGMENTS = 50                      # stroke_to events per stroke (SPIRAL's STROKES_PER_STEP)
HARDNESS = 0.2
DABS_PER_ACTUAL_RADIUS = 6.0
DABS_PER_BASIC_RADIUS = 6.0
SPEED_RADIUS_GAIN = math.exp(0.07)   # r_a / s
OFFSET_BY_RANDOM = 1.4               # × pressure × base radius
RADIUS_BY_RANDOM = 0.1               # std of log radius
AA_RADIUS = 3.0                      # mypaint anti-aliases dabs with radius < 3
R_AREA_1 = math.sqrt(1.0 / math.pi)  # radius of a circle of area 1 (mypaint's AA sample offset)

# float32 constants shared by the numba and JAX engines (never divide by a constant: XLA
# rewrites x / c into x * (1/c), so both engines multiply by the same float32 reciprocal).
ONE_FIFTIETH = F32(1.0 / N_SEGMENTS)
SQRT3 = F32(math.sqrt(3.0))
UNIFORM_SCALE = F32(2.0 ** -22)      # 22-bit uniforms: sums of four are exact in float32
EXP_C2 = F32(0.5)
EXP_C3 = F32(1.0 / 6.0)
Z_SCALE = F32(RADIUS_BY_RANDOM)
OPAQUE_BASE = F32(0.8)
OPAQUE_GAIN = F32(0.2)
R_AREA_1_F32 = F32(R_AREA_1)
LARGEST_BELOW_ONE = F32(np.nextafter(F32(1.0), F32(0.0)))

# ---- the released mode: libmypaint 1.3.0's speed term, DeepMind's dtime -------------------------
# dry_brush's radius is exp(radius_logarithmic) with radius_logarithmic = ln(s) + y(speed2), the
# speed2 input = m·ln(γ + S) + q of the low-pass filtered speed S (time constant speed2_slowness)
# and y the setting's two-point input curve. libmypaint 1.3.0 measures S in basic radii per second
# (``norm_dx = step_dx / step_dtime / base_radius``); Debian's 1.6 in pixels per second.
DTIME = 0.1                                      # seconds per stroke_to event (SPIRAL's env)
RELEASED_DTIME = float(F32(0.1))                 # DeepMind passes 0.1 as a C float: 0.1f > 0.1
# libmypaint's tablet workaround: an event with pressure after a pressure-0 state and dtime > 0.1
# is split into a pressure-0 event of dtime − 0.0001 and the event itself with dtime 0.0001.
WORKAROUND_DTIME = RELEASED_DTIME - 0.0001
SPEED2_GAMMA = math.exp(4.0)                     # exp(speed2_gamma)
SPEED2_SLOWNESS = 0.8                            # seconds
SPEED_MAP_M = 0.015 * (45.0 + SPEED2_GAMMA)      # libmypaint's fixed points: y = 0.5 at x = 45,
SPEED_MAP_Q = 0.5 - SPEED_MAP_M * math.log(45.0 + SPEED2_GAMMA)   # slope 0.015 there
RADIUS_SPEED2_CURVE = ((0.0, 0.042857), (4.0, -0.3))              # radius_logarithmic ← speed2
_CURVE_SLOPE = ((RADIUS_SPEED2_CURVE[1][1] - RADIUS_SPEED2_CURVE[0][1])
                / (RADIUS_SPEED2_CURVE[1][0] - RADIUS_SPEED2_CURVE[0][0]))
# y(speed2(S)) = SPEED_LOG_C0 + SPEED_LOG_C1·ln(γ + S): the curve is one line (two points), and
# libmypaint extrapolates it beyond them.
SPEED_LOG_C0 = F32(RADIUS_SPEED2_CURVE[0][1] + _CURVE_SLOPE * (SPEED_MAP_Q - RADIUS_SPEED2_CURVE[0][0]))
SPEED_LOG_C1 = F32(_CURVE_SLOPE * SPEED_MAP_M)
SPEED2_GAMMA_F32 = F32(SPEED2_GAMMA)
# The filter's update over one event (S += (v − S)·F) and over the workaround's pressure-0 event.
SPEED_FILTER_STEP = F32(1.0 - math.exp(-RELEASED_DTIME / SPEED2_SLOWNESS))
WORKAROUND_FILTER_STEP = F32(1.0 - math.exp(-WORKAROUND_DTIME / SPEED2_SLOWNESS))

# ---- the counter-based hash RNG ----------------------------------------------------------------
MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9                  # odd: i·GOLDEN mod 2^32 is distinct for distinct i
DRAW_STEP = 0x85EBCA6B               # odd: separates the 12 draws of one dab
DRAWS_PER_DAB = 12                   # 3 gaussians × 4 uniforms
TARGET_SALT = 0x7A26E7                # step index used to draw a conditional episode's target


def mix32(x):
    """A 32-bit integer finaliser (the 'lowbias32' xorshift-multiply hash); numpy uint64 in/out."""
    x = np.asarray(x, np.uint64) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    return x


def mix32_int(x: int) -> int:
    """``mix32`` on one Python int (fast path for per-step keys; same function)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def stroke_key(seed: int, episode: int, step: int) -> int:
    """The 32-bit key of one action's dab noise: hash of (env seed, episode index, step index)."""
    h = mix32_int(int(seed) + GOLDEN)
    h = mix32_int(h + int(episode) + GOLDEN)
    return mix32_int(h + int(step) + GOLDEN)


def dab_hash(key, dab_index):
    """Per-dab hash: mix32(key XOR (i + 1)·GOLDEN)."""
    i = np.asarray(dab_index, np.uint64)
    return mix32(np.asarray(key, np.uint64) ^ (((i + np.uint64(1)) * np.uint64(GOLDEN)) & np.uint64(MASK32)))


def dab_uniforms(key, dab_index) -> np.ndarray:
    """The 12 uniforms of dab i in [0, 1), float32 multiples of 2^-22: shape (..., 12)."""
    h = dab_hash(key, dab_index)[..., None]
    j = np.arange(DRAWS_PER_DAB, dtype=np.uint64)
    bits = mix32(h + ((j + np.uint64(1)) * np.uint64(DRAW_STEP)))
    return (bits >> np.uint64(10)).astype(F32) * UNIFORM_SCALE


def dab_gaussians(key, dab_index) -> np.ndarray:
    """mypaint's rand_gauss three times per dab: √3·(u1+u2+u3+u4 − 2), float32, shape (..., 3)."""
    u = dab_uniforms(key, dab_index).reshape(np.shape(dab_index) + (3, 4))
    s = ((u[..., 0] + u[..., 1]) + u[..., 2]) + u[..., 3]   # exact: four 22-bit values below 4
    return (s - F32(2.0)) * SQRT3                             # s − 2 exact; one rounding


def target_index(seed: int, episode: int, num_targets: int) -> int:
    """Which dataset image a conditional episode paints: drawn from the same hash RNG."""
    return stroke_key(seed, episode, TARGET_SALT) % int(num_targets)


# ---- per-size constants --------------------------------------------------------------------------
def bezier_weights() -> np.ndarray:
    """Bernstein weights of the 51 path points, float32 (51, 3). The engines evaluate
    Q_k = P0 + w1·(P1 − P0) + w2·(P2 − P0) (equal to w0·P0 + w1·P1 + w2·P2, since the weights sum
    to 1, but exact at both ends and for a stroke whose three points coincide)."""
    t = np.arange(N_SEGMENTS + 1, dtype=np.float64) / N_SEGMENTS
    return np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2], axis=1).astype(F32)


def actual_radius(radius: float) -> float:
    return radius * SPEED_RADIUS_GAIN


def dab_spacing(radius: float) -> float:
    """Arc length between dabs: 1 / (dabs_per_actual_radius/r_a + dabs_per_basic_radius/s)."""
    return 1.0 / (DABS_PER_ACTUAL_RADIUS / actual_radius(radius) + DABS_PER_BASIC_RADIUS / radius)


class BrushConstants(NamedTuple):
    """The float32 per-stroke constants both engines derive from a radius (in pixels)."""
    actual_radius: np.float32
    spacing: np.float32
    offset_scale: np.float32   # 1.4 · s


def brush_constants(radius: float) -> BrushConstants:
    return BrushConstants(F32(actual_radius(radius)), F32(dab_spacing(radius)),
                          F32(OFFSET_BY_RANDOM * radius))


class ReleasedBrushConstants(NamedTuple):
    """The float32 per-stroke constants of the released mode (1.3.0's speed term), per base radius s."""
    radius: np.float32
    dabs_per_base: np.float32          # 6 / s: dabs_per_basic_radius per pixel
    speed_scale: np.float32            # 1 / (dtime · s): pixels per event → basic radii per second
    workaround_speed_scale: np.float32 # the same over the tablet workaround's pressure-0 event
    offset_scale: np.float32           # 1.4 · s


def released_brush_constants(radius: float) -> ReleasedBrushConstants:
    return ReleasedBrushConstants(F32(radius), F32(DABS_PER_BASIC_RADIUS / radius),
                                  F32(1.0 / (RELEASED_DTIME * radius)),
                                  F32(1.0 / (WORKAROUND_DTIME * radius)), F32(OFFSET_BY_RANDOM * radius))


def max_path_length(canvas_width: int, grid_width: int) -> float:
    """An upper bound on a stroke's polyline length: the control polygon, corner to corner twice."""
    extent = canvas_width - canvas_width / grid_width   # grid positions lie in [0, extent]
    return 2.0 * math.sqrt(2.0) * extent


def max_dabs(min_radius: float, path_length: float) -> int:
    """Dabs a stroke of at most ``path_length`` can hold at the smallest radius (+2 for carry/rounding)."""
    return int(math.floor(path_length / dab_spacing(min_radius))) + 2


def max_dabs_released(min_radius: float, canvas_width: int, grid_width: int) -> int:
    """``max_dabs`` for the released mode, whose dab density 6/r + 6/s grows with the filtered speed.

    The filtered speed S never exceeds the fastest event (a path segment is at most 1/50 of the
    Bezier's largest speed, 2·√2·extent) or the workaround move's one filter step from S = 0 (a
    jump clears the filter; the move is at most √2·extent in 0.1f − 0.0001 s); the density is
    largest at that S and the smallest radius.
    """
    extent = canvas_width - canvas_width / grid_width
    fastest_event = 2.0 * math.sqrt(2.0) * extent / N_SEGMENTS / (RELEASED_DTIME * min_radius)
    after_lead = (1.0 - math.exp(-WORKAROUND_DTIME / SPEED2_SLOWNESS)) * (
        math.sqrt(2.0) * extent / (WORKAROUND_DTIME * min_radius))
    smallest = released_actual_radius(min_radius, max(fastest_event, after_lead))
    density = DABS_PER_ACTUAL_RADIUS / smallest + DABS_PER_BASIC_RADIUS / min_radius
    return int(math.floor(max_path_length(canvas_width, grid_width) * density)) + 2


# ---- float64 reference implementation (tests) -------------------------------------------------
class Dabs(NamedTuple):
    """One stroke's dabs; arrays of length ``count``. ``carry`` is the partial dab left over."""
    y: np.ndarray
    x: np.ndarray
    radius: np.ndarray
    alpha: np.ndarray
    pressure: np.ndarray
    carry: float

    @property
    def count(self) -> int:
        return len(self.y)


def exp_cubic(z):
    """exp(z) for |z| ≤ 0.35 as the spec's fixed cubic (no libm transcendental in the pipeline)."""
    return 1.0 + z * (1.0 + z * (0.5 + z * (1.0 / 6.0)))


def reference_dabs(start, control, end, p0, p1, radius, key, carry=0.0) -> Dabs:
    """The spec's dabs for one stroke in float64, written as plainly as possible (slow)."""
    P = np.array([start, control, end], np.float64)
    t = np.arange(N_SEGMENTS + 1) / N_SEGMENTS
    Q = ((1 - t) ** 2)[:, None] * P[0] + (2 * (1 - t) * t)[:, None] * P[1] + (t ** 2)[:, None] * P[2]
    S = [0.0]
    for k in range(N_SEGMENTS):
        S.append(S[-1] + math.hypot(*(Q[k + 1] - Q[k])))
    r_a = actual_radius(radius)
    spacing = dab_spacing(radius)
    ys, xs, rs, alphas, ps = [], [], [], [], []
    i = 0
    while (i + 1 - carry) * spacing <= S[-1]:
        sigma = (i + 1 - carry) * spacing
        k = max(j for j in range(N_SEGMENTS) if S[j] < sigma)
        f = (sigma - S[k]) / (S[k + 1] - S[k])
        cy, cx = Q[k] + f * (Q[k + 1] - Q[k])
        press = p0 + (p1 - p0) * (k + f) / N_SEGMENTS
        g = dab_gaussians(key, np.array(i)).astype(np.float64)
        cy += OFFSET_BY_RANDOM * press * radius * g[0]
        cx += OFFSET_BY_RANDOM * press * radius * g[1]
        e = exp_cubic(RADIUS_BY_RANDOM * g[2])
        opaque = min(max((0.8 + 0.2 * press) * press, 0.0), 1.0)
        ys.append(cy), xs.append(cx), rs.append(r_a * e), ps.append(press)
        alphas.append(opaque * min(1.0, 1.0 / (e * e)))
        i += 1
    new_carry = (S[-1] - (i - carry) * spacing) / spacing   # distance since the last dab, in dabs
    return Dabs(*(np.array(v, np.float64) for v in (ys, xs, rs, alphas, ps)), float(new_carry))


def released_actual_radius(radius: float, speed: float) -> float:
    """libmypaint 1.3.0's actual radius for base radius s and filtered speed S (basic radii / s):
    exp(ln s + y(speed2)), speed2 = m·ln(γ + S) + q, y the radius_logarithmic input curve."""
    speed2 = SPEED_MAP_M * math.log(SPEED2_GAMMA + speed) + SPEED_MAP_Q
    (x0, y0), (x1, y1) = RADIUS_SPEED2_CURVE
    return math.exp(math.log(radius) + (y1 * (speed2 - x0) + y0 * (x1 - speed2)) / (x1 - x0))


class ReleasedPath(NamedTuple):
    """A released-mode stroke before the noise: per dab centre, pressure and actual radius, plus
    the brush state after the stroke (partial-dab carry and filtered speed)."""
    y: np.ndarray
    x: np.ndarray
    pressure: np.ndarray
    actual_radius: np.ndarray
    carry: float
    speed: float

    @property
    def count(self) -> int:
        return len(self.y)


def reference_released_path(start, control, end, p0, p1, radius, carry=0.0, speed=0.0,
                            lead=0.0) -> ReleasedPath:
    """The released mode's noise-free dabs of one stroke in float64, written plainly (slow).

    ``speed``: the filtered speed S carried from the previous connected stroke (0 after a reset or
    a jump); ``lead``: the length of the pressure-0 move that libmypaint's tablet workaround makes
    before the stroke (the brush at (y, x) after a jump, the stroke starting at (y, y)), 0 if none.

    Per event k (path segment Q_k → Q_k+1, length L_k, dtime 0.1f): the actual radius is
    r_k = released_actual_radius(s, S_k), with S_k the filtered speed at the event's start, the
    dab density 6/r_k + 6/s dabs per pixel, N_k the cumulative dab count; then
    S_k+1 = S_k + (v_k − S_k)·(1 − e^(−dtime/0.8)), v_k = L_k / (dtime · s). Dab i sits where
    N = i + 1 − carry, linearly within its event.
    """
    if lead > 0.0:
        n_lead = lead * (DABS_PER_ACTUAL_RADIUS / released_actual_radius(radius, speed)
                         + DABS_PER_BASIC_RADIUS / radius)
        carry = (carry + n_lead) % 1.0
        v = lead / (WORKAROUND_DTIME * radius)
        speed += (v - speed) * (1.0 - math.exp(-WORKAROUND_DTIME / SPEED2_SLOWNESS))
    P = np.array([start, control, end], np.float64)
    t = np.arange(N_SEGMENTS + 1) / N_SEGMENTS
    Q = ((1 - t) ** 2)[:, None] * P[0] + (2 * (1 - t) * t)[:, None] * P[1] + (t ** 2)[:, None] * P[2]
    N, radii = [0.0], []
    for k in range(N_SEGMENTS):
        length = math.hypot(*(Q[k + 1] - Q[k]))
        r = released_actual_radius(radius, speed)
        radii.append(r)
        N.append(N[-1] + length * (DABS_PER_ACTUAL_RADIUS / r + DABS_PER_BASIC_RADIUS / radius))
        v = length / (RELEASED_DTIME * radius)
        speed += (v - speed) * (1.0 - math.exp(-RELEASED_DTIME / SPEED2_SLOWNESS))
    ys, xs, ps, rs = [], [], [], []
    i = 0
    while i + 1 - carry <= N[-1]:
        n = i + 1 - carry
        k = max(j for j in range(N_SEGMENTS) if N[j] < n)
        f = (n - N[k]) / (N[k + 1] - N[k])
        cy, cx = Q[k] + f * (Q[k + 1] - Q[k])
        ys.append(cy), xs.append(cx), rs.append(radii[k])
        ps.append(p0 + (p1 - p0) * (k + f) / N_SEGMENTS)
        i += 1
    new_carry = N[-1] - (i - carry)
    return ReleasedPath(*(np.array(v, np.float64) for v in (ys, xs, ps, rs)), float(new_carry), float(speed))


def reference_dabs_released(start, control, end, p0, p1, radius, key, carry=0.0, speed=0.0,
                            lead=0.0):
    """The released mode's dabs (``reference_released_path`` plus the spec's noise), float64:
    (Dabs, new speed)."""
    path = reference_released_path(start, control, end, p0, p1, radius, carry, speed, lead)
    g = dab_gaussians(key, np.arange(path.count)).astype(np.float64).reshape(path.count, 3)
    amp = OFFSET_BY_RANDOM * path.pressure * radius
    e = exp_cubic(RADIUS_BY_RANDOM * g[:, 2])
    opaque = np.clip((0.8 + 0.2 * path.pressure) * path.pressure, 0.0, 1.0)
    dabs = Dabs(path.y + amp * g[:, 0], path.x + amp * g[:, 1], path.actual_radius * e,
                opaque * np.minimum(1.0, 1.0 / (e * e)), path.pressure, path.carry)
    return dabs, path.speed


def opacity_two_segments(rr, hardness=HARDNESS):
    """mypaint's ``calculate_opa``: two linear segments with a knee at rr = hardness, 0 beyond 1."""
    rr = np.asarray(rr, np.float64)
    seg1 = 1.0 - rr * (1.0 / hardness - 1.0)
    seg2 = hardness / (1.0 - hardness) * (1.0 - rr)
    return np.where(rr > 1.0, 0.0, np.where(rr <= hardness, seg1, seg2))


def opacity_branch_free(rr):
    """The spec's branch-free form for hardness 0.2: max(1 − 4rr, 0.25 − 0.25rr, 0)."""
    rr = np.asarray(rr, np.float64)
    return np.maximum(np.maximum(1.0 - 4.0 * rr, 0.25 - 0.25 * rr), 0.0)


def rr_antialiased(xp, yp, x, y, radius, angle_degrees=90.0):
    """mypaint's ``calculate_rr_antialiased`` for a round dab, in its general (angle) form.

    Pixel (xp, yp) spans [xp, xp+1] × [yp, yp+1]; the dab centre is (x, y). dry_brush's
    elliptical_dab_angle is 90°, so cs ≈ 0 and sn = 1; the engines use that specialisation.
    """
    angle = math.radians(angle_degrees)
    cs, sn = math.cos(angle), math.sin(angle)
    one_over_r2 = 1.0 / (radius * radius)
    r_aa_start = max(radius - 1.0, 0.0) ** 2
    right, bottom = x - xp, y - yp
    centre_x, centre_y = right - 0.5, bottom - 0.5
    left, top = right - 1.0, bottom - 1.0
    if left < 0 < right and top < 0 < bottom:
        near_x = near_y = 0.0
        rr_near = 0.0
    else:
        t = centre_x * cs + centre_y * sn            # projection on the dab's axis
        near_x = min(max(cs * t, left), right)
        near_y = min(max(sn * t, top), bottom)
        rr_near = ((near_y * cs - near_x * sn) ** 2 + (near_y * sn + near_x * cs) ** 2) * one_over_r2
    if rr_near > 1.0:
        return rr_near
    side = (centre_x - cs) * sn - cs * (centre_y + sn)
    if side < 0:
        far_x, far_y = near_x - sn * R_AREA_1, near_y + cs * R_AREA_1
    else:
        far_x, far_y = near_x + sn * R_AREA_1, near_y - cs * R_AREA_1
    r_far = (far_y * cs - far_x * sn) ** 2 + (far_y * sn + far_x * cs) ** 2
    rr_far = r_far * one_over_r2
    if r_far < r_aa_start:
        return 0.5 * (rr_far + rr_near)
    return 1.0 - (1.0 - rr_near) / (1.0 + (rr_far - rr_near))


def dab_mask(height, width, y, x, radius):
    """One dab's mask over a whole canvas, float64 (H, W): plain for r ≥ 3, anti-aliased below.

    Evaluated on mypaint's box, floor(c − r − 1) .. floor(c + r + 1); zero elsewhere.
    """
    mask = np.zeros((height, width))
    y0, y1 = max(math.floor(y - radius - 1), 0), min(math.floor(y + radius + 1), height - 1)
    x0, x1 = max(math.floor(x - radius - 1), 0), min(math.floor(x + radius + 1), width - 1)
    if y0 > y1 or x0 > x1:
        return mask
    if radius >= AA_RADIUS:
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        rr = ((yy + 0.5 - y) ** 2 + (xx + 0.5 - x) ** 2) / radius ** 2
        mask[y0:y1 + 1, x0:x1 + 1] = opacity_two_segments(rr)
        return mask
    for yp in range(y0, y1 + 1):
        for xp in range(x0, x1 + 1):
            mask[yp, xp] = opacity_two_segments(rr_antialiased(xp, yp, x, y, radius))
    return mask


def reference_render(canvas, dabs: Dabs, color):
    """Sequential per-dab "over" blending, float64: canvas (C, H, W) ← canvas·(1 − a) + colour·a."""
    out = np.array(canvas, np.float64)
    color = np.asarray(color, np.float64).reshape(-1, 1, 1)
    for j in range(dabs.count):
        a = dabs.alpha[j] * dab_mask(out.shape[1], out.shape[2], dabs.y[j], dabs.x[j], dabs.radius[j])
        out = out * (1.0 - a) + color * a
    return out
