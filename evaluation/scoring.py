"""Score a policy on held-out data, with the reference values that give the numbers their scale.

* ``heldout_images(dataset, width, count)``: the first ``count`` images of the test split (the
  held-out targets or reference samples), as uint8 levels at the agent's observation width, made
  exactly as the training runtime makes its targets (quantised, then area-averaged).
* ``score_episodes(config, episodes, real)``: the metrics of painted episodes. Conditional:
  ``l2`` (mean ‖canvas − target‖² at the observation width, the L2 reward's measure and the
  paper's Fig. 8 measure) and ``l2_per_pixel``. Unconditional: ``frechet`` between the painted
  canvases and as many real held-out images, in the 64-d feature space of this project's
  extractor for the dataset (``spiral.evaluation.classifier``: MNIST digit classifier, Omniglot
  character classifier, CelebA autoencoder; not the Inception FID), and on MNIST the classifier
  score (``classifier_confidence``: mean max-probability; ``class_entropy``: entropy in nats of
  the predicted-class histogram, log 10 = 2.303 when all digits are equally common).
* ``reference_metrics(config, count, seed)``: the same numbers for a blank canvas, for the
  uniform random policy, and (unconditional) for real images against other real images.
* ``evaluate_policy``: paint with a policy and score it; ``checkpoint_metrics``: the small fixed
  evaluation run at every checkpoint (a few seconds on CPU), shared by every runtime.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Optional

import numpy as np

from spiral.envs.levels import area_downsample, quantise
from spiral.evaluation import classifier as classifier_lib
from spiral.evaluation import metrics as metrics_lib
from spiral.evaluation.export import side_by_side
from spiral.evaluation.painting import AgentPolicy, Episodes, UniformPolicy, paint_episodes

CHECKPOINT_EPISODES = 64
EVAL_LOG = "eval_log.jsonl"


# ------------------------------------------------------------------------------------- data

@functools.lru_cache(maxsize=8)
def heldout_images(dataset: str, width: int, count: int, data_dir: Optional[str] = None
                   ) -> tuple[np.ndarray, str]:
    """(uint8 levels [count, width, width, C] of the held-out split, a note saying which images).

    The test split's first ``count`` images. A CelebA copy without test images (such as the
    shared 10,000-image subset, all of the official training partition) falls back to the
    **last** ``count`` training images, and the note says so: they were seen in training unless
    the run's ``dataset_limit`` stopped before them.
    """
    from spiral.envs import datasets  # pylint: disable=import-outside-toplevel
    try:
        data = datasets.load_dataset(dataset, "test", data_dir, limit=count)
        note = f"{dataset} test split, first {count}"
    except ValueError as error:
        if dataset != "celeba" or "empty" not in str(error):
            raise
        data = datasets.load_dataset(dataset, "train", data_dir)
        total = len(data.images)
        data = datasets.Dataset(data.name, "train", data.images[-count:], None, data.source)
        note = (f"celeba has no test images here: the last {count} of its {total} train images "
                f"(held out only if the run's dataset_limit stopped before image {total - count + 1})")
        print(f"evaluation: {note}.", flush=True)
    if len(data.images) < count:
        raise ValueError(f"the held-out set needs {count} {dataset} images, the split has {len(data.images)}.")
    levels = area_downsample(quantise(data.images), width)
    levels.flags.writeable = False
    return levels, note


# ------------------------------------------------------------------------------------- metrics

def _extractor(dataset: str):
    """The dataset's feature extractor, or None (with the reason printed once) when not trained."""
    try:
        return classifier_lib.load_extractor(dataset)
    except FileNotFoundError as error:
        _warn_once(str(error))
        return None


@functools.lru_cache(maxsize=None)
def _warn_once(message: str):
    print(f"evaluation: {message}", flush=True)


def conditional_scores(canvases: np.ndarray, targets: np.ndarray, prefix: str = "") -> dict:
    l2 = metrics_lib.l2_distances(canvases, targets)
    return {prefix + "l2": float(l2.mean()),
            prefix + "l2_per_pixel": float(metrics_lib.mean_squared_errors(canvases, targets).mean())}


