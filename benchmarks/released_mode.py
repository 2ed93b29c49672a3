"""The released mode (DeepMind's environment, ``jump_start="released"``) measured against libmypaint.

One command prints the tables (and, with --write-results, puts them in benchmarks/RESULTS.md under
"## released_mode"):

    .venv/bin/python benchmarks/released_mode.py [--write-results] [--strokes 96] [--episodes 64]

* Ink per stroke and brush size, for the stroke after a jump as DeepMind's environment paints it
  (jump to a random grid point (y, x), then a random stroke from (y, y)): libmypaint 1.3.0 (the
  slow port in tests/libmypaint_130.py, DeepMind's call sequence, mypaint's rand_gauss noise from
  numpy; its dabs stamped by the numba kernel) is the reference; against it, as ratios: the numba
  engine in the released mode, the same without modelling the tablet workaround's move (lead 0),
  the corrected mode's brush on the same stroke (SPEED_RADIUS_GAIN, fitted to Debian's 1.6), and
  Debian's libmypaint 1.6 itself with DeepMind's call sequence (0.1f). ± is the standard error of the
  paired (same stroke) difference.
* The same strokes noise-free: the mean absolute difference of the transmittance to the port's,
  with the workaround's move modelled and without.
* DeepMind's dtime 0.1f against a double 0.1 on Debian's libmypaint, over random episodes
  (SPIRAL's action mix, 60% paint), in both modes: whole-canvas ink ratio. In the released mode
  0.1f hides the move from the jump's (y, x) to the stroke's (y, y) start; in the corrected mode
  the move is only slow tracking's 0.7% residue of the jump, and 0.1f changes libmypaint's random
  sequence, not its statistics.
* numba strokes/s (CPU time, one core) on SPIRAL's random-action mix, released vs corrected, the
  same action stream, interleaved rounds.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import pathlib
import sys
import time

import numpy as np

from spiral.envs import PaintConfig, specs
from spiral.envs import libmypaint_engine as le
from spiral.envs import numba_engine as ne
from spiral.envs import stroke as spec

from results_md import machine, write_section

# The 1.3.0 port is the tests' reference; it is not part of the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import libmypaint_130 as lm  # noqa: E402

SIZES = specs.DEFAULT_BRUSH_SIZES
F32 = np.float32


def _strokes(n: int, seed: int):
    """n random (jump cell, control cell, end cell, pressure index) of a 32 grid."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(0, 1024, 3)) + (int(rng.integers(10)),) for _ in range(n)]


