"""Learner throughput: the V-trace update (agent steps/s, compile time, FLOPs) and sampling on one core.

Full-size SPIRAL agent by default (SPIRAL.md §2; grayscale 64×64, ``--color`` for colour;
``--network small`` / ``tiny`` for the CPU presets of launch/flags.py). ``--profile`` adds, for
each update variant, where its time goes: XLA's per-op times by layer and direction (forward,
backward), from ``benchmarks/xla_profile.py``.

* **Update**: one jitted ``update_step`` on a ``[B, T]`` batch of synthetic records (unroll
  T = 20); agent steps per second = B·T / seconds per update. Rows for float32 and bfloat16 and
  for the two forms of the transposed convolutions ("direct" ``lax.conv_transpose`` and
  "depth_to_space": a 3×3 conv with 4× channels from the same 4×4 parameters). Speed ratios are
  against float32/direct at the same batch size, measured in this process. FLOPs from XLA's
  cost analysis of the compiled update; on a GPU also the achieved fraction of the card's peak.
* **Sampling** (the actors' cost): ``sample_step`` at batch 1, 8, 32 on ONE CPU core, in a child
  process started with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` and pinned to one core
  with ``os.sched_setaffinity`` before JAX starts (as an actor would be).

Usage: ``python benchmarks/learner_throughput.py`` (CPU: several minutes, the B64 update alone
takes ~1 min per configuration); ``--quick`` for B8 only and fewer sampling calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# Dense peak throughput (FLOP/s) by device kind: (bfloat16, float32 as XLA runs it on GPU: TF32).
GPU_PEAKS = {
    "H100": (989e12, 494e12),
    "H200": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
}
CPU_REFERENCE = "SPIRAL.md (2-core x86, jax 0.10): B8×T20 update 2.5 s, B64 52 s; sampling ~355 " \
                "steps/s at batch 1, ~455 at 8–32 on one core"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    p.add_argument("--unroll", type=int, default=20)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--impls", nargs="+", default=["direct", "depth_to_space"])
    p.add_argument("--repeats", type=int, default=0,
                   help="timed updates per row (0: 3 for B<=8, 1 above on CPU; 20 on GPU)")
    p.add_argument("--color", action="store_true", help="colour agent (8 action keys)")
    p.add_argument("--network", default="full", choices=["full", "small", "tiny"],
                   help="agent size (launch/flags.py AGENT_SIZES)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, print where each update's time goes (XLA per-op times)")
    p.add_argument("--sampling-batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--sampling-seconds", type=float, default=6.0,
                   help="seconds of sampling per row (in 6 interleaved blocks)")
    p.add_argument("--skip-update", action="store_true")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--quick", action="store_true", help="B8 only, 2 s per sampling row")
    p.add_argument("--mode", default="main", choices=["main", "sampling"], help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.batch_sizes, args.sampling_seconds = [8], 2.0
    return args


def agent_config(color: bool, network: str = "full"):
    from spiral.launch.flags import AGENT_SIZES
    from spiral.learner import AgentConfig
    return AgentConfig(use_color=color, **AGENT_SIZES[network])


def synthetic_batch(config, batch_size: int, unroll: int, seed: int = 0):
    """Episode-aligned random records with the real shapes and dtypes."""
    from spiral.envs import specs
    from spiral.learner import LAST, stack_trajectories, zero_trajectory
    rng = np.random.default_rng(seed)
    rec = zero_trajectory(config, unroll)
    rec.observation.canvas[:] = rng.integers(0, 256, rec.observation.canvas.shape)
    for k, n in config.action_sizes.items():
        rec.action[k][:] = rng.integers(0, n, unroll)
        rec.behaviour_logits[k][:] = rng.normal(size=(unroll, n))
    painted = np.concatenate([[False], rec.action["flag"] == specs.PAINT])
    rec.observation.action_mask[:] = [specs.action_mask(config.action_keys, p) for p in painted]
    rec.step_type[-1] = LAST
    rec.reward[-1] = 1.0
    rec.discount[:-1] = 1.0
    rec.noise[:] = rng.normal(size=config.noise_dim)
    return stack_trajectories([rec] * batch_size)


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def machine() -> str:
    import jax
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})")


# ----------------------------------------------------------------------------- update
def bench_update(args):
    import jax
    from spiral.learner import PolicyLearnerConfig, count_params
    from spiral.learner.learning import PolicyLearner

    config = agent_config(args.color, args.network)
    backend = jax.default_backend()
    on_gpu = backend == "gpu"
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in GPU_PEAKS.items() if k in kind), None) if on_gpu else None
    print(f"\n## Update (B×T{args.unroll}), {machine()}")
    learner = PolicyLearner(config, PolicyLearnerConfig())
    print(f"parameters: {count_params(learner.params):,} "
          f"({args.network} network, {'colour' if args.color else 'grayscale'}, 64×64, grid 32)")
    header = ("| B | dtype | transposed conv | compile s | s/update | agent steps/s | vs f32 direct "
              "| GFLOP/update | achieved TFLOP/s | % of peak |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for b in args.batch_sizes:
        batch = jax.device_put(synthetic_batch(config, b, args.unroll))
        variants = []
        for dtype in args.dtypes:
            for impl in args.impls:
                cfg = PolicyLearnerConfig(compute_dtype=dtype, transposed_conv=impl)
                lrn = PolicyLearner(config, cfg, params=learner.params)
                t0 = time.perf_counter()
                compiled = jax.jit(lrn.update_step).lower(lrn.state, batch).compile()
                compile_s = time.perf_counter() - t0
                state = lrn.state
                if on_gpu:   # warm up (autotuning, allocation) before timing
                    state, _ = compiled(state, batch)
                    jax.block_until_ready(state)
                variants.append(dict(dtype=dtype, impl=impl, compiled=compiled, state=state,
                                     compile_s=compile_s, flops=flops_of(compiled), times=[]))
        # Interleave the variants' timed updates so that load from other processes on this
        # (shared) machine hits them alike: the ratios stay meaningful when absolute times drift.
        repeats = args.repeats or (20 if on_gpu else (3 if b <= 8 else 1))
        for _ in range(repeats):
            for v in variants:
                t0 = time.perf_counter()
                v["state"], metrics = v["compiled"](v["state"], batch)
                jax.block_until_ready((v["state"], metrics))
                v["times"].append(time.perf_counter() - t0)
                if float(metrics["update_applied"]) != 1.0:
                    raise RuntimeError(f"update refused on the synthetic batch: {metrics}")
        baseline = float(np.median(variants[0]["times"]))
        for v in variants:
            sec = float(np.median(v["times"]))
            steps = b * args.unroll / sec
            achieved = v["flops"] / sec / 1e12
            frac = ("n/a (CPU)" if not on_gpu else
                    f"{100 * achieved * 1e12 / peak[0 if v['dtype'] == 'bfloat16' else 1]:.1f}"
                    if peak else "unknown card")
            rows.append(dict(batch=b, dtype=v["dtype"], impl=v["impl"], compile_s=v["compile_s"],
                             sec=sec, steps_per_s=steps, ratio=baseline / sec,
                             gflop=v["flops"] / 1e9, tflops=achieved))
            print(f"| {b} | {v['dtype']} | {v['impl']} | {v['compile_s']:.1f} | {sec:.3f} | "
                  f"{steps:,.0f} | {baseline / sec:.2f}× | {v['flops'] / 1e9:.1f} | "
                  f"{achieved:.3f} | {frac} |", flush=True)
        if args.profile:   # where each variant's update time goes (XLA's per-op timings)
            import xla_profile
            for v in variants:
                box = {"state": v["state"]}

                def run(v=v, box=box):
                    box["state"], metrics = v["compiled"](box["state"], batch)
                    jax.block_until_ready(metrics)

                table, coverage = xla_profile.op_table(v["compiled"], run)
                print(f"\nB{b} {v['dtype']} {v['impl']}: where the update's time goes (the ops' "
                      f"events cover {coverage:.0%} of the wall time)")
                print("\n".join(xla_profile.summarise(table, 12)))
        del variants
    if not on_gpu:
        print("| GPU rows | not measured: no GPU here | | | | | | | | |")
    print(f"Reference: {CPU_REFERENCE}. Target on one H100/H200: >= 100k agent steps/s.")
    print("XLA's cost analysis counts a while-loop body once (the LSTM scan, V-trace): those "
          "FLOPs are undercounted by ~T×, a negligible part of the total.")
    return rows


# ----------------------------------------------------------------------------- sampling
def bench_sampling_child(args):
    """Runs in a child process pinned to one core, XLA single-threaded (set before import)."""
    import jax
    import jax.numpy as jnp
    from spiral.envs import specs
    from spiral.learner import Agent, Observation

    config = agent_config(args.color)
    agents = {impl: Agent(config, transposed_conv=impl) for impl in args.impls}
    params = agents[args.impls[0]].init(jax.random.PRNGKey(0))   # same parameters for both
    results = []
    for b in args.sampling_batches:
        rng = np.random.default_rng(0)
        obs = Observation(
            jnp.asarray(rng.integers(0, 256, (b, 64, 64, config.channels)), jnp.uint8),
            jnp.asarray(np.tile(specs.action_mask(config.action_keys, True), (b, 1))))
        noise = jax.random.normal(jax.random.PRNGKey(1), (b, config.noise_dim))
        first = jnp.zeros(b, bool)
        runs = {}
        for impl, agent in agents.items():
            state = agent.initial_state(b)
            key = jax.random.PRNGKey(2)
            t0 = time.perf_counter()
            compiled = jax.jit(agent.sample_step).lower(params, obs, first, state, noise,
                                                        key).compile()
            compile_s = time.perf_counter() - t0
            out, state = compiled(params, obs, first, state, noise, key)
            jax.block_until_ready(out)
            runs[impl] = dict(compiled=compiled, state=state, key=key, compile_s=compile_s,
                              flops=flops_of(compiled), calls=0, seconds=0.0)
        # Alternate short blocks of each form (fair under varying load from other processes).
        rounds = 6
        for _ in range(rounds):
            for impl, run in runs.items():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.sampling_seconds / rounds:
                    run["key"], sub = jax.random.split(run["key"])
                    out, run["state"] = run["compiled"](params, obs, first, run["state"], noise,
                                                        sub)
                    jax.device_get(out.action)   # an actor needs the actions on the host
                    run["calls"] += 1
                run["seconds"] += time.perf_counter() - t0
        for impl, run in runs.items():
            sec = run["seconds"] / run["calls"]
            results.append(dict(impl=impl, batch=b, compile_s=run["compile_s"],
                                steps_per_s=b / sec, ms_per_call=1e3 * sec,
                                mflop_per_step=run["flops"] / b / 1e6))
    print(json.dumps(results))


def bench_sampling(args):
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", "sampling",
           "--sampling-seconds", str(args.sampling_seconds), "--impls", *args.impls,
           "--sampling-batches", *map(str, args.sampling_batches)] + (["--color"] if args.color
                                                                       else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n## Sampling on one CPU core (XLA single-threaded, pinned), "
          f"{'colour' if args.color else 'grayscale'}")
    print("| transposed conv | batch | compile s | ms/call | agent steps/s | vs direct | MFLOP/step |")
    print("|---|---|---|---|---|---|---|")
    direct = {r["batch"]: r["steps_per_s"] for r in results if r["impl"] == "direct"}
    for r in results:
        ratio = r["steps_per_s"] / direct[r["batch"]] if r["batch"] in direct else float("nan")
        print(f"| {r['impl']} | {r['batch']} | {r['compile_s']:.1f} | {r['ms_per_call']:.2f} | "
              f"{r['steps_per_s']:,.0f} | {ratio:.2f}× | {r['mflop_per_step']:.1f} |")
    return results


def main():
    args = parse_args()
    if args.mode == "sampling":
        os.sched_setaffinity(0, {args.core})
        bench_sampling_child(args)
        return
    t0 = time.time()
    print(f"# learner_throughput, {time.strftime('%Y-%m-%d %H:%M')}")
    if not args.skip_update:
        bench_update(args)
    if not args.skip_sampling:
        bench_sampling(args)
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
