"""System throughput: whole training runs' agent steps/s against a bare loop of the actors' work.

For each runtime (``--runtimes ray,local``) and actor count N, one command measures, in order:
  * bare: one process (single-threaded XLA, as a Ray actor gets) running ``EpisodeRunner.unroll``
    in a loop — environments, batched policy inference and rewards, nothing else — steps/s;
  * system: ``run_loop.train`` on a local Ray with N actors, the policy learner and the
    discriminator learner, for a fixed time; the actors' steps/s over the last 30 s, the learner's,
    the policy lag, the queue wait fractions and the object store's peak use and spilling. The
    local runtime (``--runtimes local``) runs the same workers in this one process, in turn.
  * runtime only (``--modes train,drain``): the same Ray run, but the policy learner only receives
    each batch (every trajectory crosses into its process, as for an update) and publishes a new
    parameter version (one ``ray.put`` each, as usual), and the discriminator learner does not
    train. This is the runtime's own cost: actors, queue, object store, parameter pulls, replay feed.
The ratio system / (N × bare) is what the runtime keeps of the bare loop's throughput. On a
machine with few cores the learners compete with the actors for CPU: the table says how many
cores there were, and the "actors wait" column shows when the learner, not the runtime, limits.

  python benchmarks/system_throughput.py --actors 1,2 --seconds 120 --modes train,drain [--write-results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

import results_md

REPO = pathlib.Path(__file__).resolve().parents[1]
MODE_LABELS = {"train": "training", "drain": "drained (runtime only)"}


def _values(args, run_dir: str, runtime: str, actors: int, minutes: float) -> dict:
    from spiral.launch import flags as launch_flags
    return launch_flags.default_values(
        "mnist", runtime=runtime, num_actors=actors, network=args.network,
        disc_network=args.disc_network, episode_length=args.episode_length,
        envs_per_actor=args.envs_per_actor,
        batch_size=args.batch_size or args.envs_per_actor * max(1, actors),
        disc_batch_size=32, replay_batches=8, dataset_limit=2048, max_updates=0,
        max_minutes=minutes, ray_num_cpus=max(os.cpu_count() or 1, actors + 1),
        actor_narrow_convs=args.actor_narrow_convs,
        disc_updates_per_policy_update=args.disc_updates, log_every_seconds=10, run_dir=run_dir)


def bare_loop(args) -> float:
    """Child process: the actors' work alone, steps/s."""
    import jax
    from spiral.actors.acting import EpisodeRunner
    from spiral.discriminator import DiscriminatorLearner
    from spiral.launch import flags as launch_flags
    from spiral.learner import Agent
    config = launch_flags.config_from_values(_values(args, tempfile.mkdtemp(), "local", 1, 1))
    runner = EpisodeRunner(config, actor_index=0)
    params = jax.device_put(Agent(config.agent).init(jax.random.PRNGKey(0)))
    version, weights = DiscriminatorLearner(config.discriminator).publish()
    for _ in range(3):  # compile and warm up
        runner.unroll(params, 0, weights, version)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.bare_seconds:
        steps += runner.unroll(params, 0, weights, version).metadata["agent_steps"]
    return steps / (time.perf_counter() - start)


def _object_store_sampler(stop: threading.Event, out: dict):
    from ray._private import internal_api
    while not stop.wait(2.0):
        try:
            text = internal_api.memory_summary(stats_only=True)
        except Exception:  # pylint: disable=broad-except
            continue
        used = re.search(r"Plasma memory usage (\d+) MiB", text)
        if used:
            out["peak_mib"] = max(out.get("peak_mib", 0), int(used.group(1)))
        if re.search(r"Spilled (\d+) MiB", text):
            out["spilled"] = True


def draining_learner_class():
    """A PolicyLearnerWorker that takes each batch and publishes a new version without learning."""
    import jax
    from spiral.actors.workers import POLICY, PolicyLearnerWorker, concat_trajectories

    class DrainingPolicyLearner(PolicyLearnerWorker):
        def __init__(self, *args):
            self._drained = 0  # set first: the base constructor publishes version 0
            super().__init__(*args)

        def publish(self) -> int:  # as the base class, with the drained count as the version
            params = jax.device_get(self.learner.params)
            self._params.publish.remote(POLICY, self._drained, [self._backend.put(params)])
            return self._drained

        def update(self, *trajectories) -> dict:
            batch = concat_trajectories(trajectories)  # the trajectories are fetched here
            self._drained += 1
            self.publish()
            return {"version": float(self._drained), "batch_episodes": float(batch.reward.shape[0])}

    return DrainingPolicyLearner


