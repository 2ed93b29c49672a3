"""The distributed runtime: Ray actors that paint, the trajectory queue, parameter service.

One job: make the environment, the policy learner and the discriminator learner train together
across processes and machines. The math lives in ``spiral.learner``, ``spiral.discriminator`` and
``spiral.envs``; this package is the thin Ray glue around it.
"""
