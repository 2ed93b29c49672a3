"""The trajectory record that actors send to the learner, the agent's recurrent state, and helpers.

Time conventions of one record (an unroll of ``T`` agent steps; SPIRAL's unroll is a whole
episode: ``T = episode_length - 1 = 19`` actions and ``T + 1 = 20`` observations, FIRST to LAST):

* ``observation[t]``, ``step_type[t]`` for ``t = 0 .. T``: the ``T + 1`` observations; the last
  one only bootstraps the value (and is the LAST observation of an episode-aligned record).
* ``action[k][t]`` for ``t = 0 .. T-1``: the action taken after seeing ``observation[t]``;
  ``behaviour_logits[k][t]`` the logits of sub-action ``k`` that produced it, along the sampled
  autoregressive path (the actor's policy ``μ``).
* ``reward[t]``, ``discount[t]``: received after ``action[t]``, i.e. with ``observation[t+1]``
  (dm_env's ``TimeStep.reward``/``.discount`` of step ``t+1``). ``discount`` is 0 at LAST.
  If an unroll crosses an episode boundary (observation ``t`` is LAST and ``t+1`` FIRST), the
  actor records the dummy transition with reward 0 and discount 0; the learner ignores the
  action taken at a LAST observation.
* ``noise[t]``: the agent's per-episode Gaussian noise used at observation ``t`` (constant within
  an episode; stored per step so an unroll may cross an episode boundary).
* ``initial_state``: the agent's recurrent state before ``observation[0]``: the LSTM state and
  the previous action. At a FIRST observation the agent resets both (LSTM state zeros, previous
  action all zeros), so for an episode-aligned record the previous action fed at ``t = 0`` is all
  zeros whatever ``initial_state`` holds.
* ``policy_version``: the learner step of the parameters that acted (for policy-lag metrics).

Canvases (and targets) are stored as **uint8**: the environment quantises them to k/255, so
``observation_to_record`` is lossless; the agent divides by 255 itself. A single record has no
batch axis; a batch (``stack_trajectories``) puts ``B`` first on every field, and the learner
transposes to time-major ``[T, B]`` itself.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import dm_env
import jax
import numpy as np

from spiral.learner.config import AgentConfig

Array = Any  # numpy or JAX array

FIRST = int(dm_env.StepType.FIRST)
MID = int(dm_env.StepType.MID)
LAST = int(dm_env.StepType.LAST)


class LSTMState(NamedTuple):
    hidden: Array  # [..., lstm_size] float32
    cell: Array    # [..., lstm_size] float32


class AgentState(NamedTuple):
    """What the agent carries from one step to the next."""
    lstm: LSTMState
    prev_action: dict  # key -> int32 [...]: the previous action (zeros at the start)


class Observation(NamedTuple):
    """The agent's input. In a record, ``canvas`` and ``target`` are uint8 (k/255); the sampling
    mode also accepts the environment's float32 canvases k/255 in [0, 1] (read as the level
    round(255·x), so both forms give the agent identical inputs)."""
    canvas: Array                   # [..., H, W, C]
    action_mask: Array              # [..., K] float32, K = number of action keys
    target: Optional[Array] = None  # [..., H, W, C], conditional agents only


class Trajectory(NamedTuple):
    """One unroll (no batch axis) or a batch of them (``B`` first). See the module docstring."""
    observation: Observation   # [T+1, ...]
    step_type: Array           # uint8 [T+1]: dm_env.StepType (FIRST 0, MID 1, LAST 2)
    action: dict               # key -> int32 [T]
    behaviour_logits: dict     # key -> float32 [T, num_values(key)]
    reward: Array              # float32 [T]
    discount: Array            # float32 [T]
    noise: Array               # float32 [T+1, noise_dim]
    initial_state: AgentState  # before observation 0
    policy_version: Array      # int32 []

    @property
    def unroll_length(self) -> int:
        return self.reward.shape[-1]


def zero_agent_state(config: AgentConfig, batch_shape: Sequence[int] = ()) -> AgentState:
    """An all-zero agent state (numpy), the state at the start of an episode."""
    shape = tuple(batch_shape)
    zeros = np.zeros(shape + (config.lstm_size,), np.float32)
    return AgentState(LSTMState(zeros, zeros.copy()),
                      {k: np.zeros(shape, np.int32) for k in config.action_keys})


def zero_trajectory(config: AgentConfig, unroll_length: int) -> Trajectory:
    """An all-zero record of ``unroll_length`` steps (numpy), for actors to fill in place.

    Every field has its final shape and dtype; ``step_type`` is FIRST at 0 and MID elsewhere
    (overwrite it as the episode goes).
    """
    if unroll_length < 1:
        raise ValueError(f"unroll_length must be >= 1, got {unroll_length}.")
    t = unroll_length
    w, c = config.canvas_width, config.channels
    canvas = np.zeros((t + 1, w, w, c), np.uint8)
    observation = Observation(
        canvas=canvas,
        action_mask=np.zeros((t + 1, len(config.action_keys)), np.float32),
        target=canvas.copy() if config.conditional else None)
    step_type = np.full((t + 1,), MID, np.uint8)
    step_type[0] = FIRST
    return Trajectory(
        observation=observation,
        step_type=step_type,
        action={k: np.zeros((t,), np.int32) for k in config.action_keys},
        behaviour_logits={k: np.zeros((t, n), np.float32) for k, n in config.action_sizes.items()},
        reward=np.zeros((t,), np.float32),
        discount=np.zeros((t,), np.float32),
        noise=np.zeros((t + 1, config.noise_dim), np.float32),
        initial_state=zero_agent_state(config),
        policy_version=np.zeros((), np.int32))


def stack_trajectories(records: Sequence[Trajectory]) -> Trajectory:
    """Per-env records -> one batch with ``B`` first on every field (numpy, a copy)."""
    if not records:
        raise ValueError("stack_trajectories needs at least one record.")
    structures = {jax.tree.structure(r) for r in records}
    if len(structures) > 1:
        raise ValueError("Records differ in structure (action keys or target presence); "
                         "all records of a batch must come from the same AgentConfig.")
    try:
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *records)
    except ValueError as e:
        raise ValueError(f"Records differ in shapes (unroll lengths?): {e}") from None


def _to_uint8(name: str, image: Array) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"Observation '{name}' must be float in [0, 1] or uint8, got {image.dtype}.")
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"Observation '{name}' has values outside [0, 1] "
                         f"(min {image.min()}, max {image.max()}); nothing is clipped.")
    scaled = image.astype(np.float32) * np.float32(255.0)
    quantised = np.rint(scaled)
    if image.size and np.abs(scaled - quantised).max() > 1e-3:
        raise ValueError(f"Observation '{name}' is not quantised to multiples of 1/255 (max "
                         f"deviation {np.abs(scaled - quantised).max() / 255:.2g}); storing it as "
                         f"uint8 would lose information. Quantise it in the environment.")
    return quantised.astype(np.uint8)


def observation_to_record(observation: Mapping[str, Array] | Observation) -> Observation:
    """An environment observation (dict with float32 ``canvas`` in [0, 1], ``action_mask`` and maybe
    ``target``) -> the record's ``Observation`` with uint8 canvas/target. Lossless: raises
    ``ValueError`` if a canvas is outside [0, 1] or not quantised to k/255. Leading batch/time axes
    are kept."""
    if isinstance(observation, Observation):
        observation = observation._asdict()
    if "canvas" not in observation or "action_mask" not in observation:
        raise ValueError(f"An observation needs 'canvas' and 'action_mask', got keys "
                         f"{sorted(observation)}.")
    target = observation.get("target")
    return Observation(
        canvas=_to_uint8("canvas", observation["canvas"]),
        action_mask=np.asarray(observation["action_mask"], np.float32),
        target=None if target is None else _to_uint8("target", target))


def _path_name(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.DictKey):
            parts.append(f"[{p.key!r}]")
        else:
            parts.append(str(p))
    return ".".join(parts).replace(".[", "[")


_HINTS = {
    "observation.canvas": "canvases are stored as uint8 k/255 (use observation_to_record)",
    "observation.target": "targets are stored as uint8 k/255 (use observation_to_record)",
}


def check_trajectory(trajectory: Trajectory, config: AgentConfig, batched: bool = True,
                     unroll_length: Optional[int] = None) -> tuple[int, int]:
    """Check a record (``batched=False``) or a batch against ``config``; return ``(B, T)``.

    Raises ``ValueError`` naming the field, the shape/dtype found and the one expected.
    ``B`` is 1 for an unbatched record.
    """
    if not isinstance(trajectory, Trajectory):
        raise ValueError(f"Expected a spiral.learner.Trajectory, got {type(trajectory).__name__}.")
    reward = np.shape(trajectory.reward)
    if len(reward) != (2 if batched else 1):
        raise ValueError(f"Trajectory field 'reward' has shape {reward}; expected "
                         f"{'[B, T]' if batched else '[T]'} (batched={batched}).")
    t = reward[-1]
    b = reward[0] if batched else 1
    if unroll_length is not None and t != unroll_length:
        raise ValueError(f"Trajectory has unroll length T={t}, expected {unroll_length}.")
    if (trajectory.observation.target is None) == config.conditional:
        raise ValueError("Trajectory 'observation.target' must be present exactly when "
                         f"AgentConfig.conditional is True (it is {config.conditional}).")
    got_keys = set(trajectory.action)
    if got_keys != set(config.action_keys) or set(trajectory.behaviour_logits) != got_keys:
        raise ValueError(f"Trajectory action keys {sorted(got_keys)} (behaviour_logits: "
                         f"{sorted(trajectory.behaviour_logits)}) do not match the action spec's "
                         f"{list(config.action_keys)}.")
    expected = zero_trajectory(config, t)
    prefix = (b,) if batched else ()
    exp_leaves = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    got_leaves = jax.tree_util.tree_flatten_with_path(trajectory)[0]
    if len(got_leaves) != len(exp_leaves):
        raise ValueError("Trajectory structure does not match the AgentConfig's record layout "
                         "(build records with zero_trajectory).")
    for path, leaf in got_leaves:
        name = _path_name(path)
        want = exp_leaves.get(path)
        if want is None:
            raise ValueError(f"Trajectory has an unexpected field '{name}'.")
        shape, dtype = tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", type(leaf)))
        want_shape = prefix + want.shape
        if shape != want_shape:
            raise ValueError(f"Trajectory field '{name}' has shape {shape}, expected {want_shape} "
                             f"(B={b}, T={t}).")
        if dtype != want.dtype:
            hint = _HINTS.get(name, "")
            raise ValueError(f"Trajectory field '{name}' has dtype {dtype}, expected {want.dtype}"
                             + (f": {hint}." if hint else "."))
    return b, t


def batch_to_time_major(batch: Trajectory) -> Trajectory:
    """[B, T, ...] -> [T, B, ...] for the per-step fields; per-record fields keep ``B`` first."""
    swap = lambda x: jax.numpy.swapaxes(x, 0, 1)
    return batch._replace(
        observation=jax.tree.map(swap, batch.observation),
        step_type=swap(batch.step_type),
        action=jax.tree.map(swap, batch.action),
        behaviour_logits=jax.tree.map(swap, batch.behaviour_logits),
        reward=swap(batch.reward),
        discount=swap(batch.discount),
        noise=swap(batch.noise))
