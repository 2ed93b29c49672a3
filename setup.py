"""Installs the project's top-level folders as one import namespace: ``spiral.envs``, ``spiral.learner``, ...

The folders live at the top of the repository (``envs/``, ``learner/``, ...) but import as
``spiral.<folder>``, so no generic name such as ``envs`` lands in site-packages. The
``package_dir`` mapping below works for ``pip install .`` and ``pip install -e .`` alike.
"""
from setuptools import setup

PACKAGES = ("actors", "discriminator", "envs", "evaluation", "launch", "learner")

# Lower bounds are the versions this project was tested with (2026-11, Python 3.11).
# No upper bounds unless a reason is written next to one.
INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "chex>=0.1.90",
    "dm-env>=1.6",
    "flax>=0.12",
    "jax>=0.10.2",
    "numba>=0.61",
    "numpy>=2.0",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12",
    "pillow>=11.0",
    "ray[default]>=2.60",
    "tensorboardX>=2.6",
    # Keeps BLAS to one thread while the dataset loaders resize on their own threads.
    "threadpoolctl>=3.5",
]

EXTRAS = {
    # rlax is an independent V-trace oracle for the tests.
    "test": ["pytest>=8.0", "rlax>=0.1.9"],
    # The JAX CUDA build (NVIDIA driver >= 580 for CUDA 13; use jax[cuda12] on older drivers).
    "cuda": ["jax[cuda13]>=0.10.2"],
}

setup(
    name="spiral",
    version="0.1.0",
    description="SPIRAL / SPIRAL++: painting agents trained by adversarial RL, on Ray with JAX learners.",
    python_requires=">=3.10",
    packages=["spiral." + p for p in PACKAGES],
    package_dir={"spiral." + p: p for p in PACKAGES},
    # Small trained weights the evaluation ships with (MNIST classifier; never anything from CelebA).
    package_data={"spiral.evaluation": ["weights/*.npz"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
