"""The policy learner: a pure, jittable V-trace update and ``PolicyLearner``, the thin shell around it.

Acme style: ``LearnerState`` is a small NamedTuple; ``make_update_step(agent, config)`` returns a
pure ``update_step(state, batch) -> (state, metrics)`` that the fused one-GPU runtime can call
inside its own ``jit``/``scan``; ``PolicyLearner`` jits it, holds the state, counts, checks
batches; ``get_state``/``set_state`` hand the state to a runtime, which checkpoints it
(``spiral.actors.checkpointing``, the one on-disk format). Ray wraps ``PolicyLearner``
elsewhere; nothing here imports Ray.

The update (SPIRAL.md §5): teacher-forced logits and values, V-trace with the batch's rewards,
loss = policy gradient + 0.5 × baseline + entropy_cost × (−entropy) (``spiral.learner.losses``),
global-norm clip 40, Adam(β1 0.5, β2 0.999, ε 1e-8). A step whose loss, gradients or new
parameters are not finite is refused inside the jitted function: parameters and optimiser state
are kept (a select, not a branch), ``skipped_updates`` counts it and the metrics report
``update_applied = 0``.

Value normalisation (``PolicyLearnerConfig.value_normalisation``): ``ValueStats`` holds the
running first and second moments of the V-trace targets; after each update they move towards the
batch's, and with PopArt the value head's last layer is rescaled so that σ'·ṽ' + μ' = σ·ṽ + μ
(van Hasselt et al. 2016, "Preserving Outputs Precisely").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from spiral.learner import losses
from spiral.learner.agent import Agent
from spiral.learner.config import AgentConfig, PolicyLearnerConfig
from spiral.learner.types import FIRST, LAST, Trajectory, batch_to_time_major, check_trajectory

Array = jax.Array
Metrics = dict


class Hyperparams(NamedTuple):
    """Hyperparameters that population-based training may change between updates (no recompile)."""
    learning_rate: Array  # float32 []
    entropy_cost: Array   # float32 []


class ValueStats(NamedTuple):
    """Running moments of the V-trace targets (reward units) that normalise the value head."""
    mean: Array             # float32 []: μ
    mean_squared: Array     # float32 []: ν; σ = sqrt(ν − μ²)
    count: Array            # float32 []: updates averaged so far (exact average while < 1/β)


class LearnerState(NamedTuple):
    params: Any             # the agent's parameter pytree (float32)
    opt_state: Any          # Adam's state over the parameters raveled into one flat vector
    step: Array             # int32 []: updates applied so far = the version of ``params``
    rng: Array              # uint32 [2]: the learner's key; the update itself draws no randomness
    skipped_updates: Array  # int32 []: updates refused for a non-finite loss or gradient
    hyperparams: Hyperparams
    value_stats: ValueStats


def initial_value_stats() -> ValueStats:
    """μ = 0, σ = 1: the identity, until the first update's targets arrive."""
    return ValueStats(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32),
                      jnp.zeros((), jnp.float32))


def value_scale(stats: ValueStats, config: PolicyLearnerConfig) -> losses.ValueScale:
    """(μ, σ) for the loss; the identity when ``value_normalisation`` is "none"."""
    if config.value_normalisation == "none":
        return losses.ValueScale(jnp.float32(0.0), jnp.float32(1.0))
    variance = jnp.maximum(stats.mean_squared - stats.mean ** 2, 0.0)
    return losses.ValueScale(stats.mean, jnp.maximum(jnp.sqrt(variance), config.value_std_min))


def update_value_stats(stats: ValueStats, batch_mean: Array, batch_mean_squared: Array,
                       step_size: float) -> ValueStats:
    """Moves (μ, ν) towards the batch's moments by max(β, 1/(count+1)): the exact average of the
    first 1/β batches (no bias towards the initial μ = 0, σ = 1), then an exponential average."""
    rate = jnp.maximum(jnp.float32(step_size), 1.0 / (stats.count + 1.0))
    return ValueStats(stats.mean + rate * (batch_mean - stats.mean),
                      stats.mean_squared + rate * (batch_mean_squared - stats.mean_squared),
                      stats.count + 1.0)


def episode_return_stats(reward: Array, discount: Array, valid: Array) -> ValueStats:
    """Moments of the rewards-to-go Σ_{s≥t} (Π discount) r_s over the valid steps of time-major
    [T, B] whole-episode unrolls: the statistics the first update normalises with, so that even
    the first step sees targets of unit scale (count stays 0: the first update's V-trace targets
    then replace them)."""
    def backwards(carry, x):
        r, d = x
        carry = r + d * carry
        return carry, carry
    _, to_go = jax.lax.scan(backwards, jnp.zeros_like(reward[0]), (reward, discount), reverse=True)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    return ValueStats(jnp.sum(valid * to_go) / count, jnp.sum(valid * to_go ** 2) / count,
                      jnp.zeros((), jnp.float32))


