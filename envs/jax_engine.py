"""The batched brush engine: the paint environment as pure JAX functions over B environments.

``reset(seed_or_key, batch_size, config, dataset=None) -> PaintState`` and
``step(state, action) -> (PaintState, TimeStep)`` are jittable (the config is static pytree
metadata of the state), have static shapes, no host callbacks and no Python loop over the
batch; ``lax.scan`` over ``step`` runs whole episodes on an accelerator. ``action`` is a dict of
int32 [B] arrays with the keys of ``config.action_spec()``. Episode semantics are those of
``PaintEnv``: a step after LAST restarts that environment (its action is ignored) and returns
FIRST; ``timestep(state)`` gives the observation of any state.

The brush is RENDERER.md's spec, as in the numba engine (same float32 formulas, constants and
hash RNG; agreement within RENDERER.md's tolerances, XLA contracts some multiply-adds to FMA):

1. ``stroke_dabs``: every stroke's dabs at once, padded to ``max_dabs`` (enough for the longest
   stroke at the smallest brush); padding dabs are invalid (α = 0). The path length is summed
   sequentially and the segment of each dab found by comparison, as numba does.
2. ``transmittance``: T = Π(1 − α·m) without dense 64×64 masks per padded dab. Each valid dab's
   box (the pixels its mask can touch, clipped to the canvas) is cut into 8×8 tiles; the tiles
   of the whole batch form one flat work list (exclusive prefix sum over dabs, a
   ``searchsorted`` from work item to dab), processed in chunks of a fixed size by a
   ``while_loop`` whose trip count follows the real number of tiles, not the padding. Each
   chunk scatters its factors into T: multiplied in place (``combine="multiply"``, sequential on
   CPU, the default there) or added as logarithms (``combine="log"``: native atomic adds on
   GPU/TPU, the default there; T = exp(Σ log f); atomics make the last bits order-dependent, so
   GPU runs are reproducible only to float32 rounding unless XLA's deterministic-ops flag is set).
3. Composite canvas ← canvas·T + colour·(1 − T), downsample to ``config.observation_width`` and
   quantise like numba.

State per environment: canvas, brush position, previous pressure, painting flag (also the
action mask), partial-dab carry, filtered stroke speed (released mode), step count, episode index,
seed, target index (conditional). In the released mode (``config.jump_start``) a stroke after a
jump to (y, x) starts at (y, y) and the brush follows libmypaint 1.3.0 (``paint_released``,
envs/README.md).
The conditional ``dataset`` is shared by the batch as uint8 levels [N, ow, ow, C] (k means k/255;
``spiral.envs.targets``); observations show a target as float32 level/255, like the canvas.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Optional, Union

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from spiral.envs import specs
from spiral.envs import stroke as spec
from spiral.envs import targets as target_data
from spiral.envs.config import DEFAULT_OBSERVATION_WIDTH, PaintConfig
from spiral.envs.numba_engine import UINT8_TO_FLOAT

F32 = np.float32
TILE = 8
COMBINES = ("multiply", "log")
SEARCH_METHOD = "scan"
# Block sums with at most this many terms are unrolled (as written since the first version);
# larger blocks (e.g. 256 → 8) add in a fori_loop, in the same row-major order.
UNROLLED_BLOCK = 16


# ---- hash RNG (uint32 arithmetic wraps, as the spec's masks do) --------------------------------
def mix32(x):
    x = x.astype(jnp.uint32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def stroke_key(seed, episode, step):
    """``spiral.envs.stroke.stroke_key`` on uint32 arrays."""
    golden = jnp.uint32(spec.GOLDEN)
    h = mix32(seed.astype(jnp.uint32) + golden)
    h = mix32(h + episode.astype(jnp.uint32) + golden)
    return mix32(h + step.astype(jnp.uint32) + golden)


def _gaussians(key, n):
    """Three rand_gauss per dab, [B, n] each, from the same draws as the numba engine."""
    i = jnp.arange(n, dtype=jnp.uint32)
    h = mix32(key[:, None] ^ ((i + jnp.uint32(1)) * jnp.uint32(spec.GOLDEN)))
    out = []
    for m in range(3):
        u = [(mix32(h + jnp.uint32(4 * m + j + 1) * jnp.uint32(spec.DRAW_STEP)) >> 10).astype(jnp.float32)
             * spec.UNIFORM_SCALE for j in range(4)]
        total = ((u[0] + u[1]) + u[2]) + u[3]
        out.append((total - F32(2.0)) * spec.SQRT3)
    return out


# ---- strokes and dabs ------------------------------------------------------------------------
class Strokes(NamedTuple):
    """One stroke per environment, [B] or [B, 2] float32 in pixels; ``active`` False = no stroke."""
    start: jax.Array
    control: jax.Array
    end: jax.Array
    p0: jax.Array
    p1: jax.Array
    actual_radius: jax.Array
    spacing: jax.Array
    inv_spacing: jax.Array
    offset_scale: jax.Array
    color: jax.Array      # [B, C]
    key: jax.Array        # [B] uint32
    active: jax.Array     # [B] bool
    # The released mode's constants (``stroke.released_brush_constants``); None otherwise.
    radius: Optional[jax.Array] = None
    dabs_per_base: Optional[jax.Array] = None
    speed_scale: Optional[jax.Array] = None
    workaround_speed_scale: Optional[jax.Array] = None


class Dabs(NamedTuple):
    y: jax.Array       # [B, max_dabs]
    x: jax.Array
    radius: jax.Array
    alpha: jax.Array   # 0 for padding
    valid: jax.Array


def max_dabs(config: PaintConfig) -> int:
    """Dabs of the longest possible stroke at the smallest brush of ``config`` (static padding)."""
    if config.released:
        return spec.max_dabs_released(min(config.pixel_radii), config.canvas_width, config.grid_width)
    length = spec.max_path_length(config.canvas_width, config.grid_width)
    return spec.max_dabs(min(config.pixel_radii), length)


def _path_points(strokes: Strokes):
    """The 51 Bezier points of every stroke, (qy, qx) [B, 51], and the segment lengths [B, 50]."""
    w = jnp.asarray(spec.bezier_weights())                               # [51, 3]
    p0 = strokes.start
    dc = strokes.control - p0
    de = strokes.end - p0
    # Q = P0 + w1·(P1 − P0) + w2·(P2 − P0), as numba: exact at both ends.
    qy = (p0[:, :1] + w[:, 1] * dc[:, :1]) + w[:, 2] * de[:, :1]             # [B, 51]
    qx = (p0[:, 1:] + w[:, 1] * dc[:, 1:]) + w[:, 2] * de[:, 1:]
    dy = qy[:, 1:] - qy[:, :-1]
    dx = qx[:, 1:] - qx[:, :-1]
    return qy, qx, jnp.sqrt(dy * dy + dx * dx)


def _place_dabs(s, sigma, valid, qy, qx, strokes: Strokes):
    """Dabs at σ [B, n] along a cumulative measure s [B, 51] of the path (length, or dab count):
    segment k with S_k < σ <= S_k+1, fraction f; centre and pressure linear within it.
    Returns (y, x, pressure, k) [B, n]."""
    # Segment k: the number of S_1..S_50 below σ.
    k = jax.vmap(functools.partial(jnp.searchsorted, side="left", method=SEARCH_METHOD))(s[:, 1:], sigma)
    k = jnp.minimum(k, spec.N_SEGMENTS - 1).astype(jnp.int32)
    take = functools.partial(jnp.take_along_axis, axis=1)
    s0, s1 = take(s, k), take(s, k + 1)
    f = jnp.where(valid, (sigma - s0) / jnp.where(valid, s1 - s0, F32(1.0)), F32(0.0))
    y0, y1 = take(qy, k), take(qy, k + 1)
    x0, x1 = take(qx, k), take(qx, k + 1)
    p0, p1 = strokes.p0[:, None], strokes.p1[:, None]
    press = p0 + (p1 - p0) * ((k.astype(jnp.float32) + f) * spec.ONE_FIFTIETH)
    return y0 + f * (y1 - y0), x0 + f * (x1 - x0), press, k


def _noisy_dabs(y, x, press, actual_radius, valid, strokes: Strokes) -> Dabs:
    """The spec's noise on noise-free dabs [B, n]: offsets, radius and the matching opacity."""
    g0, g1, g2 = _gaussians(strokes.key, y.shape[1])
    amp = press * strokes.offset_scale[:, None]
    z = spec.Z_SCALE * g2
    e = F32(1.0) + z * (F32(1.0) + z * (spec.EXP_C2 + z * spec.EXP_C3))
    opaque = jnp.clip((spec.OPAQUE_BASE + spec.OPAQUE_GAIN * press) * press, F32(0.0), F32(1.0))
    alpha = jnp.where(valid, opaque * jnp.minimum(F32(1.0) / (e * e), F32(1.0)), F32(0.0))
    return Dabs(jnp.where(valid, y + amp * g0, F32(0.0)), jnp.where(valid, x + amp * g1, F32(0.0)),
                jnp.where(valid, actual_radius * e, F32(1.0)), alpha, valid)


