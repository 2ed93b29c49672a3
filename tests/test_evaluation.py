"""Evaluation end to end: a tiny training run's checkpoints → eval_log.jsonl, TensorBoard eval/*,
load_policy, evaluate_checkpoint's files (replayable programs), the evaluate.py command line."""

import glob
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, skip_unless
from spiral.actors import checkpointing, run_loop
from spiral.envs import Program, observe_canvas, render_program
from spiral.evaluation import (checkpoint_metrics, heldout_images, l2_distances, log_checkpoint_metrics,
                               load_checkpoint, load_policy, read_eval_log)
from spiral.evaluation.checkpoint import check_params
from spiral.evaluation.report import evaluate_checkpoint
from spiral.launch import flags as launch_flags
from spiral.learner import Agent, AgentConfig


def tiny_values(run_dir, **overrides):
    """Conditional MNIST, L2 reward, 32×32 observation, 16×16 grid, 3 strokes, tiny network."""
    values = dict(conditional=True, reward="l2", observation_width=32, grid_width=16,
                  episode_length=4, network="tiny", disc_network="tiny", runtime="local",
                  num_actors=1, envs_per_actor=8, batch_size=8, max_updates=3,
                  dataset_limit=256, run_dir=str(run_dir), checkpoint_every_minutes=1e-4,
                  log_every_seconds=60.0, learning_rate=1e-3)
    values.update(overrides)
    return launch_flags.default_values("mnist", **values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(data) and os.path.isdir(data), "no dataset folder: set SPIRAL_DATA_DIR")
    run_dir = tmp_path_factory.mktemp("eval_run")
    config = launch_flags.config_from_values(tiny_values(run_dir))
    result = run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    return config, result


