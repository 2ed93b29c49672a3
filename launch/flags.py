"""The absl flags of the training scripts, generated from the config dataclasses, and back.

Each option is written once: as a field of a config dataclass (``ExperimentConfig``,
``RuntimeConfig``, ``PaintConfig``, ``PolicyLearnerConfig``, ``DiscriminatorConfig``) with its
type, its default and its entry in the class's ``Attributes`` docstring. ``define_flags`` makes
one flag per field (named like the field, or as ``RENAMED`` says where users know another name;
its help is the field's entry) except the fields of ``NOT_FLAGS``, which say why they are none.
Two flags are not fields: ``--network`` and ``--disc_network`` pick the networks' sizes. The
agent's action space follows the environment's flags, and the discriminator's image layout too.

Every script (``run_mnist.py``, ``run_omniglot.py``, ``run_celeba.py``) calls ``define_flags``
with its dataset's preset (the defaults ``--help`` shows), then ``config_from_flags()`` in its
``main``: flags are read here, in the driver, and nowhere else; workers get the frozen config.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import math
import os
import re
import signal
import sys
import traceback
import typing
from typing import Any, NamedTuple

from absl import flags

from spiral.actors.config import (DATASETS, REWARDS, RUNTIMES, ExperimentConfig, PopulationConfig,
                                  RuntimeConfig)
from spiral.discriminator import DiscriminatorConfig
from spiral.discriminator.config import LOSSES
from spiral.envs import PaintConfig
from spiral.envs.config import JUMP_STARTS
from spiral.learner import AgentConfig, PolicyLearnerConfig
from spiral.learner.config import (NARROW_CONV_IMPLS, TRANSPOSED_CONV_IMPLS,
                                   VALUE_NORMALISATIONS)

FLAGS = flags.FLAGS

# The network sizes a flag can pick. "full" is the released SPIRAL agent (~1.6 M parameters);
# "small" keeps the 64×64 canvas and 32×32 grid but shrinks every layer, for CPU runs.
AGENT_SIZES = {
    "full": {},
    "small": dict(torso_channels=16, torso_residual_blocks=2, torso_output_size=128, lstm_size=128,
                  decoder_channels=16, decoder_residual_blocks=2),
    "tiny": dict(torso_channels=8, torso_residual_blocks=1, torso_output_size=32, lstm_size=32,
                 decoder_channels=8, decoder_residual_blocks=1, embed_dim=4, condition_hidden=(16,),
                 head_mlp_hidden=(8,), noise_dim=4),
}
DISC_SIZES = {"full": (64, 128, 256, 512), "small": (16, 32, 64, 128), "tiny": (8, 16, 16, 32)}

# Per-dataset defaults (SPIRAL.md): what `python launch/run_<dataset>.py` trains with no flags.
PRESETS = {
    "mnist": dict(dataset="mnist", use_color=False, conditional=False, episode_length=20),
    "omniglot": dict(dataset="omniglot", use_color=False, conditional=True, episode_length=20),
    "celeba": dict(dataset="celeba", use_color=True, conditional=False, episode_length=20),
}

# The config sections whose fields become flags, by their path in ExperimentConfig.
SECTIONS = (("", ExperimentConfig), ("env", PaintConfig), ("policy", PolicyLearnerConfig),
            ("discriminator", DiscriminatorConfig), ("runtime", RuntimeConfig),
            ("population", PopulationConfig))
# Flags named otherwise than their field: the names users know.
RENAMED = {"policy.transposed_conv": "learner_transposed_conv",
           "discriminator.loss": "discriminator_loss",
           "discriminator.complement": "complement_discriminator",
           "discriminator.learning_rate": "disc_learning_rate",
           "discriminator.batch_size": "disc_batch_size",
           "population.size": "population_size",
           **{f"population.{name}": f"pbt_{name}" for name in (
               "ready_every_updates", "learning_rate_range", "entropy_cost_range", "truncation",
               "perturb_factors", "fitness_episodes")}}
# Fields that are no flag, and why.
_SPIRALS_VALUE = "SPIRAL's value (SPIRAL.md); change it in code, not per run"
NOT_FLAGS = {
    "env": "a section: its fields are flags", "agent": "follows --network and the environment",
    "policy": "a section: its fields are flags", "discriminator": "a section: its fields are flags",
    "runtime": "a section: its fields are flags", "population": "a section: its fields are flags",
    "env.background": "the datasets are dark ink on white, and so is the canvas",
    "env.l2_reward": "the reward is chosen with --reward (the runtimes compute every reward)",
    "policy.baseline_cost": _SPIRALS_VALUE, "policy.discount": _SPIRALS_VALUE,
    "policy.adam_b1": _SPIRALS_VALUE, "policy.adam_b2": _SPIRALS_VALUE,
    "policy.adam_eps": _SPIRALS_VALUE, "policy.max_grad_norm": _SPIRALS_VALUE,
    "policy.clip_rho_threshold": _SPIRALS_VALUE, "policy.clip_pg_rho_threshold": _SPIRALS_VALUE,
    "policy.clip_c_threshold": _SPIRALS_VALUE,
    "policy.value_std_min": "a numerical floor, not a setting",
    "discriminator.image_channels": "follows --use_color",
    "discriminator.image_size": "follows --observation_width (the critic scores what the agent sees)",
    "discriminator.conditional": "follows --conditional",
    "discriminator.channels": "follows --disc_network",
    "discriminator.leaky_relu_slope": _SPIRALS_VALUE, "discriminator.spectral_norm": _SPIRALS_VALUE,
    "discriminator.gp_target": _SPIRALS_VALUE, "discriminator.mean_penalty": _SPIRALS_VALUE,
    "discriminator.sngan_reward": _SPIRALS_VALUE, "discriminator.b1": _SPIRALS_VALUE,
    "discriminator.b2": _SPIRALS_VALUE, "discriminator.eps": _SPIRALS_VALUE,
}
# The values a string field may take (its flag is an enum).
CHOICES = {"dataset": DATASETS, "reward": REWARDS, "env.jump_start": JUMP_STARTS,
           "policy.transposed_conv": TRANSPOSED_CONV_IMPLS,
           "policy.compute_dtype": ("float32", "bfloat16"),
           "policy.value_normalisation": VALUE_NORMALISATIONS, "discriminator.loss": LOSSES,
           "runtime.runtime": RUNTIMES, "runtime.rewards_on": ("actors", "learner"),
           "runtime.actor_narrow_convs": NARROW_CONV_IMPLS}
# Where a script's default differs from the dataclass's (which suits tests and library use).
LAUNCH_DEFAULTS = {
    "policy.transposed_conv": "depth_to_space",   # the same function, ~2x faster updates on CPU
    # The learning recipe (benchmarks/RESULTS.md, learning_curve and learning_recipe): value
    # targets normalised by running statistics of the returns (the critic's scale drifts; of
    # none / PopArt / running it learned best with both rewards), a `flag` entropy weight that
    # keeps the policy painting (without it `flag` collapses to "never paint" before the location
    # heads learn where to), per-step rewards (SPIRAL++'s TCA; for L2 the distance each stroke
    # removes) and SPIRAL++'s SN-GAN critic (several times cheaper per update on a CPU).
    "policy.value_normalisation": "running",
    "policy.entropy_weights": (("flag", 100.0),),
    "temporal_credit_assignment": True,
    "discriminator.loss": "sngan",
    "runtime.max_updates": 20000,
    "runtime.num_actors": max(1, (os.cpu_count() or 2) - 1),   # one core for the learners
    "runtime.run_dir": None, "runtime.logdir": None, "runtime.checkpoint_dir": None,
}
# What the launcher adds to a field's help.
HELP_NOTES = {
    "runtime.run_dir": "Default: runs/<dataset>-<time>.",
    "runtime.logdir": "Default: <run_dir>/tb.",
    "runtime.checkpoint_dir": "Default: <run_dir>/checkpoints.",
    "policy.entropy_weights": "As key:weight items, e.g. flag:100,end:2.",
}


class FlagSpec(NamedTuple):
    name: str          # the flag, without --
    path: str          # the config field it sets, e.g. "policy.learning_rate"
    hint: Any          # the field's type
    default: Any       # the field's default
    help: str          # the field's entry in its class's Attributes docstring


def field_docs(cls) -> dict[str, str]:
    """{field: its entry} of a class docstring's ``Attributes:`` section (Google style; one entry
    may name several fields, "b1, b2, eps: ..."), whitespace collapsed."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    docs, names, text = {}, [], []

    def close():
        for name in names:
            docs[name] = " ".join(" ".join(text).split())

    inside = False
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        entry = re.match(r"^  ([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$", line)
        if entry:
            close()
            names, text = entry.group(1).split(", "), [entry.group(2)]
        elif line.startswith("    ") and names:
            text.append(line.strip())
        elif line.strip():   # the section ended
            break
    close()
    return docs


