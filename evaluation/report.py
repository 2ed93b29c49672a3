"""Write a checkpoint's evaluation folder: pictures, programs and ``metrics.json``.

``evaluate_checkpoint(path, output_dir, ...)`` loads the policy (``checkpoint.load_checkpoint``),
paints ``num_episodes`` held-out episodes (conditional: reconstructions of the first test images;
unconditional: samples), and writes::

    samples.png                  final canvases in a grid (each beside its target when conditional)
    episode_000.gif …            stroke by stroke, for the first ``gif_episodes`` episodes
    programs/episode_000.json    each episode's program (strokes and jumps, replayable)
    programs/episode_000.svg     the same strokes as SVG paths (width, opacity, colour)
    programs/episode_000_256.png the program re-rendered at ``render_width`` (256)
    metrics.json                 the metrics with their blank / random-policy / real references

``launch/evaluate.py`` is its command line.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from spiral.evaluation import classifier as classifier_lib
from spiral.evaluation import export
from spiral.evaluation.checkpoint import load_checkpoint
from spiral.evaluation.painting import AgentPolicy
from spiral.evaluation.scoring import evaluate_policy


def default_output_dir(checkpoint_path: str) -> str:
    """``<checkpoint_dir>/evaluation/<ckpt_name>``: beside the checkpoints, not inside one (old
    checkpoints are deleted as new ones are saved)."""
    checkpoint_path = os.path.abspath(checkpoint_path)
    return os.path.join(os.path.dirname(checkpoint_path), "evaluation", os.path.basename(checkpoint_path))


def extractor_description(dataset: str) -> Optional[str]:
    """What the Fréchet distance of ``dataset`` is measured with (None if not trained)."""
    path = classifier_lib.weights_path(dataset)
    if not path.is_file():
        return None
    meta = classifier_lib.load_extractor(dataset).meta
    what = {"mnist": "10-way MNIST digit classifier", "omniglot": "964-way Omniglot character classifier",
            "celeba": "CelebA convolutional autoencoder"}[dataset]
    accuracy = (f"; accuracy {meta['accuracy']:.4f} on the {meta.get('accuracy_on', 'held-out set')}"
                if "accuracy" in meta else "")
    return (f"this project's {what} ({path.name}{accuracy}); 64-d penultimate features. Not the "
            f"standard (Inception) FID: compare only with numbers from the same extractor, sample "
            f"count and image width.")


def evaluate_checkpoint(path: str, output_dir: Optional[str] = None, num_episodes: int = 64,
                        gif_episodes: int = 4, seed: int = 0, data_dir: Optional[str] = None,
                        batch_size: int = 64, render_width: int = 256, log=print) -> dict:
    """Evaluate one checkpoint (folder or checkpoint_dir); write the folder above; return metrics.json's dict."""
    if num_episodes < 2:
        raise ValueError(f"num_episodes must be >= 2 (a Fréchet distance needs 2 samples), got {num_episodes}.")
    if not 0 <= gif_episodes <= num_episodes:
        raise ValueError(f"gif_episodes must be in [0, num_episodes={num_episodes}], got {gif_episodes}.")
    start = time.perf_counter()
    loaded = load_checkpoint(path)
    config = loaded.config
    output_dir = output_dir or default_output_dir(loaded.path)
    os.makedirs(os.path.join(output_dir, "programs"), exist_ok=True)
    log(f"evaluating {loaded.path} ({loaded.counters.get('updates', '?')} updates, "
        f"{loaded.counters.get('agent_steps', 0):,} agent steps): {config.dataset}, "
        f"{'conditional' if config.env.conditional else 'unconditional'}, {num_episodes} episodes")
    policy = AgentPolicy(loaded.agent, loaded.params, seed, batch_size=min(batch_size, num_episodes))
    metrics, episodes, info = evaluate_policy(config, policy, num_episodes, seed, data_dir,
                                              batch_size=min(batch_size, num_episodes))

    export.save_png(os.path.join(output_dir, "samples.png"),
                    export.sample_grid(episodes.final_canvases, episodes.targets))
    for i in range(gif_episodes):
        export.save_gif(os.path.join(output_dir, f"episode_{i:03d}.gif"), episodes.frames[i],
                        None if episodes.targets is None else episodes.targets[i])
    for i, program in enumerate(episodes.programs):
        export.write_program(os.path.join(output_dir, "programs"), f"episode_{i:03d}", program,
                             render_width)

    result = {
        "checkpoint": loaded.path,
        "counters": loaded.counters,
        "dataset": config.dataset,
        "conditional": config.env.conditional,
        "reward": config.reward,
        "observation_width": config.observation_width,
        "heldout": info["heldout"],
        "episodes": num_episodes,
        "seed": seed,
        "metrics": metrics,
        "eval_seconds": round(time.perf_counter() - start, 2),
    }
    if config.env.conditional:
        result["l2_definition"] = (f"sum over the {config.observation_width}x{config.observation_width}"
                                   f"x{config.env.channels} observed pixels of (canvas - target)^2, values "
                                   f"in [0, 1], mean over episodes (the L2 reward's measure)")
    else:
        description = extractor_description(config.dataset)
        result["frechet_features"] = description or (
            f"not measured: no {config.dataset} feature extractor trained (python -m "
            f"spiral.evaluation.train_classifier --dataset {config.dataset})")
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    log(format_metrics(metrics))
    log(f"wrote {output_dir} ({result['eval_seconds']:.0f} s)")
    return result


def format_metrics(metrics: dict) -> str:
    """Each metric beside its blank / random / real reference, one line per metric."""
    names = sorted(k for k in metrics if not k.startswith(("blank_", "random_", "real_")))
    lines = [f"{'metric':<24}{'policy':>12}{'blank':>12}{'random':>12}{'real':>12}"]
    for name in names:
        cells = [metrics.get(p + name) for p in ("", "blank_", "random_", "real_")]
        lines.append(f"{name:<24}" + "".join(f"{v:>12.4g}" if v is not None else f"{'':>12}" for v in cells))
    return "\n".join(lines)
