"""The one-device ("fused") runtime: environment, policy, V-trace and discriminator in one jitted step.

Podracer's Anakin architecture for SPIRAL (issue 8): the paint environment is small enough to run
batched on the accelerator (``spiral.envs.jax_engine``), so one compiled program

1. plays B whole episodes (reset + T = episode_length − 1 actions) with ``lax.scan`` over the
   environment step and the agent's sampling mode (``Agent.sample_step``), recording the same
   ``spiral.learner.Trajectory`` the CPU actors send (batch first, uint8 canvases, behaviour
   logits along the sampled path, per-episode noise, the policy version that acted);
2. computes the rewards with the current discriminator exactly as the actors do
   (``episode_rewards(scoring_weights(D), ...)`` with ``acting.reward_mode`` and the stroke
   penalties of ``acting.stroke_penalties``, with jax.numpy);
3. applies ``spiral.learner.make_update_step`` — the very update the policy learner worker runs;
4. adds the final canvases to an on-device ring buffer (the ``Replay`` of the last
   ``replay_batches × batch_size`` canvases, uint8) and runs the discriminator's own
   ``make_update_step`` n times on uniform replay samples and uniform real images (uint8 levels
   held on the device). n is a compile-time count the shell picks per step with the driver's
   rule (``disc_updates_due``: fractional rates accumulate credit; no update until the replay
   holds one batch), so the program has no data-dependent control flow;
5. returns the new ``FusedState`` and scalar metrics.

Nothing leaves the device between steps but the metrics. ``FusedRuntime`` is the thin shell
around it, a ``spiral.actors.runtime.Runtime`` driven by the run loop (``run_loop.train``) like
the other runtimes: it builds or restores the state, dispatches one step per policy update (the
next before fetching the previous one's metrics), and hands the loop the same trees the
distributed runtime checkpoints (policy, discriminator, replay), so either runtime can evaluate
or resume the other's run.

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
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spiral.actors.acting import reward_mode, stroke_penalties
from spiral.actors.runtime import (RunData, RuntimeState, StepReport, check_local_gpu,
                                   load_run_data, restore_part, restore_replay)
from spiral.discriminator import learning as disc_learning
from spiral.discriminator.config import IMAGE_SIZE
from spiral.discriminator.reward import episode_rewards
from spiral.envs import jax_engine
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
    real: Optional[jax.Array]     # [N, S, S, C]: unconditional critic's real images (S = its image_size)
    targets: Optional[jax.Array]  # [N, ow, ow, C]: conditional targets (and the conditional D's reals)


class FusedState(NamedTuple):
    """Everything one fused step reads and writes (a pytree of arrays).

    No environment or key state: each step resets fresh environments from the step's key (an
    argument), and the run's counters are the run loop's.
    """
    policy: LearnerState          # the PolicyLearner's state (checkpointed as ``policy/``)
    disc: Optional[Any]           # DiscriminatorState, None with the L2 reward
    replay: Optional[FusedReplay]
    data: FusedData


def replay_init(capacity: int, channels: int, conditional: bool,
                image_size: int = IMAGE_SIZE) -> FusedReplay:
    shape = (capacity, image_size, image_size, channels)
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
                                             config.blank_penalty, xp=jnp)
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
                                 disc_config.conditional, disc_config.image_size)
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

def fused_data(config, data: RunData) -> FusedData:
    """The run's data (``runtime.load_run_data``) as the fused step holds it, on the host."""
    if config.env.conditional:
        return FusedData(None, data.targets)
    return FusedData(data.images if config.uses_discriminator else None, None)


def load_data(config) -> FusedData:
    """``fused_data`` of the run's dataset."""
    return fused_data(config, load_run_data(config))


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


def restore_into(state: FusedState, path: str, say: Callable[[str], None] = print
                 ) -> tuple[FusedState, int]:
    """``state`` with the policy, discriminator and replay of checkpoint folder ``path``, and the
    replay's count of canvases ever added (0 when the checkpoint has no replay that fits). The
    policy keeps ``state``'s hyperparameters (this run's config), not the saved ones."""
    policy = restore_part(path, "policy", policy_tree(state), "policy learner")
    policy = policy._replace(hyperparams=state.policy.hyperparams)
    state = state._replace(policy=jax.tree.map(jnp.asarray, policy))
    added = 0
    if state.disc is not None:
        tree = restore_part(path, "discriminator", disc_tree(state), "discriminator")
        state = state._replace(disc=disc_learning.state_from_tree(
            jax.tree.map(jnp.asarray, tree), state.disc))
        tree = restore_replay(path, replay_tree(state, 0), say)
        if tree is not None:  # the critic resumes on the fakes it had, as the driver's
            targets = tree.get("targets")
            state = state._replace(replay=FusedReplay(
                jnp.asarray(tree["canvases"]), None if targets is None else jnp.asarray(targets),
                jnp.asarray(tree["size"], jnp.int32), jnp.asarray(tree["next"], jnp.int32)))
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


