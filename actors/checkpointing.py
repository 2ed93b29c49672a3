"""Run checkpoints: the one on-disk format every runtime writes and every reader loads.

Layout under ``checkpoint_dir``::

    ckpt_00001200/           one save, named by the number of policy updates
      policy/                the PolicyLearner's state (orbax): params, optimiser, step, RNG, ...
      discriminator/         the DiscriminatorLearner's state (orbax), when the run has one
      replay/                the discriminator's replay of final canvases (``Replay.get_state``)
      <other trees>          whatever else a runtime saves (e.g. ``queue/``: unrolls not yet learned)
      run.json               the ExperimentConfig, the counters, and the SHA-256 of every other
                             file of the save; written last

Each named tree is written with orbax; a reader restores the ones it needs (``restore_tree``).
The run loop writes a save from states it fetched, so a checkpoint is in one place even when
the learners run on other machines.

Safety: a save is written to a ``.tmp`` folder and renamed into place, and ``run.json`` is its
completeness mark, so a crash mid-save never leaves a checkpoint ``list_checkpoints`` would
return; a save of an existing step renames the old one aside and deletes it only after the new
one is in place, so an earlier checkpoint is never damaged by a failed save. The checksums let
``verify_checkpoint`` tell a damaged save (a truncated or altered file) from one written with
another configuration, so a resume can fall back to the newest intact save instead of blaming
the flags. The newest ``keep`` saves are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

RUN_FILE = "run.json"
_NAME = re.compile(r"^ckpt_(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file and what is wrong with it."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (the folder or the disk refused); earlier
    checkpoints are untouched."""


def _save_tree(path: str, tree: Any):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, jax.device_get(tree))
        checkpointer.wait_until_finished()


def restore_tree(path: str, template: Any = None) -> Any:
    """Restore a tree saved by ``save_checkpoint``. With ``template`` (a state of the same
    structure, e.g. a freshly built learner's), the result has its structure and dtypes;
    without, it comes back as nested dicts of numpy arrays. A template that does not fit raises
    ``ValueError`` (a different configuration: the caller says which)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No saved state at {path}.")
    with ocp.StandardCheckpointer() as checkpointer:
        if template is None:
            return checkpointer.restore(path)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(template))
        try:
            restored = checkpointer.restore(path, abstract)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"the state saved at {path} does not fit this run's: {e}") from None
    # Orbax restores the saved shapes whatever the template says: compare them here.
    wrong = [(jax.tree_util.keystr(key), np.shape(got), want.shape)
             for (key, got), want in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                                         jax.tree.leaves(abstract))
             if np.shape(got) != tuple(want.shape)]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(f"the state saved at {path} does not fit this run's: {len(wrong)} arrays "
                         f"have other shapes, e.g. {key} is {got} where this run has {want}.")
    return restored


def _file_digests(folder: str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` except ``run.json``."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == RUN_FILE:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digests[rel] = digest.hexdigest()
    return dict(sorted(digests.items()))


def save_checkpoint(checkpoint_dir: str, step: int, config_dict: dict, counters: dict,
                    trees: Mapping[str, Any], keep: int = 3,
                    linked: Optional[Mapping[str, str]] = None) -> str:
    """Write one checkpoint for ``step`` policy updates; returns its path.

    ``trees``: name -> pytree of arrays (``None`` values are skipped), e.g. ``{"policy": ...,
    "discriminator": ..., "replay": ...}``. ``linked``: name -> a tree already saved in another
    checkpoint (its folder), whose files are hard-linked in rather than written again (copied
    where the file system refuses links): a population member's own checkpoint folder shares
    its files with the population's checkpoint. Raises ``CheckpointWriteError`` (an ``OSError``) when
    the save cannot be written, whatever layer failed (orbax reports I/O errors as
    ``ValueError``); earlier checkpoints are untouched then.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    final = os.path.abspath(os.path.join(checkpoint_dir, f"ckpt_{int(step):08d}"))
    tmp, old = final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        for name, tree in trees.items():
            if tree is not None:
                _save_tree(os.path.join(tmp, name), tree)
        for name, source in (linked or {}).items():
            shutil.copytree(source, os.path.join(tmp, name), copy_function=_link_or_copy)
        info = {"config": config_dict, "counters": _plain(counters), "files": _file_digests(tmp)}
        with open(os.path.join(tmp, RUN_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        if os.path.isdir(final):  # a save of the same step (e.g. right after a resume)
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(old) and not os.path.isdir(final):
            os.rename(old, final)
        if isinstance(e, Exception):
            lines = [line for line in str(e).splitlines() if line.strip()]
            raise CheckpointWriteError(f"writing {final} failed: {type(e).__name__}: "
                                       f"{lines[0] if lines else ''}") from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def list_checkpoints(checkpoint_dir: str) -> list[str]:
    """Complete checkpoints in ``checkpoint_dir`` (those with a ``run.json``), oldest first."""
    if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
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


def _read_info(folder: str) -> dict:
    path = os.path.join(folder, RUN_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the file is damaged.") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or not isinstance(
            info.get("counters"), dict):
        raise CheckpointError(f"{path} lacks its 'config' and 'counters' sections: the file is "
                              f"damaged or was not written by spiral.")
    return info


def read_run_info(path: str) -> tuple[dict, dict]:
    """(config dict, counters) of a checkpoint folder or checkpoint_dir. A damaged ``run.json``
    raises ``CheckpointError`` naming it."""
    info = _read_info(resolve_checkpoint(path))
    return info["config"], info["counters"]


def verify_checkpoint(folder: str) -> Optional[str]:
    """None if the checkpoint is intact, else what is wrong, naming the file.

    Intact: ``run.json`` reads, and every file the save wrote is there with its recorded
    SHA-256 (saves written before checksums were recorded are checked for ``run.json`` only).
    """
    try:
        info = _read_info(folder)
    except (OSError, CheckpointError) as e:
        return str(e)
    recorded = info.get("files")
    if recorded is None:
        return None
    try:
        found = _file_digests(folder)
    except OSError as e:
        return f"{folder} cannot be read ({e})"
    for rel, digest in recorded.items():
        if rel not in found:
            return f"{os.path.join(folder, rel)} is missing"
        if found[rel] != digest:
            return f"{os.path.join(folder, rel)} does not have the content that was saved (checksum differs)"
    return None


def _plain(value):
    """Counters as JSON: numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value
