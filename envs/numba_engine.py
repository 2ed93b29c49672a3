"""The CPU brush engine: RENDERER.md's dab-stamping spec compiled with numba for one core.

The default engine for actors. Everything is float32 with explicit float32 constants (numba
promotes ``1 - x`` with a Python literal to float64), compiled once and cached on disk
(``cache=True``) so that each actor process does not spend seconds compiling, never parallel
(one actor = one core). No ``fastmath``: it would reassociate and fuse multiply-adds, and break
agreement with the JAX engine.

Speed notes (measured with LLVM's output; see RENDERER.md): stamping multiplies a stroke-local
transmittance buffer T, and the composite then touches only the stroke's bounding box. Every
inner loop is written so that LLVM vectorises it: branch-free selects; ``error_model="numpy"``
(Python's division-by-zero check is a branch); pixel indices converted to float through int32
(AVX2 has no packed int64 → float); plain dabs (r ≥ 3) row by row over a row *slice* of T with
dx² precomputed (with a flat index into T the loop stays scalar, ~5× slower); anti-aliased dabs
(r < 3, at most 7 pixels wide) as one flat loop over a 4- or 8-column window, since row loops
that short never reach the vector body. The noise hashes run in their own loop over dabs.

Layout: the canvas is planar (C, H, W) float32 in [0, 1]; observations are built by
``observe`` as (ow, ow, C) (ow = the output's width, ``observation_width``), downsampled by exact
area average when H > ow and quantised to uint8 levels (round half to even); the float32
observation is level / 255, the nearest float32 to k/255.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from spiral.envs import stroke as spec
from spiral.envs.config import PaintConfig
from spiral.envs.levels import LEVELS

F32 = np.float32

# Compile-time constants (numba freezes module globals).
_MASK = np.uint64(spec.MASK32)
_GOLDEN = np.uint64(spec.GOLDEN)
_DRAW_STEP = np.uint64(spec.DRAW_STEP)
_M1 = np.uint64(0x7FEB352D)
_M2 = np.uint64(0x846CA68B)
_S10 = np.uint64(10)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_ONE = F32(1.0)
_HALF = F32(0.5)
_FOUR = F32(4.0)
_QUARTER = F32(0.25)
_ZERO = F32(0.0)
_TWO = F32(2.0)
_AA_RADIUS = F32(spec.AA_RADIUS)
_R_AREA_1 = spec.R_AREA_1_F32
_ONE_FIFTIETH = spec.ONE_FIFTIETH
_SQRT3 = spec.SQRT3
_UNIFORM_SCALE = spec.UNIFORM_SCALE
_EXP_C2 = spec.EXP_C2
_EXP_C3 = spec.EXP_C3
_Z_SCALE = spec.Z_SCALE
_OPAQUE_BASE = spec.OPAQUE_BASE
_OPAQUE_GAIN = spec.OPAQUE_GAIN
_BELOW_ONE = spec.LARGEST_BELOW_ONE
_SIX = F32(spec.DABS_PER_ACTUAL_RADIUS)
_SPEED_LOG_C0 = spec.SPEED_LOG_C0
_SPEED_LOG_C1 = spec.SPEED_LOG_C1
_SPEED2_GAMMA = spec.SPEED2_GAMMA_F32
_SPEED_FILTER_STEP = spec.SPEED_FILTER_STEP
_WORKAROUND_FILTER_STEP = spec.WORKAROUND_FILTER_STEP
_N_SEG = spec.N_SEGMENTS
_F255 = F32(255.0)
_MAGIC = F32(1.5 * 2 ** 23)

# Column and row offset of each entry of a flat 4- or 8-column window (anti-aliased dabs).
_LANE_X4 = (np.arange(32) % 4).astype(F32)
_LANE_Y4 = (np.arange(32) // 4).astype(F32)
_LANE_X8 = (np.arange(64) % 8).astype(F32)
_LANE_Y8 = (np.arange(64) // 8).astype(F32)

# uint8 level -> float32 observation: the nearest float to k/255 (k·255 then rounds back to k).
UINT8_TO_FLOAT = LEVELS  # spiral.envs.levels: the float32 nearest k/255


@njit(cache=True, error_model="numpy")
def _mix32(x):
    x = x & _MASK
    x = x ^ (x >> _S16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> _S15)
    x = (x * _M2) & _MASK
    return x ^ (x >> _S16)


@njit(cache=True, error_model="numpy")
def _uniform(h, draw):
    return F32(_mix32(h + np.uint64(draw) * _DRAW_STEP) >> _S10) * _UNIFORM_SCALE


@njit(cache=True, error_model="numpy")
def _gauss(h, m):
    """mypaint's rand_gauss from draws 4m+1..4m+4 of a dab's hash (sum exact in float32)."""
    total = ((_uniform(h, 4 * m + 1) + _uniform(h, 4 * m + 2)) + _uniform(h, 4 * m + 3)) \
        + _uniform(h, 4 * m + 4)
    return (total - _TWO) * _SQRT3


@njit(cache=True, error_model="numpy")
def _dab_noise(key, n, noise):
    """Three gaussians per dab into noise (3, n); a separate loop so that LLVM can vectorise it."""
    key64 = np.uint64(key)
    for i in range(n):
        h = _mix32(key64 ^ ((np.uint64(i + 1) * _GOLDEN) & _MASK))
        noise[0, i] = _gauss(h, 0)
        noise[1, i] = _gauss(h, 1)
        noise[2, i] = _gauss(h, 2)


@njit(cache=True, error_model="numpy")
def _path_points(sy, sx, cy, cx, ey, ex, weights):
    """The 51 Bezier points Q_k of a stroke, float32 (qy, qx)."""
    qy = np.empty(_N_SEG + 1, np.float32)
    qx = np.empty(_N_SEG + 1, np.float32)
    # Q = P0 + w1·(P1 − P0) + w2·(P2 − P0): exact at both ends and for a stroke that stays put.
    cdy, cdx, edy, edx = cy - sy, cx - sx, ey - sy, ex - sx
    for k in range(_N_SEG + 1):
        qy[k] = (sy + weights[k, 1] * cdy) + weights[k, 2] * edy
        qx[k] = (sx + weights[k, 1] * cdx) + weights[k, 2] * edx
    return qy, qx


@njit(cache=True, error_model="numpy")
def _noisy_dab(dabs, i, y, x, press, r_a, offset_scale, noise):
    """Dab i's row [y, x, radius, alpha] from its noise-free centre, pressure and actual radius."""
    amp = press * offset_scale
    z = _Z_SCALE * noise[2, i]
    e = _ONE + z * (_ONE + z * (_EXP_C2 + z * _EXP_C3))
    opaque = (_OPAQUE_BASE + _OPAQUE_GAIN * press) * press
    opaque = min(max(opaque, _ZERO), _ONE)
    dabs[i, 0] = y + amp * noise[0, i]
    dabs[i, 1] = x + amp * noise[1, i]
    dabs[i, 2] = r_a * e
    dabs[i, 3] = opaque * min(_ONE / (e * e), _ONE)