def _cell(c):
    return (64.0 * (c // 32) / 32, 64.0 * (c % 32) / 32)


def _ink_t(t):
    return float((1.0 - t).sum())


def _stamp(rows):
    t = np.ones((64, 64), F32)
    if len(rows):
        ne.stamp_dabs(t, np.asarray(rows, F32), np.array([64, -1, 64, -1]))
    return t


def port_ink(size_index, strokes, seed, noise=True):
    """Ink (and the transmittance) of each stroke after its jump, on the 1.3.0 port."""
    gauss = lm.rand_gauss_source(seed) if noise else None
    out = []
    for jump, control, end, p in strokes:
        env = lm.DeepMindEnv(SIZES, gauss=gauss)
        env.reset()
        env.step(0, jump)
        dabs = env.step(1, end, control, size_index, float(specs.PRESSURE_VALUES[p]))
        t = _stamp([(d.y, d.x, d.radius, d.opaque) for d in dabs])
        out.append((_ink_t(t), t))
    return out


def engine_ink(renderer, jump_start, size_index, strokes, model_lead=True, key_base=0):
    """Ink of each stroke after its jump on an engine; the stroke starts at (y, y) as DeepMind's."""
    engine = (le.LibMyPaintCanvas if renderer == "libmypaint" else ne.NumbaCanvas)(PaintConfig(jump_start=jump_start))
    radius = float(SIZES[size_index])
    out = []
    for i, (jump, control, end, p) in enumerate(strokes):
        y, x = _cell(jump)
        engine.reset()
        engine.jump(y, x if model_lead else y)
        pressure = float(specs.PRESSURE_VALUES[p])
        engine.paint((y, y), _cell(control), _cell(end), pressure, pressure, radius, (0.0,),
                     spec.stroke_key(key_base + i, 0, 0))
        out.append(_ink_t(engine.full_canvas()[..., 0]))
    return out


def noise_free_t(size_index, strokes, model_lead):
    radius = float(SIZES[size_index])
    out = []
    for jump, control, end, p in strokes:
        y, x = _cell(jump)
        pressure = float(specs.PRESSURE_VALUES[p])
        path, _, _ = ne.numba_released_path((y, y), _cell(control), _cell(end), pressure, pressure, radius,
                                            lead=abs(x - y) if model_lead else 0.0)
        opaque = np.clip((0.8 + 0.2 * path[:, 2]) * path[:, 2], 0, 1)
        out.append(_stamp(np.stack([path[:, 0], path[:, 1], path[:, 3], opaque], 1)))
    return out


def ratio(values, reference):
    """Σ values / Σ reference over the same strokes, ± the standard error of the paired difference."""
    values, reference = np.asarray(values), np.asarray(reference)
    difference = values - reference
    se = difference.std(ddof=1) / math.sqrt(len(values)) / reference.mean()
    return f"{values.mean() / reference.mean():.3f} ± {se:.3f}"


def fidelity_table(n):
    lines = ["| size | 1.3.0 port ink | numba released | released, move not modelled | corrected brush | "
             "libmypaint 1.6 (0.1f) | noise-free mean abs ΔT: modelled / not |",
             "|---|---|---|---|---|---|---|"]
    have_lmp = le.available()
    for s, size in enumerate(SIZES):
        strokes = _strokes(n, seed=100 + s)
        port = port_ink(s, strokes, seed=s)
        reference = [ink for ink, _ in port]
        released = engine_ink("numba", "released", s, strokes)
        no_lead = engine_ink("numba", "released", s, strokes, model_lead=False)
        corrected = engine_ink("numba", "corrected", s, strokes, model_lead=False)
        lmp = engine_ink("libmypaint", "released", s, strokes) if have_lmp else None
        port_clean = [t for _, t in port_ink(s, strokes, seed=0, noise=False)]
        delta = [np.mean([np.abs(a - b).mean() for a, b in zip(port_clean, noise_free_t(s, strokes, m))])
                 for m in (True, False)]
        lines.append(f"| {size} | {np.mean(reference):.0f} | {ratio(released, reference)} | "
                     f"{ratio(no_lead, reference)} | {ratio(corrected, reference)} | "
                     f"{ratio(lmp, reference) if lmp else 'not measured: no libmypaint'} | "
                     f"{delta[0]:.5f} / {delta[1]:.5f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def dtime_table(episodes):
    if not le.available():
        return "dtime on libmypaint: not measured: no libmypaint here."
    from spiral.envs import PaintEnv
    lines = ["| libmypaint 1.6, call sequence | episode ink, dtime 0.1f / 0.1 |", "|---|---|"]
    for mode in ("corrected", "released"):
        ink = {}
        for dtime in (spec.RELEASED_DTIME, spec.DTIME):
            env = PaintEnv(renderer="libmypaint", jump_start=mode, seed=0)
            env._engine.dtime = dtime
            rng = np.random.default_rng(1)
            values = []
            for _ in range(episodes):
                env.reset()
                for _ in range(env.config.episode_length - 1):
                    action = {k: int(rng.integers(v.num_values)) for k, v in env.action_spec().items()}
                    action["flag"] = int(rng.random() < 0.6)
                    env.step(action)
                values.append(_ink_t(env.full_canvas()[..., 0]))
            ink[dtime] = values
        lines.append(f"| {mode} | {ratio(ink[spec.RELEASED_DTIME], ink[spec.DTIME])} |")
    return "\n".join(lines)


def speed_table(rounds=7, strokes=2000):
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 1024, (strokes, 3))
    sizes, press = rng.integers(0, 6, strokes), rng.integers(0, 10, strokes)
    flags = rng.random(strokes) < 0.8

    def run(jump_start):
        engine = ne.NumbaCanvas(PaintConfig(jump_start=jump_start))
        engine.reset()
        brush, painting, pressure = (0.0, 0.0), False, 1.0
        start = time.process_time()
        painted = 0
        for i in range(strokes):
            if i % 19 == 0:
                engine.reset()
                brush, painting = (0.0, 0.0), False
            end = _cell(cells[i, 2])
            if flags[i]:
                p1 = float(specs.PRESSURE_VALUES[press[i]])
                engine.paint(brush, _cell(cells[i, 1]), end, pressure if painting else p1, p1,
                             float(SIZES[sizes[i]]), (0.0,), i)
                brush, painting, pressure, painted = end, True, p1, painted + 1
            else:
                engine.jump(*end)
                brush, painting = ((end[0], end[0]) if jump_start == "released" else end), False
        return painted / (time.process_time() - start)

    run("corrected"), run("released")
    rates = {"corrected": [], "released": []}
    for _ in range(rounds):
        for mode in rates:
            rates[mode].append(run(mode))
    base = np.median(rates["corrected"])
    lines = ["| numba engine | strokes/s (CPU) | ratio |", "|---|---|---|"]
    for mode, values in rates.items():
        lines.append(f"| {mode} | {np.median(values):,.0f} | {np.median(values) / base:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--strokes", type=int, default=96, help="random strokes per brush size")
    parser.add_argument("--episodes", type=int, default=64, help="random episodes per dtime")
    args = parser.parse_args()
    fidelity = fidelity_table(args.strokes)
    dtime = dtime_table(args.episodes)
    print(dtime)
    speed = speed_table()
    print(speed)
    load = os.getloadavg()[0]
    body = (f"Measured {datetime.date.today()} on {machine()}, load average {load:.1f}, "
            f"{args.strokes} strokes per size.\n\n"
            "Ink per stroke after a jump, as ratios to libmypaint 1.3.0 (the port):\n\n"
            f"{fidelity}\n\n{dtime}\n\n{speed}\n")
    if args.write_results:
        write_section("released_mode", body)


if __name__ == "__main__":
    main()
