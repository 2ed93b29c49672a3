"""Population-based training against independent runs: does PBT reach a better best member?

The conditional MNIST task of ``learning_curve.py`` (its ``l2`` task: the L2 reward, at its CPU
size, with the launch flags' recipe) trained by two arms with the same total frames:

* ``pbt``: a population of ``--members`` (``--population_size``) with a PBT round every
  ``--ready_every_updates`` updates of each member;
* ``independent``: the same population without PBT rounds (``--pbt_ready_every_updates=0``):
  the same members, seeds and initial hyperparameters (drawn from SPIRAL's ranges), trained side
  by side without ever copying each other. With the L2 reward there is no critic to share, so
  these are exactly ``--members`` independent runs (a random search of that size).

Every member is scored at every checkpoint by the evaluation hook on the same 64 held-out test
digits (``<arm>/<member>/checkpoints/eval_log.jsonl``). The script writes, under ``--out``:
each arm's run folder, ``pbt.csv`` (every member's checkpoints), ``pbt_<arm>.png`` (each
member's held-out L2 against its frames), ``pbt_best.png`` (each arm's best member at every
checkpoint) and prints one Markdown table (``--write_results`` puts it in RESULTS.md). "Frames"
are agent steps, the arm's total (all members); "CPU s" is the arm's process CPU time.

Usage (CPU; both arms at once, one process each)::

    python benchmarks/pbt.py --arms pbt --frames 400000 --flag entropy_weights=flag:100 &
    python benchmarks/pbt.py --arms independent --frames 400000 --flag entropy_weights=flag:100
    python benchmarks/pbt.py --plot_only --write_results --frames 400000 --flag ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import learning_curve
import results_md

ARMS = ("pbt", "independent")
TASK = "l2"
METRIC = "l2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--ready_every_updates", type=int, default=100,
                   help="PBT round period of the pbt arm (updates of each member)")
    p.add_argument("--frames", type=int, default=400000, help="agent steps per arm, all members")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every_minutes", type=float, default=10.0)
    p.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="override a launch flag in both arms (repeatable)")
    p.add_argument("--out", default="runs/pbt", help="run folders, CSV and PNGs go here")
    p.add_argument("--plot_only", action="store_true", help="summarise the runs already in --out")
    p.add_argument("--write_results", action="store_true", help="replace the RESULTS.md section")
    args = p.parse_args(argv)
    if args.members < 2 or args.frames <= 0 or args.ready_every_updates < 1:
        p.error("--members must be >= 2, --frames and --ready_every_updates > 0.")
    return args


def arm_config(args, arm: str):
    """The arm's ExperimentConfig: flag defaults, the CPU size and task of learning_curve.py,
    the overrides, the population."""
    from spiral.launch import flags as launch_flags  # pylint: disable=import-outside-toplevel
    defaults = launch_flags.default_values("mnist")
    values = dict(learning_curve.CPU_SIZE, **learning_curve.TASKS[TASK]["flags"])
    values.update(learning_curve.parse_override(text, defaults) for text in args.flag)
    steps_per_update = values["batch_size"] * (values["episode_length"] - 1)
    values.update(
        population_size=args.members,
        pbt_ready_every_updates=args.ready_every_updates if arm == "pbt" else 0,
        max_updates=math.ceil(args.frames / args.members / steps_per_update), max_minutes=0.0,
        seed=args.seed, run_dir=os.path.join(args.out, arm),
        checkpoint_every_minutes=args.checkpoint_every_minutes, log_every_seconds=60.0,
        image_every_updates=10 ** 9)
    return launch_flags.config_from_values(launch_flags.default_values("mnist", **values))


def train(config) -> float:
    """Trains one arm to its budget; returns its process CPU seconds (also kept in its folder)."""
    from spiral.actors import run_loop  # pylint: disable=import-outside-toplevel
    from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
    if os.path.exists(config.runtime.run_dir):
        raise SystemExit(f"error: {config.runtime.run_dir} exists; use a new --out (or --plot_only).")
    cpu = time.process_time()
    run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    cpu = time.process_time() - cpu
    with open(os.path.join(config.runtime.run_dir, "cpu_seconds.json"), "w") as f:
        json.dump({"cpu_seconds": cpu}, f)
    return cpu


def read_arm(config) -> dict:
    """{member: its evaluation rows} of an arm's run folder."""
    from spiral.actors.population import member_names  # pylint: disable=import-outside-toplevel
    return {name: learning_curve.read_curve(os.path.join(config.runtime.run_dir, name, "checkpoints"))
            for name in member_names(config.population.size)}