def preserve_value_outputs(value_params: dict, old: losses.ValueScale,
                           new: losses.ValueScale) -> dict:
    """PopArt's POP: rescale the value head's Dense(1) so σ_new·ṽ_new + μ_new = σ_old·ṽ_old + μ_old
    for every input: W' = W·σ_old/σ_new, b' = (σ_old·b + μ_old − μ_new)/σ_new."""
    return {"kernel": value_params["kernel"] * (old.std / new.std),
            "bias": (old.std * value_params["bias"] + old.mean - new.mean) / new.std}


def make_optimizer(config: PolicyLearnerConfig) -> optax.GradientTransformation:
    """Global-norm clip, then Adam's scaling; the learning rate is applied by the update step
    from ``LearnerState.hyperparams`` so it can change without recompiling."""
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))


def init_learner_state(agent: Agent, config: PolicyLearnerConfig, rng: Array,
                       params: Any = None) -> LearnerState:
    """Fresh learner state: parameters from ``rng`` (unless given), zero counters."""
    params_rng, learner_rng = jax.random.split(rng)
    if params is None:
        params = agent.init(params_rng)
    else:   # a copy: the update may donate (and so delete) the state's buffers on GPU
        params = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)
    return LearnerState(
        params=params,
        opt_state=make_optimizer(config).init(ravel_pytree(params)[0]),  # over the flat vector
        step=jnp.zeros((), jnp.int32),
        rng=learner_rng,
        skipped_updates=jnp.zeros((), jnp.int32),
        hyperparams=Hyperparams(jnp.asarray(config.learning_rate, jnp.float32),
                                jnp.asarray(config.entropy_cost, jnp.float32)),
        value_stats=initial_value_stats())


