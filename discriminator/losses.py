"""The discriminator's losses, one equation per function.

* WGAN-GP (Gulrajani et al. 2017, eq. 3), as SPIRAL used it, minimised by the critic:
  L = E[D(fake)] − E[D(real)] + λ·E[(‖∇ₓD(x̂)‖₂ − target)²] + ε·(½(E[D(real)] + E[D(fake)]))²
  with x̂ = α·real + (1 − α)·fake, α ~ U[0, 1] per sample. The last term pins the critic's free
  additive constant (see ``DiscriminatorConfig.mean_penalty``).
* Non-saturating GAN loss (Goodfellow et al. 2014), as SPIRAL++ used with spectral normalisation:
  L = E[−log σ(D(real))] + E[−log(1 − σ(D(fake)))] = E[softplus(−D(real))] + E[softplus(D(fake))].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Keeps the norm's gradient finite where an input gradient is exactly zero.
_NORM_EPS = 1e-12


def wasserstein_critic_loss(scores_real: jax.Array, scores_fake: jax.Array) -> jax.Array:
    """E[D(fake)] − E[D(real)]: minimising it maximises the Wasserstein estimate."""
    return jnp.mean(scores_fake) - jnp.mean(scores_real)


def interpolate(real: jax.Array, fake: jax.Array, alpha: jax.Array) -> jax.Array:
    """x̂ = α·real + (1 − α)·fake, with α [N] broadcast over each sample."""
    alpha = alpha.reshape((-1,) + (1,) * (real.ndim - 1))
    return alpha * real + (1.0 - alpha) * fake


def input_gradient_norms(critic: Callable[[jax.Array], jax.Array], inputs: jax.Array) -> jax.Array:
    """‖∇ₓD(x)‖₂ per sample [N], over all pixels and channels.

    The gradient of Σᵢ D(xᵢ) gives every sample's own gradient because samples do not interact
    (no batch norm).
    """
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(inputs)
    return jnp.sqrt(jnp.sum(grads * grads, axis=tuple(range(1, grads.ndim))) + _NORM_EPS)


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     alpha: jax.Array, target: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(E[(‖∇D(x̂)‖ − target)²], the norms [N]) at the interpolates x̂ of ``interpolate``."""
    norms = input_gradient_norms(critic, interpolate(real, fake, alpha))
    return jnp.mean((norms - target) ** 2), norms


def mean_output_penalty(scores_real: jax.Array, scores_fake: jax.Array) -> jax.Array:
    """(½(E[D(real)] + E[D(fake)]))²: zero when the critic is centred over real and fake."""
    return (0.5 * (jnp.mean(scores_real) + jnp.mean(scores_fake))) ** 2


def non_saturating_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """E[softplus(−D(real))] + E[softplus(D(fake))] (binary cross-entropy on logits)."""
    return jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake))
