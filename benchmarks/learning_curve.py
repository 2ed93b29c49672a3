"""Learning curves on MNIST: held-out metrics against frames, over seeds, beside blank / random / real.

Three tasks, each trained with the launch flags' defaults (the recipe a user gets) at a CPU size
(tiny policy and critic, 16×16 stroke grid, short episodes, batch 16, the local runtime):

* ``l2``: conditional MNIST with the L2 reward (the baseline of SPIRAL's Fig. 8);
* ``disc_conditional``: conditional MNIST with the discriminator reward (SPIRAL's claim: a lower
  held-out L2 than the L2 reward itself, at the same frames);
* ``disc_unconditional``: unconditional MNIST with the discriminator reward, scored by this
  project's MNIST classifier (confidence, class entropy) and the Fréchet distance on its features.

Every checkpoint is scored by the evaluation hook on the same 64 held-out episodes
(``eval_log.jsonl``; conditional: the first 64 test digits as targets). The script writes, under
``--out``: ``<task>/seed<k>/`` (each run's folder), ``learning_curve.csv`` (every checkpoint of
every run), ``<task>.png`` (the task's metric against frames, one line per seed, with the
blank-canvas / random-policy / real-image references dashed), ``<task>_seed<k>_samples.png`` (the
16 evaluation canvases of every checkpoint, one row per checkpoint, from the run's TensorBoard
images; ``_final.png`` the last one alone), ``conditional.png`` (tasks (a) and (b) on one plot,
when both ran), and prints one Markdown table (``--write_results`` puts it in benchmarks/RESULTS.md).
"Frames" are agent steps. "CPU s" is the run's process CPU time (all threads): the local runtime
is one process, so it is the run's whole cost, steadier than wall time on a shared machine.

Usage (CPU)::

    python benchmarks/learning_curve.py --tasks l2 disc_conditional --seeds 0 1 --frames 300000
    python benchmarks/learning_curve.py --tasks disc_unconditional --seeds 0 1 --frames 2000000
    python benchmarks/learning_curve.py --plot_only ...        # redraw from the runs in --out

``--flag name=value`` overrides any launch flag for every run (e.g. ``--flag learning_rate=3e-4``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import results_md

# The CPU size every task runs at: tiny nets seeing a 32-wide observation (a quarter of the
# pixels: 4x cheaper updates, and the critic scores that same width), taps convolutions in the
# actor, a 10x larger policy learning rate than the paper's (tiny nets, batch 16: measured to
# learn faster, no instability seen). The recipe itself (rewards, value normalisation, entropy
# weights, critic loss) is the launch flags' defaults.
CPU_SIZE = dict(network="tiny", disc_network="tiny", grid_width=16, episode_length=6,
                observation_width=32, actor_narrow_convs="taps", learning_rate=1e-3,
                runtime="local", num_actors=1, envs_per_actor=16, batch_size=16)

TASKS = {
    "l2": dict(
        title="(a) conditional MNIST, L2 reward", flags=dict(conditional=True, reward="l2"),
        metric="l2", label="held-out L2", references=("blank", "random")),
    "disc_conditional": dict(
        title="(b) conditional MNIST, discriminator reward",
        flags=dict(conditional=True, reward="discriminator"),
        metric="l2", label="held-out L2", references=("blank", "random")),
    "disc_unconditional": dict(
        title="(c) unconditional MNIST, discriminator reward",
        flags=dict(conditional=False, reward="discriminator", episode_length=8),
        metric="frechet", label="Frechet distance (classifier features)",   # the plot's font lacks é
        references=("blank", "random", "real"),
        extra=("classifier_confidence", "class_entropy")),
}
SEED_COLORS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--frames", type=int, default=300000, help="agent steps per run")
    p.add_argument("--checkpoint_every_minutes", type=float, default=2.0)
    p.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="override a launch flag for every run (repeatable)")
    p.add_argument("--out", default="runs/learning_curve", help="run folders, CSV and PNGs go here")
    p.add_argument("--plot_only", action="store_true", help="redraw from the runs already in --out")
    p.add_argument("--write_results", action="store_true", help="replace the RESULTS.md section")
    args = p.parse_args(argv)
    if args.frames <= 0:
        p.error("--frames must be > 0.")
    return args


def parse_override(text: str, defaults: dict):
    """'name=value' -> (name, value typed like the flag's default)."""
    name, sep, value = text.partition("=")
    if not sep or name not in defaults:
        raise SystemExit(f"error: --flag takes NAME=VALUE with a launch flag's name, got {text!r}.")
    default = defaults[name]
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    if isinstance(default, list):
        return name, [v for v in value.split(",") if v]
    for kind in (int, float):
        if isinstance(default, kind):
            return name, kind(value)
    return name, value


def experiment_config(args, task: str, seed: int):
    """The run's ExperimentConfig: flag defaults, the CPU size, the task, the overrides."""
    from spiral.launch import flags as launch_flags  # pylint: disable=import-outside-toplevel
    defaults = launch_flags.default_values("mnist")
    overrides = dict(parse_override(text, defaults) for text in args.flag)
    values = dict(CPU_SIZE, **TASKS[task]["flags"])
    values.update(overrides)
    steps_per_update = values["batch_size"] * (values["episode_length"] - 1)
    values.update(max_updates=math.ceil(args.frames / steps_per_update), max_minutes=0.0, seed=seed,
                  run_dir=os.path.join(args.out, task, f"seed{seed}"),
                  checkpoint_every_minutes=args.checkpoint_every_minutes, log_every_seconds=60.0,
                  image_every_updates=10 ** 9)
    return launch_flags.config_from_values(launch_flags.default_values("mnist", **values))


def read_curve(checkpoint_dir: str) -> list[dict]:
    """One row per evaluated checkpoint: updates, frames, elapsed_s and every metric."""
    from spiral.evaluation import read_eval_log  # pylint: disable=import-outside-toplevel
    rows = []
    for record in read_eval_log(checkpoint_dir):
        if "metrics" not in record:
            raise RuntimeError(f"the evaluation at {record['updates']} updates in {checkpoint_dir} "
                               f"failed: {record.get('error')}")
        if rows and rows[-1]["updates"] == record["updates"]:
            rows.pop()   # the final save can repeat the last periodic one: keep one point
        rows.append(dict(updates=record["updates"], frames=record["agent_steps"],
                         elapsed_s=record["elapsed_s"], **record["metrics"]))
    return rows


def train(config) -> float:
    """Trains one run to its budget; returns its process CPU seconds."""
    from spiral.actors import run_loop  # pylint: disable=import-outside-toplevel
    from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
    if os.path.exists(config.runtime.checkpoint_dir):
        raise SystemExit(f"error: {config.runtime.checkpoint_dir} exists; use a new --out (or "
                         f"--plot_only to redraw it).")
    cpu = time.process_time()
    run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    cpu = time.process_time() - cpu
    with open(os.path.join(config.runtime.checkpoint_dir, "cpu_seconds.json"), "w") as f:
        json.dump({"cpu_seconds": cpu}, f)
    return cpu


def cpu_seconds(config) -> float:
    path = os.path.join(config.runtime.checkpoint_dir, "cpu_seconds.json")
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        return json.load(f)["cpu_seconds"]


# ------------------------------------------------------------------------------------- pictures

def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def plot_curves(curves: dict, metric: str, references: dict, path: str, title: str, ylabel: str,
                width: int = 900, height: int = 560) -> str:
    """Lines of (frames, metric) per seed, dashed reference lines, axes with ticks, a legend."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    left, right, top, bottom = 80, width - 30, 50, height - 70
    xs = [r["frames"] for rows in curves.values() for r in rows] or [0, 1]
    ys = [r[metric] for rows in curves.values() for r in rows] + list(references.values())
    xticks = nice_ticks(0, max(xs))
    yticks = nice_ticks(min(ys) * 0.95 if ys else 0, max(ys) * 1.02 if ys else 1)
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    for t in yticks:
        _, y = px(x0, t)
        draw.line([(left, y), (right, y)], fill=(228, 228, 228))
        draw.text((left - 8, y), _label(t), fill="black", font=small, anchor="rm")
    for t in xticks:
        x, _ = px(t, y0)
        draw.line([(x, top), (x, bottom)], fill=(238, 238, 238))
        draw.text((x, bottom + 8), _label(t), fill="black", font=small, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, height - 28), "frames (agent steps)", fill="black", font=font, anchor="ma")
    label = Image.new("RGB", (320, 24), "white")   # the y label, turned to read bottom to top
    ImageDraw.Draw(label).text((160, 12), ylabel, fill="black", font=font, anchor="mm")
    label = label.rotate(90, expand=True)
    image.paste(label, (8, int((top + bottom) / 2 - label.height / 2)))
    draw.text(((left + right) / 2, 16), title, fill="black", font=font, anchor="ma")
    for name, value in references.items():
        _, y = px(x0, value)
        for x in range(left, right, 12):
            draw.line([(x, y), (min(x + 6, right), y)], fill=(120, 120, 120), width=1)
        draw.text((right - 6, y - 3), f"{name} ({value:.0f})", fill=(90, 90, 90), font=small, anchor="rb")
    legend_y = top + 12
    for i, (name, rows) in enumerate(curves.items()):
        color = SEED_COLORS[i % len(SEED_COLORS)]
        points = [px(r["frames"], r[metric]) for r in rows]
        if len(points) > 1:
            draw.line(points, fill=color, width=3)
        for x, y in points:
            draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)
        draw.line([(left + 14, legend_y), (left + 44, legend_y)], fill=color, width=3)
        draw.text((left + 52, legend_y), name, fill="black", font=small, anchor="lm")
        legend_y += 20
    image.save(path)
    return path


def sample_strip(logdir: str, path: str, max_rows: int = 12) -> str | None:
    """The evaluation's ``eval/final_canvases`` image of every checkpoint, one row each (at most
    ``max_rows``, evenly spaced, the last always), labelled with the update; None if none."""
    from spiral.evaluation.events import read_event_log  # pylint: disable=import-outside-toplevel
    images = read_event_log(logdir).images.get("eval/final_canvases", [])
    if not images:
        return None
    if len(images) > max_rows:
        keep = sorted(set(np.linspace(0, len(images) - 1, max_rows).round().astype(int)))
        images = [images[i] for i in keep]
    rows = [(step, Image.open(io.BytesIO(data)).convert("RGB")) for step, data in images]
    rows[-1][1].save(path.replace("_samples.png", "_final.png"))   # the last checkpoint's alone
    margin = 70
    width = margin + max(im.width for _, im in rows)
    strip = Image.new("RGB", (width, sum(im.height + 4 for _, im in rows)), "white")
    draw, y = ImageDraw.Draw(strip), 0
    for step, im in rows:
        strip.paste(im, (margin, y))
        draw.text((4, y + im.height // 2), f"upd {step}", fill="black", font=_font(12), anchor="lm")
        y += im.height + 4
    strip.save(path)
    return path


# ------------------------------------------------------------------------------------- main

def write_csv(path: str, keys: list[str], rows: list[dict]) -> str:
    """``rows`` as CSV: the ``keys`` columns first, then every other column name, sorted."""
    names = sorted({k for r in rows for k in r} - set(keys))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys + names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarise(task: str, seed: int, rows: list[dict], cpu: float) -> dict:
    spec = TASKS[task]
    metric = spec["metric"]
    values = [r[metric] for r in rows]
    last = rows[-1]
    out = dict(task=task, seed=seed, checkpoints=len(rows), frames=last["frames"], cpu_s=cpu,
               first=values[0], final=last[metric], best=min(values))
    for ref in spec["references"]:
        out[ref] = last.get(f"{ref}_{metric}", float("nan"))
    for name in spec.get("extra", ()):
        out[name] = last.get(name, float("nan"))
        out[f"real_{name}"] = last.get(f"real_{name}", float("nan"))
    return out


def table(summaries: list[dict]) -> str:
    lines = ["| task | seed | frames | CPU s | metric | first | final | best | final / blank | blank | random | real | classifier conf. (real) | class entropy (real) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        spec = TASKS[s["task"]]
        conf = (f"{s['classifier_confidence']:.3f} ({s['real_classifier_confidence']:.3f})"
                if "classifier_confidence" in s else "")
        ent = f"{s['class_entropy']:.2f} ({s['real_class_entropy']:.2f})" if "class_entropy" in s else ""
        real = f"{s['real']:.1f}" if "real" in s else ""
        lines.append(f"| {s['task']} | {s['seed']} | {s['frames']:,} | {s['cpu_s']:.0f} | {spec['metric']} "
                     f"| {s['first']:.1f} | {s['final']:.1f} | {s['best']:.1f} | {s['final'] / s['blank']:.2f} "
                     f"| {s['blank']:.1f} | {s['random']:.1f} | {real} | {conf} | {ent} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    summaries, pictures, all_curves = [], [], {}
    csv_rows = []
    for task in args.tasks:
        spec = TASKS[task]
        curves = {}
        for seed in args.seeds:
            config = experiment_config(args, task, seed)
            if args.plot_only:
                cpu = cpu_seconds(config)
            else:
                print(f"=== {task}, seed {seed}: {config.runtime.max_updates} updates", flush=True)
                cpu = train(config)
            rows = read_curve(config.runtime.checkpoint_dir)
            curves[f"seed {seed}"] = rows
            summaries.append(summarise(task, seed, rows, cpu))
            csv_rows += [dict(task=task, seed=seed, **r) for r in rows]
            strip = sample_strip(config.runtime.logdir,
                                 os.path.join(args.out, f"{task}_seed{seed}_samples.png"))
            if strip:
                pictures.append(strip)
        all_curves[task] = curves
        last = next(rows for rows in curves.values() if rows)[-1]
        references = {f"{ref} ": last[f"{ref}_{spec['metric']}"] for ref in spec["references"]
                      if f"{ref}_{spec['metric']}" in last}
        frames = f"{max(r['frames'] for rows in curves.values() for r in rows):,} frames"
        pictures.append(plot_curves(curves, spec["metric"], references,
                                    os.path.join(args.out, f"{task}.png"),
                                    f"{spec['title']}: {frames}, tiny nets, CPU", spec["label"]))

    if {"l2", "disc_conditional"} <= set(all_curves):   # SPIRAL's Fig. 8 comparison, one plot
        both = {f"{reward} reward, {seed}": rows
                for task, reward in (("l2", "L2"), ("disc_conditional", "discriminator"))
                for seed, rows in all_curves[task].items()}
        spec = TASKS["l2"]
        last = next(rows for rows in all_curves["l2"].values() if rows)[-1]
        pictures.append(plot_curves(   # the blank canvas only: the random policy's L2 is far above
            both, "l2", {"blank ": last["blank_l2"]},
            os.path.join(args.out, "conditional.png"),
            "conditional MNIST: L2 vs discriminator reward, tiny nets, CPU", spec["label"]))

    csv_path = write_csv(os.path.join(args.out, "learning_curve.csv"), ["task", "seed"], csv_rows)

    load = os.getloadavg()[0]
    text = table(summaries)
    print(f"\nmachine: {results_md.machine()}; load average {load:.1f} at the end")
    print(text)
    print("wrote " + ", ".join([csv_path] + pictures))
    if args.write_results:
        overrides = " ".join(f"--flag {o}" for o in args.flag)
        body = (f"Command: `python benchmarks/learning_curve.py --tasks {' '.join(args.tasks)} --seeds "
                f"{' '.join(map(str, args.seeds))} --frames {args.frames} {overrides}`. Machine: "
                f"{results_md.machine()}, CPU only, {time.strftime('%Y-%m-%d')}, load average "
                f"{load:.1f} at the end.\n\n{text}\n")
        results_md.write_section("learning_curve", body)


if __name__ == "__main__":
    main()
