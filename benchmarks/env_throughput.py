"""Paint-environment throughput: numba vs libmypaint on one core, batched JAX, memory per env.

One command prints one table (and, with --write-results, puts it in benchmarks/RESULTS.md under
"## env_throughput"):

    .venv/bin/python benchmarks/env_throughput.py [--write-results] [--pictures /tmp]

* Strokes/s on one core for the numba engine and libmypaint on SPIRAL's random-action mix (80%
  paint; end/control uniform on the grid; sizes and pressures uniform), measured in the same
  run on the same action stream, and their ratio. Speeds use the process's CPU time, so that
  other processes on a shared machine do not count (each engine uses one thread); wall-clock
  rates are printed too.
* Full ``PaintEnv.step`` steps/s (action validation, program recording, observation), which is
  what a user of one environment pays; also for the reduced configuration of CPU learning tests (32×32
  observations, 16×16 grid, conditional with uint8 targets), as a ratio to the default step.
* ``BatchedPaintEnv`` (what an actor pays): K = 16 and 64 environments per call, against K
  ``PaintEnv``s stepped one by one.
* The numba observation (area average + quantisation) at several canvas → observation widths,
  as a ratio to a loop-per-output-pixel form of the same arithmetic (the first version; the
  outputs are checked bit-equal before timing).
* The batched JAX engine (``jax_engine.step`` under jit) at B = 256 and 4096 on CPU (wall clock,
  XLA's own threads), and on GPU when JAX sees one (else "not measured: no GPU here").
* Memory per environment: numba and libmypaint PaintEnv (resident-set growth over many
  instances), JAX state bytes per environment.

--pictures DIR writes spiral_env_gallery.png (numba next to libmypaint on the same strokes) and
spiral_env_episode.gif (one episode stroke by stroke) into DIR.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

import numpy as np

from spiral.envs import BatchedPaintEnv, PaintConfig, PaintEnv, specs
from spiral.envs import libmypaint_engine as le
from spiral.envs import stroke as spec
from spiral.envs.engines import make_engine

from results_md import RESULTS, machine, write_section


def random_mix(config: PaintConfig, n: int, seed: int = 0):
    """SPIRAL's random-action mix as a list of action dicts (plain ints)."""
    rng = np.random.default_rng(seed)
    acts = []
    for _ in range(n):
        a = {k: int(rng.integers(s.num_values)) for k, s in config.action_spec().items()}
        a["flag"] = int(rng.random() < 0.8)
        acts.append(a)
    return acts


