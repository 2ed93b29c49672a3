"""Load a trained policy from a checkpoint: its run's config, the agent network and its parameters.

A checkpoint folder (``<checkpoint_dir>/ckpt_NNNNNNNN/``, see ``spiral.actors.checkpointing``)
holds ``run.json`` (the ``ExperimentConfig`` as a dict, and the counters) and ``policy/`` (the
policy learner's ``LearnerState``, orbax). ``load_policy`` accepts that folder or the
checkpoint_dir itself (its latest checkpoint), rebuilds the ``Agent`` from the saved config and
checks that the saved parameters have exactly the shapes that agent expects.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from spiral.actors import checkpointing
from spiral.actors.config import ExperimentConfig
from spiral.learner import Agent


@dataclasses.dataclass
class LoadedPolicy:
    config: ExperimentConfig
    agent: Agent
    params: Any          # the agent's parameter pytree (numpy arrays)
    counters: dict       # the run's counters at the save (updates, agent_steps, ...)
    path: str            # the checkpoint folder actually read


def _shapes(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_params(agent: Agent, params) -> None:
    """Raise ValueError unless ``params`` has exactly the parameter names and shapes of ``agent``."""
    expected = _shapes(jax.eval_shape(agent.init, jax.random.PRNGKey(0)))
    got = _shapes(params)
    if expected != got:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:3]
        raise ValueError(f"the checkpoint's policy parameters do not fit the agent its run.json describes "
                         f"(missing {missing}, unexpected {extra}, other shapes at {wrong}): was it "
                         f"written by another version of spiral?")


def load_checkpoint(path: str) -> LoadedPolicy:
    """The policy of a checkpoint folder, or of the latest checkpoint in a checkpoint_dir."""
    folder = checkpointing.resolve_checkpoint(path)
    config_dict, counters = checkpointing.read_run_info(folder)
    config = ExperimentConfig.from_dict(config_dict)
    if config.population.size > 1 and not os.path.isdir(os.path.join(folder, "policy")):
        raise ValueError(f"{folder} is a population's checkpoint ({config.population.size} "
                         f"members): each member has its own, in <run_dir>/<member>/checkpoints "
                         f"(e.g. {os.path.join(config.runtime.run_dir, 'member_00', 'checkpoints')}).")
    agent = Agent(config.agent, config.policy.compute_dtype, config.policy.transposed_conv)
    state = checkpointing.restore_tree(os.path.join(folder, "policy"))
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(f"{folder}/policy does not hold a policy learner state with 'params'.")
    params = jax.tree.map(np.asarray, state["params"])
    check_params(agent, params)
    return LoadedPolicy(config, agent, params, counters, folder)


def load_policy(path: str) -> tuple[ExperimentConfig, Agent, Any]:
    """(config, agent, params) of a checkpoint folder or a checkpoint_dir's latest checkpoint."""
    loaded = load_checkpoint(path)
    return loaded.config, loaded.agent, loaded.params