def stroke_dabs(strokes: Strokes, carry, n: int):
    """The spec's dabs of every stroke, padded to ``n``; returns (Dabs, new carry [B])."""
    qy, qx, seg = _path_points(strokes)                                     # seg [B, 50]
    cumulative = [jnp.zeros_like(seg[:, 0])]
    for k in range(spec.N_SEGMENTS):                                         # sequential, as numba
        cumulative.append(cumulative[-1] + seg[:, k])
    s = jnp.stack(cumulative, axis=1)                                       # [B, 51]
    total = s[:, -1]
    a = F32(1.0) - carry
    i = jnp.arange(n, dtype=jnp.float32)
    sigma = (i[None, :] + a[:, None]) * strokes.spacing[:, None]            # [B, n]
    valid = (sigma <= total[:, None]) & strokes.active[:, None]
    count = jnp.sum(valid, axis=1).astype(jnp.int32)
    y, x, press, _ = _place_dabs(s, sigma, valid, qy, qx, strokes)
    dabs = _noisy_dabs(y, x, press, jnp.broadcast_to(strokes.actual_radius[:, None], y.shape), valid,
                       strokes)
    last = ((count - 1).astype(jnp.float32) + a) * strokes.spacing
    new_carry = jnp.clip((total - last) * strokes.inv_spacing, F32(0.0), spec.LARGEST_BELOW_ONE)
    return dabs, jnp.where(strokes.active, new_carry, F32(0.0))


