"""The discriminator learner: the critic that turns "looks like the data" into a reward.

One job: train a critic on real images versus the agent's final canvases and score canvases
for the actors. Runs without Ray, on CPU for tests and GPU for real work. Must never import Ray.
"""
