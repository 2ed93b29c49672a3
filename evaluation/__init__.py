"""Evaluation: judge what an agent paints, in pictures and numbers.

One job: turn a checkpoint into sample grids, stroke-by-stroke GIFs, exported programs (JSON, SVG,
high-resolution re-renders) and metrics that track what the eye sees (L2 to targets, a classifier
score and a Fréchet distance on this project's own feature extractors). Runs without Ray.
"""