@njit(cache=True, error_model="numpy")
def stroke_dabs(sy, sx, cy, cx, ey, ex, p0, p1, r_a, spacing, inv_spacing, offset_scale, key, carry,
                weights):
    """The spec's dabs of one stroke: ((n, 4) float32 [y, x, radius, alpha], new carry)."""
    # 1. Path: 51 Bezier points and the sequential cumulative length.
    qy, qx = _path_points(sy, sx, cy, cx, ey, ex, weights)
    s = np.empty(_N_SEG + 1, np.float32)
    s[0] = _ZERO
    for k in range(_N_SEG):
        dy = qy[k + 1] - qy[k]
        dx = qx[k + 1] - qx[k]
        s[k + 1] = s[k] + np.sqrt(dy * dy + dx * dx)
    total = s[_N_SEG]
    # 2. Spacing: dab i at arc length (i + 1 - carry)·Δ while that is <= the total length.
    a = _ONE - carry
    n = 0
    while (F32(n) + a) * spacing <= total:
        n += 1
    noise = np.empty((3, n), np.float32)
    _dab_noise(key, n, noise)
    dabs = np.empty((n, 4), np.float32)
    k = 0
    for i in range(n):
        sigma = (F32(i) + a) * spacing
        while s[k + 1] < sigma:
            k += 1
        # 3. Centre and pressure, linear within segment k.
        f = (sigma - s[k]) / (s[k + 1] - s[k])
        y = qy[k] + f * (qy[k + 1] - qy[k])
        x = qx[k] + f * (qx[k + 1] - qx[k])
        press = p0 + (p1 - p0) * ((F32(k) + f) * _ONE_FIFTIETH)
        # 4. Noise: offset, radius and the opacity that goes with them.
        _noisy_dab(dabs, i, y, x, press, r_a, offset_scale, noise)
    last = (F32(n - 1) + a) * spacing
    new_carry = min(max((total - last) * inv_spacing, _ZERO), _BELOW_ONE)
    return dabs, new_carry


