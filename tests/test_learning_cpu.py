"""The agent learns: CPU-sized conditional MNIST reconstruction with the L2 reward.

A reduced configuration (32×32 observation, 16×16 grid, 5 strokes, the tiny network, batch 16,
learning rate 1e-3) with the launch flags' learning recipe (normalised per-step L2 rewards,
running value normalisation, the `flag` entropy weight), trained for a fixed number of policy
updates in the deterministic local runtime. The held-out L2 (the evaluation's own measure, 64
fixed test digits) must fall clearly below the blank canvas's: the bar a policy that learned to
stop painting does not clear (it scores exactly the blank canvas), and below the untrained
agent's and the random policy's.
Nothing here is tuned to the answer: a learner that does not learn (a broken gradient, a reward
with the wrong sign, a learning rate of 0, an exploration collapse) stays at or above the blank.
"""

import os

import jax
import pytest

from conftest import skip_unless
from spiral.actors import run_loop
from spiral.evaluation import checkpoint_metrics, log_checkpoint_metrics, read_eval_log
from spiral.launch import flags as launch_flags
from spiral.learner import Agent

UPDATES = 800
BLANK_FRACTION = 0.9   # a policy that stops painting scores 1.0; (a) reaches 0.67-0.78 by 800 updates


def reduced_config(run_dir, **overrides):
    values = dict(conditional=True, reward="l2", observation_width=32, grid_width=16,
                  episode_length=6, network="tiny", disc_network="tiny", runtime="local",
                  num_actors=1, envs_per_actor=16, batch_size=16, max_updates=UPDATES,
                  learning_rate=1e-3, run_dir=str(run_dir), checkpoint_every_minutes=60.0,
                  log_every_seconds=30.0, seed=0)
    values.update(overrides)
    return launch_flags.config_from_values(launch_flags.default_values("mnist", **values))


def test_l2_reward_lowers_the_heldout_l2_below_the_blank_canvas(tmp_path):
    data = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(data) and os.path.isdir(data), "no dataset folder: set SPIRAL_DATA_DIR")
    config = reduced_config(tmp_path)
    result = run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    assert result["counters"]["updates"] == UPDATES
    assert config.policy.value_normalisation == "running" and config.temporal_credit_assignment
    (record,) = read_eval_log(config.runtime.checkpoint_dir)   # the final checkpoint's evaluation
    trained = record["metrics"]
    untrained = checkpoint_metrics(config, Agent(config.agent).init(jax.random.PRNGKey(0)),
                                   seed=config.runtime.seed)
    print(f"held-out L2 after {UPDATES} updates: {trained['l2']:.1f}; untrained {untrained['l2']:.1f}, "
          f"random policy {trained['random_l2']:.1f}, blank canvas {trained['blank_l2']:.1f}")
    assert trained["random_l2"] == pytest.approx(untrained["random_l2"])
    assert trained["l2"] < BLANK_FRACTION * trained["blank_l2"]
    assert trained["l2"] < 0.5 * trained["random_l2"]
    assert trained["l2"] < BLANK_FRACTION * untrained["l2"]