def system_run(args, runtime: str, actors: int, mode: str) -> dict:
    import functools
    import ray
    from spiral.actors import run_loop
    from spiral.actors.driver import DistributedRuntime
    from spiral.actors.workers import PolicyLearnerWorker
    from spiral.launch import flags as launch_flags
    run_dir = tempfile.mkdtemp(prefix="spiral_system_")
    values = _values(args, run_dir, runtime, actors, args.seconds / 60)
    if mode == "drain":
        values["disc_updates_per_policy_update"] = 0.0
    config = launch_flags.config_from_values(values)
    learner_class = draining_learner_class() if mode == "drain" else PolicyLearnerWorker
    store, stop = {"peak_mib": 0, "spilled": False}, threading.Event()
    if runtime == "ray":
        ray.init(num_cpus=config.runtime.ray_num_cpus, include_dashboard=False, log_to_driver=False)
        sampler = threading.Thread(target=_object_store_sampler, args=(stop, store), daemon=True)
        sampler.start()
    try:
        result = run_loop.train(config, make_runtime=functools.partial(
            DistributedRuntime, policy_learner_worker=learner_class))
    finally:
        stop.set()
        if runtime == "ray":
            sampler.join()
            ray.shutdown()
    p = result["progress"]
    lags = result["queue"]["lags"]
    return {"runtime": runtime, "mode": mode, "actors": actors,
            "actor_steps_per_s": p["actor_steps_per_s"],
            "learner_steps_per_s": p["learner_steps_per_s"],
            "lag_mean": sum(lags) / max(len(lags), 1), "lag_max": max(lags or [0]),
            "learner_wait": p["consumer_wait_frac"], "actors_wait": p["producer_wait_frac"],
            "updates": result["counters"]["updates"], "store_peak_mib": store["peak_mib"],
            "spilled": store["spilled"], "dropped": result["counters"]["unrolls_dropped_stale"],
            "store": runtime == "ray"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    parser.add_argument("--seconds", type=float, default=120, help="system run length (compile included)")
    parser.add_argument("--bare-seconds", type=float, default=30)
    parser.add_argument("--network", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--disc-network", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--episode-length", type=int, default=20)
    parser.add_argument("--envs-per-actor", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="episodes per policy update (0: envs per actor × actors)")
    parser.add_argument("--disc-updates", type=float, default=1.0,
                        help="discriminator updates per policy update")
    parser.add_argument("--actor-narrow-convs", default="direct", choices=["direct", "taps"])
    parser.add_argument("--runtimes", default="ray", help="ray and/or local, comma-separated")
    parser.add_argument("--modes", default="train,drain",
                        help="train (the whole system learning) and/or drain (the runtime alone)")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"bare_steps_per_s": bare_loop(args)}))
        return
    os.environ.setdefault("SPIRAL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    from spiral.actors.workers import SINGLE_THREAD_ENV
    child = subprocess.run([sys.executable, __file__, "--child"] + sys.argv[1:],
                           env=dict(os.environ, **SINGLE_THREAD_ENV), capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(child.stderr[-3000:])
    bare = json.loads(child.stdout.strip().splitlines()[-1])["bare_steps_per_s"]
    modes = args.modes.split(",")
    if set(modes) - {"train", "drain"}:
        raise SystemExit(f"--modes: {args.modes!r}; give train, drain or train,drain.")
    rows = [system_run(args, runtime, 1 if runtime == "local" else int(n), mode)
            for runtime in args.runtimes.split(",") for mode in modes
            for n in (["1"] if runtime == "local" else args.actors.split(","))]

    cpu = results_md.cpu_name()
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} cores; {datetime.date.today()}; network {args.network}, "
        f"discriminator {args.disc_network}, {args.envs_per_actor} envs/actor, episode "
        f"{args.episode_length}, batch {args.batch_size or 'envs × actors'}, "
        f"{args.disc_updates:g} D updates per policy update, actors' narrow convs "
        f"{args.actor_narrow_convs}; system runs of {args.seconds:.0f} s (rates over the last 30 s); "
        f"load average at the end {os.getloadavg()[0]:.1f}.",
        f"Bare loop (one process, single-threaded XLA): {bare:,.0f} agent steps/s.",
        "",
        "| runtime | learners | actors | system actor steps/s | vs N × bare | learner steps/s | "
        "lag mean / max | learner waits | actors wait | dropped | object store peak | spilled |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {MODE_LABELS[r['mode']]} | {r['actors']} | "
            f"{r['actor_steps_per_s']:,.0f} | "
            f"{r['actor_steps_per_s'] / (r['actors'] * bare):.0%} | {r['learner_steps_per_s']:,.0f} | "
            f"{r['lag_mean']:.1f} / {r['lag_max']:.0f} | {r['learner_wait']:.0%} | "
            f"{r['actors_wait']:.0%} | {r['dropped']} | "
            + (f"{r['store_peak_mib']} MiB | {'yes' if r['spilled'] else 'no'} |" if r["store"]
               else "— | — |"))
    lines.append("")
    lines.append("Command: `python benchmarks/system_throughput.py " + " ".join(sys.argv[1:]) + "`")
    table = "\n".join(lines)
    print(table)
    if args.write_results:
        results_md.write_section("system_throughput", table)


if __name__ == "__main__":
    main()
