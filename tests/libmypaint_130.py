"""A slow, explicit Python port of libmypaint 1.3.0's brush engine, as DeepMind's environment drives it.

The independent reference for the released mode's speed normalisation and tablet workaround
(``envs/README.md``). Written from reading libmypaint 1.3.0-era ``mypaint-brush.c``
(``mypaint_brush_stroke_to``, ``count_dabs_to``, ``update_states_and_setting_values``,
``prepare_and_draw_dab``, ``settings_base_values_have_changed``) and ``mypaint-mapping.c``
(``mypaint_mapping_calculate``), keeping their control flow, one motion event and one dab at a
time; nothing here is shared with the engines. Only the parts ``classic/dry_brush`` uses are
ported; a setting or input that would need another part raises ``NotImplementedError``.

``DeepMindEnv`` replays DeepMind's ``LibMyPaint`` environment call sequence (reset, jumps with its
``x=y`` typo, the pseudo-event before a lifted stroke, 50 ``stroke_to`` per stroke, ``dtime`` 0.1
passed as a C ``float``) on the port, from grid actions.

A dab is recorded as ``Dab(x, y, radius, actual_radius, opaque, pressure, base_radius)``; without
a ``gauss`` source the offsets and radius noise are left out (noise-free dabs).
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional

import numpy as np

ACTUAL_RADIUS_MIN = 0.2
ACTUAL_RADIUS_MAX = 1000.0
MAX_DTIME = 5.0
STROKES_PER_STEP = 50
# DeepMind's wrapper takes dtime as a C float: 0.1f, converted to double by libmypaint's API.
DTIME_FLOAT = float(np.float32(0.1))

# classic/dry_brush.myb (mypaint-brushes): the settings that are not 0 and carry no inputs are
# listed with their base value; inputs are piecewise-linear (x, y) points.
DRY_BRUSH = {
    "opaque": (0.8, {"pressure": [(0.0, 0.0), (1.0, 0.2)]}),
    "opaque_multiply": (0.0, {"pressure": [(0.0, 0.0), (1.0, 1.0)]}),
    "opaque_linearize": (0.0, {}),
    "radius_logarithmic": (0.6, {"speed2": [(0.0, 0.042857), (4.0, -0.3)]}),
    "hardness": (0.2, {}),
    "anti_aliasing": (0.0, {}),
    "dabs_per_basic_radius": (6.0, {}),
    "dabs_per_actual_radius": (6.0, {}),
    "dabs_per_second": (0.0, {}),
    "radius_by_random": (0.1, {}),
    "speed1_slowness": (0.04, {}),
    "speed2_slowness": (0.8, {}),
    "speed1_gamma": (4.0, {}),
    "speed2_gamma": (4.0, {}),
    "offset_by_random": (0.0, {"pressure": [(0.0, 0.0), (1.0, 1.4)]}),
    "offset_by_speed": (0.0, {}),
    "offset_by_speed_slowness": (1.0, {}),
    "slow_tracking": (2.0, {}),
    "slow_tracking_per_dab": (0.0, {}),
    "tracking_noise": (0.0, {}),
    "elliptical_dab_ratio": (1.0, {}),
    "elliptical_dab_angle": (90.0, {}),
    "smudge": (0.0, {}),
    "snap_to_pixel": (0.0, {}),
    "pressure_gain_log": (0.0, {}),
}
_PORTED_INPUTS = ("pressure", "speed1", "speed2")


class Dab(NamedTuple):
    x: float
    y: float
    radius: float          # with radius_by_random noise when a gauss source is given
    actual_radius: float   # STATE_ACTUAL_RADIUS: base radius with the speed term, no noise
    opaque: float          # opaque · opaque_multiply, clamped, with the noise's alpha correction
    pressure: float
    base_radius: float


def _f32(v: float) -> float:
    """A C ``float`` variable: the value rounded to float32."""
    return float(np.float32(v))


def exp_decay(t_const: float, t: float) -> float:
    """``exp_decay``: the fraction left after t seconds (0 for time constants <= 0.001)."""
    if t_const <= 0.001:
        return 0.0
    return math.exp(-t / t_const)


def mapping_calculate(base_value: float, inputs: dict, data: dict) -> float:
    """``mypaint_mapping_calculate``: base value plus one piecewise-linear term per used input."""
    result = base_value
    for name, points in inputs.items():
        if name not in _PORTED_INPUTS:
            raise NotImplementedError(f"input {name!r} is not ported")
        x = data[name]
        x0, y0 = points[0]
        x1, y1 = points[1]
        i = 2
        while i < len(points) and x > x1:      # the segment whose slope applies (extrapolates)
            x0, y0 = x1, y1
            x1, y1 = points[i]
            i += 1
        if x0 == x1 or y0 == y1:
            y = y0
        else:
            y = (y1 * (x - x0) + y0 * (x1 - x)) / (x1 - x0)
        result += y
    return result


class Brush130:
    """``MyPaintBrush`` (1.3.0) with the states and settings dry_brush needs."""

    def __init__(self, settings: dict = DRY_BRUSH, gauss: Optional[Callable[[], float]] = None):
        for name, (base, inputs) in settings.items():
            if name in ("anti_aliasing", "snap_to_pixel", "smudge", "tracking_noise", "offset_by_speed",
                        "opaque_linearize", "slow_tracking_per_dab") and (base or inputs):
                raise NotImplementedError(f"setting {name!r} is not ported")
            if name == "elliptical_dab_ratio" and (base > 1.0 or inputs):
                raise NotImplementedError("elliptical dabs are not ported")
        self.base = {name: _f32(base) for name, (base, _) in settings.items()}
        self.inputs = {name: inputs for name, (_, inputs) in settings.items() if inputs}
        self.gauss = gauss
        self.states = dict(x=0.0, y=0.0, pressure=0.0, dist=0.0, actual_radius=0.0, actual_x=0.0,
                           actual_y=0.0, norm_speed1_slow=0.0, norm_speed2_slow=0.0)
        self.settings_value = {}
        self.reset_requested = True
        self.dabs: List[Dab] = []
        self._speed_mapping()

    # ---- settings ----------------------------------------------------------------------------
    def set_base_value(self, name: str, value: float):
        self.base[name] = _f32(value)
        self._speed_mapping()

    def _speed_mapping(self):
        """``settings_base_values_have_changed``: y = log(gamma + x)·m + q through two fixed points."""
        self.speed_mapping = []
        for name in ("speed1_gamma", "speed2_gamma"):
            gamma = math.exp(self.base[name])
            fix1_x, fix1_y, fix2_x, fix2_dy = 45.0, 0.5, 45.0, 0.015
            c1 = math.log(fix1_x + gamma)
            m = fix2_dy * (fix2_x + gamma)
            q = fix1_y - m * c1
            self.speed_mapping.append((gamma, m, q))

    def _base_radius(self) -> float:
        return math.exp(self.base["radius_logarithmic"])

    # ---- the engine ----------------------------------------------------------------------------
    def reset(self):
        """``mypaint_brush_reset``: the states are cleared by the next ``stroke_to``."""
        self.reset_requested = True

    def count_dabs_to(self, x: float, y: float, dt: float) -> float:
        s = self.states
        if s["actual_radius"] == 0.0:
            s["actual_radius"] = self._base_radius()
        s["actual_radius"] = min(max(s["actual_radius"], ACTUAL_RADIUS_MIN), ACTUAL_RADIUS_MAX)
        base_radius = min(max(self._base_radius(), ACTUAL_RADIUS_MIN), ACTUAL_RADIUS_MAX)
        dist = math.hypot(x - s["x"], y - s["y"])
        res1 = dist / s["actual_radius"] * self.base["dabs_per_actual_radius"]
        res2 = dist / base_radius * self.base["dabs_per_basic_radius"]
        res3 = dt * self.base["dabs_per_second"]
        return res1 + res2 + res3

    def update_states_and_setting_values(self, step_dx, step_dy, step_dpressure, step_dtime):
        s = self.states
        if step_dtime <= 0.0:
            step_dtime = 0.001
        s["x"] += step_dx
        s["y"] += step_dy
        s["pressure"] += step_dpressure
        base_radius = self._base_radius()
        if s["pressure"] <= 0.0:
            s["pressure"] = 0.0
        pressure = s["pressure"]
        # The speed in basic radii per second: 1.3.0's normalisation.
        norm_dx = step_dx / step_dtime / base_radius
        norm_dy = step_dy / step_dtime / base_radius
        norm_speed = math.hypot(norm_dx, norm_dy)
        inputs = {"pressure": pressure * math.exp(self.base["pressure_gain_log"])}
        for i, name in enumerate(("speed1", "speed2")):
            gamma, m, q = self.speed_mapping[i]
            inputs[name] = math.log(gamma + s[f"norm_{name}_slow"]) * m + q
        self.settings_value = {name: mapping_calculate(base, self.inputs.get(name, {}), inputs)
                               for name, base in self.base.items()}
        fac = 1.0 - exp_decay(self.settings_value["slow_tracking_per_dab"], 1.0)
        s["actual_x"] += (s["x"] - s["actual_x"]) * fac
        s["actual_y"] += (s["y"] - s["actual_y"]) * fac
        for name in ("speed1", "speed2"):   # slow speed: low-pass filters of the speed
            fac = 1.0 - exp_decay(self.settings_value[f"{name}_slowness"], step_dtime)
            s[f"norm_{name}_slow"] += (norm_speed - s[f"norm_{name}_slow"]) * fac
        radius = math.exp(self.settings_value["radius_logarithmic"])
        s["actual_radius"] = min(max(radius, ACTUAL_RADIUS_MIN), ACTUAL_RADIUS_MAX)

    def prepare_and_draw_dab(self):
        s, v = self.states, self.settings_value
        opaque = max(v["opaque"], 0.0) * v["opaque_multiply"]
        opaque = min(max(opaque, 0.0), 1.0)
        x, y = s["actual_x"], s["actual_y"]
        base_radius = self._base_radius()
        radius = s["actual_radius"]
        if self.gauss is not None:
            if v["offset_by_random"]:
                amp = max(v["offset_by_random"], 0.0)
                x += self.gauss() * amp * base_radius
                y += self.gauss() * amp * base_radius
            if v["radius_by_random"]:
                radius_log = v["radius_logarithmic"] + self.gauss() * v["radius_by_random"]
                radius = min(max(math.exp(radius_log), ACTUAL_RADIUS_MIN), ACTUAL_RADIUS_MAX)
                alpha_correction = (s["actual_radius"] / radius) ** 2
                if alpha_correction <= 1.0:
                    opaque *= alpha_correction
        self.dabs.append(Dab(x, y, radius, s["actual_radius"], opaque, s["pressure"], base_radius))

    def stroke_to(self, x: float, y: float, pressure: float, dtime: float):
        """``mypaint_brush_stroke_to`` (no tilt): one motion event."""
        s = self.states
        if pressure <= 0.0:
            pressure = 0.0
        if dtime <= 0:
            dtime = 0.0001
        if dtime > 0.100 and pressure and s["pressure"] == 0:
            # Workaround for tablets that don't report motion events without pressure.
            self.stroke_to(x, y, 0.0, dtime - 0.0001)
            dtime = 0.0001
        # The "virtual" cursor position: slow tracking.
        fac = 1.0 - exp_decay(self.base["slow_tracking"], 100.0 * dtime)
        x = s["x"] + (x - s["x"]) * fac
        y = s["y"] + (y - s["y"]) * fac
        dist_moved = s["dist"]
        dist_todo = self.count_dabs_to(x, y, dtime)
        if dtime > MAX_DTIME or self.reset_requested:
            self.reset_requested = False
            for key in s:
                s[key] = 0.0
            s["x"], s["y"], s["pressure"] = x, y, pressure
            s["actual_x"], s["actual_y"] = s["x"], s["y"]
            return
        dtime_left = dtime
        while dist_moved + dist_todo >= 1.0:     # there are dabs pending
            if dist_moved > 0:
                frac = (1.0 - dist_moved) / dist_todo   # exactly to the first dab
                dist_moved = 0.0
            else:
                frac = 1.0 / dist_todo                  # from one dab to the next
            step_dx = frac * (x - s["x"])
            step_dy = frac * (y - s["y"])
            step_dpressure = frac * (pressure - s["pressure"])
            step_dtime = frac * dtime_left
            self.update_states_and_setting_values(step_dx, step_dy, step_dpressure, step_dtime)
            self.prepare_and_draw_dab()
            dtime_left -= step_dtime
            dist_todo = self.count_dabs_to(x, y, dtime_left)
        # "Move" the brush to the current time (no more dab will happen).
        self.update_states_and_setting_values(x - s["x"], y - s["y"], pressure - s["pressure"], dtime_left)
        s["dist"] = dist_moved + dist_todo


class DeepMindEnv:
    """DeepMind's ``LibMyPaint`` call sequence on ``Brush130``, for grid actions (grayscale).

    ``step`` takes (flag, end cell, control cell, size index, pressure value) and returns the dabs
    painted by that action. The brush position it keeps after a jump is (y, y): the released code's
    ``_update_brush_params(y=y, x=y)``.
    """

    def __init__(self, brush_sizes, canvas_width=64, grid_width=32, gauss=None, dtime=DTIME_FLOAT):
        self.brush = Brush130(gauss=gauss)
        self.log_sizes = [math.log(float(s)) for s in brush_sizes]
        self.canvas_width, self.grid_width, self.dtime = canvas_width, grid_width, dtime

    def _grid(self, cell):
        return (self.canvas_width * float(cell // self.grid_width) / self.grid_width,
                self.canvas_width * float(cell % self.grid_width) / self.grid_width)

    def reset(self):
        self.params = dict(y=0.0, x=0.0, pressure=0.0, log_size=self.log_sizes[0], is_painting=False)
        self._move_to(0.0, 0.0)
        self.brush.set_base_value("radius_logarithmic", self.params["log_size"])

    def _move_to(self, y, x):
        self.params.update(y=y, x=y, is_painting=False)     # the released env's typo
        self.brush.reset()
        self.brush.stroke_to(x, y, 0.0, self.dtime)

    def step(self, flag, end, control=0, size=0, pressure=1.0):
        start = len(self.brush.dabs)
        y_e, x_e = self._grid(end)
        if flag == 0:
            self._move_to(y_e, x_e)
            return self.brush.dabs[start:]
        y_c, x_c = self._grid(control)
        prev = dict(self.params)
        self.params.update(y=y_e, x=x_e, pressure=pressure, log_size=self.log_sizes[size], is_painting=True)
        if not prev["is_painting"]:
            prev.update(pressure=pressure, log_size=self.log_sizes[size])
        self.brush.set_base_value("radius_logarithmic", self.params["log_size"])
        y_s, x_s, p_s = prev["y"], prev["x"], prev["pressure"]
        t = np.linspace(0.0, 1.0, STROKES_PER_STEP + 1)
        py = (1 - t) * (1 - t) * y_s + 2 * (1 - t) * t * y_c + t * t * y_e
        px = (1 - t) * (1 - t) * x_s + 2 * (1 - t) * t * x_c + t * t * x_e
        if not prev["is_painting"]:
            self.brush.stroke_to(x_s, y_s, p_s, self.dtime)   # the pseudo-event
        for k in range(STROKES_PER_STEP):
            alpha = float(k + 1) / STROKES_PER_STEP
            self.brush.stroke_to(float(px[k + 1]), float(py[k + 1]), p_s * (1.0 - alpha) + pressure * alpha,
                                 self.dtime)
        return self.brush.dabs[start:]


def rand_gauss_source(seed: int) -> Callable[[], float]:
    """mypaint's ``rand_gauss`` form (sum of four uniforms, centred, scaled by √3) from numpy."""
    rng = np.random.default_rng(seed)

    def gauss():
        return (float(rng.random(4).sum()) - 2.0) * math.sqrt(3.0)

    return gauss
