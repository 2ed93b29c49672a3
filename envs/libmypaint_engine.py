"""The reference brush engine: Debian's libmypaint 1.6 through ctypes, brush ``classic/dry_brush``.

The engine SPIRAL used, driven with the released environment's call sequence: per step one
``begin_atomic``/``end_atomic``; a jump is ``reset``, ``new_stroke`` and a ``stroke_to`` with
pressure 0 at the new point; a stroke sets the radius (log) and the colour (HSV) base values, sends
a pseudo-event at the start point when the brush was lifted (so that libmypaint takes the pressure
from there), then one ``stroke_to`` per Bezier point 1..50 with linearly interpolated pressure and
``dtime`` 0.1. libmypaint's own RNG (Knuth's, seeded once per brush) drives the dab noise, so its
canvases are random and not reproducible from a seed: it is the statistical reference, not a
replay engine (two fresh engines given the same calls paint the same canvas, though).

Released mode (``PaintConfig.jump_start="released"``): ``dtime`` is DeepMind's C float 0.1f, just
above 0.1, so libmypaint's tablet workaround splits the pseudo-event of a stroke after a jump: the
brush moves from the jump's (y, x) to the stroke's start (y, y) at pressure 0 (no paint) and only
then takes the stroke's pressure. With a double 0.1 that move would paint a line whose pressure
rises from 0. The library stays Debian's 1.6, which measures the stroke speed of dry_brush's
radius term in pixels per second where DeepMind's 1.3.0 used basic radii per second
(``envs/README.md``): its released mode matches DeepMind's call sequence, not 1.3.0's radii.

Needs the system packages ``libmypaint-1.5-1`` and ``mypaint-brushes`` (Debian/Ubuntu); no
compiler. The surface is libmypaint's fixed tiled surface (64×64 tiles of premultiplied RGBA in
15-bit fixed point), read through tile requests and converted to uint8 by SPIRAL's
``_fix15_to_rgba`` formula.
"""

from __future__ import annotations

import colorsys
import ctypes
import ctypes.util
import os
from typing import Optional, Sequence

import numpy as np

from spiral.envs import stroke as spec
from spiral.envs.config import PaintConfig

LIBRARY_NAME = "libmypaint-1.5.so.1"
BRUSH_RELATIVE_PATH = os.path.join("classic", "dry_brush.myb")
BRUSH_DIRECTORIES = (
    "/usr/share/mypaint-data/1.0/brushes",   # Debian/Ubuntu mypaint-brushes 2.x
    "/usr/share/mypaint-data/2.0/brushes",
    "/usr/share/mypaint/brushes",
    "/usr/local/share/mypaint-data/1.0/brushes",
)
INSTALL_HINT = ("install the system packages: sudo apt-get install -y libmypaint-1.5-1 mypaint-brushes")
TILE = 64            # MYPAINT_TILE_SIZE
FIX15_ONE = 1 << 15


class _TileRequest(ctypes.Structure):
    # MyPaintTileRequest (libmypaint 1.5/1.6): buffer is uint16 premultiplied RGBA, fix15.
    _fields_ = [("tx", ctypes.c_int), ("ty", ctypes.c_int), ("readonly", ctypes.c_int),
                ("buffer", ctypes.POINTER(ctypes.c_uint16)), ("context", ctypes.c_void_p),
                ("thread_id", ctypes.c_int), ("mipmap_level", ctypes.c_int)]


class _Rectangle(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int),
                ("height", ctypes.c_int)]


_LIBRARY = None


