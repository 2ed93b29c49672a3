"""The numbers that judge paintings: L2 to targets, a classifier score, and a Fréchet distance.

Small pure numpy functions, each tested against an independent formula:

* ``l2_distances``: SPIRAL's conditional measure (Fig. 8 of the paper) ‖canvas − target‖², summed
  over the pixels and channels of each image with values in [0, 1] (the L2 reward's own measure,
  ``spiral.discriminator.l2_distance``); its scale depends on the image width (a 32-wide image sums a
  quarter as many pixels as a 64-wide one), so ``mean_squared_errors`` gives the per-pixel mean too.
* ``classifier_score``: for unconditional samples, the classifier's mean max-probability (are the
  samples recognisable?) and the entropy of the histogram of predicted classes (are all classes
  painted? log(10) ≈ 2.303 nats is a uniform spread over 10 digits).
* ``frechet_distance``: d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½) between Gaussians fitted
  to two feature sets. With this project's own feature extractors (``spiral.evaluation.classifier``)
  it is **not** the standard FID (which uses Inception-v3 features); numbers are comparable only
  with the same extractor, sample count and image width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _as_unit_float(images, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 levels or floats in [0, 1], got dtype {images.dtype}.")
    return images.astype(np.float64)


def l2_distances(canvases, targets) -> np.ndarray:
    """Σ (canvas − target)² per image, float64 [N]; images [N, H, W, C] as uint8 levels or [0, 1]."""
    c, t = _as_unit_float(canvases, "canvases"), _as_unit_float(targets, "targets")
    if c.shape != t.shape or c.ndim != 4:
        raise ValueError(f"canvases and targets must both be [N, H, W, C] of one shape, got "
                         f"{c.shape} and {t.shape}.")
    return np.sum((c - t) ** 2, axis=(1, 2, 3))


def mean_squared_errors(canvases, targets) -> np.ndarray:
    """Per-pixel mean of (canvas − target)² per image, float64 [N] (independent of the image width)."""
    c = np.asarray(canvases)
    return l2_distances(canvases, targets) / float(np.prod(c.shape[1:]))


class ClassifierScore(NamedTuple):
    mean_max_probability: float     # mean over samples of max_k p(k | x)
    class_entropy: float            # entropy (nats) of the histogram of argmax classes
    class_histogram: np.ndarray     # fraction of samples predicted as each class


def classifier_score(probabilities) -> ClassifierScore:
    """Confidence and class spread of a classifier's probabilities [N, K] (rows sum to 1)."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be [N, K] with N >= 1, got shape {p.shape}.")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4) or (p < 0).any():
        raise ValueError("each row of probabilities must be a distribution (non-negative, sums to 1).")
    histogram = np.bincount(np.argmax(p, axis=1), minlength=p.shape[1]) / p.shape[0]
    nonzero = histogram[histogram > 0]
    entropy = float(-np.sum(nonzero * np.log(nonzero))) + 0.0  # + 0.0: one class gives 0, not −0
    return ClassifierScore(float(np.mean(p.max(axis=1))), entropy, histogram)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, ddof = 1) of features [N, D], N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2 samples, got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinite values.")
    mean = f.mean(axis=0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def sqrtm_psd(matrix) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition.

    Eigenvalues that rounding pushed slightly below zero (above −1e-8·max|λ|) count as 0; a clearly
    negative eigenvalue means the input is not PSD and raises ``ValueError``.
    """
    a = np.asarray(matrix, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {a.shape}.")
    a = 0.5 * (a + a.T)
    eigenvalues, eigenvectors = np.linalg.eigh(a)
    scale = max(float(np.max(np.abs(eigenvalues))), np.finfo(np.float64).tiny)
    if eigenvalues.min() < -1e-8 * scale:
        raise ValueError(f"matrix is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}).")
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Fréchet (2-Wasserstein) distance² between N(mean1, cov1) and N(mean2, cov2).

    tr((Σ₁Σ₂)^½) is computed as tr((Σ₁^½ Σ₂ Σ₁^½)^½): the inner matrix is symmetric PSD, so both
    roots come from ``eigh`` (no complex ``sqrtm`` of a non-symmetric product).
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mean1.shape[0]
    if mean2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shapes do not match: means {mean1.shape}, {mean2.shape}; covariances "
                         f"{cov1.shape}, {cov2.shape}.")
    root1 = sqrtm_psd(cov1)
    inner = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    trace_root = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    difference = mean1 - mean2
    value = float(difference @ difference + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)
    # d² >= 0. Identical inputs give 0 up to rounding, which the square roots of (near-)zero
    # eigenvalues amplify to ~1e-9 of the traces: report that as 0. Anything more negative is
    # returned as it is, so that a real error shows.
    rounding = 1e-6 * (1.0 + np.trace(cov1) + np.trace(cov2))
    return 0.0 if -rounding < value < 0.0 else value


def frechet_distance_features(features1, features2) -> float:
    """``frechet_distance`` between Gaussians fitted to two feature sets [N1, D], [N2, D]."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