class _Dispatched(NamedTuple):
    metrics: Any           # the step's metrics (device arrays, not yet fetched)
    disc_updates: int
    replay_info: dict
    want_samples: bool


class FusedRuntime:
    """The ``Runtime`` of ``--runtime=fused``: the state on the device(s), one jitted step per
    policy update, the next step dispatched before the previous one's metrics are fetched."""

    def __init__(self, config, data: RunData, say: Callable[[str], None],
                 num_devices: Optional[int] = None):
        if config.runtime.num_gpus > 0:
            check_local_gpu(config.runtime.num_gpus)
        self.config, self.say = config, say
        self.num_devices = _num_devices(config) if num_devices is None else num_devices
        parts = make_parts(config)
        self.fused_state = parts.init_state(jax.tree.map(jnp.asarray, fused_data(config, data)))
        self.book = _ReplayBook(self.fused_state.replay, 0)
        self.credit = 0.0
        self.dispatched = 0       # policy updates started (= the next step's update index)
        self.pending: Optional[_Dispatched] = None
        self._placed = False

    def _dispatch(self, want_samples: bool) -> _Dispatched:
        """Start policy update number ``self.dispatched`` (asynchronously)."""
        config, rt = self.config, self.config.runtime
        if not self._placed:
            self.fused_state = place_state(self.fused_state, self.num_devices)
            self._placed = True
        self.book.add(rt.batch_size)
        disc_updates = 0
        if config.uses_discriminator:
            disc_updates, self.credit = disc_updates_due(
                self.credit, rt.disc_updates_per_policy_update,
                self.book.size >= config.discriminator.batch_size)
        step = make_fused_step(config, self.num_devices, disc_updates=disc_updates)
        self.fused_state, metrics = step(self.fused_state, step_key(rt.seed, self.dispatched))
        self.dispatched += 1
        return _Dispatched(metrics, disc_updates,
                           {"replay_size": self.book.size, "replay_added": self.book.added},
                           want_samples)

    def _record(self, report: StepReport):
        """Fetch the pending step's metrics into ``report``."""
        done, self.pending = self.pending, None
        metrics = jax.device_get(done.metrics)
        samples = metrics.pop("sample_canvases")
        steps = self.config.runtime.batch_size * (self.config.env.episode_length - 1)
        report.agent_steps += steps
        report.acted_steps += steps
        report.episodes += self.config.runtime.batch_size
        report.returns.append(float(metrics.pop("mean_episode_return")))
        report.policy_metrics = {k: float(v) for k, v in metrics.items() if not k.startswith("d_")}
        report.applied.append(report.policy_metrics.get("update_applied", 1.0) > 0)
        if done.disc_updates > 0:
            report.disc_updates += done.disc_updates
            report.disc_metrics = {k[2:]: float(v) for k, v in metrics.items() if k.startswith("d_")}
            report.disc_metrics.update(done.replay_info, updates=float(done.disc_updates))
        if done.want_samples:
            report.samples = samples

    # ------------------------------------------------------------------ the seam
    def step(self, updates_left: Optional[int], want_samples: bool) -> StepReport:
        report = StepReport()
        if updates_left is None or updates_left > (self.pending is not None):
            started = self._dispatch(want_samples)
            if self.pending is not None:
                self._record(report)
            self.pending = started
        else:
            self._record(report)
        return report

    def flush(self, final: bool = False) -> StepReport:
        del final  # nothing acts between steps
        report = StepReport()
        if self.pending is not None:
            self._record(report)
        return report

    def state(self) -> RuntimeState:
        trees = {"policy": policy_tree(self.fused_state), "discriminator": disc_tree(self.fused_state),
                 "replay": replay_tree(self.fused_state, self.book.added)}
        return RuntimeState(trees, {"disc_credit": self.credit})

    def restore(self, path: str, counters: dict) -> None:
        state, added = restore_into(self.fused_state, path, self.say)
        self.fused_state = state
        self.book = _ReplayBook(state.replay, added)
        self.credit = float(counters.get("disc_credit", 0.0))
        self.dispatched = int(counters.get("updates", 0))

    def summary(self) -> dict:
        return {}

    def close(self):
        self.fused_state = self.pending = None
