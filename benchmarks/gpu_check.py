"""GPU check: every GPU row of benchmarks/RESULTS.md in one command, on the machine's first GPU.

Rows, each with its compile time (first call) and the card's name:

* engine: the batched JAX brush engine (``spiral.envs.jax_engine.step``, random actions, 80%
  paint), strokes/s at B = 256 and 4,096. Target: >= 1M strokes/s at B 4,096.
* policy update: ``PolicyLearner``'s jitted V-trace update of the full network at B64 × T20
  (float32 and bfloat16), agent steps/s and achieved TFLOP/s (XLA's cost analysis / time; % of
  the card's dense peak where known). Target: >= 100k agent steps/s.
* discriminator update: the paper's critic (64-128-256-512) at batch 64, WGAN-GP and SN-GAN,
  updates/s and discriminator images/s.
* fused runtime: the fused one-device step (JAX environments, rollout, rewards, policy update,
  discriminator update; ``spiral.actors.fused``) with the full network at B = 256, 1,024, 4,096,
  agent steps/s, and at B = 4,096 each part's time run alone (rollout, policy update,
  discriminator update). Target: >= 200k agent steps/s on one H100/H200.

Everything is synthetic (random canvases, actions and real images): no dataset, no network, and
no Ray (the GPU machine has a fresh ``pip install -e . --no-deps`` plus JAX and the numeric
packages). Rows stop when ``--budget_s`` (default 450 s, under 8 minutes with start-up) is
spent: the remaining ones print "skipped: time budget".

  python benchmarks/gpu_check.py              # prints the table, appends it to RESULTS.md
  python benchmarks/gpu_check.py --dry_run    # tiny sizes on the CPU in seconds (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import results_md  # noqa: E402  (a sibling script's module, found through sys.path)

SECTION = "gpu_check"
# What the measured code imports (module: pip package); Ray, pytest and the datasets are not needed.
REQUIRED = {"jax": "jax[cuda13]", "flax": "flax", "optax": "optax", "chex": "chex",
            "numba": "numba", "dm_env": "dm-env", "PIL": "pillow", "absl": "absl-py",
            "orbax": "orbax-checkpoint", "threadpoolctl": "threadpoolctl", "spiral": "-e ."}
TARGETS = {"engine": 1e6, "policy update": 1e5, "fused runtime": 2e5}


class Sizes:
    """What each row measures: the real sizes, or tiny ones for ``--dry_run``."""

    def __init__(self, dry_run: bool):
        # The dry run takes every code path once, at the smallest sizes (compiles dominate).
        self.engine_batches = (4,) if dry_run else (256, 4096)
        self.dtypes = ("float32",) if dry_run else ("float32", "bfloat16")
        self.network = "tiny" if dry_run else "full"
        self.update_batch, self.unroll = (2, 3) if dry_run else (64, 20)
        self.disc_batch = 4 if dry_run else 64
        self.disc_network = "tiny" if dry_run else "full"
        self.fused_batches = (4,) if dry_run else (256, 1024, 4096)
        self.episode_length = 4 if dry_run else 20
        self.seconds = 0.2 if dry_run else 4.0   # timed per row, after the compile and a warm-up
        self.dry_run = dry_run

    def target(self, part: str):
        """The issue's target for a row (none for the tiny sizes of a dry run)."""
        return None if self.dry_run else TARGETS[part]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true",
                   help="tiny sizes, any device (CPU): checks the script end to end in seconds")
    p.add_argument("--budget_s", type=float, default=450.0,
                   help="stop measuring new rows after this many seconds")
    p.add_argument("--results_file", default=None,
                   help="append the table here (default: benchmarks/RESULTS.md; none with --dry_run)")
    p.add_argument("--only", default="engine,update,disc,fused",
                   help="comma-separated parts: engine, update, disc, fused")
    return p.parse_args(argv)


def device_name() -> str:
    import jax
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({results_md.cpu_name()}, {os.cpu_count()} cores)"
    return f"{device.device_kind} ({device.platform})"


def timed(fn, seconds: float, min_calls: int = 3) -> float:
    """Median seconds per call of ``fn`` (which must block until its work is done)."""
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- rows ------------------------------------------------------------------------------------
def engine_row(batch: int, sizes: Sizes) -> dict:
    """Strokes/s of ``jax_engine.step`` over a cycle of 16 random action sets."""
    import jax
    import jax.numpy as jnp
    from spiral.envs import PaintConfig
    from spiral.envs import jax_engine as je

    config = PaintConfig(episode_length=sizes.episode_length)
    rng = np.random.default_rng(0)
    actions, flags = [], []
    for _ in range(16):
        a = {k: rng.integers(0, s.num_values, batch).astype(np.int32)
             for k, s in config.action_spec().items()}
        a["flag"] = (rng.random(batch) < 0.8).astype(np.int32)
        flags.append(int(a["flag"].sum()))
        actions.append(jax.device_put({k: jnp.asarray(v) for k, v in a.items()}))
    step = jax.jit(je.step)
    state = je.reset(0, batch, config)
    counter = {"i": 0, "strokes": 0}

    def run(n: int = 8):
        nonlocal state
        for _ in range(n):
            i = counter["i"]
            # Environments step in lockstep: the step after LAST restarts and paints nothing.
            if i % config.episode_length != config.episode_length - 1:
                counter["strokes"] += flags[i % 16]
            state, _ = step(state, actions[i % 16])
            counter["i"] += 1
        jax.block_until_ready(state.canvas)

    compile_s = first_call(lambda: run(1))
    run()
    start_strokes, start = counter["strokes"], time.perf_counter()
    while time.perf_counter() - start < sizes.seconds or counter["i"] < 24:
        run()
    rate = (counter["strokes"] - start_strokes) / (time.perf_counter() - start)
    return dict(part="engine", what=f"JAX brush engine, B={batch}", rate=rate, unit="strokes/s",
                compile_s=compile_s, notes="",
                target=sizes.target("engine") if batch == max(sizes.engine_batches) else None)