def released_radius(radius, speed):
    """libmypaint 1.3.0's actual radius: s·exp(c0 + c1·ln(γ + S)), S in basic radii per second."""
    return radius * jnp.exp(spec.SPEED_LOG_C0 + spec.SPEED_LOG_C1 * jnp.log(spec.SPEED2_GAMMA_F32 + speed))


def released_path(strokes: Strokes, carry, speed, lead, n: int):
    """The released mode's noise-free dabs (``stroke.reference_released_path``), padded to ``n``:
    (y, x, pressure, actual radius, valid) [B, n], new carry [B], new filtered speed [B].
    ``lead``: the tablet workaround's pressure-0 move before each stroke (0 if none), [B]."""
    six = F32(spec.DABS_PER_ACTUAL_RADIUS)
    radius, per_base = strokes.radius, strokes.dabs_per_base
    # The pressure-0 move paints nothing, but moves the partial dab and the speed filter on.
    moved = carry + lead * (six / released_radius(radius, speed) + per_base)
    has_lead = lead > F32(0.0)
    carry = jnp.where(has_lead, moved - jnp.floor(moved), carry)
    speed = jnp.where(has_lead, speed + (lead * strokes.workaround_speed_scale - speed)
                      * spec.WORKAROUND_FILTER_STEP, speed)
    qy, qx, seg = _path_points(strokes)
    cumulative, radii = [jnp.zeros_like(carry)], []
    for k in range(spec.N_SEGMENTS):                                         # sequential, as numba
        r = released_radius(radius, speed)
        radii.append(r)
        cumulative.append(cumulative[-1] + seg[:, k] * (six / r + per_base))
        speed = speed + (seg[:, k] * strokes.speed_scale - speed) * spec.SPEED_FILTER_STEP
    s = jnp.stack(cumulative, axis=1)                                       # [B, 51] dab counts
    radii = jnp.stack(radii, axis=1)                                        # [B, 50]
    total = s[:, -1]
    a = F32(1.0) - carry
    sigma = jnp.arange(n, dtype=jnp.float32)[None, :] + a[:, None]         # [B, n]
    valid = (sigma <= total[:, None]) & strokes.active[:, None]
    count = jnp.sum(valid, axis=1).astype(jnp.int32)
    y, x, press, k = _place_dabs(s, sigma, valid, qy, qx, strokes)
    new_carry = jnp.clip(total - ((count - 1).astype(jnp.float32) + a), F32(0.0), spec.LARGEST_BELOW_ONE)
    return ((y, x, press, jnp.take_along_axis(radii, k, axis=1), valid),
            jnp.where(strokes.active, new_carry, F32(0.0)), jnp.where(strokes.active, speed, F32(0.0)))


def stroke_dabs_released(strokes: Strokes, carry, speed, lead, n: int):
    """The released mode's dabs of every stroke, padded to ``n``: (Dabs, new carry, new speed)."""
    (y, x, press, actual_radius, valid), new_carry, new_speed = released_path(strokes, carry, speed,
                                                                               lead, n)
    return _noisy_dabs(y, x, press, actual_radius, valid, strokes), new_carry, new_speed


# ---- masks ---------------------------------------------------------------------------------------
def _opacity(rr):
    return jnp.maximum(jnp.maximum(F32(1.0) - F32(4.0) * rr, F32(0.25) - F32(0.25) * rr), F32(0.0))


def dab_factor(py, px, cy, cx, r, alpha):
    """1 − α·m at integer pixels (py, px) (int32, broadcastable) for dabs (cy, cx, r, α)."""
    fy = py.astype(jnp.float32)
    fx = px.astype(jnp.float32)
    inv_r2 = F32(1.0) / (r * r)
    # Plain mask (r >= 3).
    dxp = (fx + F32(0.5)) - cx
    dyp = (fy + F32(0.5)) - cy
    rr_plain = (dxp * dxp + dyp * dyp) * inv_r2
    # mypaint's calculate_rr_antialiased for a round dab at 90° (r < 3).
    right = cx - fx
    left = right - F32(1.0)
    near = jnp.where(left > 0, left, jnp.where(right < 0, right, F32(0.0)))
    far = jnp.where(right - F32(0.5) < 0, near - spec.R_AREA_1_F32, near + spec.R_AREA_1_F32)
    bottom = cy - fy
    centre = bottom - F32(0.5)
    inside = (left < 0) & (right > 0) & (bottom - F32(1.0) < 0) & (bottom > 0)
    ny2 = jnp.where(inside, F32(0.0), centre * centre)
    rr_near = (near * near + ny2) * inv_r2
    r_far = far * far + ny2
    rr_far = r_far * inv_r2
    rm1 = r - F32(1.0)
    aa_start = jnp.where(r > F32(1.0), rm1 * rm1, F32(0.0))
    blend = (rr_far + rr_near) * F32(0.5)
    occluded = F32(1.0) - (F32(1.0) - rr_near) / (F32(1.0) + (rr_far - rr_near))
    rr_aa = jnp.where(rr_near > F32(1.0), rr_near, jnp.where(r_far < aa_start, blend, occluded))
    rr = jnp.where(r < F32(spec.AA_RADIUS), rr_aa, rr_plain)
    return F32(1.0) - alpha * _opacity(rr)