@njit(cache=True, error_model="numpy")
def released_radius(radius, speed):
    """libmypaint 1.3.0's actual radius: s·exp(c0 + c1·ln(γ + S)), S in basic radii per second."""
    return radius * F32(np.exp(_SPEED_LOG_C0 + _SPEED_LOG_C1 * F32(np.log(_SPEED2_GAMMA + speed))))


@njit(cache=True, error_model="numpy")
def released_path(sy, sx, cy, cx, ey, ex, p0, p1, radius, dabs_per_base, speed_scale,
                  workaround_speed_scale, carry, speed, lead, weights):
    """The released mode's noise-free dabs (``stroke.reference_released_path``), float32.

    Returns ((n, 4) [y, x, pressure, actual radius], new carry, new filtered speed). ``lead`` is
    the length of the tablet workaround's pressure-0 move before the stroke (0 if none).
    """
    if lead > _ZERO:
        # The pressure-0 move paints nothing, but moves the partial dab and the speed filter on.
        moved = carry + lead * (_SIX / released_radius(radius, speed) + dabs_per_base)
        carry = moved - F32(np.floor(moved))
        speed = speed + (lead * workaround_speed_scale - speed) * _WORKAROUND_FILTER_STEP
    qy, qx = _path_points(sy, sx, cy, cx, ey, ex, weights)
    # Per event: the actual radius from the filtered speed at its start, the cumulative dab count.
    cumulative = np.empty(_N_SEG + 1, np.float32)
    radii = np.empty(_N_SEG, np.float32)
    cumulative[0] = _ZERO
    for k in range(_N_SEG):
        dy = qy[k + 1] - qy[k]
        dx = qx[k + 1] - qx[k]
        length = np.sqrt(dy * dy + dx * dx)
        r = released_radius(radius, speed)
        radii[k] = r
        cumulative[k + 1] = cumulative[k] + length * (_SIX / r + dabs_per_base)
        speed = speed + (length * speed_scale - speed) * _SPEED_FILTER_STEP
    total = cumulative[_N_SEG]
    # Dab i where the count reaches i + 1 − carry.
    a = _ONE - carry
    n = 0
    while F32(n) + a <= total:
        n += 1
    path = np.empty((n, 4), np.float32)
    k = 0
    for i in range(n):
        sigma = F32(i) + a
        while cumulative[k + 1] < sigma:
            k += 1
        f = (sigma - cumulative[k]) / (cumulative[k + 1] - cumulative[k])
        path[i, 0] = qy[k] + f * (qy[k + 1] - qy[k])
        path[i, 1] = qx[k] + f * (qx[k + 1] - qx[k])
        path[i, 2] = p0 + (p1 - p0) * ((F32(k) + f) * _ONE_FIFTIETH)
        path[i, 3] = radii[k]
    new_carry = min(max(total - (F32(n - 1) + a), _ZERO), _BELOW_ONE)
    return path, new_carry, speed


@njit(cache=True, error_model="numpy")
def stroke_dabs_released(sy, sx, cy, cx, ey, ex, p0, p1, radius, dabs_per_base, speed_scale,
                         workaround_speed_scale, offset_scale, key, carry, speed, lead, weights):
    """The released mode's dabs of one stroke: ((n, 4) [y, x, radius, alpha], carry, speed)."""
    path, new_carry, new_speed = released_path(sy, sx, cy, cx, ey, ex, p0, p1, radius, dabs_per_base,
                                               speed_scale, workaround_speed_scale, carry, speed,
                                               lead, weights)
    n = path.shape[0]
    noise = np.empty((3, n), np.float32)
    _dab_noise(key, n, noise)
    dabs = np.empty((n, 4), np.float32)
    for i in range(n):
        _noisy_dab(dabs, i, path[i, 0], path[i, 1], path[i, 2], path[i, 3], offset_scale, noise)
    return dabs, new_carry, new_speed


