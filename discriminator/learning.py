"""The discriminator's update: a pure function over a small state, and the thin learner around it.

``make_update_step(config)`` returns ``update_step(state, fake, real=None, targets=None) ->
(state, metrics)``: pure, jittable, no host callbacks, so the fused one-GPU runtime can call it
inside its own jitted program. ``DiscriminatorLearner`` holds the state, jits the update, samples
batches from a ``Replay`` and publishes reward parameters with a version; a runtime checkpoints its
state (``state_to_tree``, ``spiral.actors.checkpointing``).

Batches (images uint8 0..255 or float32 in [0, 1], [B, 64, 64, C]):
* unconditional: ``fake`` = final canvases, ``real`` = dataset images (same B, for the penalty's
  interpolates);
* conditional / complement: ``fake`` = final canvases and ``targets`` = the targets the actors
  painted (the fake pair is (canvas, its target)); ``real`` defaults to ``targets``, so the real
  pair is (target, target) — the critic compares, for the same targets, the agent's canvas with
  the perfect reconstruction. The complement D draws one half mask per index and uses it for both
  the real and the fake pair of that index (a paired comparison, and interpolates that stay
  well-formed pairs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spiral.discriminator import inputs as inputs_lib
from spiral.discriminator import losses
from spiral.discriminator import networks
from spiral.discriminator.config import DiscriminatorConfig


class DiscriminatorState(NamedTuple):
    """Everything an update reads and writes. A pytree of arrays only."""
    params: networks.Params          # trained weights (before spectral normalisation)
    spectral: networks.Spectral      # power-iteration vectors u, one per layer ({} without SN)
    opt_state: optax.OptState        # Adam moments
    step: jax.Array                  # int32 scalar: updates done so far
    rng: jax.Array                   # uint32[2] raw PRNG key (interpolation α, complement masks)


def make_optimizer(config: DiscriminatorConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)


def init_state(config: DiscriminatorConfig, rng: jax.Array) -> DiscriminatorState:
    """A fresh state: random critic, zero Adam moments, step 0."""
    return _init_state(config, rng)


@functools.partial(jax.jit, static_argnums=0)
def _init_state(config: DiscriminatorConfig, rng: jax.Array) -> DiscriminatorState:
    # Jitted as a whole: op-by-op, the many small initialisers each pay a compile on CPU.
    init_rng, state_rng = jax.random.split(rng)
    params, spectral = networks.init_critic(init_rng, config)
    opt_state = make_optimizer(config).init(params)
    return DiscriminatorState(params, spectral, opt_state, jnp.zeros((), jnp.int32), state_rng)


def scoring_weights(state: DiscriminatorState) -> networks.Params:
    """The weights the reward uses: spectral normalisation folded into the kernels (pure)."""
    weights, _ = networks.normalized_weights(state.params, state.spectral)
    return weights


def _pairs(config: DiscriminatorConfig, fake, real, targets, rng):
    """(real critic inputs, fake critic inputs) for one batch; see the module docstring."""
    fake = inputs_lib.to_float(fake)
    if config.conditional:
        if targets is None:
            raise ValueError("A conditional discriminator needs the targets the actors painted: pass targets.")
        targets = inputs_lib.to_float(targets)
        real = targets if real is None else inputs_lib.to_float(real)
    else:
        if real is None:
            raise ValueError("Pass real images (dataset images) for the unconditional discriminator.")
        if targets is not None:
            raise ValueError("targets were given but the config is unconditional (conditional=False).")
        real = inputs_lib.to_float(real)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake batches must have the same shape (the gradient penalty pairs "
                         f"them), got {tuple(real.shape)} and {tuple(fake.shape)}.")
    masks = (inputs_lib.random_half_masks(rng, fake.shape[0], config.image_size)
             if config.complement else None)
    real_inputs = inputs_lib.critic_input(real, real, masks, config)
    fake_inputs = inputs_lib.critic_input(fake, targets, masks, config)
    return real_inputs, fake_inputs


def make_update_step(config: DiscriminatorConfig):
    """``update_step(state, fake, real=None, targets=None) -> (state, metrics)``, pure and jittable.

    One Adam step on the critic loss of ``config.loss`` and, with spectral normalisation, one
    power-iteration step. Metrics are scalars: "loss", "critic_real", "critic_fake" (mean outputs),
    and for wgan_gp "wasserstein" (critic_real − critic_fake), "gradient_penalty",
    "interpolate_gradient_norm" (mean ‖∇D(x̂)‖), "mean_penalty"; for sngan "accuracy_real",
    "accuracy_fake" (fraction on the right side of logit 0); always "param_gradient_norm".
    """
    optimizer = make_optimizer(config)

    def loss_fn(params, spectral, real_inputs, fake_inputs, alpha):
        weights, new_spectral = networks.normalized_weights(params, spectral)

        def critic(x):
            return networks.critic_forward(weights, x, config.leaky_relu_slope)

        batch = real_inputs.shape[0]
        scores = critic(jnp.concatenate([real_inputs, fake_inputs], axis=0))
        scores_real, scores_fake = scores[:batch], scores[batch:]
        metrics = {"critic_real": jnp.mean(scores_real), "critic_fake": jnp.mean(scores_fake)}
        if config.loss == "wgan_gp":
            penalty, norms = losses.gradient_penalty(critic, real_inputs, fake_inputs, alpha, config.gp_target)
            centring = losses.mean_output_penalty(scores_real, scores_fake)
            loss = (losses.wasserstein_critic_loss(scores_real, scores_fake)
                    + config.gp_weight * penalty + config.mean_penalty * centring)
            metrics.update(wasserstein=metrics["critic_real"] - metrics["critic_fake"],
                           gradient_penalty=penalty, interpolate_gradient_norm=jnp.mean(norms),
                           mean_penalty=centring)
        else:
            loss = losses.non_saturating_discriminator_loss(scores_real, scores_fake)
            metrics.update(accuracy_real=jnp.mean(scores_real > 0), accuracy_fake=jnp.mean(scores_fake < 0))
        metrics["loss"] = loss
        return loss, (new_spectral, metrics)

    def update_step(state: DiscriminatorState, fake, real=None, targets=None):
        rng, mask_rng, alpha_rng = jax.random.split(state.rng, 3)
        real_inputs, fake_inputs = _pairs(config, fake, real, targets, mask_rng)
        alpha = jax.random.uniform(alpha_rng, (real_inputs.shape[0],), jnp.float32)
        grads, (spectral, metrics) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.spectral, real_inputs, fake_inputs, alpha)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["param_gradient_norm"] = optax.tree.norm(grads)
        return DiscriminatorState(params, spectral, opt_state, state.step + 1, rng), metrics

    return update_step


@functools.lru_cache(maxsize=None)
def _jitted_update(config: DiscriminatorConfig):
    """One compiled update per config, shared by every learner built with it."""
    return jax.jit(make_update_step(config))


class DiscriminatorLearner:
    """Holds a ``DiscriminatorState``; jits the update; publishes; checkpoints. No Ray.

    ``update(fake, real, targets)`` trains on a given batch; ``train_step(replay, real_images)``
    samples the batch itself. Host-side sampling draws from a generator seeded by (seed, step), so
    a restored learner continues exactly (given the same replay content and real images).
    """

    def __init__(self, config: DiscriminatorConfig, seed: int = 0):
        self.config = config
        self.seed = int(seed)
        self._update = _jitted_update(config)
        self._scoring_weights = jax.jit(scoring_weights)
        self._state = init_state(config, jax.random.PRNGKey(self.seed))

    @property
    def state(self) -> DiscriminatorState:
        return self._state

    @property
    def step(self) -> int:
        return int(self._state.step)

    def set_state(self, state: DiscriminatorState) -> None:
        """Replace the state (e.g. one restored by a runtime's checkpoint); structure must match."""
        if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(self._state):
            raise ValueError("set_state: the state's structure does not match this learner's "
                             "(a different DiscriminatorConfig?).")
        self._state = state

    def update(self, fake, real=None, targets=None) -> dict:
        """One update on validated host batches; returns the metrics as jax scalars (not synced)."""
        channels = self.config.image_channels
        inputs_lib.check_images(fake, "fake", channels, self.config.image_size)
        if real is not None:
            inputs_lib.check_images(real, "real", channels, self.config.image_size)
        if targets is not None:
            inputs_lib.check_images(targets, "targets", channels, self.config.image_size)
        self._state, metrics = self._update(self._state, fake, real, targets)
        return metrics

    def sample_batch(self, replay, real_images=None):
        """(fake, real, targets) for the next update: fakes (and targets) from the replay, reals
        drawn uniformly from ``real_images`` (unconditional; conditional reals are the targets)."""
        rng = np.random.default_rng([self.seed, self.step])
        fake, targets = replay.sample(self.config.batch_size, rng=rng)
        real = None
        if not self.config.conditional:
            if real_images is None:
                raise ValueError("An unconditional discriminator needs real_images to train on.")
            real = real_images[rng.integers(0, len(real_images), size=self.config.batch_size)]
        return fake, real, targets

    def train_step(self, replay, real_images=None) -> dict:
        """Samples a batch (``sample_batch``) and updates on it."""
        return self.update(*self.sample_batch(replay, real_images))

    def publish(self) -> tuple[int, dict]:
        """(version, reward weights as numpy arrays, ready for ``ray.put``). Version = updates done."""
        weights = jax.device_get(self._scoring_weights(self._state))
        return self.step, jax.tree_util.tree_map(np.asarray, weights)


def state_to_tree(state: DiscriminatorState) -> dict:
    """The state as nested dicts of arrays (orbax-friendly; empty containers dropped)."""
    leaves = jax.tree_util.tree_leaves(state.opt_state)
    tree = {"params": state.params, "opt_leaves": {str(i): leaf for i, leaf in enumerate(leaves)},
            "step": state.step, "rng": state.rng}
    if state.spectral:
        tree["spectral"] = state.spectral
    return tree


def state_from_tree(tree: dict, like: DiscriminatorState) -> DiscriminatorState:
    treedef = jax.tree_util.tree_structure(like.opt_state)
    opt_leaves = [tree["opt_leaves"][str(i)] for i in range(treedef.num_leaves)]
    return DiscriminatorState(
        params=tree["params"], spectral=tree.get("spectral", {}),
        opt_state=jax.tree_util.tree_unflatten(treedef, opt_leaves),
        step=jnp.asarray(tree["step"], jnp.int32), rng=jnp.asarray(tree["rng"], jnp.uint32))
