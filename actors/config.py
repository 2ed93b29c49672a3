"""The experiment's configuration: one frozen dataclass, composed of each component's own config.

``ExperimentConfig`` (with the runtime's own ``RuntimeConfig``) is built from absl flags by
``spiral.launch.flags`` (flags exist nowhere else; each flag is generated from a field here or in
a component's config, and its help is the field's entry in its class's ``Attributes``) and
handed, as a plain picklable value, to every runtime, Ray worker and evaluation script.
It checks the combination once, at start, so a contradiction fails before any actor launches.
It round-trips through JSON (``to_dict`` / ``from_dict``): every checkpoint carries the config
that produced it, and ``evaluate.py`` rebuilds the agent from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Optional

from spiral.discriminator import DiscriminatorConfig
from spiral.envs import PaintConfig
from spiral.learner import AgentConfig, PolicyLearnerConfig
from spiral.learner.config import NARROW_CONV_IMPLS

DATASETS = ("mnist", "omniglot", "celeba")
RUNTIMES = ("ray", "local", "fused")
REWARDS = ("discriminator", "l2")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the pieces run together (``spiral.actors``): processes, sizes, budgets, logs, checkpoints.

    Attributes:
      runtime: "ray" (distributed actors and learners), "local" (one process, same code paths,
        deterministic: for debugging and tests) or "fused" (the whole loop jitted on one device).
      ray_address: None starts a local Ray on this machine; "auto" joins the cluster it runs on.
      ray_num_cpus: CPUs the local Ray may schedule (0: this machine's count). More than the cores
        oversubscribes them deliberately (e.g. 2 actors and the learners on a 2-core laptop).
      num_actors: Ray actors (one CPU core each) painting with the numba engine (each member of a
        population has its own).
      envs_per_actor: environments per actor, stepped together with one batched policy call.
      batch_size: episodes per policy update (a multiple of envs_per_actor).
      queue_capacity: unrolls outstanding at once (0: twice the unrolls of one batch, at least
        one per actor).
      max_policy_lag: unrolls acted by a policy more versions behind the learner are dropped.
      disc_updates_per_policy_update: discriminator updates per policy update (may be fractional).
      actor_narrow_convs: the actors' form of the policy's few-channel convolutions (the
        torso's input conv, the location decoders' final conv): "direct" or "taps" (the same
        function and parameters; "taps" samples ~1.5x faster on one CPU core with the tiny
        network, slower with the small and full ones: benchmarks/actor_throughput.py).
      rewards_on: "actors" (SPIRAL: each actor scores its own canvases on its CPU) or "learner"
        (the policy learner scores the batch's canvases on its device, with the newest
        discriminator, just before the update). Per-step TCA rewards score every canvas of an
        episode: with the paper's critic that is ~5 ms per canvas on one CPU core, about 70% of an
        actor's time (benchmarks/RESULTS.md, discriminator_throughput), and cheap on a GPU.
      max_updates: stop after this many policy updates (0: no limit); in a population, policy
        updates of each member.
      max_minutes: stop after this much training time (0: no limit).
      num_gpus: GPUs for the two learners: 0 (CPU), a fraction or 1 (shared), 2 (one each).
      seed: seeds parameters, environments and sampling.
      run_dir: the run's folder ("" for none): an error's traceback goes to <run_dir>/error.log.
      logdir: TensorBoard event files ("" for none).
      checkpoint_dir: checkpoints ("" for none); resume continues from the latest one there.
      checkpoint_every_minutes: checkpoint period (and always at the end).
      resume: continue from the latest intact checkpoint in checkpoint_dir (an error if there is
        none).
      auto_resume: continue from the latest intact checkpoint in checkpoint_dir if there is one,
        else start afresh (a job that may be preempted and rerun with the same command).
      log_every_seconds: progress line period.
      image_every_updates: sample canvases to TensorBoard every this many policy updates.
    """

    runtime: str = "ray"
    ray_address: Optional[str] = None
    ray_num_cpus: int = 0
    num_actors: int = 2
    envs_per_actor: int = 8
    batch_size: int = 64
    queue_capacity: int = 0
    max_policy_lag: int = 20
    disc_updates_per_policy_update: float = 1.0
    actor_narrow_convs: str = "direct"
    rewards_on: str = "actors"
    max_updates: int = 0
    max_minutes: float = 0.0
    num_gpus: float = 0.0
    seed: int = 0
    run_dir: str = ""
    logdir: str = ""
    checkpoint_dir: str = ""
    checkpoint_every_minutes: float = 10.0
    resume: bool = False
    auto_resume: bool = False
    log_every_seconds: float = 5.0
    image_every_updates: int = 100

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"--runtime must be one of {RUNTIMES}, got {self.runtime!r}.")
        for name in ("num_actors", "envs_per_actor", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.runtime != "fused" and self.batch_size % self.envs_per_actor:
            raise ValueError(f"--batch_size ({self.batch_size}) must be a multiple of --envs_per_actor "
                             f"({self.envs_per_actor}): a batch is made of whole actor unrolls.")
        if self.queue_capacity < 0 or self.max_policy_lag < 0:
            raise ValueError("--queue_capacity and --max_policy_lag must be >= 0.")
        if self.queue_capacity and self.queue_capacity < max(self.num_actors, self.unrolls_per_batch):
            raise ValueError(f"--queue_capacity ({self.queue_capacity}) must be at least the number of "
                             f"actors ({self.num_actors}) and the unrolls in one batch "
                             f"({self.unrolls_per_batch}); or 0 for the default.")
        if self.actor_narrow_convs not in NARROW_CONV_IMPLS:
            raise ValueError(f"--actor_narrow_convs must be one of {NARROW_CONV_IMPLS}, got "
                             f"{self.actor_narrow_convs!r}.")
        if self.rewards_on not in ("actors", "learner"):
            raise ValueError(f"--rewards_on must be 'actors' or 'learner', got {self.rewards_on!r}.")
        if self.disc_updates_per_policy_update < 0:
            raise ValueError(f"--disc_updates_per_policy_update must be >= 0, got "
                             f"{self.disc_updates_per_policy_update}.")
        if self.max_updates < 0 or self.max_minutes < 0:
            raise ValueError("--max_updates and --max_minutes must be >= 0 (0 means no limit).")
        if self.max_updates == 0 and self.max_minutes == 0:
            raise ValueError("Set --max_updates or --max_minutes (or both): a run needs a budget.")
        if self.num_gpus < 0 or (self.num_gpus > 1 and self.num_gpus != 2):
            raise ValueError(f"--num_gpus must be 0, a fraction in (0, 1], or 2, got {self.num_gpus}.")
        if (self.resume or self.auto_resume) and not self.checkpoint_dir:
            raise ValueError("--resume and --auto_resume need --checkpoint_dir (where to find the "
                             "checkpoint).")
        if self.resume and self.auto_resume:
            raise ValueError("--resume (a checkpoint must exist) and --auto_resume (start afresh "
                             "when there is none) contradict each other: pass one.")
        if self.checkpoint_every_minutes <= 0 or self.log_every_seconds <= 0:
            raise ValueError("--checkpoint_every_minutes and --log_every_seconds must be > 0.")
        if self.image_every_updates < 1:
            raise ValueError(f"--image_every_updates must be >= 1, got {self.image_every_updates}.")
        if not 0 <= self.seed < 2 ** 31:
            raise ValueError(f"--seed must be in [0, 2**31), got {self.seed}.")

    @property
    def unrolls_per_batch(self) -> int:
        return max(1, self.batch_size // self.envs_per_actor)

    @property
    def capacity(self) -> int:
        """The trajectory queue's bound (unrolls outstanding)."""
        return self.queue_capacity or max(self.num_actors, 2 * self.unrolls_per_batch)

    def learner_gpus(self) -> tuple[float, float]:
        """(policy learner, discriminator learner) GPU shares."""
        if self.num_gpus == 2:
            return 1.0, 1.0
        return self.num_gpus / 2, self.num_gpus / 2


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """Population-based training (``spiral.actors.population``): policy learners sharing one critic.

    PBT evolves each member's learning rate and global entropy cost (which scales every per-key
    entropy weight; the weights themselves are part of the compiled update and stay fixed).
    With a population, ``--learning_rate`` and ``--entropy_cost`` are not used: the members'
    initial values are drawn from the ranges below.

    Attributes:
      size: policy learners in the population, each with its own actors and parameter stream,
        all rewarded by one shared discriminator (1: a single run, no population).
      ready_every_updates: a PBT round every this many policy updates of each member: the
        bottom members copy top ones and perturb their hyperparameters (0: never, the members
        then train independently beside the shared critic).
      learning_rate_range: (min, max) learning rate: initial values log-uniform in it, perturbed
        values clipped to it (SPIRAL: 1e-5 .. 3e-4).
      entropy_cost_range: (min, max) entropy cost, drawn and clipped the same way (SPIRAL:
        2e-3 .. 1e-1).
      truncation: fraction of the population in the bottom (members that copy) and in the top
        (members that are copied) at each round; at least one member each.
      perturb_factors: an exploiting member multiplies each copied hyperparameter by one of these,
        picked at random.
      fitness_episodes: a member's fitness is the mean score, by the critic of the moment (or
        the normalised L2 reward), of its newest episodes: at least this many (whole batches).
    """

    size: int = 1
    ready_every_updates: int = 100
    learning_rate_range: tuple[float, float] = (1e-5, 3e-4)
    entropy_cost_range: tuple[float, float] = (2e-3, 1e-1)
    truncation: float = 0.2
    perturb_factors: tuple[float, ...] = (0.8, 1.25)
    fitness_episodes: int = 64

    def __post_init__(self):
        object.__setattr__(self, "learning_rate_range", tuple(self.learning_rate_range))
        object.__setattr__(self, "entropy_cost_range", tuple(self.entropy_cost_range))
        object.__setattr__(self, "perturb_factors", tuple(self.perturb_factors))
        if self.size < 1:
            raise ValueError(f"--population_size must be >= 1, got {self.size}.")
        if self.ready_every_updates < 0:
            raise ValueError(f"--pbt_ready_every_updates must be >= 0 (0: no PBT rounds), got "
                             f"{self.ready_every_updates}.")
        for name in ("learning_rate_range", "entropy_cost_range"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"--pbt_{name} must be two numbers min,max with 0 < min <= max, "
                                 f"got {value}.")
        if not 0 < self.truncation <= 0.5:
            raise ValueError(f"--pbt_truncation must be in (0, 0.5] (the bottom and the top may not "
                             f"overlap), got {self.truncation}.")
        if not self.perturb_factors or any(not f > 0 for f in self.perturb_factors):
            raise ValueError(f"--pbt_perturb_factors must be positive numbers, got "
                             f"{self.perturb_factors}.")
        if self.fitness_episodes < 1:
            raise ValueError(f"--pbt_fitness_episodes must be >= 1, got {self.fitness_episodes}.")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs. See each component's config for its fields.

    Attributes:
      dataset: "mnist", "omniglot" or "celeba": the real images (and conditional targets).
      data_dir: where the datasets live (None: $SPIRAL_DATA_DIR, else the per-user cache).
      dataset_limit: use only the first N training images (0: all), for quick runs.
      reward: "discriminator" (SPIRAL) or "l2" (the conditional baseline −‖canvas − target‖²).
      normalise_l2: divide the L2 reward by the blank canvas's distance to the target (blank −1,
        perfect copy 0), so its scale does not depend on the target's ink or the image width.
      temporal_credit_assignment: per-step rewards that sum to the final one: SPIRAL++'s
        D(c_t) − D(c_{t−1}) for the discriminator, the distance removed by each action for L2.
      new_stroke_penalty: reward added for each paint step that starts a new continuous stroke
        (after a jump or reset); SPIRAL used a small negative value on MNIST (magnitude unpublished).
      blank_penalty: reward added at the last step of an episode that painted nothing.
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    dataset_limit: int = 0
    reward: str = "discriminator"
    normalise_l2: bool = True
    temporal_credit_assignment: bool = False
    new_stroke_penalty: float = 0.0
    blank_penalty: float = 0.0
    env: PaintConfig = PaintConfig()
    agent: AgentConfig = AgentConfig()
    policy: PolicyLearnerConfig = PolicyLearnerConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    runtime: RuntimeConfig = RuntimeConfig(max_updates=1)
    population: PopulationConfig = PopulationConfig()

    def __post_init__(self):
        for path, value in non_finite_numbers(self):
            raise ValueError(f"{path} must be a finite number, got {value}: NaN and infinity pass "
                             f"no comparison, so they would slip through every other check.")
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {DATASETS}, got {self.dataset!r}.")
        if self.reward not in REWARDS:
            raise ValueError(f"--reward must be one of {REWARDS}, got {self.reward!r}.")
        if self.dataset_limit < 0:
            raise ValueError(f"--dataset_limit must be >= 0, got {self.dataset_limit}.")
        env, agent, disc = self.env, self.agent, self.discriminator
        if self.reward == "l2" and not env.conditional:
            raise ValueError("--reward=l2 compares the canvas with a target: it needs --conditional.")
        if env.l2_reward:
            raise ValueError("Set the L2 reward with ExperimentConfig.reward='l2', not "
                             "PaintConfig.l2_reward: the actors compute every reward.")
        self.policy.check_entropy_keys(agent.action_keys)
        if self.population.size > 1:
            if self.runtime.runtime == "fused":
                raise ValueError("The fused runtime trains one policy: --population_size > 1 needs "
                                 "--runtime=ray or --runtime=local.")
            if not self.runtime.run_dir and (self.runtime.logdir or self.runtime.checkpoint_dir):
                raise ValueError("A population writes each member's logs and checkpoints in "
                                 "<run_dir>/<member>: set --run_dir.")
        if disc.complement and not env.conditional:
            raise ValueError("--complement_discriminator needs --conditional (it masks halves of the "
                             "target).")
        mismatches = [
            (name, getattr(agent, name), value) for name, value in (
                ("grid_width", env.grid_width), ("brush_sizes", env.brush_sizes),
                ("use_color", env.use_color), ("use_pressure", env.use_pressure),
                ("conditional", env.conditional), ("canvas_width", self.observation_width))
            if getattr(agent, name) != value]
        if mismatches:
            raise ValueError("The agent's action space / input does not match the environment's: "
                             + "; ".join(f"agent.{n}={a!r} but environment has {e!r}"
                                         for n, a, e in mismatches))
        if disc.image_channels != env.channels or disc.conditional != env.conditional:
            raise ValueError(f"The discriminator (channels {disc.image_channels}, conditional "
                             f"{disc.conditional}) does not match the environment (channels "
                             f"{env.channels}, conditional {env.conditional}).")
        if self.reward == "discriminator" and disc.image_size != self.observation_width:
            raise ValueError(f"The discriminator scores the canvases the agent observes: its "
                             f"image_size ({disc.image_size}) must equal the observation width "
                             f"({self.observation_width}).")

    @property
    def observation_width(self) -> int:
        """The width of the canvases the agent (and the discriminator) sees."""
        return self.env.observation_width

    @property
    def uses_discriminator(self) -> bool:
        return self.reward == "discriminator"

    # ------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        return cls.from_dict(json.loads(text))


def non_finite_numbers(config, prefix: str = "") -> list[tuple[str, float]]:
    """[(field path, value)] of every float in a (nested) config dataclass that is NaN or
    infinite, tuples included (e.g. ``policy.entropy_weights``)."""
    found = []

    def visit(path: str, value):
        if dataclasses.is_dataclass(value):
            found.extend(non_finite_numbers(value, path + "."))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                visit(f"{path}[{i}]", item)
        elif isinstance(value, float) and not math.isfinite(value):
            found.append((path, value))

    for field in dataclasses.fields(config):
        visit(prefix + field.name, getattr(config, field.name))
    return found


def _from_dict(cls, data: dict) -> Any:
    """Rebuild a (nested) frozen dataclass from ``dataclasses.asdict`` output (lists -> tuples)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} field(s) {sorted(unknown)} in the saved config; "
                         f"was it written by a newer version of spiral?")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
