"""Reduced CPU runs with the discriminator reward at a 32-wide observation: the critic scores what
the agent sees (its image_size follows --observation_width), in the local and the fused runtime,
and the evaluation scores the samples. The wrong width is refused with a message naming both."""

import dataclasses

import numpy as np
import pytest

from spiral.actors import checkpointing, run_loop
from spiral.actors.runtime import load_run_data
from spiral.evaluation import log_checkpoint_metrics, read_eval_log
from spiral.launch import flags as launch_flags


def reduced_values(tmp_path, **overrides):
    values = dict(dataset_limit=256, episode_length=4, observation_width=32, grid_width=16,
                  network="tiny", disc_network="tiny", disc_batch_size=8, replay_batches=2,
                  runtime="local", num_actors=1, envs_per_actor=4, batch_size=8, max_updates=3,
                  run_dir=str(tmp_path / "run"), log_every_seconds=60.0)
    values.update(overrides)
    return launch_flags.default_values("mnist", **values)


@pytest.mark.parametrize("runtime", ["local", "fused"])
def test_a_32_wide_run_trains_its_critic_on_32_wide_canvases_and_is_evaluated(tmp_path, data_dir, runtime):
    config = launch_flags.config_from_values(reduced_values(tmp_path, runtime=runtime))
    assert config.discriminator.image_size == 32
    data = load_run_data(config)
    assert data.images.shape[1:] == (32, 32, 1)
    result = run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    assert result["counters"]["updates"] == 3 and result["counters"]["disc_updates"] >= 1
    path = checkpointing.latest_checkpoint(config.runtime.checkpoint_dir)
    replay = checkpointing.restore_tree(f"{path}/replay")
    canvases = replay["canvases"]
    assert np.asarray(canvases).shape[1:] == (32, 32, 1)
    assert np.asarray(canvases).min() < 255        # painted canvases reached the critic's replay
    (record,) = read_eval_log(config.runtime.checkpoint_dir)
    metrics = record["metrics"]
    assert np.isfinite(metrics["frechet"]) and 0.0 <= metrics["classifier_confidence"] <= 1.0
    assert metrics["real_frechet"] < metrics["blank_frechet"]


def test_a_critic_at_another_width_than_the_observation_is_refused(tmp_path):
    config = launch_flags.config_from_values(reduced_values(tmp_path))
    with pytest.raises(ValueError, match=r"image_size \(64\) must equal the observation width \(32\)"):
        dataclasses.replace(config, discriminator=dataclasses.replace(config.discriminator,
                                                                      image_size=64))