@njit(cache=True, error_model="numpy")
def _opacity(rr):
    """Branch-free two-segment mask (hardness 0.2); zero for rr > 1."""
    m1 = _ONE - _FOUR * rr
    m2 = _QUARTER - _QUARTER * rr
    m = m1 if m1 > m2 else m2
    return m if m > _ZERO else _ZERO


@njit(cache=True, error_model="numpy")
def _window(lo, size, limit):
    """Start of a ``size``-wide window beginning at ``lo``, shifted (not clipped) into [0, limit)."""
    start = lo if lo + size <= limit else limit - size
    return start if start > 0 else 0


@njit(cache=True, error_model="numpy")
def _stamp_plain(transmittance, lo_y, hi_y, x0, cols, columns, cx, cy, inv_r2, alpha):
    """T ×= 1 − α·m(q) with q = ((x+½−cx)² + (y+½−cy)²)/r², row by row over ``cols`` columns.

    The inner loop runs over a row slice with dx² precomputed: the form LLVM vectorises (with a
    flat index into T it does not, and runs about 5× slower).
    """
    for j in range(cols):
        dx = (F32(np.int32(x0 + j)) + _HALF) - cx
        columns[j] = dx * dx
    for yp in range(lo_y, hi_y + 1):
        dy = (F32(np.int32(yp)) + _HALF) - cy
        dy2 = dy * dy
        row = transmittance[yp, x0:x0 + cols]
        for j in range(cols):
            row[j] = row[j] * (_ONE - alpha * _opacity((columns[j] + dy2) * inv_r2))


@njit(cache=True, error_model="numpy")
def _antialiased_factors(factors, count, lane_x, lane_y, x0, y0, cx, cy, inv_r2, aa_start, alpha):
    """mypaint's calculate_rr_antialiased (round dab at 90°) then 1 − α·m, as branch-free selects.

    Pixel (xp, yp) spans [xp, xp+1]; with right = cx − xp it spans [right − 1, right] around the
    dab centre. The "nearest" point is the centre itself when it lies inside the pixel, else
    (clamp(0, right − 1, right), pixel-centre y); the "farthest" point is the nearest moved
    √(1/π) away in x. One flat loop over the window (lane_x/lane_y give each entry's column and
    row offset as float32), which LLVM vectorises.
    """
    rx = cx - F32(np.int32(x0))
    ry = cy - F32(np.int32(y0))
    for p in range(count):
        right = rx - lane_x[p]
        left = right - _ONE
        near = left if left > _ZERO else (right if right < _ZERO else _ZERO)
        far = near - _R_AREA_1 if (right - _HALF) < _ZERO else near + _R_AREA_1
        bottom = ry - lane_y[p]
        centre = bottom - _HALF
        inside = (left < _ZERO) & (right > _ZERO) & ((bottom - _ONE) < _ZERO) & (bottom > _ZERO)
        ny2 = _ZERO if inside else centre * centre
        rr_near = (near * near + ny2) * inv_r2
        r_far = far * far + ny2
        rr_far = r_far * inv_r2
        blend = (rr_far + rr_near) * _HALF
        occluded = _ONE - (_ONE - rr_near) / (_ONE + (rr_far - rr_near))
        rr = blend if r_far < aa_start else occluded
        rr = rr_near if rr_near > _ONE else rr
        factors[p] = _ONE - alpha * _opacity(rr)


