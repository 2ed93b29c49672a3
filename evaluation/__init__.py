"""Evaluation: judge what an agent paints, in pictures and numbers.

One job: turn a checkpoint into sample grids, stroke-by-stroke GIFs, exported programs (JSON, SVG,
high-resolution re-renders) and metrics that track what the eye sees (L2 to targets, a classifier
score and a Fréchet distance on this project's own feature extractors). Runs without Ray.

Public API:

* ``load_policy(path) -> (config, agent, params)``, ``load_checkpoint`` (``checkpoint``);
* ``paint_episodes``, ``AgentPolicy``, ``UniformPolicy``, ``Episodes`` (``painting``): episodes
  with every frame and program, on a fixed list of held-out targets;
* ``program_to_svg``, ``write_program``, ``save_gif``, ``sample_grid``, ``save_png`` (``export``);
* ``l2_distances``, ``classifier_score``, ``frechet_distance``, ``sqrtm_psd`` (``metrics``);
* ``load_extractor``, ``train_extractor`` (``classifier``): the MNIST / Omniglot classifiers and
  the CelebA autoencoder whose 64-d features the Fréchet distance uses (``python -m
  spiral.evaluation.train_classifier --dataset ...`` trains them);
* ``evaluate_policy``, ``reference_metrics``, ``checkpoint_metrics(config, policy_params, seed)``,
  ``log_checkpoint_metrics`` (``scoring``): scores with their blank / random / real references;
  the per-checkpoint hook every runtime calls (``eval_log.jsonl`` + TensorBoard ``eval/*``).
* ``report_run``, ``find_members``, ``load_member``, ``write_report`` (``run_report``): a run's (or
  a population's) self-contained HTML page, from its TensorBoard events (``events``), its
  ``eval_log.jsonl`` and its evaluation folders, with inline-SVG curves (``charts``).

``launch/evaluate.py`` and ``launch/report.py`` are the command lines; ``benchmarks/learning_curve.py``
compares rewards.
"""

from spiral.evaluation.checkpoint import LoadedPolicy, load_checkpoint, load_policy
from spiral.evaluation.classifier import FeatureExtractor, load_extractor, train_extractor
from spiral.evaluation.export import program_to_svg, sample_grid, save_gif, save_png, write_program
from spiral.evaluation.metrics import (classifier_score, frechet_distance, frechet_distance_features,
                                       l2_distances, mean_squared_errors, sqrtm_psd)
from spiral.evaluation.painting import AgentPolicy, Episodes, UniformPolicy, paint_episodes
from spiral.evaluation.scoring import (EVAL_LOG, checkpoint_metrics, evaluate_policy, heldout_images,
                                       log_checkpoint_metrics, read_eval_log, reference_metrics)

__all__ = [
    "AgentPolicy", "EVAL_LOG", "Episodes", "FeatureExtractor", "LoadedPolicy", "UniformPolicy",
    "checkpoint_metrics", "classifier_score", "evaluate_policy", "frechet_distance",
    "frechet_distance_features", "heldout_images", "l2_distances", "load_checkpoint",
    "load_extractor", "load_policy", "log_checkpoint_metrics", "mean_squared_errors",
    "paint_episodes", "program_to_svg", "read_eval_log", "reference_metrics", "sample_grid",
    "save_gif", "save_png", "sqrtm_psd", "train_extractor", "write_program",
]