def sample_scores(dataset: str, canvases: np.ndarray, reference_features: Optional[np.ndarray],
                  prefix: str = "") -> dict:
    """Fréchet distance to real images' features (and the MNIST classifier score) of samples.

    Empty when the dataset's extractor is not trained (``reference_features`` is then None too).
    """
    extractor = _extractor(dataset)
    if extractor is None or reference_features is None:
        return {}
    out = {prefix + "frechet": metrics_lib.frechet_distance_features(extractor.features(canvases),
                                                                     reference_features)}
    if dataset == "mnist":
        score = metrics_lib.classifier_score(extractor.probabilities(canvases))
        out[prefix + "classifier_confidence"] = score.mean_max_probability
        out[prefix + "class_entropy"] = score.class_entropy
    return out


def _real_images(dataset: str, width: int, count: int, data_dir) -> tuple[np.ndarray, np.ndarray, str]:
    """Unconditional references: (the first ``count`` real held-out images, the next ``count``
    (a real "sample": real-versus-real gives the distance's floor at this sample size), note)."""
    images, note = heldout_images(dataset, width, 2 * count, data_dir)
    return images[:count], images[count:], note


@functools.lru_cache(maxsize=8)
def real_features(dataset: str, width: int, count: int, data_dir: Optional[str] = None
                  ) -> Optional[np.ndarray]:
    """Features of the ``count`` real reference images of an unconditional evaluation (cached)."""
    extractor = _extractor(dataset)
    if extractor is None:
        return None
    return extractor.features(_real_images(dataset, width, count, data_dir)[0])


def score_episodes(config, episodes: Episodes, data_dir: Optional[str] = None, prefix: str = "") -> dict:
    """Metrics of painted episodes: conditional L2 to their targets, or unconditional Fréchet
    distance to as many real held-out images (+ the MNIST classifier score)."""
    if config.env.conditional:
        return conditional_scores(episodes.final_canvases, episodes.targets, prefix)
    features = real_features(config.dataset, config.observation_width, len(episodes), data_dir)
    return sample_scores(config.dataset, episodes.final_canvases, features, prefix)


def _blank_canvases(env_config, count: int) -> np.ndarray:
    value = int(round(255 * env_config.background_value))
    w = env_config.observation_width
    return np.full((count, w, w, env_config.channels), value, np.uint8)


def _targets(config, count: int, data_dir) -> tuple[Optional[np.ndarray], str]:
    """(the held-out targets, or None when unconditional; a note saying which images)."""
    if config.env.conditional:
        return heldout_images(config.dataset, config.observation_width, count, data_dir)
    return None, _real_images(config.dataset, config.observation_width, count, data_dir)[2]


@functools.lru_cache(maxsize=16)
def _reference_metrics(config, count: int, seed: int, data_dir) -> tuple:
    targets, _ = _targets(config, count, data_dir)
    random_episodes = paint_episodes(config.env, UniformPolicy(config.env, seed), count, seed, targets)
    blank = Episodes(_blank_canvases(config.env, count)[:, None], targets, [])
    out = {}
    out.update(score_episodes(config, blank, data_dir, prefix="blank_"))
    out.update(score_episodes(config, random_episodes, data_dir, prefix="random_"))
    if not config.env.conditional:
        _, other_real, _ = _real_images(config.dataset, config.observation_width, count, data_dir)
        features = real_features(config.dataset, config.observation_width, count, data_dir)
        out.update(sample_scores(config.dataset, other_real, features, prefix="real_"))
    return tuple(sorted(out.items()))


def reference_metrics(config, count: int, seed: int = 0, data_dir: Optional[str] = None) -> dict:
    """Blank canvas, random policy and (unconditional) real-vs-real values of the same metrics."""
    return dict(_reference_metrics(config, count, seed, data_dir or config.data_dir))