@njit(cache=True, error_model="numpy")
def stamp_dabs(transmittance, dabs, bbox):
    """Multiply every dab's (1 − α·m) into T (H, W); grow ``bbox`` [y0, y1, x0, x1] (inclusive).

    A dab's mask can be non-zero only on columns and rows [floor(c − r), floor(c + r)] (for the
    anti-aliased rr too: its nearest point is within r). Each dab is evaluated on those rows and
    on a window of 2^k columns (4, 8, 16, ...) holding that range, so that the inner loops have
    trip counts LLVM vectorises; window pixels outside the dab get m = 0, a factor of exactly 1,
    so the window changes speed, never the result. Dabs with r < 3 (at most 7 pixels wide) use
    mypaint's anti-aliased rr on a 4- or 8-column window.
    """
    height, width = transmittance.shape
    flat = transmittance.reshape(-1)
    scratch = np.empty(max(width, 64), np.float32)
    for d in range(dabs.shape[0]):
        cy = dabs[d, 0]
        cx = dabs[d, 1]
        r = dabs[d, 2]
        alpha = dabs[d, 3]
        lo_y = max(int(math.floor(cy - r)), 0)
        hi_y = min(int(math.floor(cy + r)), height - 1)
        lo_x = max(int(math.floor(cx - r)), 0)
        hi_x = min(int(math.floor(cx + r)), width - 1)
        if lo_y > hi_y or lo_x > hi_x:
            continue
        shift = 2
        while (1 << shift) < hi_x - lo_x + 1:
            shift += 1
        cols = 1 << shift
        x0 = _window(lo_x, cols, width)
        inv_r2 = _ONE / (r * r)
        if r < _AA_RADIUS:
            rm1 = r - _ONE
            aa_start = rm1 * rm1 if r > _ONE else _ZERO
            rows = hi_y - lo_y + 1
            if shift == 2:
                lane_x, lane_y = _LANE_X4, _LANE_Y4
            else:
                lane_x, lane_y = _LANE_X8, _LANE_Y8
            _antialiased_factors(scratch, rows << shift, lane_x, lane_y, x0, lo_y, cx, cy, inv_r2,
                                 aa_start, alpha)
            for i in range(rows):
                base = (lo_y + i) * width + x0
                for j in range(cols):
                    flat[base + j] = flat[base + j] * scratch[(i << shift) + j]
        else:
            _stamp_plain(transmittance, lo_y, hi_y, x0, cols, scratch, cx, cy, inv_r2, alpha)
        bbox[0] = min(bbox[0], lo_y)
        bbox[1] = max(bbox[1], hi_y)
        bbox[2] = min(bbox[2], x0)
        bbox[3] = max(bbox[3], x0 + cols - 1)


@njit(cache=True, error_model="numpy")
def composite(canvas, transmittance, color, bbox):
    """canvas (C, H, W) ← canvas·T + colour·(1 − T) inside bbox, then reset T to 1 there."""
    y0, y1, x0, x1 = bbox[0], bbox[1], bbox[2], bbox[3]
    if y0 > y1:
        return
    channels, height, width = canvas.shape
    flat_t = transmittance.reshape(-1)
    flat_c = canvas.reshape(-1)
    n = x1 - x0 + 1
    for yp in range(y0, y1 + 1):
        base_t = yp * width + x0
        for c in range(channels):
            ink = color[c]
            base_c = (c * height + yp) * width + x0
            for j in range(n):
                t = flat_t[base_t + j]
                flat_c[base_c + j] = flat_c[base_c + j] * t + ink * (_ONE - t)
        for j in range(n):
            flat_t[base_t + j] = _ONE


@njit(cache=True, error_model="numpy")
def render_stroke(canvas, transmittance, sy, sx, cy, cx, ey, ex, p0, p1, r_a, spacing, inv_spacing,
                  offset_scale, color, key, carry, weights):
    """Paint one stroke into ``canvas`` in place; return (new carry, number of dabs)."""
    dabs, new_carry = stroke_dabs(sy, sx, cy, cx, ey, ex, p0, p1, r_a, spacing, inv_spacing,
                                  offset_scale, key, carry, weights)
    _paint_dabs(canvas, transmittance, dabs, color)
    return new_carry, dabs.shape[0]