def engine_strokes_per_second(renderer: str, config: PaintConfig, actions, seconds: float):
    """Replay the action stream on a bare engine (episodes of 19 actions); strokes / CPU second."""
    engine = make_engine(renderer, config)
    cells = [(config.canvas_width * (c // config.grid_width) / config.grid_width,
              config.canvas_width * (c % config.grid_width) / config.grid_width)
             for c in range(config.grid_width ** 2)]
    radii = config.pixel_radii
    ink = (config.ink_value,)

    def run(limit_s):
        strokes, start_cpu, start_wall = 0, time.process_time(), time.perf_counter()
        i = 0
        while True:
            engine.reset()
            brush, painting, pressure = (0.0, 0.0), False, 1.0
            for t in range(config.episode_length - 1):
                a = actions[i % len(actions)]
                i += 1
                end = cells[a["end"]]
                if a["flag"]:
                    p1 = float(specs.PRESSURE_VALUES[a["pressure"]])
                    engine.paint(brush, cells[a["control"]], end, pressure if painting else p1, p1,
                                 radii[a["size"]], ink, spec.stroke_key(0, i, t))
                    painting, pressure = True, p1
                    strokes += 1
                else:
                    engine.jump(*end)
                    painting = False
                brush = end
            if time.process_time() - start_cpu > limit_s:
                return strokes, time.process_time() - start_cpu, time.perf_counter() - start_wall

    run(0.2)   # warm-up (numba compiles or loads its cache)
    strokes, cpu, wall = run(seconds)
    return strokes / cpu, strokes / wall


def env_steps_per_second(renderer: str, actions, seconds: float, **env_options):
    env = PaintEnv(renderer=renderer, seed=0, **env_options)
    env.reset()
    for a in actions[:50]:
        env.step(a)
    steps, start_cpu, start_wall = 0, time.process_time(), time.perf_counter()
    while time.process_time() - start_cpu < seconds:
        for a in actions[:500]:
            env.step(a)
        steps += 500
    return steps / (time.process_time() - start_cpu), steps / (time.perf_counter() - start_wall)


def batched_rows(config: PaintConfig, actions, seconds: float, batches=(16, 64)):
    """K environments per call: BatchedPaintEnv against K PaintEnvs stepped one by one with dict
    actions (the actors' former loop), on one core (CPU time)."""
    keys = config.action_keys
    rows = []
    for k in batches:
        steps = [np.array([[actions[(i * k + j) % len(actions)][key] for j in range(k)]
                           for key in keys], np.int32) for i in range(200)]
        dicts = [[{key: int(table[r, j]) for r, key in enumerate(keys)} for j in range(k)]
                 for table in steps]
        envs = [PaintEnv(seed=j) for j in range(k)]
        serial = BatchedPaintEnv(config, np.arange(k))

        def per_env():
            for env in envs:
                env.reset()
            for step in dicts:
                for env, action in zip(envs, step):
                    env.step(action)
                    env.canvas_uint8()
            return len(dicts) * k

        def batched(env):
            def run():
                env.reset()
                for table in steps:
                    env.step(table)
                return len(steps) * k
            return run

        runs = {"per-env": per_env, "serial": batched(serial)}
        totals = {name: [0, 0.0, 0.0] for name in runs}
        for run in runs.values():
            run()   # compile / warm up
        for _ in range(4):   # interleaved blocks: load from other processes hits all alike
            for name, run in runs.items():
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                while time.process_time() - start_cpu < seconds / 4:
                    totals[name][0] += run()
                totals[name][1] += time.process_time() - start_cpu
                totals[name][2] += time.perf_counter() - start_wall
        cpu = {name: t[0] / t[1] for name, t in totals.items()}
        wall = {name: t[0] / t[2] for name, t in totals.items()}
        rows.append((f"{k} PaintEnvs stepped one by one, 1 core", f"{cpu['per-env']:,.0f} steps/s",
                     f"wall {wall['per-env']:,.0f}/s", "the actors' former loop (dict actions)"))
        rows.append((f"BatchedPaintEnv, K={k}, 1 core", f"{cpu['serial']:,.0f} steps/s",
                     f"wall {wall['serial']:,.0f}/s",
                     f"{cpu['serial'] / cpu['per-env']:.2f}x one by one (CPU time)"))
    return rows


def _observe_per_pixel():
    """The first version of ``numba_engine.observe`` (one output pixel at a time): the baseline."""
    from numba import njit

    one, zero, f255 = np.float32(1.0), np.float32(0.0), np.float32(255.0)
    magic = np.float32(1.5 * 2 ** 23)

    @njit(cache=False, error_model="numpy")
    def observe(canvas, out_u8, out_f32):
        channels, height, width = canvas.shape
        width_out = out_u8.shape[0]
        s = height // width_out
        inv_area = one / np.float32(s * s)
        flat = canvas.reshape(-1)
        flat_u8 = out_u8.reshape(-1)
        flat_f32 = out_f32.reshape(-1)
        for c in range(channels):
            for y in range(width_out):
                for x in range(width_out):
                    if s == 1:
                        v = flat[(c * height + y) * width + x]
                    else:
                        total = zero
                        for dy in range(s):
                            base = (c * height + y * s + dy) * width + x * s
                            for dx in range(s):
                                total = total + flat[base + dx]
                        v = total * inv_area
                    q = min(max((v * f255 + magic) - magic, zero), f255)
                    o = (y * width_out + x) * channels + c
                    flat_u8[o] = np.uint8(q)
                    flat_f32[o] = q / f255

    return observe


def observe_rows(cases, repeats: int = 3000):
    """µs per observation (CPU time) of ``numba_engine.observe`` and of the per-pixel baseline."""
    from spiral.envs.numba_engine import observe

    baseline = _observe_per_pixel()
    rng = np.random.default_rng(0)
    rows = []
    for width, observation_width, channels in cases:
        canvas = rng.random((channels, width, width)).astype(np.float32)
        times, outputs = [], []
        for fn in (baseline, observe):
            u8 = np.empty((observation_width, observation_width, channels), np.uint8)
            f32 = np.empty((observation_width, observation_width, channels), np.float32)
            fn(canvas, u8, f32)
            start = time.process_time()
            for _ in range(repeats):
                fn(canvas, u8, f32)
            times.append((time.process_time() - start) / repeats)
            outputs.append((u8, f32))
        if not all(np.array_equal(a, b) for a, b in zip(*outputs)):
            raise AssertionError(f"observe {width}->{observation_width} differs from the baseline")
        rows.append((f"numba observe {width}→{observation_width}, C={channels}", f"{times[1] * 1e6:.1f} µs",
                     f"{times[0] / times[1]:.1f}x the per-pixel loop", f"per-pixel {times[0] * 1e6:.1f} µs; bit-equal"))
    return rows


def jax_rows(config: PaintConfig, batches, steps: int):
    import jax
    import jax.numpy as jnp

    from spiral.envs import jax_engine as je

    rows = []
    devices = {"cpu": jax.devices("cpu")[0]}
    try:
        gpus = jax.devices("gpu")
        if gpus:
            devices["gpu"] = gpus[0]
    except RuntimeError:
        pass
    step = jax.jit(je.step)
    spec_ = config.action_spec()
    for kind in ("cpu", "gpu"):
        device = devices.get(kind)
        for batch in batches:
            label = f"jax batched, B={batch}, {kind}"
            if device is None:
                rows.append((label, "not measured: no GPU here", "", ""))
                continue
            name = getattr(device, "device_kind", kind)
            with jax.default_device(device):
                rng = np.random.default_rng(0)
                acts = []
                for _ in range(steps + 1):
                    a = {k: jnp.asarray(rng.integers(0, s.num_values, batch).astype(np.int32)) for k, s in spec_.items()}
                    a["flag"] = jnp.asarray((rng.random(batch) < 0.8).astype(np.int32))
                    acts.append(a)
                state = je.reset(0, batch, config)
                t0 = time.perf_counter()
                state, _ = step(state, acts[0])
                jax.block_until_ready(state.canvas)
                compile_s = time.perf_counter() - t0
                painted = 0
                t0 = time.perf_counter()
                for a in acts[1:]:
                    painted_now = (np.asarray(a["flag"]) == 1) & (np.asarray(state.t) < config.episode_length - 1)
                    state, _ = step(state, a)
                    painted += int(painted_now.sum())
                jax.block_until_ready(state.canvas)
                wall = time.perf_counter() - t0
                state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) / batch
                rows.append((label, f"{painted / wall:,.0f} strokes/s", f"{batch * steps / wall:,.0f} env-steps/s",
                             f"{name}; first call (compile) {compile_s:.1f} s; {state_bytes / 1024:.1f} KiB state/env"))
    return rows


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_env(renderer: str, count: int = 200):
    """Bytes per PaintEnv after one episode: traced Python/numpy allocations (tracemalloc), and
    resident-set growth (which also sees C allocations, e.g. libmypaint's surface and brush)."""
    import gc
    import tracemalloc

    actions = random_mix(PaintConfig(), 19, seed=1)
    gc.collect()
    tracemalloc.start()
    traced_before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
    envs = []
    for i in range(count):
        env = PaintEnv(renderer=renderer, seed=i)
        env.reset()
        for a in actions:
            env.step(a)
        envs.append(env)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    rss = rss_bytes() - rss_before
    tracemalloc.stop()
    del envs
    return traced / count, rss / count