def flag_specs() -> list[FlagSpec]:
    """One spec per config field that is a flag, in the sections' order."""
    specs = []
    for prefix, cls in SECTIONS:
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for field in dataclasses.fields(cls):
            path = f"{prefix}.{field.name}" if prefix else field.name
            if path in NOT_FLAGS:
                continue
            if field.name not in docs:
                raise TypeError(f"{cls.__name__}.{field.name} has no entry in the class's "
                                f"Attributes docstring: write one (it is --help's text), or list "
                                f"{path!r} in NOT_FLAGS with the reason it is no flag.")
            help_text = " ".join(filter(None, (docs[field.name], HELP_NOTES.get(path))))
            specs.append(FlagSpec(RENAMED.get(path, field.name), path, hints[field.name],
                                  field.default, help_text))
    return specs


_OUR_FLAGS: set[str] = set()


def define_flags(preset: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """Define every training flag in ``flag_values``, with ``PRESETS[preset]``'s defaults."""
    before = set(flag_values)
    for spec in flag_specs():
        default = PRESETS[preset].get(spec.name, LAUNCH_DEFAULTS.get(spec.path, spec.default))
        _define(spec, default, flag_values)
    flags.DEFINE_enum("network", "full", list(AGENT_SIZES), "Agent size: full (SPIRAL's, 1.6 M "
                      "parameters), small, tiny.", flag_values=flag_values)
    flags.DEFINE_enum("disc_network", "full", list(DISC_SIZES), "Discriminator size: full, small, "
                      "tiny.", flag_values=flag_values)
    _OUR_FLAGS.update(set(flag_values) - before)


def _define(spec: FlagSpec, default, fv: flags.FlagValues) -> None:
    hint, args = spec.hint, (spec.name, None, spec.help)
    origin, type_args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        flags.DEFINE_boolean(spec.name, default, spec.help, flag_values=fv)
    elif hint is int:
        flags.DEFINE_integer(spec.name, default, spec.help, flag_values=fv)
    elif hint is float:
        flags.DEFINE_float(spec.name, default, spec.help, flag_values=fv)
    elif spec.path in CHOICES:
        flags.DEFINE_enum(spec.name, default, list(CHOICES[spec.path]), spec.help, flag_values=fv)
    elif hint is str or (origin is typing.Union and str in type_args):
        flags.DEFINE_string(spec.name, default, spec.help, flag_values=fv)
    elif origin is tuple:
        flags.DEFINE_list(spec.name, [_format_item(v) for v in default], spec.help, flag_values=fv)
    else:
        raise TypeError(f"no flag type for {spec.path}: {hint} (args {args}).")


def _format_item(value) -> str:
    """A tuple field's default item as the flag writes it: 4.0 -> "4", ("flag", 2.0) -> "flag:2"."""
    if isinstance(value, tuple):
        return ":".join(_format_item(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_values(preset: str = "mnist", **overrides) -> dict[str, Any]:
    """The flag values a script would get with no flags, plus ``overrides``: for tests, benchmarks
    and notebooks that build configs without absl (``config_from_values(default_values(...))``)."""
    flag_values = flags.FlagValues()
    define_flags(preset, flag_values)
    values = {name: flag_values[name].default for name in flag_values}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"Unknown flag(s) {sorted(unknown)}.")
    values.update(overrides)
    return values


def _run_dir(values: dict[str, Any]) -> str:
    if values["run_dir"]:
        return values["run_dir"]
    if (values["resume"] or values["auto_resume"]) and not values["checkpoint_dir"]:
        raise ValueError("--resume and --auto_resume need --run_dir (or --checkpoint_dir) of the "
                         "run to continue.")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{values['dataset']}-{stamp}")


def parse_entropy_weights(items) -> tuple[tuple[str, float], ...]:
    """["flag:100", "end:2"] (the --entropy_weights list) -> (("flag", 100.0), ("end", 2.0))."""
    pairs = []
    for item in items or ():
        key, sep, weight = str(item).partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((key.strip(), float(weight)))
        except ValueError:
            raise ValueError(f"--entropy_weights takes key:weight items (e.g. flag:100,end:1), got "
                             f"{item!r}.") from None
    return tuple(pairs)


def _parse_numbers(name: str, items) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in items)
    except ValueError:
        raise ValueError(f"--{name} must be numbers, got {items}.") from None


def config_from_values(values: dict[str, Any]) -> ExperimentConfig:
    """Build and check the config from flag values (a dict: testable without absl)."""
    for name, value in sorted(values.items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}.")
    if values["complement_discriminator"] and not values["conditional"]:
        raise ValueError("--complement_discriminator needs --conditional (it masks halves of the target).")
    sections = {prefix: {} for prefix, _ in SECTIONS}
    for spec in flag_specs():
        value = values[spec.name]
        if spec.path == "policy.entropy_weights":
            value = parse_entropy_weights(value)
        elif typing.get_origin(spec.hint) is tuple:
            value = _parse_numbers(spec.name, value)
        prefix, _, field = spec.path.rpartition(".")
        sections[prefix][field] = value
    run = sections["runtime"]
    run["run_dir"] = _run_dir(values)
    run["logdir"] = run["logdir"] or os.path.join(run["run_dir"], "tb")
    run["checkpoint_dir"] = run["checkpoint_dir"] or os.path.join(run["run_dir"], "checkpoints")
    env = PaintConfig(**sections["env"])
    agent = AgentConfig(canvas_width=env.observation_width, grid_width=env.grid_width,
                        brush_sizes=env.brush_sizes, use_color=env.use_color,
                        use_pressure=env.use_pressure, conditional=env.conditional,
                        **AGENT_SIZES[values["network"]])
    disc = DiscriminatorConfig(image_channels=env.channels, conditional=env.conditional,
                               image_size=env.observation_width,
                               channels=DISC_SIZES[values["disc_network"]],
                               **sections["discriminator"])
    return ExperimentConfig(env=env, agent=agent, policy=PolicyLearnerConfig(**sections["policy"]),
                            discriminator=disc, runtime=RuntimeConfig(**run),
                            population=PopulationConfig(**sections["population"]), **sections[""])


def config_from_flags() -> ExperimentConfig:
    return config_from_values({name: FLAGS[name].value for name in FLAGS if name in _OUR_FLAGS})


def describe(config: ExperimentConfig) -> str:
    """A few lines saying what will run, printed before training starts."""
    rt, env = config.runtime, config.env
    from spiral.learner import Agent, count_params  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    params = count_params(Agent(config.agent).init(jax.random.PRNGKey(0)))
    task = "conditional" if env.conditional else "unconditional"
    reward = config.reward + (" + TCA" if config.temporal_credit_assignment else "")
    return (f"spiral: {config.dataset} {task}, reward {reward}, {env.episode_length - 1} strokes, "
            f"{'colour' if env.use_color else 'grayscale'} {env.canvas_width}px\n"
            f"  agent {params:,} parameters; runtime {rt.runtime}: {rt.num_actors} actors x "
            f"{rt.envs_per_actor} envs, batch {rt.batch_size}, GPUs {rt.num_gpus:g}\n"
            f"  budget: {rt.max_updates or 'no'} updates / {rt.max_minutes or 'no'} minutes; "
            f"logs {rt.logdir}; checkpoints {rt.checkpoint_dir}" + _describe_population(config))


def _describe_population(config: ExperimentConfig) -> str:
    pop = config.population
    if pop.size == 1:
        return ""
    rounds = (f"a PBT round every {pop.ready_every_updates} updates of each member"
              if pop.ready_every_updates else "no PBT rounds")
    return (f"\n  population of {pop.size} sharing one critic (updates and budget per member), "
            f"{rounds}; learning rate {pop.learning_rate_range[0]:g}..{pop.learning_rate_range[1]:g}, "
            f"entropy cost {pop.entropy_cost_range[0]:g}..{pop.entropy_cost_range[1]:g}")


def start_script(argv) -> None:
    """What every launch script's ``main`` does first: refuse positional arguments (a forgotten
    ``--``), and keep absl's log at WARNING unless ``--verbosity`` was given (orbax logs every
    checkpoint file at INFO)."""
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}: every option is a --flag (see --help).")
    from absl import logging  # pylint: disable=import-outside-toplevel
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main_for(preset: str):
    """The ``main`` of a training script: flags -> config -> ``train_and_report``."""
    def main(argv):
        start_script(argv)
        try:
            config = config_from_flags()
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        print(describe(config), flush=True)
        raise SystemExit(train_and_report(config))
    return main


