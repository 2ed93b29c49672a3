"""Run checkpoints: both learners' states, the counters and the config, in one folder per save.

Layout under ``checkpoint_dir``::

    ckpt_00001200/           one save, named by the number of policy updates
      policy/                the PolicyLearner's state (orbax): params, optimiser, step, RNG, ...
      discriminator/         the DiscriminatorLearner's state (orbax), when the run has one
      replay/                the discriminator's replay of final canvases (``Replay.get_state``)
      run.json               the ExperimentConfig and the runtime's counters; written last

The driver writes everything itself from states it fetched from the learners, so a checkpoint is
in one place even when the learners run on other machines. A save is written to a ``.tmp`` folder
and renamed, and ``run.json`` is its completeness mark: a crash mid-save never leaves a checkpoint
that ``latest_checkpoint`` would pick. The newest ``keep`` saves are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

RUN_FILE = "run.json"
_NAME = re.compile(r"^ckpt_(\d{8,})$")


def _save_tree(path: str, tree: Any):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, jax.device_get(tree))
        checkpointer.wait_until_finished()


def restore_tree(path: str, template: Any = None) -> Any:
    """Restore a state saved by ``save_checkpoint``. With ``template`` (a state of the same
    structure, e.g. a freshly built learner's), the result has its structure and dtypes;
    without, it comes back as nested dicts of numpy arrays."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No saved state at {path}.")
    with ocp.StandardCheckpointer() as checkpointer:
        if template is None:
            return checkpointer.restore(path)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(template))
        try:
            return checkpointer.restore(path, abstract)
        except (ValueError, KeyError) as e:
            raise ValueError(f"The state saved at {path} does not match this run's learner "
                             f"(different network or optimiser configuration?): {e}") from None


def save_checkpoint(checkpoint_dir: str, step: int, config_dict: dict, counters: dict,
                    policy_state: Any, discriminator_state: Any = None, replay_state: Any = None,
                    keep: int = 3) -> str:
    """Write one checkpoint for ``step`` policy updates; returns its path."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    final = os.path.abspath(os.path.join(checkpoint_dir, f"ckpt_{int(step):08d}"))
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _save_tree(os.path.join(tmp, "policy"), policy_state)
    if discriminator_state is not None:
        _save_tree(os.path.join(tmp, "discriminator"), discriminator_state)
    if replay_state is not None:
        _save_tree(os.path.join(tmp, "replay"), replay_state)
    with open(os.path.join(tmp, RUN_FILE), "w") as f:
        json.dump({"config": config_dict, "counters": _plain(counters)}, f, indent=2, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)  # a save of the same step (e.g. after a resume)
    os.rename(tmp, final)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(checkpoint_dir: str) -> list[str]:
    """Complete checkpoints in ``checkpoint_dir``, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        m = _NAME.match(name)
        path = os.path.join(checkpoint_dir, name)
        if m and os.path.isfile(os.path.join(path, RUN_FILE)):
            found.append((int(m.group(1)), os.path.abspath(path)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str) -> Optional[str]:
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a checkpoint_dir (its latest checkpoint) -> the checkpoint folder."""
    if os.path.isfile(os.path.join(path, RUN_FILE)):
        return os.path.abspath(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"No checkpoint in {path!r}: expected a folder holding ckpt_NNNNNNNN/ "
                                f"folders with a {RUN_FILE} (written by a training run's "
                                f"--checkpoint_dir), or one such folder.")
    return latest


def read_run_info(path: str) -> tuple[dict, dict]:
    """(config dict, counters) of a checkpoint folder or checkpoint_dir."""
    path = resolve_checkpoint(path)
    with open(os.path.join(path, RUN_FILE)) as f:
        data = json.load(f)
    return data["config"], data["counters"]


def _plain(value):
    """Counters as JSON: numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value