def pictures(folder: pathlib.Path):
    from PIL import Image

    config = PaintConfig()
    rng = np.random.default_rng(7)
    tiles = []
    engines = {"numba": make_engine("numba", config)}
    if le.available():
        engines["libmypaint"] = make_engine("libmypaint", config)
    for i in range(8):
        size = config.pixel_radii[i % 6]
        p = float(rng.choice(specs.PRESSURE_VALUES))
        a, b, c = (tuple(float(v) for v in rng.integers(0, 32, 2) * 2) for _ in range(3))
        row = []
        for name, engine in engines.items():
            engine.reset()
            engine.jump(*a)
            # Three connected strokes of one size: a → c (via b), c → b (via a), b → a (via c).
            for j, (start, control, end) in enumerate([(a, b, c), (c, a, b), (b, c, a)]):
                engine.paint(start, control, end, p, p, size, (0.0,), spec.stroke_key(i, 0, j))
            row.append((engine.full_canvas()[..., 0] * 255).astype(np.uint8))
        tiles.append(np.concatenate([np.pad(r, 2, constant_values=128) for r in row], axis=1))
    # Two rows of four pairs; in each pair numba is on the left, libmypaint on the right.
    pairs = [np.pad(t, ((0, 0), (0, 6)), constant_values=255) for t in tiles]
    gallery = np.concatenate([np.concatenate(pairs[:4], axis=1), np.concatenate(pairs[4:], axis=1)], axis=0)
    gallery = np.kron(gallery, np.ones((3, 3), np.uint8))
    Image.fromarray(gallery).save(folder / "spiral_env_gallery.png")
    env = PaintEnv(use_color=True, seed=3)
    env.reset()
    frames = []
    for a in random_mix(env.config, 19, seed=5):
        a["size"] = int(rng.integers(4))
        env.step(a)
        frames.append(Image.fromarray(np.kron(env.canvas_uint8(), np.ones((4, 4, 1), np.uint8))))
    frames[0].save(folder / "spiral_env_episode.gif", save_all=True, append_images=frames[1:], duration=300,
                   loop=0)
    return [folder / "spiral_env_gallery.png", folder / "spiral_env_episode.gif"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per single-core row")
    parser.add_argument("--jax-steps", type=int, default=3, help="timed batched steps per JAX row")
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--pictures", type=pathlib.Path, help="folder for the gallery PNG and episode GIF")
    args = parser.parse_args(argv)

    config = PaintConfig()
    actions = random_mix(config, 20000)
    rows = []
    numba_cpu, numba_wall = engine_strokes_per_second("numba", config, actions, args.seconds)
    rows.append(("numba engine, 1 core", f"{numba_cpu:,.0f} strokes/s", f"wall {numba_wall:,.0f}/s", ""))
    if le.available():
        lmp_cpu, lmp_wall = engine_strokes_per_second("libmypaint", config, actions, args.seconds)
        rows.append(("libmypaint (ctypes), 1 core", f"{lmp_cpu:,.0f} strokes/s", f"wall {lmp_wall:,.0f}/s", ""))
        rows.append(("ratio numba / libmypaint", f"{numba_cpu / lmp_cpu:.1f}x", f"wall {numba_wall / lmp_wall:.1f}x",
                     "target >= 8x"))
    else:
        rows.append(("libmypaint", f"not measured: {le.INSTALL_HINT}", "", ""))
    env_cpu, env_wall = env_steps_per_second("numba", actions, args.seconds)
    rows.append(("PaintEnv.step, numba", f"{env_cpu:,.0f} steps/s", f"wall {env_wall:,.0f}/s",
                 "validation + program + observation"))
    reduced = dict(observation_width=32, grid_width=16,
                   targets=np.random.default_rng(0).integers(0, 256, (100, 32, 32, 1), dtype=np.uint8),
                   l2_reward=True)
    small_cpu, small_wall = env_steps_per_second("numba", random_mix(PaintConfig(grid_width=16), 20000),
                                                 args.seconds, **reduced)
    rows.append(("PaintEnv.step, numba, obs 32, grid 16, uint8 targets", f"{small_cpu:,.0f} steps/s",
                 f"wall {small_wall:,.0f}/s", f"{small_cpu / env_cpu:.2f}x the default step (CPU time)"))
    if le.available():
        lenv_cpu, lenv_wall = env_steps_per_second("libmypaint", actions, args.seconds)
        rows.append(("PaintEnv.step, libmypaint", f"{lenv_cpu:,.0f} steps/s", f"wall {lenv_wall:,.0f}/s", ""))
    rows.extend(batched_rows(config, actions, args.seconds))
    rows.extend(observe_rows([(64, 64, 1), (64, 32, 1), (128, 64, 1), (128, 32, 3), (256, 8, 1)]))
    rows.extend(jax_rows(config, (256, 4096), args.jax_steps))
    for renderer in ("numba", "libmypaint") if le.available() else ("numba",):
        traced, rss = memory_per_env(renderer)
        rows.append((f"memory per PaintEnv, {renderer}", f"{traced / 1024:.0f} KiB traced",
                     f"RSS growth {rss / 1024:.0f} KiB", "per env, 200 envs after one episode each"))

    command = "python benchmarks/env_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Command: `{command.strip()}`.\n"
              f"Single-core rates use process CPU time (the machine is shared); \"wall\" is wall clock "
              f"(1-minute load average at the end: {os.getloadavg()[0]:.1f}; JAX rows are wall clock).\n\n"
              "| what | rate | | notes |\n|---|---|---|---|\n")
    table = header + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows) + "\n"
    print(table)
    if args.write_results:
        write_section("env_throughput", table)
        print(f"wrote {RESULTS}")
    if args.pictures:
        for path in pictures(args.pictures):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