def _chunk_size(batch: int) -> int:
    return int(min(max(64 * batch, 1024), 1 << 18))


def default_combine() -> str:
    return "multiply" if jax.default_backend() == "cpu" else "log"


def transmittance(dabs: Dabs, height: int, width: int, combine: str = "multiply"):
    """T [B, H, W] = Π over each environment's dabs of (1 − α·m), by 8×8 tiles of the dabs' boxes."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}.")
    batch, n = dabs.y.shape
    if batch * height * width >= 2 ** 31 - 1:
        raise ValueError(f"batch {batch} × canvas {height}×{width} overflows the int32 pixel index; "
                         f"use a smaller batch (< {(2 ** 31 - 1) // (height * width)}) per call.")
    floor = lambda v: jnp.floor(v).astype(jnp.int32)
    lo_y = jnp.maximum(floor(dabs.y - dabs.radius), 0)
    hi_y = jnp.minimum(floor(dabs.y + dabs.radius), height - 1)
    lo_x = jnp.maximum(floor(dabs.x - dabs.radius), 0)
    hi_x = jnp.minimum(floor(dabs.x + dabs.radius), width - 1)
    live = dabs.valid & (lo_y <= hi_y) & (lo_x <= hi_x)
    tiles_y = jnp.where(live, (hi_y - lo_y + TILE) // TILE, 0)
    tiles_x = jnp.where(live, (hi_x - lo_x + TILE) // TILE, 1)
    units = (tiles_y * tiles_x).reshape(-1)                                   # [B·n]
    ends = jnp.cumsum(units)                                                  # inclusive
    total = ends[-1]
    chunk = _chunk_size(batch)
    flat = lambda v: v.reshape(-1)
    cy, cx, r, alpha = flat(dabs.y), flat(dabs.x), flat(dabs.radius), flat(dabs.alpha)
    lo_y, hi_y, lo_x, hi_x, tiles_x = map(flat, (lo_y, hi_y, lo_x, hi_x, tiles_x))
    offsets = jnp.arange(TILE, dtype=jnp.int32)
    dump = batch * height * width                                             # index of the bin

    def body(c, acc):
        g = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        d = jnp.minimum(jnp.searchsorted(ends, g, side="right"), batch * n - 1)
        local = g - (ends[d] - units[d])
        ty = local // tiles_x[d]
        tx = local - ty * tiles_x[d]
        py = (lo_y[d] + TILE * ty)[:, None, None] + offsets[None, :, None]   # [chunk, 8, 1]
        px = (lo_x[d] + TILE * tx)[:, None, None] + offsets[None, None, :]   # [chunk, 1, 8]
        keep = (g < total)[:, None, None] & (py <= hi_y[d][:, None, None]) & (px <= hi_x[d][:, None, None])
        factor = dab_factor(py, px, cy[d][:, None, None], cx[d][:, None, None], r[d][:, None, None],
                            alpha[d][:, None, None])
        env = (d // n)[:, None, None]
        index = jnp.where(keep, (env * height + py) * width + px, dump).reshape(-1)
        if combine == "multiply":
            return acc.at[index].multiply(jnp.where(keep, factor, F32(1.0)).reshape(-1))
        return acc.at[index].add(jnp.where(keep, jnp.log(factor), F32(0.0)).reshape(-1))

    start = jnp.ones if combine == "multiply" else jnp.zeros
    acc = start(batch * height * width + 1, jnp.float32)
    acc = lax.fori_loop(0, (total + chunk - 1) // chunk, body, acc)
    t = acc[:dump] if combine == "multiply" else jnp.exp(acc[:dump])
    return t.reshape(batch, height, width)


def paint(canvas, carry, strokes: Strokes, config: PaintConfig, combine: str = "multiply"):
    """Paint one stroke per environment (inactive ones unchanged): (canvas [B, W, W, C], carry)."""
    dabs, new_carry = stroke_dabs(strokes, carry, max_dabs(config))
    return _composite(canvas, dabs, strokes.color, combine), new_carry


def paint_released(canvas, carry, speed, lead, strokes: Strokes, config: PaintConfig,
                   combine: str = "multiply"):
    """``paint`` in the released mode: (canvas, carry, filtered speed); ``lead`` [B] as in
    ``released_path``."""
    dabs, new_carry, new_speed = stroke_dabs_released(strokes, carry, speed, lead, max_dabs(config))
    return _composite(canvas, dabs, strokes.color, combine), new_carry, new_speed


def _composite(canvas, dabs: Dabs, color, combine: str):
    """canvas ← canvas·T + colour·(1 − T) with T the dabs' transmittance."""
    t = transmittance(dabs, canvas.shape[1], canvas.shape[2], combine)[..., None]
    return canvas * t + color[:, None, None, :] * (F32(1.0) - t)