def train_and_report(config: ExperimentConfig) -> int:
    """Train with the evaluation at every checkpoint; returns the exit status.

    Whatever stops the run is said in one line: "done: ..." (0); a stop signal's line from the
    run loop (128 + the signal's number, after its checkpoint); "error: <cause>" (1) with the
    traceback, when there is more to say than the cause, in ``<run_dir>/error.log``.
    """
    from spiral.actors import run_loop  # pylint: disable=import-outside-toplevel
    from spiral.evaluation import log_checkpoint_metrics  # pylint: disable=import-outside-toplevel
    try:
        result = run_loop.train(config, on_checkpoint=log_checkpoint_metrics)
    except KeyboardInterrupt:
        print("interrupted again: stopped at once, without a checkpoint.", file=sys.stderr, flush=True)
        return 130
    except run_loop.RunError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # pylint: disable=broad-except
        log = _write_traceback(config.runtime.run_dir, e)
        print(f"error: {_cause(e)} (traceback in {log})", file=sys.stderr, flush=True)
        return 1
    if result["interrupted"]:
        return 128 + int(getattr(signal.Signals, result["interrupted"]))
    counters = result["counters"]
    print(f"done: {counters['updates']} policy updates, {counters['disc_updates']} discriminator "
          f"updates, {counters['agent_steps']:,} agent steps; checkpoint {result['checkpoint']}",
          flush=True)
    return 0


def _cause(error: BaseException) -> str:
    """One line naming what went wrong: a Ray task's original exception, not Ray's wrapper."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _write_traceback(run_dir: str, error: BaseException) -> str:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    for folder in (run_dir, os.path.join(os.path.expanduser("~"), ".cache", "spiral")):
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.abspath(os.path.join(folder, "error.log"))
            with open(path, "a") as f:
                f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}\n{text}")
            return path
        except OSError:
            continue
    return "(nowhere writable)"
