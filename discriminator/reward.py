"""Rewards from the discriminator (SPIRAL.md §4): small pure functions, and jitted CPU wrappers.

``weights`` below are the published reward weights (``DiscriminatorLearner.publish()`` or, inside
a jitted program, ``learning.scoring_weights(state)``): spectral normalisation is already folded in.
Canvases are uint8 0..255 or float32 in [0, 1].

* ``canvas_scores``: the score of each canvas: the critic output (wgan_gp), or for sngan log σ(logit)
  (default) or the logit. For the complement D the score is the mean over the four half masks
  [choice]: deterministic (no mask noise in the reward), it judges every pixel of the canvas, and
  it is the same function at every step, so the TCA rewards telescope. It costs four critic passes.
* ``final_rewards`` (SPIRAL): 0 at every step but the last, whose reward is the score of the final
  canvas.
* ``tca_rewards`` (SPIRAL++ temporal credit assignment): r_t = D(c_t) − D(c_{t−1}) for t = 1..T.
  The sum over an episode is D(c_T) − D(c_0): the final score minus the score of the initial
  (blank) canvas, which no action changes, so the return differs from SPIRAL's by a constant per
  target.
* ``l2_rewards`` (conditional baseline): −‖c_T − target‖², summed over pixels and channels, at the
  last step; 0 before (mode "l2"). Normalised (the default of the runs) it is divided by the blank
  canvas's distance ‖c_0 − target‖²: −1 for a blank canvas, 0 for a perfect copy, whatever the
  target's ink or the image width. With ``per_step`` (mode "l2_tca") each action earns the
  distance it removed, d_{t−1} − d_t; the sum over an episode is d_0 − d_T, the final reward plus
  a constant per target, as for TCA.
* ``episode_rewards``: one entry point, [T+1, B, ...] canvases → [T, B] rewards, for each mode.

Time convention: ``canvases[0]`` is the canvas at reset, ``canvases[t]`` the canvas after the t-th
action; ``rewards[t - 1]`` is the reward of the t-th action.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from spiral.discriminator import inputs as inputs_lib
from spiral.discriminator import networks
from spiral.discriminator.config import DiscriminatorConfig

REWARD_MODES = ("final", "tca", "l2", "l2_tca")
L2_MODES = ("l2", "l2_tca")


def canvas_scores(weights: networks.Params, canvases, targets=None, *,
                  config: DiscriminatorConfig) -> jax.Array:
    """The discriminator's score [N] of canvases [N, 64, 64, C] (with their targets if conditional)."""
    canvases = inputs_lib.to_float(canvases)
    if config.conditional:
        if targets is None:
            raise ValueError("A conditional discriminator scores (canvas, target) pairs: pass targets.")
        targets = inputs_lib.to_float(targets)
    elif targets is not None:
        raise ValueError("targets were given but the config is unconditional (conditional=False).")

    def critic(x):
        return networks.critic_forward(weights, x, config.leaky_relu_slope)

    if config.complement:
        count = canvases.shape[0]
        masks = inputs_lib.half_masks(config.image_size)       # [4, S, S, 1]
        per_mask = jax.vmap(lambda m: inputs_lib.critic_input(
            canvases, targets, jnp.broadcast_to(m, (count,) + m.shape), config))(masks)
        scores = critic(per_mask.reshape((-1,) + per_mask.shape[2:])).reshape(masks.shape[0], count)
        scores = jnp.mean(scores, axis=0)
    else:
        scores = critic(inputs_lib.critic_input(canvases, targets, None, config))
    if config.loss == "sngan" and config.sngan_reward == "log_sigmoid":
        scores = jax.nn.log_sigmoid(scores)
    return scores


def final_rewards(final_scores: jax.Array, num_steps: int) -> jax.Array:
    """[T, B]: zeros, and the final scores [B] at the last step."""
    return jnp.zeros((num_steps,) + final_scores.shape, final_scores.dtype).at[-1].set(final_scores)


def tca_rewards(scores: jax.Array) -> jax.Array:
    """r_t = D(c_t) − D(c_{t−1}): scores [T+1, B] → rewards [T, B]."""
    return scores[1:] - scores[:-1]


def l2_distance(canvases, targets) -> jax.Array:
    """‖canvas − target‖² per image [N], summed over pixels and channels, images in [0, 1]."""
    difference = inputs_lib.to_float(canvases) - inputs_lib.to_float(targets)
    return jnp.sum(difference * difference, axis=(1, 2, 3))


def l2_rewards(canvases, targets, *, per_step: bool = False, normalise: bool = True) -> jax.Array:
    """The L2 baseline's rewards [T, B] from an episode's canvases [T+1, B, W, W, C] (any width).

    ``normalise``: distances are divided by max(‖c_0 − target‖², 1), c_0 being the canvas at reset
    (a target identical to the blank canvas keeps the raw scale rather than dividing by zero).
    ``per_step``: r_t = d_{t−1} − d_t (the distance each action removed); else −d_T at the last step.
    """
    distances = jax.vmap(l2_distance, in_axes=(0, None))(canvases, targets)   # [T+1, B]
    if normalise:
        distances = distances / jnp.maximum(distances[0], 1.0)
    if per_step:
        return distances[:-1] - distances[1:]
    return final_rewards(-distances[-1], canvases.shape[0] - 1)


