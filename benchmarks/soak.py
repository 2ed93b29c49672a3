"""Soak: a long Ray training run that samples the resident memory (RSS) of every process.

    python benchmarks/soak.py --minutes 30 [--write-results]

Trains README's CPU demo (small networks, one actor of 8 environments, batches of 16, MNIST) on
a local Ray through the launcher's path (``run_loop.train`` with the evaluation at every
checkpoint), and every ``--every`` seconds records the RSS of this process (the driver) and of
each process it started: the Ray workers by role (``ray::ActorWorker``, ``ray::PolicyLearnerWorker``,
``ray::DiscriminatorWorker``, ``ray::ParameterServer``), ``raylet``, ``gcs_server`` and Ray's
other helpers, plus the object store's use. It prints, per role, the RSS after the warm-up, at
half time and at the end, and the growth rate over each half: memory that levels off grows much
more slowly in the second half than in the first. RSS counts the shared object-store pages a
process has touched; USS (its unique pages) is its own memory, and is shown beside it.
``--out`` keeps every sample as CSV.
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

STORE = "object store"   # the CSV's rows of the store: live objects (RSS column), footprint (USS)
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


def sample(driver: psutil.Process) -> list[tuple[int, str, float, float]]:
    """(pid, role, RSS MiB, USS MiB) of the driver and every process it started, now."""
    rows = []
    for process in [driver] + driver.children(recursive=True):
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        role = role_of(process, driver.pid)
        if role != "gone":
            rows.append((process.pid, role, info.rss / 2 ** 20, info.uss / 2 ** 20))
    return rows


def object_store_mib(driver: psutil.Process) -> tuple[float, float]:
    """(MiB the live objects take, MiB of memory the store's shared file holds): Ray's "Plasma
    memory usage", and the allocated size of the raylet's /dev/shm plasma file (the store's
    physical footprint: what its processes' RSS can grow to, shared between them)."""
    from ray._private import internal_api  # pylint: disable=import-outside-toplevel
    live = footprint = float("nan")
    try:
        used = re.search(r"Plasma memory usage (\d+) MiB", internal_api.memory_summary(stats_only=True))
        live = float(used.group(1)) if used else live
    except Exception:  # pylint: disable=broad-except
        pass
    for process in driver.children(recursive=True):
        try:
            if "raylet" not in process.name():
                continue
            for fd in os.listdir(f"/proc/{process.pid}/fd"):
                path = f"/proc/{process.pid}/fd/{fd}"
                if "plasma" in os.readlink(path):
                    footprint = os.stat(path).st_blocks * 512 / 2 ** 20
        except (OSError, psutil.Error):
            continue
    return live, footprint


class Sampler(threading.Thread):
    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples = []        # (minutes, pid, role, RSS MiB, USS MiB)
        self.store = []          # (minutes, live objects MiB, store footprint MiB)
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self):
        driver = psutil.Process(os.getpid())
        while not self.stop.wait(self.every_s):
            minutes = (time.monotonic() - self.start_time) / 60
            self.samples += [(minutes, *row) for row in sample(driver)]
            self.store.append((minutes, *object_store_mib(driver)))


def read_csv(path: str):
    """(samples, object store samples) of a CSV that ``--out`` wrote (USS NaN when absent)."""
    samples, store = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            t, rss = float(row["minutes"]), float(row["rss_mib"])
            if row["role"] == STORE:
                store.append((t, rss, float(row.get("uss_mib") or "nan")))
            else:
                samples.append((t, int(row["pid"]), row["role"], rss,
                                float(row.get("uss_mib") or "nan")))
    return samples, store


def role_series(samples, role: str, column: int = 3) -> list[tuple[float, float]]:
    """(minutes, RSS, or USS with column 4) of a role: the sum over its processes at each
    sample time, except actors (the largest: each actor is one process of the same work)."""
    by_time = collections.defaultdict(list)
    for row in samples:
        if row[2] == role:
            by_time[row[0]].append(row[column])
    combine = max if role == "ActorWorker" else sum
    return sorted((t, combine(v)) for t, v in by_time.items())