def best_curve(curves: dict) -> list[dict]:
    """The best member's metric at each checkpoint (members are checkpointed together)."""
    rows = []
    for points in zip(*curves.values()):
        best = min(points, key=lambda r: r[METRIC])
        rows.append(dict(best, frames=sum(r["frames"] for r in points)))
    return rows


def summarise(arm: str, config, curves: dict) -> dict:
    run_dir = config.runtime.run_dir
    finals = {name: rows[-1][METRIC] for name, rows in curves.items()}
    best = min(finals, key=finals.get)
    last = curves[best][-1]
    lineage = os.path.join(run_dir, "lineage.jsonl")
    exploits = sum(1 for _ in open(lineage)) if os.path.isfile(lineage) else 0
    cpu = float("nan")
    if os.path.isfile(os.path.join(run_dir, "cpu_seconds.json")):
        with open(os.path.join(run_dir, "cpu_seconds.json")) as f:
            cpu = json.load(f)["cpu_seconds"]
    with open(os.path.join(run_dir, "population_eval.jsonl")) as f:
        hyper = [json.loads(line) for line in f][-1]["hyperparams"][best]
    return dict(arm=arm, frames=sum(rows[-1]["frames"] for rows in curves.values()), cpu_s=cpu,
                finals=finals, best_member=best, best_final=finals[best],
                mean_final=sum(finals.values()) / len(finals),
                best_ever=min(r[METRIC] for rows in curves.values() for r in rows),
                blank=last[f"blank_{METRIC}"], random=last[f"random_{METRIC}"], exploits=exploits,
                best_learning_rate=hyper["learning_rate"], best_entropy_cost=hyper["entropy_cost"])


def table(summaries: list[dict]) -> str:
    lines = ["| arm | frames (all members) | CPU s | PBT exploits | each member's final L2 | best member: final L2 | its lr / entropy cost | mean final L2 | best L2 at any checkpoint | blank | random |",
             "|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    for s in summaries:
        finals = ", ".join(f"{v:.1f}" for v in s["finals"].values())
        lines.append(f"| {s['arm']} | {s['frames']:,} | {s['cpu_s']:.0f} | {s['exploits']} | {finals} "
                     f"| {s['best_final']:.1f} ({s['best_member']}) | {s['best_learning_rate']:.2g} / "
                     f"{s['best_entropy_cost']:.2g} | {s['mean_final']:.1f} | {s['best_ever']:.1f} "
                     f"| {s['blank']:.1f} | {s['random']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summaries, pictures, csv_rows, best = [], [], [], {}
    for arm in args.arms:
        config = arm_config(args, arm)
        if not args.plot_only:
            print(f"=== {arm}: {args.members} members x {config.runtime.max_updates} updates", flush=True)
            train(config)
        curves = read_arm(config)
        summaries.append(summarise(arm, config, curves))
        csv_rows += [dict(arm=arm, member=name, **r) for name, rows in curves.items() for r in rows]
        best[arm] = best_curve(curves)
        references = {f"{ref} ": summaries[-1][ref] for ref in ("blank", "random")}
        pictures.append(learning_curve.plot_curves(
            curves, METRIC, references, os.path.join(args.out, f"pbt_{arm}.png"),
            f"{arm}: {args.members} members, {args.frames:,} frames in all, tiny nets, CPU",
            "held-out L2 (frames: the member's)"))
    if len(best) > 1:
        pictures.append(learning_curve.plot_curves(
            best, METRIC, references, os.path.join(args.out, "pbt_best.png"),
            f"best member at each checkpoint: PBT vs independent, {args.members} members",
            "held-out L2 (frames: all members')"))
    csv_path = learning_curve.write_csv(os.path.join(args.out, "pbt.csv"), ["arm", "member"], csv_rows)
    load = os.getloadavg()[0]
    text = table(summaries)
    print(f"\nmachine: {results_md.machine()}; load average {load:.1f} at the end")
    print(text)
    print("wrote " + ", ".join([csv_path] + pictures))
    if args.write_results:
        overrides = "".join(f" --flag {o}" for o in args.flag)
        body = (f"Command: `python benchmarks/pbt.py --members {args.members} --ready_every_updates "
                f"{args.ready_every_updates} --frames {args.frames} --seed {args.seed}{overrides}` "
                f"(the arms ran as two processes at once). Machine: {results_md.machine()}, CPU "
                f"only, {time.strftime('%Y-%m-%d')}, load average {load:.1f} at the end.\n\n{text}\n")
        results_md.write_section("pbt", body)


if __name__ == "__main__":
    main()
