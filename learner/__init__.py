"""The policy learner: SPIRAL's agent network, V-trace, and the jitted policy update.

One job: given trajectories, improve the policy. Runs without Ray (actors and the runtimes
import it), on CPU for tests and on GPU/TPU for real work. Must never import Ray.
"""
