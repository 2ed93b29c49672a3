"""The one-device ("fused") runtime: environment, policy, V-trace and discriminator in one jitted step.

Podracer's Anakin architecture for SPIRAL (issue 8): the paint environment is small enough to run
batched on the accelerator (``spiral.envs.jax_engine``), so one compiled program

1. plays B whole episodes (reset + T = episode_length − 1 actions) with ``lax.scan`` over the
   environment step and the agent's sampling mode (``Agent.sample_step``), recording the same
   ``spiral.learner.Trajectory`` the CPU actors send (batch first, uint8 canvases, behaviour
   logits along the sampled path, per-episode noise, the policy version that acted);
2. computes the rewards with the current discriminator exactly as the actors do
   (``episode_rewards(scoring_weights(D), ...)`` with ``acting.reward_mode`` and the stroke
   penalties of ``acting.stroke_penalties``, here in jnp);
3. applies ``spiral.learner.make_update_step`` — the very update the policy learner worker runs;
4. adds the final canvases to an on-device ring buffer (the ``Replay`` of the last
   ``replay_batches × batch_size`` canvases, uint8) and runs the discriminator's own
   ``make_update_step`` n times on uniform replay samples and uniform real images (uint8 levels
   held on the device). n is a compile-time count the shell picks per step with the driver's
   rule (``disc_updates_due``: fractional rates accumulate credit; no update until the replay
   holds one batch), so the program has no data-dependent control flow;
5. returns the new ``FusedState`` and scalar metrics.

Nothing leaves the device between steps but the metrics. ``train(config)`` is the thin shell
around it (``driver.train`` dispatches ``--runtime=fused`` here): it loads the data, builds or
restores the state, loops the step, prints the driver's progress line and TensorBoard scalars
(``Monitor``), and writes the driver's checkpoints (``checkpointing.save_checkpoint``: policy,
discriminator and replay trees, ``driver.Counters`` and the config) and runs the evaluation hook
(``spiral.evaluation.log_checkpoint_metrics``), so either runtime can evaluate or resume the
other's run.

Differences from the distributed runtime, all deliberate:
* Policy lag is 0: every batch is acted by the parameters it updates (the distributed runtime
  has ≥ 1 step of lag). V-trace is still applied (ρ = 1, so it reduces to the on-policy targets).
* No environment state crosses steps: each step resets B fresh environments whose hash-RNG seeds
  are drawn from the step's key (``jax_engine.reset(key, ...)``), as the CPU actors play whole
  episodes per unroll. The step key is ``fold_in(run key, update index)``, so a resumed run does
  not replay the episodes it already played.
* Discriminator updates run after the policy update of the same step, on a replay that already
  holds this step's canvases (the distributed runtime runs them concurrently, a little behind).
* ``runtime.num_actors`` and ``envs_per_actor`` do not apply; ``batch_size`` is B.

Multi-device data parallelism (``num_devices > 1``): the rollout and its rewards run under
``shard_map`` over a 1-D mesh ("data"), each device playing B/D episodes with its own keys
(``fold_in(key, device index)``). The policy update is NOT rewritten with a ``pmean`` of
gradients: it is the same ``update_step`` called on the global, batch-sharded ``Trajectory``,
and XLA's SPMD partitioner splits its batch dimension and inserts the all-reduces. So the
update is by construction the one-device update of the whole batch (same loss, same mean over
B, same global-norm clip), only summed in a different order. The discriminator and the replay
are replicated (the discriminator's batch is small).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spiral.actors import checkpointing, driver, monitoring
from spiral.actors.acting import reward_mode
from spiral.discriminator import learning as disc_learning
from spiral.discriminator.config import IMAGE_SIZE
from spiral.discriminator.reward import episode_rewards
from spiral.envs import jax_engine, specs
from spiral.learner import (FIRST, LAST, MID, Agent, LearnerState, Observation, Trajectory,
                            init_learner_state, make_update_step)

DATA_AXIS = "data"
# Final canvases of this many episodes come back with each step's metrics (TensorBoard images).
NUM_SAMPLE_CANVASES = 16


# ----------------------------------------------------------------------------------- state

class FusedReplay(NamedTuple):
    """The discriminator's replay as an on-device ring buffer (``spiral.discriminator.Replay``)."""
    canvases: jax.Array           # uint8 [capacity, 64, 64, C]
    targets: Optional[jax.Array]  # uint8 [capacity, 64, 64, C] when conditional, else None
    size: jax.Array               # int32 []: canvases held (≤ capacity)
    next: jax.Array               # int32 []: the slot the next canvas goes to