def update_rows(sizes: Sizes) -> list[dict]:
    """The policy learner's update at B × T for float32 and bfloat16."""
    import jax
    from learner_throughput import GPU_PEAKS, flops_of, synthetic_batch
    from spiral.launch.flags import AGENT_SIZES
    from spiral.learner import AgentConfig, PolicyLearnerConfig
    from spiral.learner.learning import PolicyLearner

    config = AgentConfig(**AGENT_SIZES[sizes.network])
    batch = jax.device_put(synthetic_batch(config, sizes.update_batch, sizes.unroll))
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in GPU_PEAKS.items() if k in kind), None)
    rows = []
    for dtype in sizes.dtypes:
        learner = PolicyLearner(config, PolicyLearnerConfig(compute_dtype=dtype))
        box = {"state": learner.state}
        start = time.perf_counter()
        compiled = jax.jit(learner.update_step).lower(learner.state, batch).compile()
        compile_s = time.perf_counter() - start

        def run():
            box["state"], metrics = compiled(box["state"], batch)
            jax.block_until_ready(metrics["total_loss"])

        run()
        seconds = timed(run, sizes.seconds)
        flops = flops_of(compiled)
        tflops = flops / seconds / 1e12
        share = (f"{100 * tflops * 1e12 / peak[0 if dtype == 'bfloat16' else 1]:.1f}% of peak"
                 if peak else "peak unknown")
        rows.append(dict(part="policy update",
                         what=f"policy update, {sizes.network} net, B{sizes.update_batch}×T"
                              f"{sizes.unroll}, {dtype}",
                         rate=sizes.update_batch * sizes.unroll / seconds, unit="agent steps/s",
                         compile_s=compile_s, target=sizes.target("policy update"),
                         notes=f"{seconds * 1e3:.1f} ms/update; {tflops:.2f} TFLOP/s ({share})"))
    return rows


def disc_rows(sizes: Sizes) -> list[dict]:
    import jax
    from spiral.discriminator import DiscriminatorConfig, DiscriminatorLearner
    from spiral.launch.flags import DISC_SIZES

    rng = np.random.default_rng(0)
    b = sizes.disc_batch
    fake = jax.device_put(rng.integers(0, 256, (b, 64, 64, 1), dtype=np.uint8))
    real = jax.device_put(rng.integers(0, 256, (b, 64, 64, 1), dtype=np.uint8))
    rows = []
    for loss in ("wgan_gp", "sngan"):
        learner = DiscriminatorLearner(DiscriminatorConfig(
            loss=loss, channels=DISC_SIZES[sizes.disc_network], batch_size=b))

        def run():
            jax.block_until_ready(learner.update(fake, real)["loss"])

        compile_s = first_call(run)
        seconds = timed(run, sizes.seconds)
        rows.append(dict(part="discriminator update",
                         what=f"discriminator update, {sizes.disc_network} critic, {loss}, batch {b}",
                         rate=1 / seconds, unit="updates/s", compile_s=compile_s,
                         notes=f"{seconds * 1e3:.1f} ms/update; {2 * b / seconds:,.0f} images/s"))
    return rows


def fused_rows(sizes: Sizes, budget_left) -> list[dict]:
    from fused_throughput import fused_row, make_config
    from spiral.actors import fused

    rows = []
    for batch in sizes.fused_batches:
        if budget_left() <= 0:
            rows.append(skipped("fused runtime", f"fused runtime, B={batch}"))
            continue
        config = make_config(sizes.network, batch, sizes.episode_length, dataset_limit=0,
                             disc_network=sizes.disc_network)
        rng = np.random.default_rng(batch)
        real = rng.integers(0, 256, (max(batch, 64), 64, 64, 1), dtype=np.uint8)
        steps = max(3, int(sizes.seconds * 2))
        # The parts alone at the largest batch only: each is one more compile of a large program
        # (none in a dry run, which must stay short on a CPU).
        largest = batch == max(sizes.fused_batches)
        result = fused_row(config, steps, breakdown=largest and not sizes.dry_run,
                           data=fused.FusedData(real, None))
        agent_steps = batch * (sizes.episode_length - 1)
        notes = f"step {result['step_s']:.3f} s"
        if "rollout_s" in result:
            notes += (f" = rollout {result['rollout_s']:.3f} + update {result['update_s']:.3f} + "
                      f"D {result['disc_s']:.3f} (each alone)")
        rows.append(dict(part="fused runtime", what=f"fused runtime, {sizes.network} net, B={batch}",
                         rate=agent_steps / result["step_s"], unit="agent steps/s",
                         compile_s=result["compile_s"],
                         target=sizes.target("fused runtime") if largest else None,
                         notes=notes))
    return rows