def episode_rewards(weights: Optional[networks.Params], canvases, targets=None, *,
                    config: DiscriminatorConfig, mode: str = "final",
                    normalise_l2: bool = True) -> jax.Array:
    """Per-step rewards [T, B] for an episode's canvases [T+1, B, W, W, C] (targets [B, ...]).

    ``mode``: "final" (SPIRAL), "tca" (SPIRAL++), "l2" or "l2_tca" (the conditional baseline, its
    final or per-step form, ``normalise_l2`` as ``l2_rewards``; these need no weights and take any
    width W, the critic's modes W = 64). Pure and jittable (``config``, ``mode``, ``normalise_l2``
    static).
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"mode must be one of {REWARD_MODES}, got {mode!r}.")
    if canvases.ndim != 5:
        raise ValueError(f"episode canvases must be [T+1, B, 64, 64, C], got shape {tuple(canvases.shape)}.")
    steps_plus_one, batch = canvases.shape[:2]
    if steps_plus_one < 2:
        raise ValueError("an episode needs at least the initial canvas and one action's canvas (T+1 >= 2).")
    num_steps = steps_plus_one - 1
    if mode in L2_MODES:
        if targets is None:
            raise ValueError("The L2 reward compares the final canvas with its target: pass targets.")
        return l2_rewards(canvases, targets, per_step=mode == "l2_tca", normalise=normalise_l2)
    if mode == "final":
        return final_rewards(canvas_scores(weights, canvases[-1], targets, config=config), num_steps)
    flat = canvases.reshape((-1,) + canvases.shape[2:])
    flat_targets = None
    if targets is not None:
        flat_targets = jnp.broadcast_to(targets, (steps_plus_one,) + targets.shape).reshape(flat.shape)
    scores = canvas_scores(weights, flat, flat_targets, config=config).reshape(steps_plus_one, batch)
    return tca_rewards(scores)


# ---- jitted wrappers for the actors (CPU) ------------------------------------------------------

def _cpu_device():
    return jax.devices("cpu")[0]


def put_weights(weights, device=None):
    """Moves published weights to ``device`` (CPU by default) once per version, so that reward
    calls do not copy them again."""
    return jax.device_put(weights, device or _cpu_device())


def make_reward_fn(config: DiscriminatorConfig, device=None) -> Callable:
    """``reward(weights, canvases, targets=None) -> np.ndarray [N]``: validated, jitted, on CPU.

    The score of each canvas (``canvas_scores``), e.g. the final-step reward of SPIRAL.
    """
    device = device or _cpu_device()
    scores = jax.jit(functools.partial(canvas_scores, config=config))

    def reward(weights, canvases, targets=None):
        _check_pair(canvases, targets, config, episode=False)
        return np.asarray(scores(put_weights(weights, device), jax.device_put(canvases, device),
                                 None if targets is None else jax.device_put(targets, device)))

    return reward


def make_episode_reward_fn(config: DiscriminatorConfig, mode: str = "final", device=None,
                           normalise_l2: bool = True) -> Callable:
    """``rewards(weights, canvases [T+1, B, ...], targets=None) -> np.ndarray [T, B]``, on CPU.

    ``weights`` may be None for the L2 modes, which also take canvases of any width.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"mode must be one of {REWARD_MODES}, got {mode!r}.")
    device = device or _cpu_device()
    rewards_fn = jax.jit(functools.partial(episode_rewards, config=config, mode=mode,
                                           normalise_l2=normalise_l2))

    def rewards(weights, canvases, targets=None):
        if mode in L2_MODES:
            if targets is None:
                raise ValueError("The L2 reward compares the final canvas with its target: pass targets.")
            if canvases.ndim != 5 or targets.shape != canvases.shape[1:]:
                raise ValueError(f"L2 rewards need canvases [T+1, B, W, W, C] and targets [B, W, W, C] "
                                 f"of the same image shape, got {tuple(canvases.shape)} and "
                                 f"{tuple(targets.shape)}.")
        else:
            _check_pair(canvases, targets, config, episode=True)
        if mode not in L2_MODES and weights is None:
            raise ValueError(f"mode {mode!r} needs the discriminator's published weights.")
        weights = None if weights is None else put_weights(weights, device)
        return np.asarray(rewards_fn(weights, jax.device_put(canvases, device),
                                     None if targets is None else jax.device_put(targets, device)))

    return rewards


def _check_pair(canvases, targets, config: DiscriminatorConfig, episode: bool) -> None:
    """Host-side validation of the reward inputs, with errors that name the fix."""
    channels, size = config.image_channels, config.image_size
    if episode:
        shape = tuple(getattr(canvases, "shape", ()))
        if len(shape) != 5:
            raise ValueError(f"episode canvases must be [T+1, B, 64, 64, C], got shape {shape}.")
        inputs_lib.check_images(canvases.reshape((-1,) + shape[2:]), "canvases", channels, size)
        batch = shape[1]
    else:
        inputs_lib.check_images(canvases, "canvases", channels, size)
        batch = canvases.shape[0]
    if targets is not None:
        inputs_lib.check_images(targets, "targets", channels, size)
        if targets.shape[0] != batch:
            raise ValueError(f"targets must be one per episode/canvas ({batch}), got {targets.shape[0]}.")
    elif config.conditional:
        raise ValueError("A conditional discriminator scores (canvas, target) pairs: pass targets.")