class FusedData(NamedTuple):
    """The dataset on the device as uint8 levels (k means k/255). Constant during a run."""
    real: Optional[jax.Array]     # [N, 64, 64, C]: unconditional discriminator's real images
    targets: Optional[jax.Array]  # [N, ow, ow, C]: conditional targets (and the conditional D's reals)


class FusedState(NamedTuple):
    """Everything one fused step reads and writes (a pytree of arrays).

    No environment or key state: each step resets fresh environments from the step's key (an
    argument), and the run's counters are the host's ``driver.Counters``.
    """
    policy: LearnerState          # the PolicyLearner's state (checkpointed as ``policy/``)
    disc: Optional[Any]           # DiscriminatorState, None with the L2 reward
    replay: Optional[FusedReplay]
    data: FusedData


def replay_init(capacity: int, channels: int, conditional: bool) -> FusedReplay:
    shape = (capacity, IMAGE_SIZE, IMAGE_SIZE, channels)
    return FusedReplay(jnp.zeros(shape, jnp.uint8),
                       jnp.zeros(shape, jnp.uint8) if conditional else None,
                       jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def replay_add(replay: FusedReplay, canvases: jax.Array, targets: Optional[jax.Array] = None
               ) -> FusedReplay:
    """Write [N, ...] canvases into the ring; as ``Replay.add``: when N exceeds the capacity only
    the newest ``capacity`` are kept, in order, and each overwrites the oldest slot."""
    capacity = replay.canvases.shape[0]
    count = canvases.shape[0]
    keep = min(count, capacity)
    slots = (replay.next + jnp.arange(keep, dtype=jnp.int32)) % capacity
    new_targets = replay.targets
    if replay.targets is not None:
        new_targets = replay.targets.at[slots].set(targets[count - keep:])
    return FusedReplay(replay.canvases.at[slots].set(canvases[count - keep:]), new_targets,
                       jnp.minimum(replay.size + keep, capacity), (replay.next + keep) % capacity)


def replay_sample(replay: FusedReplay, key: jax.Array, batch_size: int):
    """(canvases, targets or None) [batch_size, ...], uniform with replacement over what it holds
    (the empty slot 0 while it holds nothing; the shell never trains the critic then)."""
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return replay.canvases[index], None if replay.targets is None else replay.targets[index]


def stroke_penalties(flags: jax.Array, new_stroke_penalty: float, blank_penalty: float) -> jax.Array:
    """``spiral.actors.acting.stroke_penalties`` in jnp: extra rewards [T, B] from flags [T, B]."""
    painting = flags == specs.PAINT
    previous = jnp.concatenate([jnp.zeros_like(painting[:1]), painting[:-1]], axis=0)
    out = jnp.where(painting & ~previous, jnp.float32(new_stroke_penalty), jnp.float32(0.0))
    blank = jnp.where(painting.any(axis=0), jnp.float32(0.0), jnp.float32(blank_penalty))
    return out.at[-1].add(blank)


def disc_updates_due(credit: float, rate: float, ready: bool) -> tuple[int, float]:
    """The driver's accounting of (possibly fractional) discriminator updates per policy update.

    ``credit += rate``; ``n = floor(credit)`` updates are owed and the credit drops by n. They
    run only when the replay holds one discriminator batch (``ready``): the discriminator worker
    refuses to train on a few canvases repeated, and the owed updates are then dropped.
    Returns (updates to run in this step, new credit). Host-side, in float64 like the driver.
    """
    credit += rate
    owed = int(credit)
    return (owed if ready else 0), credit - owed


# ----------------------------------------------------------------------------------- the step

class FusedParts(NamedTuple):
    """The pieces of the fused step, exposed so tests can check each against the other runtime."""
    agent: Agent            # the learner's (config.policy.transposed_conv); sampling uses "direct"
    rollout: Any            # (params, version, disc_weights, targets_data, key, batch) -> Rollout
    policy_update: Any      # spiral.learner.make_update_step(agent, config.policy)
    disc_update: Any        # spiral.discriminator.make_update_step(config.discriminator) or None
    disc_batch: Any         # (replay, data, key) -> (fake, real, targets): one update's batch
    disc_train: Any         # (disc_state, replay, data, key, count) -> (disc_state, metrics)
    init_state: Any         # (data) -> FusedState


class Rollout(NamedTuple):
    trajectory: Trajectory        # [B, ...] with rewards
    final_canvases: jax.Array     # uint8 [B, ow, ow, C]
    targets: Optional[jax.Array]  # uint8 [B, ow, ow, C] the episodes' targets (conditional)


def make_parts(config) -> FusedParts:
    """The fused step's pieces for one ``ExperimentConfig`` (pure functions, jit them as needed)."""
    env, policy_config, disc_config = config.env, config.policy, config.discriminator
    agent = Agent(config.agent, policy_config.compute_dtype, policy_config.transposed_conv)
    # Sampling uses the direct transposed convolutions, as the CPU actors do: the same function
    # and parameters as the learner's form, and the faster one at acting batch sizes.
    sampler = Agent(config.agent, policy_config.compute_dtype, "direct")
    num_steps = env.episode_length - 1
    mode = reward_mode(config)
    policy_update = make_update_step(agent, policy_config)
    uses_disc = config.uses_discriminator
    disc_update = disc_learning.make_update_step(disc_config) if uses_disc else None
    ow = env.observation_width

    def rollout(params, policy_version, disc_weights, targets_data, key, batch_size: int
                ) -> Rollout:
        """B whole episodes with ``params``; the record and rewards as ``EpisodeRunner.unroll``."""
        reset_key, noise_key, act_key = jax.random.split(key, 3)
        env_state = jax_engine.reset(reset_key, batch_size, env, dataset=targets_data)
        first = jax_engine.timestep(env_state)
        episode_targets = None
        if env.conditional:   # the episode's target as uint8 levels (exactly what the env shows)
            episode_targets = env_state.dataset[env_state.target_index]
        noise = sampler.sample_noise(noise_key, batch_size)

        def levels(state):
            return jax_engine.observe(state.canvas, ow)[1]   # uint8; XLA shares it with timestep

        def observation(canvas, mask):
            return Observation(canvas, mask, episode_targets)

        def act(carry, step_key):
            env_state, agent_state, canvas, mask, is_first = carry
            out, agent_state = sampler.sample_step(params, observation(canvas, mask), is_first,
                                                   agent_state, noise, step_key)
            env_state, ts = jax_engine.step(env_state, out.action)
            canvas, mask = levels(env_state), ts.observation["action_mask"]
            carry = (env_state, agent_state, canvas, mask, jnp.zeros_like(is_first))
            return carry, (canvas, mask, out.action, out.logits, ts.discount)

        carry = (env_state, sampler.initial_state(batch_size), levels(env_state),
                 first.observation["action_mask"], jnp.ones((batch_size,), bool))
        _, (canvases, masks, actions, logits, discounts) = jax.lax.scan(
            act, carry, jax.random.split(act_key, num_steps))
        # Time-major [T+1, B, ...] with the reset observation first.
        canvases = jnp.concatenate([carry[2][None], canvases], axis=0)
        masks = jnp.concatenate([carry[3][None], masks], axis=0)
        rewards = _episode_rewards(config, mode, disc_weights, canvases, episode_targets)
        rewards = rewards + stroke_penalties(actions["flag"], config.new_stroke_penalty,
                                             config.blank_penalty)
        batch_first = lambda x: jnp.swapaxes(x, 0, 1)
        step_type = jnp.full((num_steps + 1,), MID, jnp.uint8).at[0].set(FIRST).at[-1].set(LAST)
        targets_record = None
        if episode_targets is not None:
            targets_record = jnp.broadcast_to(episode_targets[:, None],
                                              (batch_size, num_steps + 1) + episode_targets.shape[1:])
        trajectory = Trajectory(
            observation=Observation(batch_first(canvases), batch_first(masks), targets_record),
            step_type=jnp.broadcast_to(step_type, (batch_size, num_steps + 1)),
            action=jax.tree.map(batch_first, actions),
            behaviour_logits=jax.tree.map(batch_first, logits),
            reward=batch_first(rewards),
            discount=batch_first(discounts),
            noise=jnp.broadcast_to(noise[:, None], (batch_size, num_steps + 1, noise.shape[-1])),
            initial_state=agent.initial_state(batch_size),
            policy_version=jnp.full((batch_size,), policy_version, jnp.int32))
        return Rollout(trajectory, canvases[-1], episode_targets)

    def disc_batch(replay: FusedReplay, data: FusedData, key):
        """One update's (fake, real, targets), drawn as ``DiscriminatorLearner.sample_batch`` does:
        fakes (and their targets) uniformly from the replay, reals uniformly from the dataset
        (a conditional D's reals are the targets: the update's default)."""
        bs = disc_config.batch_size
        fake_key, real_key = jax.random.split(key)
        fake, targets = replay_sample(replay, fake_key, bs)
        real = None
        if not disc_config.conditional:
            real = data.real[jax.random.randint(real_key, (bs,), 0, data.real.shape[0])]
        return fake, real, targets

    def disc_train(disc_state, replay: FusedReplay, data: FusedData, key, count: int):
        """``count`` (static) discriminator updates, update i on ``disc_batch(.., fold_in(key, i))``.

        A Python loop, not ``fori_loop``/``cond``: on XLA's CPU backend the critic's update ran
        ~30x slower inside a while loop's body (full critic: 368 s vs 12 s; 8x inside a ``cond``).
        """
        metrics = {}
        for i in range(count):
            disc_state, metrics = disc_update(
                disc_state, *disc_batch(replay, data, jax.random.fold_in(key, i)))
        return disc_state, metrics

    def init_state(data: FusedData) -> FusedState:
        """The state a fresh run starts from: the distributed runtime's learners, seeded alike
        (``PolicyLearner`` and ``DiscriminatorLearner`` with ``seed=config.runtime.seed``)."""
        seed_key = jax.random.PRNGKey(config.runtime.seed)
        policy = init_learner_state(agent, policy_config, seed_key)
        disc, replay = None, None
        if uses_disc:
            disc = disc_learning.init_state(disc_config, seed_key)
            replay = replay_init(disc_config.replay_capacity, disc_config.image_channels,
                                 disc_config.conditional)
        return FusedState(policy, disc, replay, data)

    return FusedParts(agent, rollout, policy_update, disc_update,
                      disc_batch if uses_disc else None, disc_train if uses_disc else None,
                      init_state)


def _episode_rewards(config, mode, disc_weights, canvases, targets):
    """[T, B] rewards of episodes' canvases [T+1, B, ...], as ``EpisodeRunner.unroll`` computes them."""
    return episode_rewards(disc_weights, canvases, targets, config=config.discriminator, mode=mode,
                           normalise_l2=config.normalise_l2)


def make_fused_step(config, num_devices: int = 1, *, disc_updates: Optional[int] = None,
                    return_trajectory: bool = False):
    """``step(state, key) -> (state, metrics)``: one fused update, jitted.

    ``disc_updates``: discriminator updates in this step, a compile-time count (None: the
    config's ``disc_updates_per_policy_update``, which must then be a whole number; ``train``
    decides it per step with the driver's rule, ``disc_updates_due``, so fractional rates and a
    replay still short of one batch compile at most a few variants). ``metrics`` holds the
    policy update's scalars (``spiral.learner`` names), the last discriminator update's as
    ``d_<name>``, the mean episode return, and ``sample_canvases`` (uint8 final canvases of up to
    16 episodes, for TensorBoard; fetch only when needed); ``return_trajectory`` adds the step's
    ``trajectory`` (tests, debugging). ``num_devices > 1`` shards the rollout over the first
    ``num_devices`` devices (see the module docstring); the state must then be replicated over
    ``fused_mesh(num_devices)`` (``place_state``). One compiled step is kept per configuration
    (only the fields it uses count), so runs and tests in one process compile it once.
    """
    batch = config.runtime.batch_size
    if num_devices < 1 or batch % num_devices:
        raise ValueError(f"--batch_size ({batch}) must be a multiple of the number of devices "
                         f"({num_devices}) for the fused runtime's data parallelism.")
    if disc_updates is None:
        rate = config.runtime.disc_updates_per_policy_update
        if rate != int(rate):
            raise ValueError(f"disc_updates_per_policy_update={rate} is fractional: pass the "
                             f"step's disc_updates (fused.train decides it per step).")
        disc_updates = int(rate)
    if disc_updates < 0:
        raise ValueError(f"disc_updates must be >= 0, got {disc_updates}.")
    if not config.uses_discriminator:
        disc_updates = 0
    return _make_fused_step(_step_config(config), num_devices, disc_updates, return_trajectory)


def _step_config(config):
    """The config with only the fields the step depends on (the compile cache's key)."""
    rt = config.runtime
    return dataclasses.replace(config, data_dir=None, dataset_limit=0, runtime=type(rt)(
        runtime="fused", batch_size=rt.batch_size, max_updates=1))


@functools.lru_cache(maxsize=16)
def _make_fused_step(config, num_devices: int, disc_updates: int, return_trajectory: bool):
    parts = make_parts(config)
    rollout = _sharded_rollout(parts, config.runtime.batch_size, num_devices)

    def step(state: FusedState, key: jax.Array):
        rollout_key, disc_key = jax.random.split(key)
        disc_weights = None if state.disc is None else disc_learning.scoring_weights(state.disc)
        result = rollout(state.policy.params, state.policy.step, disc_weights, state.data.targets,
                         rollout_key)
        policy, metrics = parts.policy_update(state.policy, result.trajectory)
        returns = jnp.sum(result.trajectory.reward, axis=1)
        metrics = dict(metrics, mean_episode_return=jnp.mean(returns),
                       sample_canvases=result.final_canvases[:NUM_SAMPLE_CANVASES])
        if return_trajectory:
            metrics["trajectory"] = result.trajectory
        disc, replay = state.disc, state.replay
        if state.disc is not None:
            replay = replay_add(replay, result.final_canvases, result.targets)
            disc, disc_metrics = parts.disc_train(disc, replay, state.data, disc_key, disc_updates)
            metrics.update({"d_" + k: v for k, v in disc_metrics.items()})
        return state._replace(policy=policy, disc=disc, replay=replay), metrics

    # Donating the state lets XLA update it in place (the CPU backend ignores donation).
    donate = () if jax.default_backend() == "cpu" else (0,)
    if num_devices == 1:
        return jax.jit(step, donate_argnums=donate)
    replicated = NamedSharding(fused_mesh(num_devices), PartitionSpec())
    return jax.jit(step, donate_argnums=donate, in_shardings=(replicated, replicated),
                   out_shardings=(replicated, replicated))


def fused_mesh(num_devices: int) -> Mesh:
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(f"The fused runtime was asked for {num_devices} devices but JAX sees "
                         f"{len(devices)} ({devices[0].platform}); lower the device count.")
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def _sharded_rollout(parts: FusedParts, batch: int, num_devices: int):
    """``rollout(params, version, weights, targets, key) -> Rollout`` over the whole batch B."""
    if num_devices == 1:
        return lambda *args: parts.rollout(*args, batch)
    local_batch = batch // num_devices

    def local(params, version, weights, targets, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
        return parts.rollout(params, version, weights, targets, key, local_batch)

    replicated, split = PartitionSpec(), PartitionSpec(DATA_AXIS)
    # check_vma=False: the environment's and the agent's loops start from constants (e.g. the
    # transmittance accumulator) that become device-varying, which the varying-axes checker
    # would reject; every output is per-device data (split over "data"), so nothing is lost.
    return jax.shard_map(local, mesh=fused_mesh(num_devices), in_specs=(replicated,) * 5,
                         out_specs=split, check_vma=False)


def place_state(state: FusedState, num_devices: int) -> FusedState:
    """The state on the device(s): as is for one device, replicated over the mesh for several."""
    if num_devices == 1:
        return jax.device_put(state)
    return jax.device_put(state, NamedSharding(fused_mesh(num_devices), PartitionSpec()))


def step_key(seed: int, update: int) -> jax.Array:
    """The key of policy update ``update``: a resumed run continues the sequence, never repeats it."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x46555345), update)


# ----------------------------------------------------------------------------------- the shell

def load_data(config) -> FusedData:
    """The run's real images / targets as uint8 levels (``driver.load_images``), on the host."""
    images = driver.load_images(config)
    if config.env.conditional:
        return FusedData(None, driver.area_downsample(images, config.observation_width))
    return FusedData(images if config.uses_discriminator else None, None)


def policy_tree(state: FusedState):
    """The policy learner's checkpointed state (what ``PolicyLearnerWorker.get_state`` returns)."""
    return jax.device_get(state.policy)


def disc_tree(state: FusedState):
    """The discriminator's checkpointed tree (what ``DiscriminatorWorker.get_state`` returns)."""
    return None if state.disc is None else jax.device_get(disc_learning.state_to_tree(state.disc))


def replay_tree(state: FusedState, added: int) -> Optional[dict]:
    """The replay's checkpointed tree (what ``Replay.get_state`` returns): canvases (and targets)
    in slot order, the fill level, the next slot, and ``added``, the canvases ever added."""
    if state.replay is None:
        return None
    replay = jax.device_get(state.replay)
    tree = {"canvases": np.asarray(replay.canvases), "size": np.int64(replay.size),
            "next": np.int64(replay.next), "added": np.int64(added)}
    if replay.targets is not None:
        tree["targets"] = np.asarray(replay.targets)
    return tree


def restore_into(state: FusedState, path: str) -> tuple[FusedState, int]:
    """``state`` with the policy, discriminator and replay of checkpoint folder ``path``, and the
    replay's count of canvases ever added (0 when the checkpoint has no replay that fits)."""
    policy = checkpointing.restore_tree(os.path.join(path, "policy"), policy_tree(state))
    state = state._replace(policy=jax.tree.map(jnp.asarray, policy))
    added = 0
    if state.disc is not None:
        tree = checkpointing.restore_tree(os.path.join(path, "discriminator"), disc_tree(state))
        state = state._replace(disc=disc_learning.state_from_tree(
            jax.tree.map(jnp.asarray, tree), state.disc))
        replay_path = os.path.join(path, "replay")
        if os.path.isdir(replay_path):  # the critic resumes on the fakes it had, as the driver's
            try:
                tree = checkpointing.restore_tree(replay_path, replay_tree(state, 0))
                capacity = state.replay.canvases.shape[0]
                size, next_slot = int(tree["size"]), int(tree["next"])
                if not (0 <= size <= capacity and 0 <= next_slot < capacity):
                    raise ValueError(f"impossible fill level {size} / next slot {next_slot}")
            except ValueError as e:
                print(f"--resume: the saved replay does not fit this run's ({e}); the "
                      f"discriminator starts from an empty replay.", flush=True)
            else:
                targets = tree.get("targets")
                state = state._replace(replay=FusedReplay(
                    jnp.asarray(tree["canvases"]), None if targets is None else jnp.asarray(targets),
                    jnp.asarray(size, jnp.int32), jnp.asarray(next_slot, jnp.int32)))
                added = int(tree["added"])
    return state, added


class _ReplayBook:
    """The host's copy of the device replay's fill level (deterministic: B canvases per step),
    so the host knows, before dispatching a step, whether the critic may train in it."""

    def __init__(self, replay: Optional[FusedReplay], added: int):
        self.capacity = 0 if replay is None else int(replay.canvases.shape[0])
        self.size = 0 if replay is None else int(replay.size)
        self.added = added

    def add(self, count: int):
        self.size = min(self.size + count, self.capacity)
        self.added += count


def _num_devices(config) -> int:
    # The option's flag belongs to the launcher; until it exists the runtime uses one device.
    return int(getattr(config.runtime, "fused_devices", 1) or 1)


def train(config, num_devices: Optional[int] = None) -> dict:
    """Run one experiment with the fused runtime to its budget; returns what ``driver.train`` does:
    {"counters", "policy_metrics", "disc_metrics", "progress" (the last progress values),
    "checkpoint"}."""
    rt = config.runtime
    num_devices = _num_devices(config) if num_devices is None else num_devices
    counters = driver.Counters()
    resume_from = None
    if rt.resume:
        resume_from = checkpointing.latest_checkpoint(rt.checkpoint_dir)
        if resume_from is None:
            print(f"--resume: no checkpoint in {rt.checkpoint_dir} yet; starting afresh.", flush=True)
        else:
            saved_config, saved_counters = checkpointing.read_run_info(resume_from)
            driver._check_resumable(saved_config, config)  # pylint: disable=protected-access
            counters = driver.Counters(**{f.name: saved_counters.get(f.name, 0)
                                          for f in dataclasses.fields(driver.Counters)})

    parts = make_parts(config)
    state = parts.init_state(jax.tree.map(jnp.asarray, load_data(config)))
    added = 0
    if resume_from:
        state, added = restore_into(state, resume_from)
        print(f"Resumed from {resume_from} at {counters.updates} policy updates.", flush=True)
    book = _ReplayBook(state.replay, added)
    state = place_state(state, num_devices)

    batch, num_steps = rt.batch_size, config.env.episode_length - 1
    disc_batch = config.discriminator.batch_size
    monitor = monitoring.Monitor(rt.logdir or None, rt.log_every_seconds)
    rates = driver._Rates()  # pylint: disable=protected-access
    returns = []
    last = {"policy": {}, "disc": {}}
    start = time.monotonic()
    elapsed_before = counters.elapsed_s
    last_checkpoint = start
    credit = 0.0

    def budget_left(dispatched: int) -> bool:
        if rt.max_updates and dispatched >= rt.max_updates:
            return False
        return not (rt.max_minutes and time.monotonic() - start >= 60 * rt.max_minutes)

    def dispatch(update: int):
        """Start policy update ``update`` (asynchronously); returns what ``record`` needs."""
        nonlocal state, credit
        book.add(batch)
        disc_updates = 0
        if config.uses_discriminator:
            disc_updates, credit = disc_updates_due(credit, rt.disc_updates_per_policy_update,
                                                    book.size >= disc_batch)
        step = make_fused_step(config, num_devices, disc_updates=disc_updates)
        state, metrics = step(state, step_key(rt.seed, update))
        return metrics, disc_updates, {"replay_size": book.size, "replay_added": book.added}

    def record(pending):
        """Host-side bookkeeping of one finished step (its metrics fetched)."""
        metrics, disc_updates, replay_info = pending
        metrics = jax.device_get(metrics)
        samples = metrics.pop("sample_canvases")
        counters.updates += 1
        counters.agent_steps += batch * num_steps
        counters.episodes += batch
        rates.add(batch * num_steps)
        returns.append(float(metrics.pop("mean_episode_return")))
        del returns[:-200]
        last["policy"] = {k: float(v) for k, v in metrics.items() if not k.startswith("d_")}
        if disc_updates > 0:
            counters.disc_updates += disc_updates
            last["disc"] = {k[2:]: float(v) for k, v in metrics.items() if k.startswith("d_")}
            last["disc"].update(replay_info, updates=float(disc_updates))
        if counters.updates % rt.image_every_updates == 0 or counters.updates == 1:
            monitor.images(counters.updates, "samples/final_canvas", samples)

    def checkpoint() -> Optional[str]:
        if not rt.checkpoint_dir:
            return None
        counters.elapsed_s = elapsed_before + time.monotonic() - start
        policy = policy_tree(state)
        path = checkpointing.save_checkpoint(rt.checkpoint_dir, counters.updates, config.to_dict(),
                                             dataclasses.asdict(counters), policy, disc_tree(state),
                                             replay_tree(state, book.added))
        # The evaluation every runtime runs at a checkpoint (as the driver does): held-out
        # metrics to <checkpoint_dir>/eval_log.jsonl and TensorBoard eval/*.
        from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
        log_checkpoint_metrics(config, policy.params, dataclasses.asdict(counters), monitor)
        return path

    final_values = {}
    pending = None   # the previous step's metrics (device arrays): fetched after the next dispatch
    try:
        while budget_left(counters.updates + (pending is not None)):
            started = dispatch(counters.updates + (pending is not None))
            if pending is not None:
                record(pending)
            pending = started
            now = time.monotonic()
            counters.elapsed_s = elapsed_before + now - start
            monitor.progress(counters.updates, _progress_values(counters, rates, returns, last))
            if rt.checkpoint_dir and now - last_checkpoint >= 60 * rt.checkpoint_every_minutes:
                record(pending)
                pending = None
                print(f"checkpoint: {checkpoint()}", flush=True)
                last_checkpoint = time.monotonic()
        if pending is not None:
            record(pending)
        counters.elapsed_s = elapsed_before + time.monotonic() - start
        final_values = _progress_values(counters, rates, returns, last)
        monitor.progress(counters.updates, final_values, force=True)
        path = checkpoint()
        if path:
            print(f"checkpoint: {path}", flush=True)
    finally:
        monitor.close()
    return {"counters": dataclasses.asdict(counters), "policy_metrics": last["policy"],
            "disc_metrics": last["disc"], "progress": final_values,
            "checkpoint": checkpointing.latest_checkpoint(rt.checkpoint_dir) if rt.checkpoint_dir else None}


def _progress_values(counters, rates, returns, last) -> dict:
    """The driver's progress values that apply to the fused runtime (same keys)."""
    steps_per_s = rates.rate()
    values = {
        "updates": counters.updates,
        "disc_updates": counters.disc_updates,
        "agent_steps": counters.agent_steps,
        # One program acts and learns: both rates are the fused step's agent steps per second.
        "actor_steps_per_s": steps_per_s,
        "learner_steps_per_s": steps_per_s,
        "mean_episode_return": float(np.mean(returns)) if returns else float("nan"),
    }
    values.update(monitoring.learner_values(last["policy"], last["disc"],
                                            ("policy_lag_mean", "policy_lag_max")))
    return values
