"""The absl flags of the training scripts, and the one function that turns them into a config.

Every script (``run_mnist.py``, ``run_omniglot.py``, ``run_celeba.py``) calls ``define_flags``
with its dataset's preset (the defaults ``--help`` shows), then ``config_from_flags()`` in its
``main``: flags are read here, in the driver, and nowhere else; workers get the frozen config.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
import sys
import traceback
from typing import Any

from absl import flags

from spiral.discriminator import DiscriminatorConfig
from spiral.envs import PaintConfig
from spiral.learner import AgentConfig, PolicyLearnerConfig
from spiral.launch.config import DATASETS, REWARDS, RUNTIMES, ExperimentConfig, RuntimeConfig

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


_OUR_FLAGS: set[str] = set()


def define_flags(preset: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """Define every training flag in ``flag_values``, with ``PRESETS[preset]``'s defaults."""
    before = set(flag_values)
    _define(PRESETS[preset], flag_values)
    _OUR_FLAGS.update(set(flag_values) - before)


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


def _define(p: dict, fv: flags.FlagValues) -> None:
    # Data and task.
    flags.DEFINE_enum("dataset", p["dataset"], DATASETS, "Real images the discriminator learns from.",
        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Dataset folder (default: $SPIRAL_DATA_DIR, else ~/.cache/spiral/data).",
        flag_values=fv)
    flags.DEFINE_integer("dataset_limit", 0, "Use only the first N training images (0: all).",
        flag_values=fv)
    flags.DEFINE_boolean("conditional", p["conditional"], "Reconstruct a target image shown to the agent.",
        flag_values=fv)
    flags.DEFINE_enum("reward", "discriminator", REWARDS, "discriminator (SPIRAL) or l2 (conditional baseline).",
        flag_values=fv)
    flags.DEFINE_boolean("normalise_l2", True, "L2 reward divided by the blank canvas's distance to the target (blank -1, copy 0).",
        flag_values=fv)
    flags.DEFINE_boolean("temporal_credit_assignment", False, "Per-step rewards summing to the final one: SPIRAL++'s D(c_t) - D(c_t-1); for L2 the distance each stroke removed.",
        flag_values=fv)
    flags.DEFINE_float("new_stroke_penalty", 0.0, "Reward for each paint step that starts a new stroke (e.g. -0.01).",
        flag_values=fv)
    flags.DEFINE_float("blank_penalty", 0.0, "Reward at the end of an episode that painted nothing (e.g. -1).",
        flag_values=fv)
    # Environment.
    flags.DEFINE_integer("episode_length", p["episode_length"], "Steps per episode: reset + N-1 strokes.",
        flag_values=fv)
    flags.DEFINE_integer("canvas_width", 64, "Rendering resolution (64, 128, 256); the agent sees 64x64.",
        flag_values=fv)
    flags.DEFINE_integer("observation_width", 64, "Canvas width the agent sees (64; 32/16 for small CPU runs, L2 reward only).",
        flag_values=fv)
    flags.DEFINE_integer("grid_width", 32, "Width of the stroke end/control point grid.",
        flag_values=fv)
    flags.DEFINE_boolean("use_color", p["use_color"], "Colour canvas and red/green/blue actions.",
        flag_values=fv)
    flags.DEFINE_boolean("use_pressure", True, "Expose the pressure action (else pressure 1).",
        flag_values=fv)
    flags.DEFINE_list("brush_sizes", ["1", "2", "4", "8", "12", "24"], "Brush radii in pixels of a 64 canvas.",
        flag_values=fv)
    flags.DEFINE_enum("jump_start", "corrected", ["corrected", "released"],
                      "corrected: a stroke after a jump starts where the brush jumped. released: "
                      "DeepMind's released environment exactly (the (y, y) start after a jump, "
                      "libmypaint 1.3.0's brush speed term, dtime 0.1f; envs/README.md).", flag_values=fv)
    # Agent and policy learner.
    flags.DEFINE_enum("network", "full", list(AGENT_SIZES), "Agent size: full (SPIRAL's, 1.6 M params), small, tiny.",
        flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-4, "Policy Adam learning rate (SPIRAL: 1e-5 .. 3e-4).",
        flag_values=fv)
    flags.DEFINE_float("entropy_cost", 1e-2, "Entropy bonus weight (SPIRAL: 2e-3 .. 1e-1).",
        flag_values=fv)
    flags.DEFINE_list("entropy_weights", [], "Per-key entropy weights as key:weight (e.g. flag:100); unnamed keys weigh 1.",
        flag_values=fv)
    flags.DEFINE_boolean("entropy_normalise", False, "Divide each key's entropy by log(its number of values).",
        flag_values=fv)
    flags.DEFINE_enum("value_normalisation", "none", ["none", "popart", "running"],
                      "How the value head follows the reward's scale: PopArt, running target "
                      "normalisation, or none.", flag_values=fv)
    flags.DEFINE_float("value_stats_step", 1e-2, "Step size of the value normalisation's running statistics.",
        flag_values=fv)
    flags.DEFINE_enum("learner_transposed_conv", "depth_to_space", ["direct", "depth_to_space"],
                      "Form of the location decoder's transposed convolutions in the learner (same "
                      "function; depth_to_space updates ~2x faster on CPU). Actors always sample "
                      "with direct, faster at their batch sizes.", flag_values=fv)
    flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "Learner compute precision.",
        flag_values=fv)
    # Discriminator.
    flags.DEFINE_enum("discriminator_loss", "wgan_gp", ["wgan_gp", "sngan"], "WGAN-GP (SPIRAL) or SN-GAN (SPIRAL++).",
        flag_values=fv)
    flags.DEFINE_enum("disc_network", "full", list(DISC_SIZES), "Discriminator size: full, small, tiny.",
        flag_values=fv)
    flags.DEFINE_boolean("complement_discriminator", False, "SPIRAL++ complement discriminator (conditional).",
        flag_values=fv)
    flags.DEFINE_float("disc_learning_rate", 1e-4, "Discriminator Adam learning rate.",
        flag_values=fv)
    flags.DEFINE_float("gp_weight", 1.0, "WGAN-GP gradient penalty weight (SPIRAL's agents: 1).",
        flag_values=fv)
    flags.DEFINE_integer("disc_batch_size", 64, "Fake (and real) images per discriminator update.",
        flag_values=fv)
    flags.DEFINE_integer("replay_batches", 20, "The replay holds the final canvases of this many D batches.",
        flag_values=fv)
    flags.DEFINE_enum("rewards_on", "actors", ["actors", "learner"],
                      "Who scores the canvases: the actors on CPU (SPIRAL) or the policy learner on "
                      "its device (cheaper for --temporal_credit_assignment with a GPU learner).",
                      flag_values=fv)
    flags.DEFINE_float("disc_updates_per_policy_update", 1.0, "Discriminator updates per policy update.",
        flag_values=fv)
    # Runtime.
    flags.DEFINE_enum("runtime", "ray", RUNTIMES, "ray (distributed), local (one process), fused (one device).",
        flag_values=fv)
    flags.DEFINE_string("ray_address", None, "Ray cluster to join ('auto' on a cluster); default: start a local Ray.",
        flag_values=fv)
    flags.DEFINE_integer("ray_num_cpus", 0, "CPUs of the local Ray (0: this machine's); more oversubscribes.",
        flag_values=fv)
    flags.DEFINE_integer("num_actors", max(1, (os.cpu_count() or 2) - 1), "CPU actors (one core each).",
        flag_values=fv)
    flags.DEFINE_enum("actor_narrow_convs", "direct", ["direct", "taps"],
                      "The actors' form of the policy's few-channel convolutions (same function): "
                      "taps samples faster on one CPU core with --network=tiny.", flag_values=fv)
    flags.DEFINE_integer("envs_per_actor", 8, "Environments per actor, stepped with one batched policy call.",
        flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Episodes per policy update (a multiple of --envs_per_actor).",
        flag_values=fv)
    flags.DEFINE_integer("queue_capacity", 0, "Unrolls outstanding at once (0: 2 batches).",
        flag_values=fv)
    flags.DEFINE_integer("max_policy_lag", 20, "Drop unrolls acted more than this many versions ago.",
        flag_values=fv)
    flags.DEFINE_integer("max_updates", 20000, "Stop after this many policy updates (0: no limit).",
        flag_values=fv)
    flags.DEFINE_float("max_minutes", 0.0, "Stop after this many minutes (0: no limit).",
        flag_values=fv)
    flags.DEFINE_float("num_gpus", 0.0, "GPUs for the learners: 0 (CPU), 0.5/1 (shared), 2 (one each).",
        flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)
    flags.DEFINE_string("run_dir", None, "Where logs and checkpoints go (default: runs/<dataset>-<time>).",
        flag_values=fv)
    flags.DEFINE_string("logdir", None, "TensorBoard folder (default: <run_dir>/tb).",
        flag_values=fv)
    flags.DEFINE_string("checkpoint_dir", None, "Checkpoint folder (default: <run_dir>/checkpoints).",
        flag_values=fv)
    flags.DEFINE_float("checkpoint_every_minutes", 10.0, "Checkpoint period (and always at the end).",
        flag_values=fv)
    flags.DEFINE_boolean("auto_resume", False, "Continue from the latest checkpoint if there is one, else start afresh (a rerun of a preempted job).",
        flag_values=fv)
    flags.DEFINE_boolean("resume", False, "Continue from the latest intact checkpoint in --checkpoint_dir / --run_dir (an error if none).",
        flag_values=fv)
    flags.DEFINE_float("log_every_seconds", 5.0, "Progress line period.", flag_values=fv)
    flags.DEFINE_integer("image_every_updates", 100, "Sample canvases to TensorBoard every N updates.",
        flag_values=fv)


