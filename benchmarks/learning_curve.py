"""Learning curves: conditional MNIST with the discriminator reward vs the L2 reward, same seed and budget.

SPIRAL's central claim (Ganin et al. 2018, Fig. 8): on conditional MNIST the learned
discriminator reward reaches a lower reconstruction L2 than the L2 reward itself, faster. This
script trains both, one after the other, with the same configuration, seed and budget (agent
steps = "frames", or minutes), checkpointing often; every checkpoint is scored by the evaluation
hook on the same 64 held-out test digits (``eval_log.jsonl``: the mean ‖canvas − target‖² over
the 64×64 observation). It writes both curves to ``learning_curve.csv`` and ``learning_curve.png``
(held-out L2 against frames, with the blank-canvas and random-policy L2 as reference lines) and
prints a table. The discriminator scores 64×64 canvases, so both runs observe 64×64.

Usage (CPU, about 2 × 12 minutes on 2 cores)::

    python benchmarks/learning_curve.py --frames 60000 --out runs/learning_curve

``--minutes`` budgets by training time instead (compile time then counts against it);
``--runtime fused`` runs each on one accelerator. Bigger budgets, ``--network small`` and
``--episode_length 20`` move towards the paper's setting.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

from PIL import Image, ImageDraw, ImageFont

import results_md

REWARDS = ("discriminator", "l2")
COLORS = {"discriminator": (214, 39, 40), "l2": (31, 119, 180)}
LABELS = {"discriminator": "discriminator reward (SPIRAL)", "l2": "L2 reward (baseline)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=60000, help="agent steps per run (0: use --minutes)")
    p.add_argument("--minutes", type=float, default=0.0, help="training minutes per run (with --frames 0)")
    p.add_argument("--network", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument("--disc_network", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument("--episode_length", type=int, default=6, help="reset + N-1 strokes")
    p.add_argument("--grid_width", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--disc_learning_rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime", default="local", choices=["local", "ray", "fused"])
    p.add_argument("--num_actors", type=int, default=1)
    p.add_argument("--checkpoint_every_minutes", type=float, default=0.5)
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=REWARDS)
    p.add_argument("--out", default="runs/learning_curve", help="run folders, CSV and PNG go here")
    p.add_argument("--plot_only", action="store_true", help="redraw from the runs already in --out")
    args = p.parse_args(argv)
    if args.frames <= 0 and args.minutes <= 0:
        p.error("give a budget: --frames > 0, or --frames 0 with --minutes > 0.")
    return args


def experiment_config(args, reward: str):
    """The run's ExperimentConfig: the flags' defaults with this benchmark's reduced settings."""
    from spiral.launch import flags as launch_flags  # pylint: disable=import-outside-toplevel
    steps_per_update = args.batch_size * (args.episode_length - 1)
    max_updates = math.ceil(args.frames / steps_per_update) if args.frames > 0 else 0
    values = launch_flags.default_values(
        "mnist", conditional=True, reward=reward, observation_width=64, grid_width=args.grid_width,
        episode_length=args.episode_length, network=args.network, disc_network=args.disc_network,
        learning_rate=args.learning_rate, disc_learning_rate=args.disc_learning_rate,
        runtime=args.runtime, num_actors=args.num_actors, envs_per_actor=args.batch_size // args.num_actors,
        batch_size=args.batch_size, max_updates=max_updates,
        max_minutes=args.minutes if args.frames <= 0 else 0.0, seed=args.seed,
        run_dir=os.path.join(args.out, reward), checkpoint_every_minutes=args.checkpoint_every_minutes,
        log_every_seconds=30.0, image_every_updates=100)
    return launch_flags.config_from_values(values)


def read_curve(checkpoint_dir: str) -> list[dict]:
    from spiral.evaluation import read_eval_log  # pylint: disable=import-outside-toplevel
    rows = []
    for record in read_eval_log(checkpoint_dir):
        if "metrics" not in record:
            raise RuntimeError(f"the evaluation at {record['updates']} updates in {checkpoint_dir} failed: "
                               f"{record.get('error')}")
        m = record["metrics"]
        if rows and rows[-1]["updates"] == record["updates"]:
            rows.pop()   # the final save can repeat the last periodic one: keep one point
        rows.append(dict(updates=record["updates"], frames=record["agent_steps"],
                         elapsed_s=record["elapsed_s"], l2=m["l2"], l2_per_pixel=m["l2_per_pixel"],
                         blank_l2=m["blank_l2"], random_l2=m["random_l2"]))
    return rows


