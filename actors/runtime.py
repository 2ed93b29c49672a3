"""The runtime seam: what a runtime hands the run loop, and the errors and data they share.

A runtime (``driver.DistributedRuntime`` for "ray" and "local", ``fused.FusedRuntime`` for
"fused", ``population.PopulationRuntime`` for a population of policy learners) implements
``Runtime``; the run loop (``spiral.actors.run_loop``) does everything else. This module imports
neither, so both sides import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional, Protocol

import numpy as np

from spiral.actors import checkpointing
from spiral.envs import datasets, levels


class RunError(RuntimeError):
    """A run that cannot go on, with a cause that names what to do (printed as one line)."""


@dataclasses.dataclass
class StepReport:
    """What a runtime's ``step`` or ``flush`` did."""
    applied: list = dataclasses.field(default_factory=list)  # per finished policy update, in order:
    #                                                          True if applied, False if refused
    disc_updates: int = 0
    agent_steps: int = 0       # agent steps of the finished updates' batches
    episodes: int = 0
    acted_steps: int = 0       # agent steps the actors delivered (the acting rate)
    returns: list = dataclasses.field(default_factory=list)  # episode returns (means per unroll)
    policy_metrics: Optional[dict] = None  # the newest policy update's metrics, if one finished
    disc_metrics: Optional[dict] = None    # the newest discriminator metrics, if any
    samples: Optional[np.ndarray] = None   # uint8 final canvases [N, H, W, C] for TensorBoard
    values: dict = dataclasses.field(default_factory=dict)  # runtime progress values (queue, lag)

    @property
    def updates(self) -> int:
        return len(self.applied)


class RuntimeState(NamedTuple):
    trees: dict    # name -> pytree of arrays (checkpointing.save_checkpoint's ``trees``)
    counters: dict  # the runtime's own counters (JSON), handed back to ``restore``


class Runtime(Protocol):
    """What differs between runtimes; built as ``Runtime(config, data: RunData, say)``.

    * ``step(updates_left, want_samples)``: start at most ``updates_left`` more policy updates
      (None: no limit) and report what finished; always makes progress (waits for something to
      finish when it may start nothing). ``want_samples``: put final canvases in the report.
    * ``flush(final=False)``: finish everything in flight (before a checkpoint, at the end);
      ``final``: the run ends here, so stop acting first (nothing new is started).
    * ``state()``: after a flush, the trees a checkpoint holds and the runtime's own counters.
    * ``restore(path, counters)``: continue from the checkpoint folder ``path`` (checked by the
      run loop) with the saved counters; this run's config is in force afterwards, including
      hyperparameters the learners keep in their states.
    * ``summary()``: extra entries of the run's result ("counters": the runtime's own, merged
      into the result's counters); ``close()``: stop every worker.
    * ``after_checkpoint(path, counters, on_checkpoint)``, optional: what follows a written
      checkpoint instead of the run loop's ``on_checkpoint`` of ``trees["policy"]`` (a
      population exports and evaluates each member, ``spiral.actors.population``).
    """

    def step(self, updates_left: Optional[int], want_samples: bool) -> StepReport: ...
    def flush(self, final: bool = False) -> StepReport: ...
    def state(self) -> RuntimeState: ...
    def restore(self, path: str, counters: dict) -> None: ...
    def summary(self) -> dict: ...
    def close(self) -> None: ...


class RunData(NamedTuple):
    """The dataset as the runtimes use it, loaded once before anything starts."""
    images: np.ndarray             # uint8 levels [N, S, S, C]: the critic's real images (S: its image_size)
    targets: Optional[np.ndarray]  # uint8 levels [N, ow, ow, C] (conditional), else None


def load_run_data(config, split: str = "train") -> RunData:
    """The run's real images and conditional targets as uint8 levels. A dataset that cannot be
    loaded is a ``RunError`` (its message names the files and the fix)."""
    try:
        dataset = datasets.load_dataset(config.dataset, split=split, data_dir=config.data_dir,
                                        limit=config.dataset_limit or None)
    except (OSError, ValueError) as e:
        raise RunError(f"the {config.dataset} data could not be loaded: {e}") from None
    images = levels.quantise(dataset.images)
    if images.shape[-1] != config.env.channels:
        raise RunError(f"dataset {config.dataset!r} has {images.shape[-1]} channel(s) but the "
                       f"environment paints {config.env.channels}: set --use_color accordingly.")
    targets = None
    if config.env.conditional:
        targets = levels.area_downsample(images, config.observation_width)
    # The critic scores what the agent observes: real images at its width, made like the targets.
    return RunData(levels.area_downsample(images, config.discriminator.image_size), targets)


def check_local_gpu(num_gpus: float) -> None:
    """The in-process runtimes use this process's JAX devices: fail early if a GPU was asked for
    and JAX sees none."""
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() == "cpu":
        raise RunError(f"--num_gpus={num_gpus:g} but JAX sees no GPU in this process (backend "
                       f"'cpu'). Install the CUDA build (pip install -e '.[cuda]', see BUILD.md) "
                       f"or use --num_gpus=0.")


def restore_part(path: str, name: str, template: Any, what: str) -> Any:
    """Tree ``name`` of checkpoint ``path`` shaped as ``template``; a tree that does not fit this
    run's configuration is a ``RunError`` naming ``what`` (the checkpoint was checked intact)."""
    try:
        return checkpointing.restore_tree(os.path.join(path, name), template)
    except ValueError as e:
        raise RunError(f"cannot resume: the {what}'s state in {path} does not fit this run's "
                       f"configuration ({e}).") from None


def restore_replay(path: str, template: dict, say: Callable[[str], None]) -> Optional[dict]:
    """The discriminator's saved replay, or None (said why) when the checkpoint has none or it
    does not fit this run's (another capacity or image layout): the replay then starts empty."""
    replay_path = os.path.join(path, "replay")
    if not os.path.isdir(replay_path):
        return None
    try:
        tree = checkpointing.restore_tree(replay_path, template)
        capacity = len(template["canvases"])
        size, next_slot = int(tree["size"]), int(tree["next"])
        if not (0 <= size <= capacity and 0 <= next_slot < capacity):
            raise ValueError(f"impossible fill level {size} / next slot {next_slot}")
    except ValueError as e:
        say(f"resume: the saved replay does not fit this run's ({e}); the discriminator starts "
            f"from an empty replay.")
        return None
    return tree