@njit(cache=True, error_model="numpy")
def render_stroke_released(canvas, transmittance, sy, sx, cy, cx, ey, ex, p0, p1, radius,
                           dabs_per_base, speed_scale, workaround_speed_scale, offset_scale, color,
                           key, carry, speed, lead, weights):
    """Paint one released-mode stroke (``stroke_dabs_released``) into ``canvas`` in place; return
    (new carry, new filtered speed, number of dabs)."""
    dabs, new_carry, new_speed = stroke_dabs_released(
        sy, sx, cy, cx, ey, ex, p0, p1, radius, dabs_per_base, speed_scale, workaround_speed_scale,
        offset_scale, key, carry, speed, lead, weights)
    _paint_dabs(canvas, transmittance, dabs, color)
    return new_carry, new_speed, dabs.shape[0]


@njit(cache=True, error_model="numpy")
def _paint_dabs(canvas, transmittance, dabs, color):
    """Stamp the dabs into T (all ones outside the last bbox) and composite the colour through it."""
    height, width = transmittance.shape
    bbox = np.array([height, -1, width, -1], np.int64)
    stamp_dabs(transmittance, dabs, bbox)
    composite(canvas, transmittance, color, bbox)


@njit(cache=True, error_model="numpy")
def _round_half_even(v):
    # Adding and removing 1.5·2^23 rounds a float32 in [0, 2^22) to the nearest integer, ties to
    # even (like np.rint / jnp.round), in plain float32 adds that LLVM vectorises.
    return (v + _MAGIC) - _MAGIC


@njit(cache=True, error_model="numpy")
def observe(canvas, out_u8, out_f32):
    """Downsample (C, H, W) to (ow, ow, C) = ``out_u8.shape`` by exact area average; quantise.

    Levels round half to even; the float32 observation is level / 255 (a correctly rounded
    division: the nearest float32 to k/255, so ``obs * 255`` rounds back to k). Each block sums
    in row-major order, the same order as the JAX engine. The loops run one output row at a
    time with x innermost (a row buffer of block sums), a form LLVM vectorises; the order of the
    additions into each block sum is unchanged (benchmarks/env_throughput.py: 1.9-4.6x a loop per pixel).
    """
    channels, height, width = canvas.shape
    width_out = out_u8.shape[0]
    s = height // width_out
    inv_area = _ONE / F32(s * s)   # 1, 1/4, 1/16, ...: exact powers of two for the supported sizes
    row = np.empty(width_out, np.float32)
    for c in range(channels):
        for y in range(width_out):
            if s == 1:
                values = canvas[c, y]
            else:
                for x in range(width_out):
                    row[x] = _ZERO
                for dy in range(s):
                    source = canvas[c, y * s + dy]
                    for dx in range(s):
                        for x in range(width_out):
                            row[x] = row[x] + source[x * s + dx]
                for x in range(width_out):
                    row[x] = row[x] * inv_area
                values = row
            for x in range(width_out):
                q = min(max(_round_half_even(values[x] * _F255), _ZERO), _F255)
                out_u8[y, x, c] = np.uint8(q)
                out_f32[y, x, c] = q / _F255