def observe(canvas, observation_width: int = DEFAULT_OBSERVATION_WIDTH):
    """(B, W, W, C) → float32 (B, ow, ow, C) observation and its uint8 levels, as numba's ``observe``.

    ow = ``observation_width`` (static); each output pixel is the exact area average of its
    (W/ow)² block, summed in row-major order in float32 (numba's order, so the two agree).
    """
    batch, width, _, channels = canvas.shape
    ow = observation_width
    if width % ow:
        raise ValueError(f"canvas width {width} is not a multiple of observation_width {ow}.")
    s = width // ow
    if s == 1:
        v = canvas
    else:
        total = jnp.zeros((batch, ow, ow, channels), jnp.float32)
        if s * s <= UNROLLED_BLOCK:
            for dy in range(s):                             # row-major block sum, numba's order
                for dx in range(s):
                    total = total + canvas[:, dy::s, dx::s, :]
        else:
            blocks = canvas.reshape(batch, ow, s, ow, s, channels)

            def add(k, acc):                                # term k = (dy, dx) = divmod(k, s)
                row = lax.dynamic_index_in_dim(blocks, k // s, axis=2, keepdims=False)
                return acc + lax.dynamic_index_in_dim(row, k % s, axis=3, keepdims=False)

            total = lax.fori_loop(0, s * s, add, total)
        v = total * F32(1.0 / (s * s))
    levels = jnp.clip(jnp.round(v * F32(255.0)), F32(0.0), F32(255.0)).astype(jnp.uint8)
    return jnp.asarray(UINT8_TO_FLOAT)[levels], levels


# ---- the batched environment ------------------------------------------------------------------
@struct.dataclass
class PaintState:
    """Per-environment state, leading dimension B. ``config`` and ``combine`` are static."""
    canvas: jax.Array        # [B, W, W, C] float32, full resolution
    brush: jax.Array         # [B, 2] float32 (y, x) pixels
    pressure: jax.Array      # [B] float32, pressure of the previous stroke
    painting: jax.Array      # [B] bool: the last action painted (also: the action mask)
    carry: jax.Array         # [B] float32, partial dab carried by a connected stroke
    speed: jax.Array         # [B] float32, filtered stroke speed (released mode; 0 otherwise)
    t: jax.Array             # [B] int32, actions taken in this episode
    episode: jax.Array       # [B] int32, episode index of each environment
    seed: jax.Array          # [B] uint32, hash-RNG seed of each environment
    target_index: jax.Array  # [B] int32 (0 when unconditional)
    dataset: Optional[jax.Array]   # [N, ow, ow, C] uint8 target levels (conditional) or None
    config: PaintConfig = struct.field(pytree_node=False)
    combine: str = struct.field(pytree_node=False, default="multiply")


class _Tables(NamedTuple):
    cell: np.ndarray        # [G², 2] pixel (y, x) of each grid cell
    pressure: np.ndarray    # [10]
    radius: np.ndarray      # [S] per size index: pixel radius, r_a, Δ, 1/Δ, 1.4·s, and the
                            # released mode's 6/s, 1/(dtime·s), 1/(workaround dtime·s)
    color: np.ndarray       # [20]


@functools.lru_cache(maxsize=None)
def _tables(config: PaintConfig) -> _Tables:
    g, w = config.grid_width, config.canvas_width
    cells = np.arange(g * g)
    cell = np.stack([w * (cells // g) / g, w * (cells % g) / g], axis=1).astype(F32)
    rows = []
    for r in config.pixel_radii:
        b = spec.brush_constants(r)
        c = spec.released_brush_constants(r)
        rows.append([F32(r), b.actual_radius, b.spacing, F32(1.0 / float(b.spacing)), b.offset_scale,
                     c.dabs_per_base, c.speed_scale, c.workaround_speed_scale])
    return _Tables(cell, specs.PRESSURE_VALUES, np.array(rows, F32), specs.COLOR_VALUES)


def _seeds(seed_or_key, batch_size: int):
    if isinstance(seed_or_key, (int, np.integer)):
        if not 0 <= int(seed_or_key) < 2 ** 32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed_or_key!r}.")
        # Environment b gets seed + b: environment b matches PaintEnv(seed=seed + b).
        return (jnp.uint32(int(seed_or_key)) + jnp.arange(batch_size, dtype=jnp.uint32))
    return jax.random.bits(seed_or_key, (batch_size,), jnp.uint32)


def _target_index(seed, episode, dataset):
    if dataset is None:
        return jnp.zeros_like(episode)
    key = stroke_key(seed, episode, jnp.full_like(episode, spec.TARGET_SALT))
    return (key % jnp.uint32(dataset.shape[0])).astype(jnp.int32)


def dataset_levels(dataset, config: PaintConfig) -> jax.Array:
    """Conditional targets as a uint8 level array [N, ow, ow, C] on the device.

    uint8 (numpy or JAX, also traced under jit) is used as given; float32 in [0, 1] is quantised
    once on the host with the canvases' rounding (``spiral.envs.targets``), so it must be concrete.
    Bad dtypes, shapes and float values outside [0, 1] raise ValueError.
    """
    if not hasattr(dataset, "shape") or not hasattr(dataset, "dtype"):
        raise ValueError(f"dataset must be an array [N, {', '.join(map(str, config.observation_shape))}] "
                         f"(numpy or JAX), got {type(dataset).__name__}.")
    target_data.check_target_layout(dataset.shape, dataset.dtype, config.observation_shape, "dataset")
    if dataset.dtype == np.uint8:
        return jnp.asarray(dataset)
    if isinstance(dataset, jax.core.Tracer):
        raise ValueError("a float32 dataset is quantised to uint8 levels on the host, so it cannot be "
                         "traced: call reset outside jit, or pass uint8 levels "
                         "(spiral.envs.targets.target_levels(dataset, config.observation_shape)).")
    return jnp.asarray(target_data.target_levels(np.asarray(dataset), config.observation_shape, "dataset"))


def reset(seed_or_key: Union[int, jax.Array], batch_size: int, config: PaintConfig,
          dataset: Optional[Any] = None, combine: Optional[str] = None) -> PaintState:
    """B fresh environments at episode 0. ``seed_or_key``: an int (environment b gets seed + b,
    so it matches ``PaintEnv(seed=seed + b)``) or a JAX PRNG key (uint32 seeds drawn from it).
    ``dataset``: conditional targets [N, ow, ow, C], uint8 levels (k means k/255) or float32 in
    [0, 1] (quantised to k/255 once, as ``PaintEnv`` does); kept in the state as uint8 levels."""
    if config.conditional != (dataset is not None):
        raise ValueError("config.conditional=True needs a dataset of targets, and a dataset needs "
                         f"config.conditional=True (got conditional={config.conditional}, "
                         f"dataset={'given' if dataset is not None else None}).")
    if dataset is not None:
        dataset = dataset_levels(dataset, config)
    combine = default_combine() if combine is None else combine
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}.")
    b, w, c = batch_size, config.canvas_width, config.channels
    seed = _seeds(seed_or_key, b)
    episode = jnp.zeros(b, jnp.int32)
    return PaintState(
        canvas=jnp.full((b, w, w, c), config.background_value, jnp.float32),
        brush=jnp.zeros((b, 2), jnp.float32), pressure=jnp.zeros(b, jnp.float32),
        painting=jnp.zeros(b, bool), carry=jnp.zeros(b, jnp.float32), speed=jnp.zeros(b, jnp.float32),
        t=jnp.zeros(b, jnp.int32),
        episode=episode, seed=seed, target_index=_target_index(seed, episode, dataset),
        dataset=dataset, config=config, combine=combine)


def timestep(state: PaintState) -> dm_env.TimeStep:
    """The TimeStep of a state: batched step_type (int32 [B]: 0 FIRST, 1 MID, 2 LAST), reward,
    discount (0 at LAST, 1 otherwise; dm_env's FIRST has None, here 0 reward and 1 discount)
    and the observation dict of ``PaintEnv``."""
    config = state.config
    canvas, _ = observe(state.canvas, config.observation_width)
    keys = config.action_keys
    jump = jnp.asarray(specs.action_mask(keys, painted=False))
    mask = jnp.where(state.painting[:, None], F32(1.0), jump[None, :])
    length = jnp.int32(config.episode_length)
    # DeepMind's counter: 0 at reset, k + 1 after k actions; its released reset reports the last
    # episode's length after the first episode.
    first_step = (jnp.where(state.episode > 0, length, jnp.int32(0)) if config.released
                  else jnp.zeros_like(state.t))
    observation = {"canvas": canvas, "action_mask": mask,
                   "episode_step": jnp.where(state.t == 0, first_step, state.t + 1).astype(jnp.int32),
                   "episode_length": jnp.full(state.t.shape, length, jnp.int32)}
    last = state.t == config.episode_length - 1
    reward = jnp.zeros(state.t.shape, jnp.float32)
    if config.conditional:
        target = jnp.asarray(UINT8_TO_FLOAT)[state.dataset[state.target_index]]
        observation["target"] = target
        if config.l2_reward:
            l2 = jnp.sum(jnp.square(canvas - target), axis=(1, 2, 3))
            reward = jnp.where(last, -l2, F32(0.0))
    step_type = jnp.where(state.t == 0, jnp.int32(dm_env.StepType.FIRST),
                          jnp.where(last, jnp.int32(dm_env.StepType.LAST), jnp.int32(dm_env.StepType.MID)))
    discount = jnp.where(last, F32(0.0), F32(1.0))
    return dm_env.TimeStep(step_type, reward, discount, observation)


def step(state: PaintState, action: Mapping[str, jax.Array]):
    """One action per environment → (new state, its TimeStep). Environments whose previous step
    was LAST restart instead (canvas cleared, episode + 1, new target) and ignore their action."""
    config = state.config
    missing = [k for k in config.action_keys if k not in action]
    unknown = [k for k in action if k not in config.action_keys]
    if missing or unknown:
        raise ValueError(f"action keys must be exactly {list(config.action_keys)}; "
                         f"missing {missing}, unknown {unknown}.")
    tables = _tables(config)
    batch = state.t.shape[0]
    for key, value in action.items():
        if jnp.shape(value) != (batch,) or not jnp.issubdtype(jnp.result_type(value), jnp.integer):
            raise ValueError(f"action['{key}'] must be an integer array of shape ({batch},), got "
                             f"{jnp.result_type(value)} {jnp.shape(value)}.")
    a = {k: jnp.asarray(v, jnp.int32) for k, v in action.items()}
    restart = state.t == config.episode_length - 1
    paints = (a["flag"] == specs.PAINT) & ~restart
    cell = jnp.asarray(tables.cell)
    end = cell[a["end"]]
    control = cell[a["control"]]
    p1 = (jnp.asarray(tables.pressure)[a["pressure"]] if "pressure" in a
          else jnp.full(batch, specs.FIXED_PRESSURE, jnp.float32))
    p0 = jnp.where(state.painting, state.pressure, p1)
    brush_row = jnp.asarray(tables.radius)[a["size"] if "size" in a else jnp.zeros(batch, jnp.int32)]
    if config.use_color:
        colors = jnp.asarray(tables.color)
        color = jnp.stack([colors[a["red"]], colors[a["green"]], colors[a["blue"]]], axis=1)
    else:
        color = jnp.full((batch, 1), config.ink_value, jnp.float32)
    # ``brush`` is where the brush is; a stroke starts there, except in the released mode after a
    # jump to (y, x), where DeepMind's environment starts it at (y, y).
    start = state.brush
    if config.released:
        start = jnp.where(state.painting[:, None], start, state.brush[:, :1])
    strokes = Strokes(start, control, end, p0, p1, brush_row[:, 1], brush_row[:, 2],
                      brush_row[:, 3], brush_row[:, 4], color,
                      stroke_key(state.seed, state.episode, state.t), paints,
                      brush_row[:, 0], brush_row[:, 5], brush_row[:, 6], brush_row[:, 7])
    # Restarting environments start from a clean canvas (their stroke is inactive).
    background = jnp.full_like(state.canvas, config.background_value)
    canvas = jnp.where(restart[:, None, None, None], background, state.canvas)
    if config.released:
        offset = start - state.brush
        lead = jnp.where(state.painting, F32(0.0), jnp.sqrt(jnp.sum(offset * offset, axis=1)))
        canvas, carry, speed = paint_released(canvas, state.carry, state.speed, lead, strokes, config,
                                              state.combine)
    else:
        canvas, carry = paint(canvas, state.carry, strokes, config, state.combine)
        speed = state.speed
    episode = state.episode + restart.astype(jnp.int32)
    zero2 = jnp.zeros_like(state.brush)
    new = state.replace(
        canvas=canvas,
        brush=jnp.where(restart[:, None], zero2, end),
        pressure=jnp.where(paints, p1, jnp.where(restart, F32(0.0), state.pressure)),
        painting=paints,
        carry=carry,
        speed=speed,
        t=jnp.where(restart, 0, state.t + 1),
        episode=episode,
        target_index=jnp.where(restart, _target_index(state.seed, episode, state.dataset),
                               state.target_index))
    return new, timestep(new)


def validate_action(action: Mapping[str, Any], config: PaintConfig, batch_size: int):
    """Host-side check of a batched action (``step`` under jit cannot check values: its gathers
    would clamp an index out of range). Raises ValueError naming the key, the bad value and the
    valid range."""
    action_spec = config.action_spec()
    missing = [k for k in action_spec if k not in action]
    unknown = [k for k in action if k not in action_spec]
    if missing or unknown:
        raise ValueError(f"action keys must be exactly {list(action_spec)}; missing {missing}, "
                         f"unknown {unknown}.")
    for key, s in action_spec.items():
        value = np.asarray(action[key])
        if value.shape != (batch_size,) or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"action['{key}'] must be an integer array of shape ({batch_size},), "
                             f"got {value.dtype} {value.shape}.")
        bad = (value < 0) | (value >= s.num_values)
        if bad.any():
            raise ValueError(f"action['{key}'] = {int(value[bad][0])} (environment "
                             f"{int(np.argmax(bad))}) is out of range; valid range is [0, {s.num_values - 1}].")


# ---- PaintEnv's engine interface, B = 1 ---------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("config", "combine"))
def _paint_one(canvas, carry, strokes, config, combine):
    return paint(canvas, carry, strokes, config, combine)


@functools.partial(jax.jit, static_argnames=("config", "combine"))
def _paint_one_released(canvas, carry, speed, lead, strokes, config, combine):
    return paint_released(canvas, carry, speed, lead, strokes, config, combine)


_observe_jit = jax.jit(observe, static_argnums=1)
_stroke_dabs_jit = jax.jit(stroke_dabs, static_argnums=2)
_stroke_dabs_released_jit = jax.jit(stroke_dabs_released, static_argnums=4)


def _one_stroke(start, control, end, p0, p1, radius, color, key) -> Strokes:
    """A batch of one stroke with every per-radius constant (corrected and released)."""
    b = spec.brush_constants(radius)
    c = spec.released_brush_constants(radius)
    row = lambda v: jnp.asarray([v], jnp.float32)
    return Strokes(jnp.asarray([start], jnp.float32), jnp.asarray([control], jnp.float32),
                   jnp.asarray([end], jnp.float32), row(p0), row(p1), row(b.actual_radius),
                   row(b.spacing), row(F32(1.0 / float(b.spacing))), row(b.offset_scale),
                   jnp.asarray([color], jnp.float32), jnp.asarray([key], jnp.uint32), jnp.ones(1, bool),
                   row(c.radius), row(c.dabs_per_base), row(c.speed_scale), row(c.workaround_speed_scale))


class JaxCanvas:
    """One canvas painted by the JAX engine (B = 1), with the engine interface of ``NumbaCanvas``
    (the same brush state: carry, and in the released mode the filtered speed and the lead).

    For checking the JAX engine against the others through ``PaintEnv``; not fast on CPU.
    """

    def __init__(self, config: PaintConfig, combine: Optional[str] = None):
        self.config = config
        self.combine = default_combine() if combine is None else combine
        self._min_radius = min(config.pixel_radii)
        self.reset()

    def reset(self):
        w, c = self.config.canvas_width, self.config.channels
        self._canvas = jnp.full((1, w, w, c), self.config.background_value, jnp.float32)
        self.jump(0.0, 0.0)

    def jump(self, y: float, x: float):
        self._carry = jnp.zeros(1, jnp.float32)
        self._speed = jnp.zeros(1, jnp.float32)
        self._pen = np.array([y, x], F32)
        self._lifted = True

    def paint(self, start, control, end, p0, p1, radius, color, key):
        w = self.config.canvas_width
        if radius < self._min_radius:
            raise ValueError(f"radius {radius} px is below this config's smallest brush "
                             f"({self._min_radius} px), so the dab padding would be too short; "
                             f"include it in brush_sizes.")
        for name, point in (("start", start), ("control", control), ("end", end)):
            if not all(0.0 <= float(v) <= w for v in point):
                raise ValueError(f"stroke {name} {tuple(point)} lies outside the canvas [0, {w}].")
        strokes = _one_stroke(start, control, end, p0, p1, radius, color, key)
        if self.config.released:
            offset = np.asarray(start, F32) - self._pen
            lead = np.sqrt(offset @ offset) if self._lifted else F32(0.0)
            self._canvas, self._carry, self._speed = _paint_one_released(
                self._canvas, self._carry, self._speed, jnp.asarray([lead], jnp.float32), strokes,
                self.config, self.combine)
        else:
            self._canvas, self._carry = _paint_one(self._canvas, self._carry, strokes, self.config,
                                                   self.combine)
        self._pen = np.asarray(end, F32)
        self._lifted = False

    def observe(self, out_u8: np.ndarray, out_f32: np.ndarray):
        canvas, levels = _observe_jit(self._canvas, self.config.observation_width)
        out_u8[...] = np.asarray(levels[0])
        out_f32[...] = np.asarray(canvas[0])

    def full_canvas(self) -> np.ndarray:
        return np.array(self._canvas[0])


def _valid_rows(dabs: Dabs) -> np.ndarray:
    valid = np.asarray(dabs.valid[0])
    return np.stack([np.asarray(v[0])[valid] for v in (dabs.y, dabs.x, dabs.radius, dabs.alpha)], axis=1)


def jax_dabs(start, control, end, p0, p1, radius, key, carry=0.0, config: PaintConfig = PaintConfig()):
    """The JAX engine's dabs of one stroke (tests): ((n, 4) [y, x, radius, alpha], carry)."""
    strokes = _one_stroke(start, control, end, p0, p1, radius, (0.0,), key)
    dabs, new_carry = _stroke_dabs_jit(strokes, jnp.asarray([carry], jnp.float32), max_dabs(config))
    return _valid_rows(dabs), float(new_carry[0])


def jax_dabs_released(start, control, end, p0, p1, radius, key, carry=0.0, speed=0.0, lead=0.0,
                      config: PaintConfig = PaintConfig(jump_start="released")):
    """The JAX engine's released-mode dabs of one stroke (tests):
    ((n, 4) [y, x, radius, alpha], carry, speed)."""
    strokes = _one_stroke(start, control, end, p0, p1, radius, (0.0,), key)
    row = lambda v: jnp.asarray([v], jnp.float32)
    dabs, new_carry, new_speed = _stroke_dabs_released_jit(strokes, row(carry), row(speed), row(lead),
                                                           max_dabs(config))
    return _valid_rows(dabs), float(new_carry[0]), float(new_speed[0])