def evaluate_policy(config, policy, count: int, seed: int = 0, data_dir: Optional[str] = None,
                    with_references: bool = True, batch_size: int = 64) -> tuple[dict, Episodes, dict]:
    """Paint ``count`` held-out episodes with ``policy`` and score them.

    Returns (metrics: floats, episodes, info: the held-out note and reference-free details).
    """
    data_dir = data_dir or config.data_dir
    targets, note = _targets(config, count, data_dir)
    episodes = paint_episodes(config.env, policy, count, seed, targets, batch_size)
    metrics = score_episodes(config, episodes, data_dir)
    if with_references:
        metrics.update(reference_metrics(config, count, seed, data_dir))
    return metrics, episodes, {"heldout": note, "episodes": count, "seed": seed}


def _checkpoint_evaluation(config, policy_params: Any, seed: int, count: int) -> tuple[dict, Episodes]:
    from spiral.learner import Agent  # pylint: disable=import-outside-toplevel
    start = time.perf_counter()
    agent = Agent(config.agent, config.policy.compute_dtype, config.policy.transposed_conv)
    policy = AgentPolicy(agent, policy_params, seed, batch_size=min(count, 64))
    metrics, episodes, _ = evaluate_policy(config, policy, count, seed)
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics, episodes


def checkpoint_metrics(config, policy_params: Any, seed: int = 0,
                       count: int = CHECKPOINT_EPISODES) -> dict:
    """The evaluation metrics of ``policy_params`` on a small fixed held-out set (floats).

    Pure of training state: ``config`` (an ``ExperimentConfig``) and the agent's parameters are
    all it needs, so every runtime (local, Ray, fused) calls it at each checkpoint. The held-out
    set, the environment seeds and the policy's sampling seed are fixed by ``seed``, so successive
    checkpoints are scored on the same episodes. Includes the blank and random-policy references
    (computed once per process) and ``eval_seconds``.
    """
    return _checkpoint_evaluation(config, policy_params, seed, count)[0]


def log_checkpoint_metrics(config, policy_params: Any, counters: dict, monitor=None,
                           seed: Optional[int] = None, count: int = CHECKPOINT_EPISODES) -> dict:
    """``checkpoint_metrics`` at a checkpoint, written where a run's logs go.

    Appends one JSON line to ``<checkpoint_dir>/eval_log.jsonl`` (updates, agent steps, elapsed
    seconds and the metrics); through ``monitor`` (a ``spiral.actors.monitoring.Monitor``), at
    step ``counters["updates"]``, logs the metrics as ``eval/<name>`` TensorBoard scalars and two
    images of the same fixed held-out episodes every time: ``eval/final_canvases`` (16 of them,
    each beside its target when conditional) and ``eval/strokes`` (one episode, frame by frame).
    An evaluation that fails is reported (printed, and as ``error`` in the JSON line), not
    raised: a long training run must not die of its evaluation.
    """
    seed = config.runtime.seed if seed is None else seed
    record = {"updates": int(counters.get("updates", 0)), "agent_steps": int(counters.get("agent_steps", 0)),
              "elapsed_s": float(counters.get("elapsed_s", 0.0))}
    episodes = None
    try:
        record["metrics"], episodes = _checkpoint_evaluation(config, policy_params, seed, count)
    except Exception as error:  # pylint: disable=broad-except
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"evaluation at {record['updates']} updates failed: {record['error']}", flush=True)
    if monitor is not None and episodes is not None:
        monitor.scalars(record["updates"], record["metrics"], prefix="eval/")
        shown = slice(0, min(16, len(episodes)))
        targets = None if episodes.targets is None else episodes.targets[shown]
        monitor.images(record["updates"], "eval/final_canvases",
                       side_by_side(episodes.final_canvases[shown], targets))
        monitor.images(record["updates"], "eval/strokes", episodes.frames[0])
    directory = config.runtime.checkpoint_dir
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, EVAL_LOG), "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def read_eval_log(checkpoint_dir: str) -> list[dict]:
    """The records of ``<checkpoint_dir>/eval_log.jsonl``, in order (empty if there is none)."""
    path = os.path.join(checkpoint_dir, EVAL_LOG)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
