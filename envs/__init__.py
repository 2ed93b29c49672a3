"""The paint environment: SPIRAL's brush engine and action space, and the datasets it paints.

One job: turn a sequence of discrete brush actions into canvases, faithfully to SPIRAL
(see ``../shared/docs/SPIRAL.md`` §1 and ``RENDERER.md``), plus loaders for the real images
those canvases are compared with. No learning code lives here, and nothing here imports Ray.
"""