# ------------------------------------------------------------------------------------- plotting

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
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def plot_curves(curves: dict, references: dict, path: str, title: str, width: int = 900, height: int = 560):
    """Lines of (frames, L2) per reward, dashed reference lines, axes with ticks, a legend. Pillow only."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    left, right, top, bottom = 80, width - 30, 50, height - 70
    xs = [r["frames"] for rows in curves.values() for r in rows] or [0, 1]
    ys = [r["l2"] for rows in curves.values() for r in rows] + list(references.values())
    xticks = nice_ticks(0, max(xs))
    yticks = nice_ticks(min(ys) * 0.95 if ys else 0, max(ys) * 1.02 if ys else 1)
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    for t in yticks:   # grid and y ticks
        _, y = px(x0, t)
        draw.line([(left, y), (right, y)], fill=(228, 228, 228))
        draw.text((left - 8, y), _label(t), fill="black", font=small, anchor="rm")
    for t in xticks:
        x, _ = px(t, y0)
        draw.line([(x, top), (x, bottom)], fill=(238, 238, 238))
        draw.text((x, bottom + 8), _label(t), fill="black", font=small, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, height - 28), "frames (agent steps)", fill="black", font=font, anchor="ma")
    label = Image.new("RGB", (200, 24), "white")   # the y label, turned to read bottom to top
    ImageDraw.Draw(label).text((100, 12), "held-out L2", fill="black", font=font, anchor="mm")
    label = label.rotate(90, expand=True)
    image.paste(label, (12, int((top + bottom) / 2 - label.height / 2)))
    draw.text(((left + right) / 2, 16), title, fill="black", font=font, anchor="ma")

    for name, value in references.items():   # dashed horizontal references
        _, y = px(x0, value)
        for x in range(left, right, 12):
            draw.line([(x, y), (min(x + 6, right), y)], fill=(120, 120, 120), width=1)
        draw.text((right - 6, y - 3), f"{name} ({value:.0f})", fill=(90, 90, 90), font=small, anchor="rb")
    legend_y = top + 12
    for reward, rows in curves.items():
        points = [px(r["frames"], r["l2"]) for r in rows]
        if len(points) > 1:
            draw.line(points, fill=COLORS[reward], width=3)
        for x, y in points:
            draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=COLORS[reward])
        draw.line([(left + 14, legend_y), (left + 44, legend_y)], fill=COLORS[reward], width=3)
        draw.text((left + 52, legend_y), LABELS[reward], fill="black", font=small, anchor="lm")
        legend_y += 20
    image.save(path)
    return path


# ------------------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    curves, seconds = {}, {}
    for reward in args.rewards:
        config = experiment_config(args, reward)
        if not args.plot_only:
            from spiral.actors import run_loop  # pylint: disable=import-outside-toplevel
            from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
            if os.path.exists(config.runtime.checkpoint_dir):
                raise SystemExit(f"error: {config.runtime.checkpoint_dir} exists; use a new --out "
                                 f"(or --plot_only to redraw it).")
            print(f"=== {reward} reward: {config.runtime.max_updates or 'no'} updates / "
                  f"{config.runtime.max_minutes or 'no'} minutes", flush=True)
            start = time.monotonic()
            run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
            seconds[reward] = time.monotonic() - start
        curves[reward] = read_curve(config.runtime.checkpoint_dir)

    csv_path = os.path.join(args.out, "learning_curve.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reward", "updates", "frames", "elapsed_s", "l2", "l2_per_pixel", "blank_l2", "random_l2"])
        for reward, rows in curves.items():
            for r in rows:
                writer.writerow([reward, r["updates"], r["frames"], f"{r['elapsed_s']:.1f}", f"{r['l2']:.3f}",
                                 f"{r['l2_per_pixel']:.5f}", f"{r['blank_l2']:.3f}", f"{r['random_l2']:.3f}"])
    any_rows = next(rows for rows in curves.values() if rows)
    references = {"blank canvas": any_rows[0]["blank_l2"], "random policy": any_rows[0]["random_l2"]}
    budget = f"{args.frames:,} frames" if args.frames > 0 else f"{args.minutes:g} min"
    title = (f"Conditional MNIST, held-out L2 (64 test digits): {args.episode_length - 1} strokes, "
             f"grid {args.grid_width}, {args.network} net, {budget}, seed {args.seed}")
    png_path = plot_curves(curves, references, os.path.join(args.out, "learning_curve.png"), title)

    load = "" if args.plot_only else f"; load average {os.getloadavg()[0]:.1f} at the end"
    print(f"\nmachine: {results_md.cpu_name()}, {os.cpu_count()} cores{load}")
    print("| reward | checkpoints | frames | train s | first L2 | final L2 | best L2 | blank L2 | random L2 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for reward, rows in curves.items():
        l2 = [r["l2"] for r in rows]
        print(f"| {reward} | {len(rows)} | {rows[-1]['frames']:,} | {seconds.get(reward, rows[-1]['elapsed_s']):.0f} "
              f"| {l2[0]:.1f} | {l2[-1]:.1f} | {min(l2):.1f} | {rows[-1]['blank_l2']:.1f} | {rows[-1]['random_l2']:.1f} |")
    import jax  # pylint: disable=import-outside-toplevel
    device = jax.devices()[0]
    print(f"learner device: {device.device_kind}" if device.platform != "cpu"
          else "GPU: not measured: no GPU here (both runs on the CPU)")
    print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    main()
