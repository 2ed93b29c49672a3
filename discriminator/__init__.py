"""The discriminator learner: the critic that turns "looks like the data" into a reward.

One job: train a critic on real images versus the agent's final canvases and score canvases
for the actors. Runs without Ray, on CPU for tests and GPU for real work. Must never import Ray.

Public API:
* ``DiscriminatorConfig``: every hyperparameter, the paper's values as defaults.
* ``init_state``, ``make_update_step``, ``scoring_weights``, ``DiscriminatorState``: the pure update.
* ``DiscriminatorLearner``: the thin shell (jit, sample, publish, checkpoint).
* ``Replay``: the ring buffer of final canvases.
* ``canvas_scores``, ``episode_rewards``, ``tca_rewards``, ``final_rewards``, ``l2_distance``: pure
  reward functions; ``make_reward_fn``, ``make_episode_reward_fn``, ``put_weights``: their jitted
  CPU wrappers for the actors.
"""

from spiral.discriminator.config import DiscriminatorConfig
from spiral.discriminator.inputs import check_images, critic_input, half_masks, random_half_masks
from spiral.discriminator.learning import (DiscriminatorLearner, DiscriminatorState, init_state,
                                           make_update_step, scoring_weights)
from spiral.discriminator.networks import critic_forward, init_critic, normalized_weights
from spiral.discriminator.replay import Replay
from spiral.discriminator.reward import (REWARD_MODES, canvas_scores, episode_rewards, final_rewards,
                                         l2_distance, l2_rewards, make_episode_reward_fn,
                                         make_reward_fn, put_weights, tca_rewards)

__all__ = [
    "DiscriminatorConfig", "DiscriminatorLearner", "DiscriminatorState", "REWARD_MODES", "Replay",
    "canvas_scores", "check_images", "critic_forward", "critic_input", "episode_rewards",
    "final_rewards", "half_masks", "init_critic", "init_state", "l2_distance", "l2_rewards",
    "make_episode_reward_fn", "make_reward_fn", "make_update_step", "normalized_weights",
    "put_weights", "random_half_masks", "scoring_weights", "tca_rewards",
]
