"""Soak: a long Ray training run that samples the resident memory (RSS) of every process.

    python benchmarks/soak.py --minutes 30 [--write-results]

Trains README's CPU demo (small networks, one actor of 8 environments, batches of 16, MNIST) on
a local Ray through the launcher's path (``run_loop.train`` with the evaluation at every
checkpoint), and every ``--every`` seconds records the RSS of this process (the driver) and of
each process it started: the Ray workers by role (``ray::ActorWorker``, ``ray::PolicyLearnerWorker``,
``ray::DiscriminatorWorker``, ``ray::ParameterServer``), ``raylet``, ``gcs_server`` and Ray's
other helpers, plus the object store's use. It prints, per role, the RSS after the warm-up, at
half time and at the end, and the growth rate over each half: memory that levels off grows much
more slowly in the second half than in the first. ``--out`` keeps every sample as CSV.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import os
import re
import sys
import tempfile
import threading
import time

import psutil

import results_md

ROLES = ("driver", "ActorWorker", "PolicyLearnerWorker", "DiscriminatorWorker", "ParameterServer",
         "raylet", "gcs_server", "other ray")


def role_of(process: psutil.Process, driver_pid: int) -> str:
    if process.pid == driver_pid:
        return "driver"
    try:
        cmdline = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return "gone"
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0][len("ray::"):].split(".")[0]
        return title if title in ROLES else "other ray"
    for role in ("raylet", "gcs_server"):
        if role in name or role in cmdline.split(" ")[0]:
            return role
    return "other ray"


def sample(driver: psutil.Process) -> list[tuple[int, str, float]]:
    """(pid, role, RSS MiB) of the driver and every process it started, now."""
    rows = []
    for process in [driver] + driver.children(recursive=True):
        try:
            rss = process.memory_info().rss / 2 ** 20
        except psutil.Error:
            continue
        role = role_of(process, driver.pid)
        if role != "gone":
            rows.append((process.pid, role, rss))
    return rows


def object_store_mib() -> float:
    from ray._private import internal_api  # pylint: disable=import-outside-toplevel
    try:
        text = internal_api.memory_summary(stats_only=True)
    except Exception:  # pylint: disable=broad-except
        return float("nan")
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    return float(used.group(1)) if used else float("nan")


class Sampler(threading.Thread):
    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples = []        # (minutes, pid, role, rss MiB)
        self.store = []          # (minutes, object store MiB)
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self):
        driver = psutil.Process(os.getpid())
        while not self.stop.wait(self.every_s):
            minutes = (time.monotonic() - self.start_time) / 60
            self.samples += [(minutes, pid, role, rss) for pid, role, rss in sample(driver)]
            self.store.append((minutes, object_store_mib()))


def role_series(samples, role: str) -> list[tuple[float, float]]:
    """(minutes, RSS) of a role: the sum over its processes at each sample time, except actors
    (the largest: each actor is one process of the same work)."""
    by_time = collections.defaultdict(list)
    for minutes, _, r, rss in samples:
        if r == role:
            by_time[minutes].append(rss)
    combine = max if role == "ActorWorker" else sum
    return sorted((t, combine(v)) for t, v in by_time.items())


def at(series, minutes: float) -> tuple[float, float]:
    """The sample nearest ``minutes``."""
    return min(series, key=lambda p: abs(p[0] - minutes))


def summarise(samples, store, warmup: float) -> list[dict]:
    rows = []
    end = max(t for t, *_ in samples)
    middle = (warmup + end) / 2
    for role in ROLES:
        series = [p for p in role_series(samples, role) if p[0] >= warmup]
        if len(series) < 3:
            continue
        (t0, a), (t1, b), (t2, c) = at(series, warmup), at(series, middle), at(series, end)
        rows.append({"role": role, "warm": a, "middle": b, "end": c,
                     "first_half": (b - a) / max(t1 - t0, 1e-9),
                     "second_half": (c - b) / max(t2 - t1, 1e-9),
                     "peak": max(v for _, v in series)})
    return rows


def table(rows, store, minutes: float, warmup: float, updates: int) -> str:
    lines = [f"| process | RSS at {warmup:g} min (MiB) | at {((warmup + minutes) / 2):.0f} min | "
             f"at {minutes:.0f} min | growth, first half (MiB/min) | second half (MiB/min) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['role']} | {r['warm']:.0f} | {r['middle']:.0f} | {r['end']:.0f} | "
                     f"{r['first_half']:+.2f} | {r['second_half']:+.2f} |")
    finite = [v for _, v in store if v == v]
    if finite:
        lines.append(f"\nObject store: peak {max(finite):.0f} MiB, at the end {finite[-1]:.0f} MiB; "
                     f"{updates:,} policy updates in the run.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the training run")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes left out of the rates")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", default=None, help="CSV of every sample (default: a temp file)")
    parser.add_argument("--write-results", action="store_true", help="update RESULTS.md")
    args = parser.parse_args()

    import ray  # pylint: disable=import-outside-toplevel
    from spiral.actors import run_loop  # pylint: disable=import-outside-toplevel
    from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
    from spiral.launch import flags as launch_flags  # pylint: disable=import-outside-toplevel
    run_dir = tempfile.mkdtemp(prefix="spiral_soak_")
    values = launch_flags.default_values(
        "mnist", network="small", disc_network="small", num_actors=1, envs_per_actor=8,
        batch_size=16, disc_batch_size=16, max_updates=0, max_minutes=args.minutes,
        checkpoint_every_minutes=5.0, run_dir=run_dir, log_every_seconds=60.0)
    config = launch_flags.config_from_values(values)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    sampler = Sampler(args.every)
    sampler.start()
    try:
        result = run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    finally:
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
    out = args.out or os.path.join(run_dir, "soak.csv")
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["minutes", "pid", "role", "rss_mib"])
        writer.writerows((f"{t:.3f}", pid, role, f"{rss:.1f}") for t, pid, role, rss in sampler.samples)
    minutes = max(t for t, *_ in sampler.samples)
    rows = summarise(sampler.samples, sampler.store, args.warmup)
    text = table(rows, sampler.store, minutes, args.warmup, result["counters"]["updates"])
    print(text)
    print(f"samples: {out}")
    if args.write_results:
        load = os.getloadavg()
        body = (f"Machine: {results_md.machine()}; {datetime.date.today()}; load average at the "
                f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine).\n"
                f"Command: `python benchmarks/soak.py {' '.join(sys.argv[1:])}` (README's CPU demo "
                f"on a local Ray: small networks, 1 actor × 8 environments, batch 16).\n\n{text}")
        results_md.write_section("soak", body)


if __name__ == "__main__":
    main()