def make_update_step(agent: Agent, config: PolicyLearnerConfig
                     ) -> Callable[[LearnerState, Trajectory], tuple[LearnerState, Metrics]]:
    """The pure update ``update_step(state, batch) -> (state, metrics)``.

    ``batch`` is a ``Trajectory`` batch ([B, T+1] observations, see ``spiral.learner.types``);
    shapes and dtypes are checked when it is traced (``ValueError`` naming the field). A
    time-major producer (a ``lax.scan`` rollout) can swap its axes to batch-major before the
    call: inside one ``jit`` XLA cancels that transpose against the update's own.
    """
    optimizer = make_optimizer(config)
    config.check_entropy_keys(agent.action_keys)
    entropy_weights = dict(config.entropy_weights)
    entropy_sizes = agent.config.action_sizes if config.entropy_normalise else None

    def loss_fn(params, tm: Trajectory, entropy_cost, scale: losses.ValueScale):
        is_first = tm.step_type == FIRST
        # An action taken at a LAST observation is the dummy one before an auto-reset.
        valid = (tm.step_type[:-1] != LAST).astype(jnp.float32)
        out = agent.unroll(params, tm.observation, is_first, tm.action, tm.initial_state,
                           tm.noise)
        hyper = losses.LossHyperparams(entropy_cost, config.baseline_cost,
                                       config.clip_rho_threshold, config.clip_pg_rho_threshold,
                                       config.clip_c_threshold, entropy_weights, entropy_sizes)
        return losses.impala_loss(out.logits, tm.behaviour_logits, tm.action, out.values,
                                  tm.reward, tm.discount * config.discount, valid, hyper, scale)

    def update_step(state: LearnerState, batch: Trajectory) -> tuple[LearnerState, Metrics]:
        check_trajectory(batch, agent.config, batched=True)
        tm = batch_to_time_major(batch)
        value_stats = state.value_stats
        if config.value_normalisation != "none":   # before any update: from this batch's returns
            valid = (tm.step_type[:-1] != LAST).astype(jnp.float32)
            first = episode_return_stats(tm.reward, tm.discount * config.discount, valid)
            value_stats = jax.tree.map(lambda a, b: jnp.where(value_stats.count > 0, a, b),
                                       value_stats, first)
        scale = value_scale(value_stats, config)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, tm, state.hyperparams.entropy_cost, scale)
        # The optimiser works on one flat vector: the same arithmetic as per leaf, but a few
        # fused kernels instead of several per parameter array (633 -> 400 kernels for the test
        # network's whole update; it compiles ~20% faster on CPU).
        flat_params, unravel = ravel_pytree(state.params)
        flat_grads, _ = ravel_pytree(grads)
        grad_norm = jnp.sqrt(jnp.sum(flat_grads ** 2))
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = optimizer.update(flat_grads, state.opt_state)
        lr = state.hyperparams.learning_rate
        new_params = unravel(flat_params - lr * updates)
        if config.value_normalisation != "none":
            value_stats = update_value_stats(value_stats, metrics["mean_vs"],
                                             metrics["mean_vs_squared"], config.value_stats_step)
            if config.value_normalisation == "popart":
                new_params = dict(new_params)
                new_params["value"] = preserve_value_outputs(
                    new_params["value"], scale, value_scale(value_stats, config))
        new_flat_params, _ = ravel_pytree(new_params)
        ok = ok & jnp.all(jnp.isfinite(new_flat_params))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        new_state = state._replace(
            params=keep(new_params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            step=state.step + ok.astype(jnp.int32),
            skipped_updates=state.skipped_updates + (~ok).astype(jnp.int32),
            value_stats=keep(value_stats, state.value_stats))

        new_scale = value_scale(new_state.value_stats, config)
        lag = (state.step - batch.policy_version).astype(jnp.float32)
        metrics = dict(metrics)
        metrics.update({
            "grad_norm": grad_norm,
            "update_applied": ok.astype(jnp.float32),
            "skipped_updates": new_state.skipped_updates,
            "step": new_state.step,
            "learning_rate": lr,
            "entropy_cost": state.hyperparams.entropy_cost,
            "value_mean": new_scale.mean,
            "value_std": new_scale.std,
            "policy_lag_mean": jnp.mean(lag),
            "policy_lag_max": jnp.max(lag),
        })
        return new_state, metrics

    return update_step


@functools.lru_cache(maxsize=None)
def _jitted_update_step(agent_config: AgentConfig, config: PolicyLearnerConfig):
    """One jitted update per configuration, shared by learners in a process (compiles once).
    Called with the initial learning rate and entropy cost zeroed: they live in the state, so
    learners that differ only there (a population's members) share it."""
    agent = Agent(agent_config, config.compute_dtype, config.transposed_conv)
    # Donating the state lets XLA update parameters in place; the CPU backend does not use it.
    donate = () if jax.default_backend() == "cpu" else (0,)
    return jax.jit(make_update_step(agent, config), donate_argnums=donate)


class PolicyLearner:
    """Holds a ``LearnerState``, runs the jitted update on batches of trajectories, checkpoints.

    Args:
      agent_config: the network and action space (must match the actors').
      config: the update's hyperparameters.
      seed: seeds the initial parameters and the learner's key.
      params: optional initial parameters (e.g. from a pretrained agent).
    """

    def __init__(self, agent_config: AgentConfig,
                 config: PolicyLearnerConfig = PolicyLearnerConfig(), seed: int = 0,
                 params: Any = None):
        self.agent_config = agent_config
        self.config = config
        self.agent = Agent(agent_config, config.compute_dtype, config.transposed_conv)
        self.update_step = make_update_step(self.agent, config)
        self._jitted_update = _jitted_update_step(
            agent_config, dataclasses.replace(config, learning_rate=0.0, entropy_cost=0.0))
        self._state = init_learner_state(self.agent, config, jax.random.PRNGKey(seed), params)
        self.num_calls = 0

    # --------------------------------------------------------------------------- state
    @property
    def state(self) -> LearnerState:
        return self._state

    @property
    def params(self):
        return self._state.params

    @property
    def step(self) -> int:
        """Updates applied so far: the version number of ``params``."""
        return int(self._state.step)

    @property
    def skipped_updates(self) -> int:
        return int(self._state.skipped_updates)

    def get_state(self) -> LearnerState:
        """The current state (Acme's ``save``). On GPU/TPU the next ``update`` donates its buffers
        to XLA: copy it (``jax.device_get``) to keep it across updates."""
        return self._state

    def set_state(self, state: LearnerState) -> None:
        if jax.tree.structure(state) != jax.tree.structure(self._state):
            raise ValueError("set_state: the state's structure does not match this learner's "
                             "(different AgentConfig or PolicyLearnerConfig?).")
        self._state = state

    def set_hyperparameters(self, learning_rate: Optional[float] = None,
                            entropy_cost: Optional[float] = None) -> None:
        """Change the learning rate / entropy cost (population-based training); no recompile."""
        hp = self._state.hyperparams
        for name, value in (("learning_rate", learning_rate), ("entropy_cost", entropy_cost)):
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        self._state = self._state._replace(hyperparams=Hyperparams(
            hp.learning_rate if learning_rate is None else jnp.asarray(learning_rate, jnp.float32),
            hp.entropy_cost if entropy_cost is None else jnp.asarray(entropy_cost, jnp.float32)))

    # --------------------------------------------------------------------------- update
    def update(self, batch: Trajectory, fetch_metrics: bool = True) -> Metrics:
        """One update on a batch of trajectories ([B, ...], see ``stack_trajectories``).

        Returns the metrics as Python floats (``fetch_metrics=False``: as device arrays, without
        waiting for the update to finish). A refused update logs a warning.
        """
        check_trajectory(batch, self.agent_config, batched=True)
        self._state, metrics = self._jitted_update(self._state, batch)
        self.num_calls += 1
        if not fetch_metrics:
            return metrics
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if metrics["update_applied"] == 0.0:
            logging.warning("PolicyLearner refused update %d: non-finite loss (%s) or gradient norm "
                            "(%s); parameters unchanged (%d refused so far).", self.num_calls,
                            metrics["total_loss"], metrics["grad_norm"],
                            int(metrics["skipped_updates"]))
        return metrics
