"""Fused-runtime throughput: agent steps/s of one jitted fused step, against the local runtime's work.

Rows, for each network size and batch size B (episodes of T = episode_length − 1 = 19 actions):

* **fused**: ``spiral.actors.fused.make_fused_step`` — B episodes on the batched JAX environment
  with the sampling agent, discriminator rewards, the V-trace policy update, the replay and one
  discriminator update, all in one program. Agent steps/s = B·T / seconds per step (median over
  timed steps, after the compile); compile seconds; with ``--breakdown`` also the rollout alone
  and the policy update alone (each jitted by itself) to show where the time goes.
* **baseline** (same process, same B and networks): what the local runtime does for one update:
  ``EpisodeRunner.unroll`` of B numba environments with one batched policy call per step and the
  actor's reward, then ``PolicyLearner.update`` and one ``DiscriminatorLearner.train_step``.
  The ratio fused / baseline is the speed-up of fusing on this device. Both start with a full
  replay, so every timed step includes its discriminator update (a long run's steady state).

On a GPU (H100/H200) the goal is >= 200k agent steps/s with the full-size network; without one
the GPU rows print "not measured: no GPU here". ``--mnist-minutes M`` (GPU only unless
``--allow-cpu-run``) also trains unconditional MNIST with the fused runtime for M minutes and
evaluates the final checkpoint with ``spiral.evaluation`` (metrics.json, samples.png).

  python benchmarks/fused_throughput.py                       # CPU: tiny + full rows, ~15 min
  python benchmarks/fused_throughput.py --networks full --batch-sizes 256 1024 4096 --breakdown
  python benchmarks/fused_throughput.py --skip-throughput --mnist-minutes 10 --run-dir runs/fused-mnist
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

import results_md

REPO = pathlib.Path(__file__).resolve().parents[1]
GOAL_STEPS_PER_S = 200_000


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--networks", nargs="+", default=["tiny", "full"], choices=["tiny", "small", "full"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: CPU tiny 4 16 64, full 4 16; GPU 64 256 1024 4096")
    p.add_argument("--episode-length", type=int, default=20)
    p.add_argument("--steps", type=int, default=0, help="timed steps per row (0: 3 on CPU, 20 on GPU)")
    p.add_argument("--breakdown", action="store_true", help="also time the rollout and the update alone")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--dataset-limit", type=int, default=4096)
    p.add_argument("--mnist-minutes", type=float, default=0.0,
                   help="also train unconditional MNIST for this long and evaluate it")
    p.add_argument("--mnist-batch-size", type=int, default=256)
    p.add_argument("--run-dir", default="", help="where the MNIST run goes (default: a temp folder)")
    p.add_argument("--write-results", action="store_true",
                   help="replace the fused_throughput section of benchmarks/RESULTS.md with this table")
    p.add_argument("--allow-cpu-run", action="store_true", help="run --mnist-minutes without a GPU")
    return p.parse_args()


def device_name() -> str:
    import jax
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({results_md.cpu_name()}, {os.cpu_count()} cores)"
    return f"{device.device_kind} ({device.platform}) x{len(jax.devices())}"


def make_config(network: str, batch_size: int, episode_length: int, dataset_limit: int,
                runtime: str = "fused", **overrides):
    from spiral.launch import flags as launch_flags
    values = launch_flags.default_values(
        "mnist", runtime=runtime, network=network, disc_network=network, batch_size=batch_size,
        envs_per_actor=batch_size, episode_length=episode_length, dataset_limit=dataset_limit,
        max_updates=1, run_dir=tempfile.mkdtemp(prefix="fused_bench_"), logdir="",
        checkpoint_dir="", disc_updates_per_policy_update=1.0)
    values.update(overrides)
    return launch_flags.config_from_values(values)


def _median_seconds(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fused_row(config, steps: int, breakdown: bool, data=None) -> dict:
    """``data``: a ``fused.FusedData`` (default: the run's dataset, ``fused.load_data``)."""
    import jax
    import jax.numpy as jnp
    from spiral.actors import fused
    from spiral.discriminator import learning as disc_learning
    parts = fused.make_parts(config)
    data = jax.tree.map(jnp.asarray, fused.load_data(config) if data is None else data)
    state = parts.init_state(data)
    # Steady state: a full replay, so every step has its discriminator update (as in a long run).
    capacity = config.discriminator.replay_capacity
    state = state._replace(replay=fused.replay_add(
        state.replay, jnp.resize(data.real, (capacity,) + data.real.shape[1:])))
    step = fused.make_fused_step(config)
    counter = iter(range(10 ** 9))

    def run():
        nonlocal state
        state, metrics = step(state, fused.step_key(0, next(counter)))
        jax.block_until_ready(metrics["total_loss"])

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    run()  # the replay fills; discriminator updates start
    row = {"compile_s": compile_s, "step_s": _median_seconds(run, steps)}
    if breakdown:
        weights = disc_learning.scoring_weights(state.disc)
        batch = config.runtime.batch_size
        rollout = jax.jit(lambda p, k: parts.rollout(p, 0, weights, None, k, batch))
        out = rollout(state.policy.params, jax.random.PRNGKey(1))
        jax.block_until_ready(out)
        row["rollout_s"] = _median_seconds(lambda: jax.block_until_ready(
            rollout(state.policy.params, jax.random.PRNGKey(2))), steps)
        update = jax.jit(parts.policy_update)
        jax.block_until_ready(update(state.policy, out.trajectory))
        row["update_s"] = _median_seconds(lambda: jax.block_until_ready(
            update(state.policy, out.trajectory)), steps)
        disc = jax.jit(lambda d, r, k: parts.disc_train(d, r, data, k, 1))
        jax.block_until_ready(disc(state.disc, state.replay, jax.random.PRNGKey(3)))
        row["disc_s"] = _median_seconds(lambda: jax.block_until_ready(
            disc(state.disc, state.replay, jax.random.PRNGKey(4))), steps)
    del state
    return row


def baseline_row(config, steps: int) -> dict:
    """The local runtime's work for one update, in this process (no queue, no workers)."""
    import jax
    from spiral.actors.acting import EpisodeRunner
    from spiral.actors.runtime import load_run_data
    from spiral.discriminator import DiscriminatorLearner, Replay
    from spiral.learner import PolicyLearner
    runner = EpisodeRunner(config, actor_index=0)
    learner = PolicyLearner(config.agent, config.policy, seed=0)
    disc = DiscriminatorLearner(config.discriminator, seed=0)
    replay = Replay.from_config(config.discriminator)
    real = load_run_data(config).images
    replay.add(np.resize(real, (replay.capacity,) + real.shape[1:]))   # steady state, as fused_row

    def run():
        version, weights = disc.publish()
        result = runner.unroll(jax.device_get(learner.params), learner.step, weights, version)
        replay.add(result.final_canvases)
        learner.update(result.trajectory)
        jax.block_until_ready(disc.train_step(replay, real)["loss"])

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    run()
    return {"compile_s": compile_s, "step_s": _median_seconds(run, steps)}


def throughput_table(args, on_gpu: bool) -> list[str]:
    rows = ["| network | B | fused agent steps/s | s/step | compile s | baseline steps/s | "
            "fused / baseline | rollout s | update s | D update s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(rows), flush=True)
    steps = args.steps or (20 if on_gpu else 3)
    t = args.episode_length - 1
    for network in args.networks:
        batches = args.batch_sizes or ([64, 256, 1024, 4096] if on_gpu
                                       else ([4, 16, 64] if network == "tiny" else [4, 16]))
        for batch in batches:
            config = make_config(network, batch, args.episode_length, args.dataset_limit)
            try:
                fused = fused_row(config, steps, args.breakdown)
            except Exception as e:  # pylint: disable=broad-except  (e.g. out of device memory)
                line = f"| {network} | {batch} | failed: {type(e).__name__}: {str(e)[:80]} ||||||||"
                print(line, flush=True)
                rows.append(line)
                continue
            rate = batch * t / fused["step_s"]
            base_rate, ratio = "", ""
            if not args.skip_baseline:
                base = baseline_row(make_config(network, batch, args.episode_length,
                                                args.dataset_limit, runtime="local"), steps)
                base_rate = f"{batch * t / base['step_s']:,.0f}"
                ratio = f"{base['step_s'] / fused['step_s']:.2f}x"
            line = (f"| {network} | {batch} | {rate:,.0f} | {fused['step_s']:.3f} | "
                    f"{fused['compile_s']:.0f} | {base_rate} | {ratio} | "
                    + " | ".join(f"{fused[k]:.3f}" if k in fused else ""
                                 for k in ("rollout_s", "update_s", "disc_s")) + " |")
            print(line, flush=True)
            rows.append(line)
    return rows


def mnist_run(args) -> None:
    """A fixed-time unconditional MNIST run with the fused runtime, evaluated like any checkpoint."""
    from spiral.actors import run_loop
    from spiral.evaluation.report import evaluate_checkpoint
    from spiral.launch import flags as launch_flags
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="fused_mnist_")
    values = launch_flags.default_values(
        "mnist", runtime="fused", batch_size=args.mnist_batch_size, max_updates=0,
        max_minutes=args.mnist_minutes, run_dir=run_dir, checkpoint_every_minutes=max(
            1.0, args.mnist_minutes / 5), log_every_seconds=15)
    config = launch_flags.config_from_values(values)
    print(launch_flags.describe(config), flush=True)
    result = run_loop.train(config)
    counters = result["counters"]
    print(f"trained {counters['updates']} updates, {counters['agent_steps']:,} agent steps in "
          f"{counters['elapsed_s']:.0f} s ({counters['agent_steps'] / max(counters['elapsed_s'], 1e-9):,.0f} "
          f"agent steps/s including compile and checkpoints)", flush=True)
    report = evaluate_checkpoint(result["checkpoint"], os.path.join(run_dir, "eval"))
    print(f"evaluation: {os.path.join(run_dir, 'eval')} (samples.png, metrics.json): "
          f"{report['metrics']}", flush=True)


def main():
    args = parse_args()
    import jax
    on_gpu = jax.default_backend() != "cpu"
    lines = [f"fused_throughput on {device_name()}; jax {jax.__version__}; "
             f"{datetime.date.today().isoformat()}; goal on one H100/H200: >= {GOAL_STEPS_PER_S:,} "
             f"agent steps/s, full network"]
    if not on_gpu:
        lines.append("GPU rows: not measured: no GPU here")
    print("\n".join(lines), flush=True)
    if not args.skip_throughput:
        lines += [""] + throughput_table(args, on_gpu)
    if args.mnist_minutes:
        if on_gpu or args.allow_cpu_run:
            mnist_run(args)
        else:
            print("MNIST fixed-time run: not measured: no GPU here (--allow-cpu-run forces it)",
                  flush=True)
    try:
        lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."]
        print(lines[-1], flush=True)
    except OSError:
        pass
    if args.write_results and not args.skip_throughput:
        command = "python benchmarks/fused_throughput.py " + " ".join(sys.argv[1:])
        results_md.write_section("fused_throughput", "\n".join(lines + [f"Command: `{command.strip()}`"]))


if __name__ == "__main__":
    main()