class NumbaCanvas:
    """One canvas and brush painted by the numba kernels (the default engine).

    The engine keeps what libmypaint's brush keeps between strokes: the partial-dab ``carry`` of a
    connected stroke (reset to 0 by ``reset`` and ``jump``) and, in the released mode, the
    filtered ``speed`` and where the brush really is (after a jump to (y, x), a stroke starting
    elsewhere first moves it there without paint: the ``lead``). Positions and radii are in pixels
    of this canvas (already scaled by ``PaintEnv`` / ``render_program``).
    """

    def __init__(self, config: PaintConfig):
        self.config = config
        self._released = config.released
        w, c = config.canvas_width, config.channels
        self.canvas = np.full((c, w, w), config.background_value, np.float32)
        self._transmittance = np.ones((w, w), np.float32)
        self._weights = spec.bezier_weights()
        self._constants = {}
        self.carry = F32(0.0)
        self.speed = F32(0.0)
        self._pen = (F32(0.0), F32(0.0))
        self._lifted = True
        self.last_dab_count = 0

    def reset(self):
        self.canvas.fill(self.config.background_value)
        self.jump(0.0, 0.0)

    def jump(self, y: float, x: float):
        self.carry = F32(0.0)
        self.speed = F32(0.0)
        self._pen = (F32(y), F32(x))
        self._lifted = True

    def _brush(self, radius: float):
        consts = self._constants.get(radius)
        if consts is None:
            if self._released:
                consts = spec.released_brush_constants(radius)
            else:
                b = spec.brush_constants(radius)
                consts = (b.actual_radius, b.spacing, F32(1.0 / float(b.spacing)), b.offset_scale)
            self._constants[radius] = consts
        return consts

    def paint(self, start, control, end, p0, p1, radius, color, key):
        if self._released:
            self._paint_released(start, control, end, p0, p1, radius, color, key)
            return
        r_a, spacing, inv_spacing, offset_scale = self._brush(radius)
        self.carry, self.last_dab_count = render_stroke(
            self.canvas, self._transmittance, F32(start[0]), F32(start[1]), F32(control[0]),
            F32(control[1]), F32(end[0]), F32(end[1]), F32(p0), F32(p1), r_a, spacing, inv_spacing,
            offset_scale, np.asarray(color, np.float32), np.uint64(key), F32(self.carry),
            self._weights)

    def _paint_released(self, start, control, end, p0, p1, radius, color, key):
        sy, sx, ey, ex = F32(start[0]), F32(start[1]), F32(end[0]), F32(end[1])
        lead = F32(0.0)
        if self._lifted:
            dy, dx = sy - self._pen[0], sx - self._pen[1]
            lead = np.sqrt(dy * dy + dx * dx)
        b = self._brush(radius)
        self.carry, self.speed, self.last_dab_count = render_stroke_released(
            self.canvas, self._transmittance, sy, sx, F32(control[0]), F32(control[1]), ey, ex,
            F32(p0), F32(p1), b.radius, b.dabs_per_base, b.speed_scale, b.workaround_speed_scale,
            b.offset_scale, np.asarray(color, np.float32), np.uint64(key), F32(self.carry),
            F32(self.speed), lead, self._weights)
        self._pen = (ey, ex)
        self._lifted = False

    def observe(self, out_u8: np.ndarray, out_f32: np.ndarray):
        observe(self.canvas, out_u8, out_f32)

    def full_canvas(self) -> np.ndarray:
        """The full-resolution float32 canvas, (W, W, C), unquantised."""
        return self.canvas.transpose(1, 2, 0).copy()


def numba_dabs(start, control, end, p0, p1, radius, key, carry=0.0):
    """The numba engine's dabs of one stroke, for tests: ((n, 4) [y, x, radius, alpha], carry)."""
    b = spec.brush_constants(radius)
    return stroke_dabs(F32(start[0]), F32(start[1]), F32(control[0]), F32(control[1]), F32(end[0]),
                       F32(end[1]), F32(p0), F32(p1), b.actual_radius, b.spacing,
                       F32(1.0 / float(b.spacing)), b.offset_scale, np.uint64(key), F32(carry),
                       spec.bezier_weights())



def numba_released_path(start, control, end, p0, p1, radius, carry=0.0, speed=0.0, lead=0.0):
    """The numba engine's released-mode noise-free dabs, for tests:
    ((n, 4) [y, x, pressure, actual radius], carry, speed)."""
    b = spec.released_brush_constants(radius)
    return released_path(F32(start[0]), F32(start[1]), F32(control[0]), F32(control[1]), F32(end[0]),
                         F32(end[1]), F32(p0), F32(p1), b.radius, b.dabs_per_base, b.speed_scale,
                         b.workaround_speed_scale, F32(carry), F32(speed), F32(lead),
                         spec.bezier_weights())


def numba_dabs_released(start, control, end, p0, p1, radius, key, carry=0.0, speed=0.0, lead=0.0):
    """The numba engine's released-mode dabs, for tests: ((n, 4) [y, x, radius, alpha], carry, speed)."""
    b = spec.released_brush_constants(radius)
    return stroke_dabs_released(F32(start[0]), F32(start[1]), F32(control[0]), F32(control[1]),
                                F32(end[0]), F32(end[1]), F32(p0), F32(p1), b.radius, b.dabs_per_base,
                                b.speed_scale, b.workaround_speed_scale, b.offset_scale,
                                np.uint64(key), F32(carry), F32(speed), F32(lead), spec.bezier_weights())
