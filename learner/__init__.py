"""The policy learner: SPIRAL's agent network, V-trace, and the jitted policy update.

One job: given trajectories, improve the policy. Runs without Ray (actors and the runtimes
import it), on CPU for tests and on GPU/TPU for real work. Must never import Ray.

Public API:

* ``AgentConfig``, ``PolicyLearnerConfig`` (``config``): frozen configuration.
* ``Agent`` (``agent``): ``init``, ``initial_state``, ``sample_noise``, ``sample_step`` (sampling
  mode, for actors) and ``unroll`` (teacher-forced mode, for the learner); ``count_params``.
* ``vtrace`` (``vtrace``): V-trace targets and policy-gradient advantages.
* ``Trajectory``, ``Observation``, ``AgentState``, ``LSTMState`` and the helpers
  ``zero_trajectory``, ``stack_trajectories``, ``observation_to_record``, ``check_trajectory``
  (``types``): the record actors send.
* ``PolicyLearner``, ``LearnerState``, ``make_update_step``, ``init_learner_state``
  (``learning``): the update and its shell.
"""

from spiral.learner.agent import Agent, AgentOutput, UnrollOutput, count_params
from spiral.learner.config import AgentConfig, PolicyLearnerConfig
from spiral.learner.learning import (Hyperparams, LearnerState, PolicyLearner, ValueStats,
                                     init_learner_state, make_optimizer, make_update_step)
from spiral.learner.types import (FIRST, LAST, MID, AgentState, LSTMState, Observation,
                                  Trajectory, batch_to_time_major, check_trajectory,
                                  observation_to_record, stack_trajectories, zero_agent_state,
                                  zero_trajectory)
from spiral.learner.vtrace import VTraceReturns, vtrace

__all__ = [
    "Agent", "AgentConfig", "AgentOutput", "AgentState", "FIRST", "Hyperparams", "LAST",
    "LSTMState", "LearnerState", "MID", "Observation", "PolicyLearner", "PolicyLearnerConfig",
    "Trajectory", "UnrollOutput", "VTraceReturns", "ValueStats", "batch_to_time_major", "check_trajectory",
    "count_params", "init_learner_state", "make_optimizer", "make_update_step",
    "observation_to_record", "stack_trajectories", "vtrace", "zero_agent_state",
    "zero_trajectory",
]