def _run_dir(values: dict[str, Any]) -> str:
    if values["run_dir"]:
        return values["run_dir"]
    if (values["resume"] or values.get("auto_resume")) and not values["checkpoint_dir"]:
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


def config_from_values(values: dict[str, Any]) -> ExperimentConfig:
    """Build and check the config from flag values (a dict: testable without absl)."""
    for name, value in sorted(values.items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}.")
    if values["complement_discriminator"] and not values["conditional"]:
        raise ValueError("--complement_discriminator needs --conditional (it masks halves of the target).")
    try:
        brush_sizes = tuple(float(s) for s in values["brush_sizes"])
    except ValueError:
        raise ValueError(f"--brush_sizes must be numbers, got {values['brush_sizes']}.") from None
    env = PaintConfig(canvas_width=values["canvas_width"], grid_width=values["grid_width"],
                      episode_length=values["episode_length"], brush_sizes=brush_sizes,
                      use_color=values["use_color"], use_pressure=values["use_pressure"],
                      conditional=values["conditional"],
                      observation_width=values["observation_width"], jump_start=values["jump_start"])
    agent = AgentConfig(canvas_width=env.observation_width, grid_width=env.grid_width, brush_sizes=env.brush_sizes,
                        use_color=env.use_color, use_pressure=env.use_pressure,
                        conditional=env.conditional, **AGENT_SIZES[values["network"]])
    policy = PolicyLearnerConfig(learning_rate=values["learning_rate"],
                                 entropy_cost=values["entropy_cost"],
                                 entropy_weights=parse_entropy_weights(values["entropy_weights"]),
                                 entropy_normalise=values["entropy_normalise"],
                                 value_normalisation=values["value_normalisation"],
                                 value_stats_step=values["value_stats_step"],
                                 compute_dtype=values["compute_dtype"],
                                 transposed_conv=values["learner_transposed_conv"])
    disc = DiscriminatorConfig(loss=values["discriminator_loss"], image_channels=env.channels,
                               conditional=env.conditional,
                               complement=values["complement_discriminator"],
                               channels=DISC_SIZES[values["disc_network"]],
                               learning_rate=values["disc_learning_rate"],
                               gp_weight=values["gp_weight"],
                               batch_size=values["disc_batch_size"],
                               replay_batches=values["replay_batches"])
    run_dir = _run_dir(values)
    runtime = RuntimeConfig(
        runtime=values["runtime"], ray_address=values["ray_address"],
        ray_num_cpus=values["ray_num_cpus"], num_actors=values["num_actors"],
        envs_per_actor=values["envs_per_actor"], batch_size=values["batch_size"],
        queue_capacity=values["queue_capacity"], max_policy_lag=values["max_policy_lag"],
        disc_updates_per_policy_update=values["disc_updates_per_policy_update"],
        actor_narrow_convs=values["actor_narrow_convs"], rewards_on=values["rewards_on"],
        max_updates=values["max_updates"], max_minutes=values["max_minutes"],
        num_gpus=values["num_gpus"], seed=values["seed"],
        logdir=values["logdir"] or os.path.join(run_dir, "tb"),
        checkpoint_dir=values["checkpoint_dir"] or os.path.join(run_dir, "checkpoints"),
        checkpoint_every_minutes=values["checkpoint_every_minutes"], resume=values["resume"],
        auto_resume=values["auto_resume"], run_dir=run_dir,
        log_every_seconds=values["log_every_seconds"],
        image_every_updates=values["image_every_updates"])
    return ExperimentConfig(dataset=values["dataset"], data_dir=values["data_dir"],
                            dataset_limit=values["dataset_limit"], reward=values["reward"],
                            normalise_l2=values["normalise_l2"],
                            temporal_credit_assignment=values["temporal_credit_assignment"],
                            new_stroke_penalty=values["new_stroke_penalty"],
                            blank_penalty=values["blank_penalty"],
                            env=env, agent=agent, policy=policy, discriminator=disc,
                            runtime=runtime)


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
            f"logs {rt.logdir}; checkpoints {rt.checkpoint_dir}")


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
