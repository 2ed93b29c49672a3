"""Frozen configuration objects for the agent network and the policy learner.

Plain frozen dataclasses (hashable, so they can be static arguments under ``jit``); no absl flags
here: the launcher builds these from its flags and passes them down.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from spiral.envs import specs

_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TRANSPOSED_CONV_IMPLS = ("direct", "depth_to_space")
NARROW_CONV_IMPLS = ("direct", "taps")
VALUE_NORMALISATIONS = ("none", "popart", "running")


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The SPIRAL agent's shape (SPIRAL.md §2). Defaults are the released agent's sizes.

    The environment fields (``canvas_width``, ``grid_width``, ``brush_sizes``, ``use_color``,
    ``use_pressure``, ``conditional``) must match the environment's: the action keys and sizes
    come from ``spiral.envs.specs.action_spec`` with them. ``canvas_width`` is the width of the
    observation the agent sees (64 even when the environment renders at 128/256).

    The network fields exist to shrink the network for tests and CPU runs; the defaults give
    1,551,141 parameters grayscale and 1,613,329 colour (64×64, grid 32).
    """

    # Environment (must agree with the PaintEnv the actors run).
    canvas_width: int = 64
    grid_width: int = 32
    brush_sizes: tuple[float, ...] = specs.DEFAULT_BRUSH_SIZES
    use_color: bool = False
    use_pressure: bool = True
    conditional: bool = False
    # Network.
    torso_channels: int = 32          # 5×5 input conv, strided encoder and its residual blocks
    torso_residual_blocks: int = 8
    torso_output_size: int = 256      # Linear after the encoder, input of the LSTM
    lstm_size: int = 256              # also the width of z in the autoregressive head
    decoder_channels: int = 32        # location decoders (conv, residual blocks, transposed convs)
    decoder_residual_blocks: int = 8
    embed_dim: int = 16               # Linear(16) embedding of each (previous or sampled) sub-action
    condition_hidden: tuple[int, ...] = (64, 32)   # MLP [64, 32, torso_channels] for action and noise
    head_mlp_hidden: tuple[int, ...] = (16, 32)    # residual MLP [16, 32, lstm_size] after each key
    noise_dim: int = 10

    def __post_init__(self):
        object.__setattr__(self, "brush_sizes", tuple(self.brush_sizes))
        object.__setattr__(self, "condition_hidden", tuple(self.condition_hidden))
        object.__setattr__(self, "head_mlp_hidden", tuple(self.head_mlp_hidden))
        if self.canvas_width % 8 or not _is_power_of_two(self.canvas_width // 8):
            raise ValueError(f"canvas_width must be 8 × a power of two (the encoder strides down to "
                             f"8×8), got {self.canvas_width}; use 64 (or 16/32 for small tests).")
        if self.grid_width % 4 or not _is_power_of_two(self.grid_width // 4):
            raise ValueError(f"grid_width must be 4 × a power of two (the location decoder upsamples "
                             f"from 4×4), got {self.grid_width}; use 32 (or 8/16 for small tests).")
        if self.lstm_size % 16:
            raise ValueError(f"lstm_size must be a multiple of 16 (z is reshaped to 4×4×(size/16) "
                             f"for the location decoder), got {self.lstm_size}.")
        for name in ("torso_channels", "torso_output_size", "decoder_channels", "embed_dim",
                     "noise_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("torso_residual_blocks", "decoder_residual_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("condition_hidden", "head_mlp_hidden"):
            if any(int(v) < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must hold positive layer widths, got {getattr(self, name)}.")
        specs.action_spec(self.grid_width, self.brush_sizes, self.use_color, self.use_pressure)

    @property
    def action_spec(self):
        """The environment's action spec: ordered dict key -> DiscreteArray, in sampling order."""
        return specs.action_spec(self.grid_width, self.brush_sizes, self.use_color,
                                 self.use_pressure)

    @property
    def action_keys(self) -> tuple[str, ...]:
        return tuple(self.action_spec)

    @property
    def action_sizes(self) -> dict[str, int]:
        return {k: s.num_values for k, s in self.action_spec.items()}

    @property
    def channels(self) -> int:
        """Canvas channels: 3 for colour, 1 for grayscale."""
        return 3 if self.use_color else 1

    @classmethod
    def small(cls, **overrides) -> "AgentConfig":
        """A tiny network on a 16×16 canvas and 8×8 grid, for tests and quick CPU runs."""
        base = dict(canvas_width=16, grid_width=8, torso_channels=8, torso_residual_blocks=1,
                    torso_output_size=32, lstm_size=32, decoder_channels=8,
                    decoder_residual_blocks=1, embed_dim=4, condition_hidden=(16,),
                    head_mlp_hidden=(8,), noise_dim=4)
        base.update(overrides)
        return cls(**base)


@dataclasses.dataclass(frozen=True)
class PolicyLearnerConfig:
    """Hyperparameters of the V-trace policy update (SPIRAL.md §5).

    ``learning_rate`` and ``entropy_cost`` are only initial values: they live in the learner state
    so population-based training can change them without recompiling. The other fields are
    described beside them below.

    Attributes:
      learning_rate: Adam's learning rate of the policy (SPIRAL's PBT range: 1e-5 .. 3e-4).
      entropy_cost: weight of the entropy bonus (SPIRAL's PBT range: 2e-3 .. 1e-1).
      entropy_weights: (key, weight) pairs multiplying each sub-action's entropy in the bonus
        (keys not named weigh 1).
      entropy_normalise: divide each key's entropy by log(its number of values) first, so every
        key's term lies in [0, weight].
      value_normalisation: how the value head follows the reward's scale
        (``spiral.learner.losses``): "popart" (running mean/std of the V-trace targets; the value
        head's last layer is rescaled when they change, so its outputs in reward units are
        preserved), "running" (the same statistics normalise the targets and advantages, but
        the value head is not rescaled: plain adaptive target normalisation) or "none".
      value_stats_step: the value statistics' step size β (an exact average over the first 1/β
        updates, then an exponential one).
      compute_dtype: the update's compute precision, "float32" or "bfloat16" (parameters stay
        float32).
      transposed_conv: form of the location decoder's transposed convolutions in the update,
        "direct" or "depth_to_space" (the same function and parameters; depth_to_space updates
        ~2x faster on CPU). Actors sample with their own form.
    """

    learning_rate: float = 1e-4       # SPIRAL's PBT range: log-uniform [1e-5, 3e-4]
    entropy_cost: float = 1e-2        # SPIRAL's PBT range: log-uniform [2e-3, 1e-1]
    baseline_cost: float = 0.5        # total = pg + baseline_cost · 0.5·Σ(v_s − V)² − entropy_cost · H
    discount: float = 1.0             # γ, multiplied into the recorded per-step discounts
    adam_b1: float = 0.5
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 40.0
    clip_rho_threshold: float = 1.0   # ρ̄ (IMPALA)
    clip_pg_rho_threshold: float = 1.0
    clip_c_threshold: float = 1.0     # c̄ (IMPALA); 1.0 as scalable_agent and rlax fix it
    compute_dtype: str = "float32"    # "float32" or "bfloat16"; parameters stay float32
    transposed_conv: str = "direct"   # "direct" or "depth_to_space" (same function and parameters)
    entropy_weights: tuple[tuple[str, float], ...] = ()
    entropy_normalise: bool = False
    value_normalisation: str = "none"
    value_stats_step: float = 1e-2     # β of the value normalisation's running statistics
    value_std_min: float = 1e-4        # σ is kept >= this (a constant return has σ = 0)

    def __post_init__(self):
        weights = self.entropy_weights
        if isinstance(weights, dict):
            weights = tuple(weights.items())
        try:
            weights = tuple((str(k), float(w)) for k, w in weights)
        except (TypeError, ValueError):
            raise ValueError(f"entropy_weights must be (key, weight) pairs, got {self.entropy_weights!r}."
                             ) from None
        object.__setattr__(self, "entropy_weights", weights)
        keys = [k for k, _ in weights]
        if len(set(keys)) != len(keys):
            raise ValueError(f"entropy_weights names a key twice: {keys}.")
        for k, w in weights:
            if not (w >= 0 and w < float("inf")):
                raise ValueError(f"entropy weight of {k!r} must be a finite number >= 0, got {w}.")
        if self.value_normalisation not in VALUE_NORMALISATIONS:
            raise ValueError(f"value_normalisation must be one of {VALUE_NORMALISATIONS}, got "
                             f"{self.value_normalisation!r}.")
        if not 0 < self.value_stats_step <= 1:
            raise ValueError(f"value_stats_step must be in (0, 1], got {self.value_stats_step}.")
        if not self.value_std_min > 0:
            raise ValueError(f"value_std_min must be > 0, got {self.value_std_min}.")
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(_COMPUTE_DTYPES)}, "
                             f"got {self.compute_dtype!r}.")
        if self.transposed_conv not in TRANSPOSED_CONV_IMPLS:
            raise ValueError(f"transposed_conv must be one of {TRANSPOSED_CONV_IMPLS}, "
                             f"got {self.transposed_conv!r}.")
        for name in ("learning_rate", "entropy_cost", "baseline_cost"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}.")
        for name in ("max_grad_norm", "clip_rho_threshold", "clip_pg_rho_threshold",
                     "clip_c_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")

    @property
    def dtype(self):
        return _COMPUTE_DTYPES[self.compute_dtype]

    def check_entropy_keys(self, action_keys) -> None:
        """``ValueError`` if ``entropy_weights`` names a key the action space does not have."""
        unknown = sorted(set(k for k, _ in self.entropy_weights) - set(action_keys))
        if unknown:
            raise ValueError(f"entropy_weights names {unknown}, which the action space does not "
                             f"have; its keys are {list(action_keys)}.")


def compute_dtype_for(name: str):
    """'float32' / 'bfloat16' -> the jnp dtype; ``ValueError`` for anything else."""
    if name not in _COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {sorted(_COMPUTE_DTYPES)}, got {name!r}.")
    return _COMPUTE_DTYPES[name]