def at(series, minutes: float) -> tuple[float, float]:
    """The sample nearest ``minutes``."""
    return min(series, key=lambda p: abs(p[0] - minutes))


def growth(series, warmup: float, end: float) -> dict:
    """Values after the warm-up, at half time and at the end, and the growth over each half."""
    middle = (warmup + end) / 2
    (t0, a), (t1, b), (t2, c) = at(series, warmup), at(series, middle), at(series, end)
    return {"warm": a, "middle": b, "end": c, "first_half": (b - a) / max(t1 - t0, 1e-9),
            "second_half": (c - b) / max(t2 - t1, 1e-9)}


def summarise(samples, warmup: float) -> list[dict]:
    rows = []
    end = max(row[0] for row in samples)
    for role in ROLES:
        rss = [p for p in role_series(samples, role) if p[0] >= warmup]
        uss = [p for p in role_series(samples, role, column=4) if p[0] >= warmup]
        if len(rss) >= 3:
            rows.append({"role": role, "rss": growth(rss, warmup, end),
                         "uss": growth(uss, warmup, end)})
    return rows


def table(rows, store, minutes: float, warmup: float, updates: int) -> str:
    lines = [f"| process | RSS at {warmup:g} min (MiB) | at {((warmup + minutes) / 2):.0f} min | "
             f"at {minutes:.0f} min | RSS growth, 1st half (MiB/min) | 2nd half | USS at the end "
             f"(MiB) | USS growth, 1st half | 2nd half |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rss, uss = r["rss"], r["uss"]
        lines.append(f"| {r['role']} | {rss['warm']:.0f} | {rss['middle']:.0f} | {rss['end']:.0f} | "
                     f"{rss['first_half']:+.2f} | {rss['second_half']:+.2f} | {uss['end']:.0f} | "
                     f"{uss['first_half']:+.2f} | {uss['second_half']:+.2f} |")
    live = [(t, v) for t, v, _ in store if v == v]
    footprint = [(t, f) for t, _, f in store if f == f and t >= warmup]
    if live:
        lines.append(f"\nObject store: live objects peak {max(v for _, v in live):.0f} MiB, at the "
                     f"end {live[-1][1]:.0f} MiB.")
    if len(footprint) >= 3:
        g = growth(footprint, warmup, minutes)
        lines.append(f"Object store footprint (its shared memory file): {g['warm']:.0f} MiB at "
                     f"{warmup:g} min, {g['middle']:.0f} at half time, {g['end']:.0f} at the end; "
                     f"growth {g['first_half']:+.2f} then {g['second_half']:+.2f} MiB/min.")
    if updates:
        lines.append(f"{updates:,} policy updates in the run.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the training run")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes left out of the rates")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", default=None, help="CSV of every sample (default: a temp file)")
    parser.add_argument("--write-results", action="store_true", help="update RESULTS.md")
    parser.add_argument("--from-csv", default=None, help="summarise an earlier run's --out")
    args = parser.parse_args()
    if args.from_csv:
        samples, store = read_csv(args.from_csv)
        minutes = max(row[0] for row in samples)
        print(table(summarise(samples, args.warmup), store, minutes, args.warmup, 0))
        return

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
        writer.writerow(["minutes", "pid", "role", "rss_mib", "uss_mib"])
        writer.writerows((f"{t:.3f}", pid, role, f"{rss:.1f}", f"{uss:.1f}")
                         for t, pid, role, rss, uss in sampler.samples)
        writer.writerows((f"{t:.3f}", 0, STORE, f"{live:.1f}", f"{footprint:.1f}")
                         for t, live, footprint in sampler.store)
    minutes = max(row[0] for row in sampler.samples)
    rows = summarise(sampler.samples, args.warmup)
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