def find_brush(brush_path: Optional[str] = None) -> Optional[str]:
    """The dry_brush .myb file: ``brush_path`` if given, else the first system location that has it."""
    if brush_path:
        return brush_path if os.path.isfile(brush_path) else None
    for folder in BRUSH_DIRECTORIES:
        candidate = os.path.join(folder, BRUSH_RELATIVE_PATH)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_library():
    """Load libmypaint once and declare the functions used; raise with the apt packages if absent."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    try:
        lib = ctypes.CDLL(LIBRARY_NAME)
    except OSError as error:
        raise RuntimeError(f"renderer='libmypaint' needs {LIBRARY_NAME}, which could not be loaded "
                           f"({error}); {INSTALL_HINT}.") from error
    vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures = {
        "mypaint_brush_new": ([], vp),
        "mypaint_brush_unref": ([vp], None),
        "mypaint_brush_from_string": ([vp, ctypes.c_char_p], i),
        "mypaint_brush_setting_from_cname": ([ctypes.c_char_p], i),
        "mypaint_brush_set_base_value": ([vp, i, f], None),
        "mypaint_brush_reset": ([vp], None),
        "mypaint_brush_new_stroke": ([vp], None),
        # The 1.x legacy signature: (brush, surface, x, y, pressure, xtilt, ytilt, dtime).
        "mypaint_brush_stroke_to": ([vp, vp, f, f, f, f, f, ctypes.c_double], i),
        "mypaint_fixed_tiled_surface_new": ([i, i], vp),
        "mypaint_fixed_tiled_surface_interface": ([vp], vp),
        "mypaint_surface_unref": ([vp], None),
        "mypaint_surface_begin_atomic": ([vp], None),
        "mypaint_surface_end_atomic": ([vp, ctypes.POINTER(_Rectangle)], None),
        "mypaint_tile_request_init": ([ctypes.POINTER(_TileRequest), i, i, i, i], None),
        "mypaint_tiled_surface_tile_request_start": ([vp, ctypes.POINTER(_TileRequest)], None),
        "mypaint_tiled_surface_tile_request_end": ([vp, ctypes.POINTER(_TileRequest)], None),
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    _LIBRARY = lib
    return lib


def available(brush_path: Optional[str] = None) -> bool:
    """True when the library loads and the dry_brush file is found."""
    try:
        load_library()
    except RuntimeError:
        return False
    return find_brush(brush_path) is not None


def fix15_to_uint8(rgba: np.ndarray) -> np.ndarray:
    """SPIRAL's ``_fix15_to_rgba``: premultiplied fix15 RGBA (…, 4) → straight uint8 RGBA."""
    if np.all(rgba[..., 3] == FIX15_ONE):   # opaque surface (our backgrounds): nothing to un-premultiply
        out = rgba.astype(np.uint32)
        return ((255 * out + FIX15_ONE // 2) >> 15).astype(np.uint8)
    rgb = rgba[..., :3].astype(np.uint64)
    alpha = rgba[..., 3:].astype(np.uint64)
    safe = np.maximum(alpha, 1)
    rgb = np.where(alpha == 0, 0, ((rgb << np.uint64(15)) + safe // 2) // safe)
    out = np.concatenate([rgb, alpha], axis=-1)
    return ((255 * out + FIX15_ONE // 2) // FIX15_ONE).astype(np.uint8)


class LibMyPaintCanvas:
    """One libmypaint surface and dry_brush brush, with the engine interface of ``NumbaCanvas``."""

    def __init__(self, config: PaintConfig, brush_path: Optional[str] = None):
        self._lib = load_library()
        path = find_brush(brush_path)
        if path is None:
            raise RuntimeError(f"renderer='libmypaint' needs the brush {BRUSH_RELATIVE_PATH} (looked in "
                               f"{brush_path or BRUSH_DIRECTORIES}); {INSTALL_HINT}.")
        self.config = config
        lib = self._lib
        w = config.canvas_width
        self._fixed = lib.mypaint_fixed_tiled_surface_new(w, w)
        self._surface = lib.mypaint_fixed_tiled_surface_interface(self._fixed)
        self._brush = lib.mypaint_brush_new()
        with open(path, "rb") as handle:
            if not lib.mypaint_brush_from_string(self._brush, handle.read()):
                raise RuntimeError(f"libmypaint could not parse the brush file {path}.")
        setting = lib.mypaint_brush_setting_from_cname
        self._radius_setting = setting(b"radius_logarithmic")
        self._hsv_settings = (setting(b"color_h"), setting(b"color_s"), setting(b"color_v"))
        self._tiles = self._map_tiles(w)
        self._roi = _Rectangle()
        self._painting = False
        # Seconds between stroke_to events: 0.1, or DeepMind's 0.1f in the released mode.
        self.dtime = spec.RELEASED_DTIME if config.released else spec.DTIME
        self.reset()

    def _map_tiles(self, width):
        """numpy views (TILE, TILE, 4) uint16 of every tile of the fixed surface, row-major."""
        tiles = []
        n = -(-width // TILE)
        for ty in range(n):
            row = []
            for tx in range(n):
                request = _TileRequest()
                self._lib.mypaint_tile_request_init(ctypes.byref(request), 0, tx, ty, 0)
                self._lib.mypaint_tiled_surface_tile_request_start(self._fixed, ctypes.byref(request))
                view = np.ctypeslib.as_array(request.buffer, shape=(TILE, TILE, 4))
                self._lib.mypaint_tiled_surface_tile_request_end(self._fixed, ctypes.byref(request))
                row.append(view)
            tiles.append(row)
        return tiles

    def close(self):
        if self._brush:
            self._lib.mypaint_brush_unref(self._brush)
            self._lib.mypaint_surface_unref(self._surface)
            self._brush = self._surface = self._fixed = None
            self._tiles = []

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    # ---- the engine interface ------------------------------------------------------------------
    def reset(self):
        """Clear to the background (opaque fix15; the fresh surface holds 0xFFFF) and home the brush."""
        value = int(round(self.config.background_value * FIX15_ONE))
        for row in self._tiles:
            for tile in row:
                tile[..., :3] = value
                tile[..., 3] = FIX15_ONE
        self._set_color((self.config.ink_value,) * 3)
        self._set_radius(self.config.pixel_radii[0])
        self.jump(0.0, 0.0)

    def jump(self, y: float, x: float):
        lib = self._lib
        lib.mypaint_surface_begin_atomic(self._surface)
        lib.mypaint_brush_reset(self._brush)
        lib.mypaint_brush_new_stroke(self._brush)
        lib.mypaint_brush_stroke_to(self._brush, self._surface, x, y, 0.0, 0.0, 0.0, self.dtime)
        lib.mypaint_surface_end_atomic(self._surface, ctypes.byref(self._roi))
        self._painting = False

    def paint(self, start, control, end, p0, p1, radius, color, key=None):
        del key  # libmypaint draws its own noise
        lib = self._lib
        self._set_radius(radius)
        self._set_color(color if len(color) == 3 else (color[0],) * 3)
        t = np.arange(1, spec.N_SEGMENTS + 1) / spec.N_SEGMENTS
        points = ((1 - t) ** 2)[:, None] * np.asarray(start, np.float64) \
            + (2 * (1 - t) * t)[:, None] * np.asarray(control, np.float64) \
            + (t ** 2)[:, None] * np.asarray(end, np.float64)
        pressures = p0 * (1 - t) + p1 * t
        stroke_to = lib.mypaint_brush_stroke_to
        lib.mypaint_surface_begin_atomic(self._surface)
        if not self._painting:
            # The released env's pseudo-event: libmypaint then interpolates pressure from p0.
            stroke_to(self._brush, self._surface, float(start[1]), float(start[0]), float(p0), 0.0, 0.0,
                      self.dtime)
        for (y, x), p in zip(points.tolist(), pressures.tolist()):
            stroke_to(self._brush, self._surface, x, y, p, 0.0, 0.0, self.dtime)
        lib.mypaint_surface_end_atomic(self._surface, ctypes.byref(self._roi))
        self._painting = True

    def _set_radius(self, radius: float):
        self._lib.mypaint_brush_set_base_value(self._brush, self._radius_setting, float(np.log(radius)))

    def _set_color(self, rgb: Sequence[float]):
        hsv = colorsys.rgb_to_hsv(*(float(np.clip(c, 0.0, 1.0)) for c in rgb))
        for setting, value in zip(self._hsv_settings, hsv):
            self._lib.mypaint_brush_set_base_value(self._brush, setting, value)

    def rgba_uint8(self) -> np.ndarray:
        """The full surface as straight uint8 RGBA (W, W, 4)."""
        rows = [np.concatenate(row, axis=1) for row in self._tiles]
        full = np.concatenate(rows, axis=0)[: self.config.canvas_width, : self.config.canvas_width]
        return fix15_to_uint8(full)

    def full_canvas(self) -> np.ndarray:
        """(W, W, C) float32 in [0, 1]: the uint8 surface / 255 (libmypaint's own quantisation)."""
        rgb = self.rgba_uint8()[..., : self.config.channels]
        return rgb.astype(np.float32) / np.float32(255.0)

    def observe(self, out_u8: np.ndarray, out_f32: np.ndarray):
        """(ow, ow, C) uint8 and float32 observation: area average of the uint8 surface, rounded."""
        from spiral.envs.numba_engine import UINT8_TO_FLOAT
        canvas = self.full_canvas()
        s = self.config.downsample
        if s > 1:
            w = canvas.shape[0] // s
            canvas = canvas.reshape(w, s, w, s, -1).mean(axis=(1, 3), dtype=np.float64)
        out_u8[...] = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
        out_f32[...] = UINT8_TO_FLOAT[out_u8]