def skipped(part: str, what: str) -> dict:
    return dict(part=part, what=what, rate=float("nan"), unit="", compile_s=float("nan"),
                notes="skipped: time budget")


# ---- table -----------------------------------------------------------------------------------
def table(rows, name: str, dry_run: bool, wall_s: float) -> str:
    import jax
    lines = [f"### {datetime.datetime.now():%Y-%m-%d %H:%M}: {name}"
             + (" (dry run: tiny sizes, not a measurement)" if dry_run else ""),
             "",
             f"jax {jax.__version__}; command `python benchmarks/gpu_check.py"
             f"{' --dry_run' if dry_run else ''}`; {wall_s:.0f} s in all.",
             "",
             "| row | rate | compile s | target | notes |",
             "|---|---:|---:|---|---|"]
    for r in rows:
        rate = "" if np.isnan(r["rate"]) else f"{r['rate']:,.0f} {r['unit']}"
        compile_s = "" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.1f}"
        target = r.get("target")
        verdict = ""
        if target and not np.isnan(r["rate"]):
            verdict = f">= {target:,.0f}: {'met' if r['rate'] >= target else 'missed'}"
        lines.append(f"| {r['what']} | {rate} | {compile_s} | {verdict} | {r['notes']} |")
    return "\n".join(lines)


def append_results(text: str, path: pathlib.Path) -> None:
    """Append a run's table under RESULTS.md's gpu_check section (created when missing)."""
    heading = f"## {SECTION} (benchmarks/{SECTION}.py)"
    content = path.read_text() if path.exists() else ""
    if heading not in content:
        content = content.rstrip("\n") + f"\n\n{heading}\n\nEach run of the GPU check appends its " \
                                          f"table here (newest last).\n"
    start = content.index(heading)
    end = content.find("\n## ", start + len(heading))
    end = len(content) if end < 0 else end + 1
    section = content[start:end].rstrip("\n") + "\n\n" + text.strip() + "\n"
    rest = content[end:]
    path.write_text(content[:start] + section + ("\n" + rest if rest else ""))


def missing_packages() -> list[str]:
    """The pip names of REQUIRED packages this Python cannot import."""
    return [pip for module, pip in REQUIRED.items() if importlib.util.find_spec(module) is None]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    start = time.perf_counter()
    missing = missing_packages()
    if missing:
        raise SystemExit(f"Missing packages: pip install {' '.join(missing)} (and pip install -e . "
                         f"--no-deps for spiral itself; BUILD.md, 'The GPU check').")
    import jax
    if not args.dry_run and jax.default_backend() != "gpu":
        raise SystemExit(f"No GPU: JAX sees {jax.devices()}. Install jax[cuda13] (BUILD.md), or "
                         f"pass --dry_run to check the script on this CPU.")
    sizes = Sizes(args.dry_run)
    parts = set(args.only.split(","))
    unknown = parts - {"engine", "update", "disc", "fused"}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; use engine, update, disc, fused.")
    budget_left = lambda: args.budget_s - (time.perf_counter() - start)
    name = device_name()
    print(f"GPU check on {name}", flush=True)
    rows = []
    plan = []
    if "engine" in parts:
        plan += [("engine", f"JAX brush engine, B={b}", lambda b=b: [engine_row(b, sizes)])
                 for b in sizes.engine_batches]
    if "update" in parts:
        plan.append(("policy update", "policy update", lambda: update_rows(sizes)))
    if "disc" in parts:
        plan.append(("discriminator update", "discriminator update", lambda: disc_rows(sizes)))
    if "fused" in parts:
        plan.append(("fused runtime", "fused runtime", lambda: fused_rows(sizes, budget_left)))
    for part, what, measure in plan:
        if budget_left() <= 0:
            rows.append(skipped(part, what))
            continue
        for row in measure():
            rows.append(row)
            rate = "" if np.isnan(row["rate"]) else f"{row['rate']:,.0f} {row['unit']}"
            print(f"  {row['what']}: {rate} {row['notes']}", flush=True)
    text = table(rows, name, args.dry_run, time.perf_counter() - start)
    print("\n" + text)
    path = args.results_file or (None if args.dry_run else results_md.RESULTS)
    if path:
        append_results(text, pathlib.Path(path))
        print(f"\nappended to {path}")
    return rows


if __name__ == "__main__":
    main()