def read_tensorboard(logdir):
    """{tag: [(step, kind)]} from tensorboardX event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                kind = "image" if value.HasField("image") else "scalar"
                found.setdefault(value.tag, []).append((event.step, kind))
    return found


def test_every_checkpoint_is_evaluated_into_the_log_and_tensorboard(trained):
    config, result = trained
    records = read_eval_log(config.runtime.checkpoint_dir)
    updates = [r["updates"] for r in records]
    assert len(records) >= 2 and updates == sorted(updates) and updates[-1] == result["counters"]["updates"]
    for record in records:
        assert "error" not in record, record
        m = record["metrics"]
        assert {"l2", "l2_per_pixel", "blank_l2", "random_l2", "eval_seconds"} <= set(m)
        assert record["agent_steps"] == record["updates"] * 8 * 3
    # The references do not depend on the policy: the same numbers at every checkpoint.
    assert len({r["metrics"]["random_l2"] for r in records}) == 1
    tags = read_tensorboard(config.runtime.logdir)
    assert [s for s, _ in tags["eval/l2"]] == updates
    assert tags["eval/final_canvases"][0][1] == "image" and "eval/strokes" in tags
    # The driver's own samples of training episodes (each canvas beside its target).
    assert tags["samples/final_canvas"][0][1] == "image"


def test_checkpoint_metrics_are_reproducible_from_the_checkpoint(trained):
    config, result = trained
    loaded_config, agent, params = load_policy(config.runtime.checkpoint_dir)
    assert loaded_config == config
    again = checkpoint_metrics(loaded_config, params, seed=config.runtime.seed)
    logged = read_eval_log(config.runtime.checkpoint_dir)[-1]["metrics"]
    for key in ("l2", "random_l2", "blank_l2"):
        assert again[key] == logged[key], key
    # Another sampling seed paints other episodes (the metric is not a constant).
    other = checkpoint_metrics(loaded_config, params, seed=config.runtime.seed + 1)
    assert other["l2"] != again["l2"]
    # The blank canvas's L2 is Σ(1 − target)², from the held-out targets themselves.
    targets, _ = heldout_images("mnist", 32, 64, None)
    assert again["blank_l2"] == pytest.approx(np.mean(np.sum((1 - targets / 255.0) ** 2, axis=(1, 2, 3))))


def test_load_policy_checks_what_it_loads(trained, tmp_path):
    config, _ = trained
    loaded = load_checkpoint(config.runtime.checkpoint_dir)
    assert loaded.path == checkpointing.latest_checkpoint(config.runtime.checkpoint_dir)
    assert loaded.counters["updates"] == 3
    other_agent = Agent(AgentConfig.small(canvas_width=32, grid_width=16, conditional=True, lstm_size=48))
    with pytest.raises(ValueError, match="do not fit"):
        check_params(other_agent, loaded.params)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_policy(str(tmp_path))


def test_evaluate_checkpoint_writes_pictures_programs_and_metrics(trained, tmp_path):
    config, _ = trained
    out = tmp_path / "eval"
    result = evaluate_checkpoint(config.runtime.checkpoint_dir, str(out), num_episodes=6,
                                 gif_episodes=2, log=lambda *_: None)
    names = sorted(os.listdir(out))
    assert names == ["episode_000.gif", "episode_001.gif", "metrics.json", "programs", "samples.png"]
    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved["metrics"] == result["metrics"] and saved["conditional"] and saved["episodes"] == 6
    assert saved["metrics"]["blank_l2"] < saved["metrics"]["random_l2"]
    # The exported programs replay to canvases whose L2 to the held-out targets is the reported L2.
    targets, _ = heldout_images("mnist", 32, 6, None)
    canvases = []
    for i in range(6):
        with open(out / "programs" / f"episode_{i:03d}.json") as f:
            program = Program.from_json(f.read())
        canvases.append(observe_canvas(render_program(program, config.env.canvas_width), 32)[1])
        assert (out / "programs" / f"episode_{i:03d}.svg").stat().st_size > 100
        from PIL import Image
        assert Image.open(out / "programs" / f"episode_{i:03d}_256.png").size == (256, 256)
    assert np.mean(l2_distances(np.stack(canvases), targets)) == pytest.approx(saved["metrics"]["l2"], rel=1e-12)


def test_unconditional_metrics_have_their_references(data_dir, tmp_path):
    """Unconditional MNIST: Fréchet distance and classifier score beside real, random and blank."""
    values = tiny_values(tmp_path, conditional=False, reward="discriminator", observation_width=64,
                         grid_width=32)
    config = launch_flags.config_from_values(values)
    params = Agent(config.agent).init(jax.random.PRNGKey(0))
    metrics = checkpoint_metrics(config, params, seed=0, count=32)
    for name in ("frechet", "classifier_confidence", "class_entropy"):
        for prefix in ("", "real_", "random_", "blank_"):
            assert np.isfinite(metrics[prefix + name]), prefix + name
    assert metrics["real_frechet"] < metrics["random_frechet"] < metrics["blank_frechet"]
    assert metrics["real_classifier_confidence"] > 0.9 and metrics["blank_class_entropy"] == 0.0


def test_evaluate_command_line(trained, tmp_path):
    config, _ = trained
    out = tmp_path / "cli"
    completed = subprocess.run(
        [sys.executable, str(REPO / "launch" / "evaluate.py"), f"--checkpoint={config.runtime.checkpoint_dir}",
         f"--output_dir={out}", "--num_episodes=4", "--gif_episodes=1"],
        capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "l2" in completed.stdout and (out / "metrics.json").is_file() and (out / "episode_000.gif").is_file()
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), f"--checkpoint={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert bad.returncode != 0 and "No checkpoint" in bad.stderr


@pytest.mark.celeba
def test_celeba_without_test_images_uses_the_last_training_images(data_dir):
    """The shared CelebA subset holds training-partition images only: the held-out set falls back
    to the last training images, and says so."""
    from spiral.envs import datasets
    from spiral.evaluation.scoring import area_downsample
    images, note = heldout_images("celeba", 32, 8, str(data_dir))
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    assert "no test images" in note and "last 8" in note
    first = datasets.load_dataset("celeba", "train", data_dir, limit=8).images
    assert not np.array_equal(images, area_downsample(np.rint(first * 255).astype(np.uint8), 32))
    assert images.std() > 20  # faces, not a blank
