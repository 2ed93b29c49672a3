"""SPIRAL's agent as pure functions over a parameter pytree: a sampling mode and a teacher-forced mode.

``Agent(config)`` builds the network of SPIRAL.md §2 (``spiral.learner.networks``) for the action
spec of ``config`` and offers:

* ``init(rng) -> params``;
* ``sample_step(params, observation, is_first, state, noise, rng) -> (AgentOutput, AgentState)``,
  the **sampling mode** used by actors: one step for a batch of environments; samples every
  sub-action autoregressively and returns the actions, the logits of every key along the sampled
  path (the behaviour logits to record), the value and the next state;
* ``unroll(params, observation, is_first, action, initial_state, noise) -> UnrollOutput``, the
  **teacher-forced mode** used by the learner: over time-major ``[T+1, B]`` observations and
  ``[T, B]`` actions, returns every key's logits along the taken path and the values. The conv
  torso and the heads see time folded into batch; the LSTM runs over time with ``lax.scan``.

Both are pure (no Python-side state, no host callbacks), so they can be jitted on their own or
called inside another ``jit``/``scan`` (the fused runtime). At a FIRST observation the agent
resets its LSTM state to zeros and its previous action to all zeros, as the released agent did.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from spiral.learner import networks
from spiral.learner.config import (AgentConfig, NARROW_CONV_IMPLS, TRANSPOSED_CONV_IMPLS,
                                   compute_dtype_for)
from spiral.learner.types import AgentState, LSTMState, Observation

Array = jax.Array


class AgentOutput(NamedTuple):
    """One sampling step for a batch of B environments."""
    action: dict   # key -> int32 [B]
    logits: dict   # key -> float32 [B, num_values]: the behaviour logits along the sampled path
    value: Array   # float32 [B]


class UnrollOutput(NamedTuple):
    """Teacher-forced outputs over an unroll."""
    logits: dict   # key -> float32 [T, B, num_values], along the taken path
    values: Array  # float32 [T+1, B]; values[T] bootstraps


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


@functools.lru_cache(maxsize=None)
def _jitted_init(config: AgentConfig):
    """One compiled initialiser per network shape (parameters do not depend on compute dtype)."""
    return jax.jit(Agent(config)._init)


class Agent:
    """The SPIRAL agent network for one ``AgentConfig``; holds no parameters itself."""

    def __init__(self, config: AgentConfig, compute_dtype: str = "float32",
                 transposed_conv: str = "direct", narrow_convs: str = "direct"):
        if transposed_conv not in TRANSPOSED_CONV_IMPLS:
            raise ValueError(f"transposed_conv must be one of {TRANSPOSED_CONV_IMPLS}, "
                             f"got {transposed_conv!r}.")
        if narrow_convs not in NARROW_CONV_IMPLS:
            raise ValueError(f"narrow_convs must be one of {NARROW_CONV_IMPLS}, "
                             f"got {narrow_convs!r}.")
        self.narrow_convs = narrow_convs
        self.config = config
        self.compute_dtype = compute_dtype
        self.transposed_conv = transposed_conv
        dtype = compute_dtype_for(compute_dtype)
        self.action_keys = config.action_keys
        self.action_sizes = config.action_sizes
        self._torso = networks.Torso(
            action_sizes=self.action_sizes, grid_width=config.grid_width,
            channels=config.torso_channels, residual_blocks=config.torso_residual_blocks,
            output_size=config.torso_output_size, embed_dim=config.embed_dim,
            condition_hidden=config.condition_hidden, narrow_convs=narrow_convs, dtype=dtype)
        self._core = networks.LSTMCore(config.lstm_size, dtype=dtype)
        self._head = networks.AutoregressiveHead(
            action_sizes=self.action_sizes, grid_width=config.grid_width,
            decoder_channels=config.decoder_channels,
            decoder_residual_blocks=config.decoder_residual_blocks,
            embed_dim=config.embed_dim, mlp_hidden=config.head_mlp_hidden,
            transposed_conv=transposed_conv, narrow_convs=narrow_convs, dtype=dtype)
        self._value = nn.Dense(1, dtype=dtype)

    # ----------------------------------------------------------------------------- set-up
    def init(self, rng: Array) -> dict:
        """Fresh parameters (float32): {'torso', 'core', 'head', 'value'}.

        Every kernel is drawn as Flax's default (LeCun normal: truncated normal, variance
        1/fan_in, fan_in = product of all but the last axis), biases are zero except the LSTM
        forget gate's (+1). All kernels come from ONE random draw sliced per layer: XLA on CPU
        compiles each separate random op for ~0.1-0.2 s, so the per-layer draws of ``flax.init``
        (~60 of them) took 40-50 s to compile; this takes about a second.
        """
        return _jitted_init(self.config)(rng)

    def _init(self, rng: Array) -> dict:
        abstract = jax.eval_shape(self._flax_init, rng)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        kernel_sizes = [leaf.size for path, leaf in leaves if path[-1].key == "kernel"]
        draws = jax.random.truncated_normal(rng, -2.0, 2.0, (sum(kernel_sizes),), jnp.float32)
        values, offset = [], 0
        for path, leaf in leaves:
            name = path[-1].key
            if name == "kernel":
                fan_in = leaf.size // leaf.shape[-1]
                # Flax's variance_scaling: the truncated normal's stddev, corrected for the cut.
                std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
                values.append(draws[offset:offset + leaf.size].reshape(leaf.shape) * std)
                offset += leaf.size
            elif name == "bias":
                values.append(jnp.zeros(leaf.shape, leaf.dtype))
            else:
                raise AssertionError(f"Unexpected parameter {path}: Agent.init knows kernels and "
                                     f"biases only.")
        params = jax.tree_util.tree_unflatten(treedef, values)
        params["core"]["gates"]["bias"] = networks.lstm_gate_bias(self.config.lstm_size)
        return params

    def _flax_init(self, rng: Array) -> dict:
        c = self.config
        k_torso, k_core, k_head, k_value = jax.random.split(rng, 4)
        w = c.canvas_width
        image = jnp.zeros((1, w, w, c.channels * (2 if c.conditional else 1)), jnp.float32)
        mask = jnp.ones((1, len(self.action_keys)), jnp.float32)
        prev = {k: jnp.zeros((1,), jnp.int32) for k in self.action_keys}
        noise = jnp.zeros((1, c.noise_dim), jnp.float32)
        z_in = jnp.zeros((1, c.torso_output_size), jnp.float32)
        z = jnp.zeros((1, c.lstm_size), jnp.float32)
        return {
            "torso": self._torso.init(k_torso, image, mask, prev, noise)["params"],
            "core": self._core.init(k_core, z_in, z, z)["params"],
            "head": self._head.init(k_head, z, lambda k, logits: jnp.zeros((1,), jnp.int32))[
                "params"],
            "value": self._value.init(k_value, z)["params"],
        }

    def initial_state(self, batch_size: int) -> AgentState:
        """The state at the start of an episode: zero LSTM state, all-zero previous action."""
        zeros = jnp.zeros((batch_size, self.config.lstm_size), jnp.float32)
        return AgentState(LSTMState(zeros, zeros),
                          {k: jnp.zeros((batch_size,), jnp.int32) for k in self.action_keys})

    def sample_noise(self, rng: Array, batch_size: int) -> Array:
        """The per-episode noise vectors: standard normal, [B, noise_dim]. Draw at each FIRST."""
        return jax.random.normal(rng, (batch_size, self.config.noise_dim), jnp.float32)

    # ----------------------------------------------------------------------------- pieces
    def _image(self, observation: Observation) -> Array:
        """Canvas (and target beside it, when conditional) as float32 in [0, 1].

        Images are k/255 (uint8 k in records; float32 k/255 from the environment). Both are read
        as the integer level k = round(255·x) and divided the same way, so the learner (uint8)
        sees exactly the floats the actor (float32) saw.
        """
        def to_float(x):
            levels = (x.astype(jnp.float32) if x.dtype == jnp.uint8
                      else jnp.round(x.astype(jnp.float32) * 255.0))
            return levels / 255.0

        if (observation.target is not None) != self.config.conditional:
            raise ValueError(f"observation.target must be given exactly when the agent is "
                             f"conditional (AgentConfig.conditional={self.config.conditional}).")
        image = to_float(observation.canvas)
        if self.config.conditional:
            image = jnp.concatenate([image, to_float(observation.target)], axis=-1)
        return image

    def _torso_apply(self, params, observation: Observation, prev_action, noise) -> Array:
        return self._torso.apply({"params": params["torso"]}, self._image(observation),
                                 observation.action_mask, prev_action, noise)

    def _core_apply(self, params, x: Array, state: LSTMState) -> LSTMState:
        hidden, cell = self._core.apply({"params": params["core"]}, x, state.hidden, state.cell)
        return LSTMState(hidden, cell)

    def _value_apply(self, params, z: Array) -> Array:
        return self._value.apply({"params": params["value"]}, z)[..., 0].astype(jnp.float32)

    @staticmethod
    def _reset(is_first: Array, state: AgentState) -> AgentState:
        """Zero the LSTM state and the previous action where an episode starts."""
        def where_first(x):
            mask = is_first.reshape(is_first.shape + (1,) * (x.ndim - is_first.ndim))
            return jnp.where(mask, jnp.zeros_like(x), x)
        return jax.tree.map(where_first, state)

    def _check_step_inputs(self, observation, is_first, state, noise):
        b = is_first.shape[0]
        w, c = self.config.canvas_width, self.config.channels
        if observation.canvas.shape != (b, w, w, c):
            raise ValueError(f"observation.canvas has shape {observation.canvas.shape}, expected "
                             f"{(b, w, w, c)} (batch from is_first: {b}).")
        if observation.action_mask.shape != (b, len(self.action_keys)):
            raise ValueError(f"observation.action_mask has shape {observation.action_mask.shape}, "
                             f"expected {(b, len(self.action_keys))}.")
        if noise.shape != (b, self.config.noise_dim):
            raise ValueError(f"noise has shape {noise.shape}, expected {(b, self.config.noise_dim)}.")
        if set(state.prev_action) != set(self.action_keys):
            raise ValueError(f"state.prev_action keys {sorted(state.prev_action)} != action keys "
                             f"{list(self.action_keys)}.")

    # ----------------------------------------------------------------------------- modes
    def sample_step(self, params, observation: Observation, is_first: Array, state: AgentState,
                    noise: Array, rng: Array) -> tuple[AgentOutput, AgentState]:
        """Sampling mode: one step for B environments.

        Args:
          params: from ``init`` (or the learner).
          observation: ``Observation`` with [B, ...] fields (canvas uint8 or float32 in [0, 1]).
          is_first: bool [B], True where the observation is an episode's FIRST.
          state: ``AgentState`` from the previous step (or ``initial_state``).
          noise: float32 [B, noise_dim], this episode's noise (redraw it at each FIRST).
          rng: a PRNG key for the sub-action samples.
        Returns:
          ``AgentOutput`` (actions, behaviour logits of every key, value) and the next state
          (its ``prev_action`` is the action just sampled).
        """
        is_first = jnp.asarray(is_first, bool)
        self._check_step_inputs(observation, is_first, state, noise)
        state = self._reset(is_first, state)
        torso_out = self._torso_apply(params, observation, state.prev_action, noise)
        lstm = self._core_apply(params, torso_out, state.lstm)
        keys = dict(zip(self.action_keys, jax.random.split(rng, len(self.action_keys))))

        def sample(key, logits):
            return jax.random.categorical(keys[key], logits, axis=-1).astype(jnp.int32)

        logits, action = self._head.apply({"params": params["head"]}, lstm.hidden, sample)
        value = self._value_apply(params, lstm.hidden)
        return AgentOutput(action, logits, value), AgentState(lstm, action)

    def unroll(self, params, observation: Observation, is_first: Array, action: dict,
               initial_state: AgentState, noise: Array) -> UnrollOutput:
        """Teacher-forced mode over a time-major unroll.

        Args:
          observation: ``Observation`` with [T+1, B, ...] fields.
          is_first: bool [T+1, B].
          action: key -> int32 [T, B], the taken actions (``action[t]`` after observation ``t``).
          initial_state: ``AgentState`` with [B, ...] fields, the state before observation 0.
          noise: float32 [T+1, B, noise_dim].
        Returns:
          ``UnrollOutput``: logits [T, B, n] of every key along the taken path, values [T+1, B].
        """
        t1, b = is_first.shape
        t = t1 - 1
        w, c = self.config.canvas_width, self.config.channels
        if observation.canvas.shape != (t1, b, w, w, c):
            raise ValueError(f"observation.canvas has shape {observation.canvas.shape}, expected "
                             f"{(t1, b, w, w, c)} ([T+1, B, H, W, C] from is_first).")
        for k in self.action_keys:
            if k not in action or action[k].shape != (t, b):
                raise ValueError(f"action[{k!r}] must have shape {(t, b)} ([T, B]); got "
                                 f"{None if k not in action else action[k].shape}.")
        if noise.shape != (t1, b, self.config.noise_dim):
            raise ValueError(f"noise has shape {noise.shape}, expected "
                             f"{(t1, b, self.config.noise_dim)}.")
        is_first = jnp.asarray(is_first, bool)

        # The previous action at step t is action[t-1] (initial_state's at t = 0), zero at FIRST.
        prev_action = {k: jnp.concatenate([initial_state.prev_action[k][None], action[k]], axis=0)
                       for k in self.action_keys}
        prev_action = {k: jnp.where(is_first, 0, a) for k, a in prev_action.items()}

        fold = lambda x: x.reshape((t1 * b,) + x.shape[2:])
        torso_out = self._torso_apply(params, jax.tree.map(fold, observation),
                                      jax.tree.map(fold, prev_action), fold(noise))
        torso_out = torso_out.reshape(t1, b, -1)

        def core_step(lstm, inputs):
            x, first = inputs
            lstm = self._reset(first, AgentState(lstm, {})).lstm
            lstm = self._core_apply(params, x, lstm)
            return lstm, lstm.hidden

        _, hidden = jax.lax.scan(core_step, initial_state.lstm, (torso_out, is_first))
        values = self._value_apply(params, hidden)

        # The heads only run where an action was taken (not on the bootstrap observation).
        z = hidden[:t].reshape(t * b, -1)
        taken = {k: action[k].reshape(t * b).astype(jnp.int32) for k in self.action_keys}
        logits, _ = self._head.apply({"params": params["head"]}, z, lambda k, _: taken[k])
        logits = {k: v.reshape(t, b, -1) for k, v in logits.items()}
        return UnrollOutput(logits, values)
