"""The metric math against independent references: explicit loops, closed forms, scipy, an iteration."""

import math

import numpy as np
import pytest

from spiral.evaluation import metrics


def random_covariance(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def denman_beavers_sqrt(a, iterations=60):
    """The principal square root by the Denman–Beavers iteration (no eigendecomposition)."""
    y, z = a.copy(), np.eye(len(a))
    for _ in range(iterations):
        y, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
    return y


def test_l2_distances_match_an_explicit_loop():
    rng = np.random.default_rng(0)
    canvases = rng.integers(0, 256, (3, 5, 5, 2), dtype=np.uint8)
    targets = rng.integers(0, 256, (3, 5, 5, 2), dtype=np.uint8)
    expected = [sum((canvases[n, y, x, c] / 255.0 - targets[n, y, x, c] / 255.0) ** 2
                    for y in range(5) for x in range(5) for c in range(2)) for n in range(3)]
    np.testing.assert_allclose(metrics.l2_distances(canvases, targets), expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.mean_squared_errors(canvases, targets), np.array(expected) / 50)
    # floats in [0, 1] give the same numbers as their levels
    np.testing.assert_allclose(metrics.l2_distances(canvases / 255.0, targets / 255.0), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        metrics.l2_distances(canvases, targets[:2])


def test_l2_matches_the_environment_reward():
    """The metric is the L2 reward's measure: −reward of PaintEnv(l2_reward=True) on the last step."""
    from spiral.envs import PaintEnv
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (1, 32, 32, 1), dtype=np.uint8)
    env = PaintEnv(seed=4, targets=target, l2_reward=True, observation_width=32, episode_length=3)
    env.reset()
    env.step(dict(flag=1, end=300, control=40, size=3, pressure=5))
    last = env.step(dict(flag=1, end=900, control=500, size=4, pressure=9))
    assert last.last()
    np.testing.assert_allclose(metrics.l2_distances(env.canvas_uint8()[None], target), [-last.reward],
                               rtol=1e-12)


def test_classifier_score_known_cases():
    uniform_spread = np.eye(10)                        # one sure sample of each class
    score = metrics.classifier_score(uniform_spread)
    assert score.mean_max_probability == 1.0
    assert score.class_entropy == pytest.approx(math.log(10))
    one_class = np.tile(np.array([[0.7, 0.2, 0.1]]), (6, 1))
    score = metrics.classifier_score(one_class)
    assert score.mean_max_probability == pytest.approx(0.7) and score.class_entropy == 0.0
    np.testing.assert_allclose(score.class_histogram, [1, 0, 0])
    halves = np.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
    score = metrics.classifier_score(halves)
    assert score.mean_max_probability == pytest.approx(np.mean([0.6, 0.6, 0.9, 0.8]))
    assert score.class_entropy == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="distribution"):
        metrics.classifier_score(np.array([[0.5, 0.6]]))


def test_feature_statistics_match_numpy_cov():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4))
    mean, cov = metrics.feature_statistics(f)
    np.testing.assert_allclose(mean, f.mean(axis=0))
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(f[:1])


def test_sqrtm_psd_matches_denman_beavers_and_squares_back():
    rng = np.random.default_rng(3)
    a = random_covariance(rng, 6) + 0.1 * np.eye(6)
    root = metrics.sqrtm_psd(a)
    np.testing.assert_allclose(root @ root, a, atol=1e-12)
    np.testing.assert_allclose(root, denman_beavers_sqrt(a), atol=1e-9)
    singular = random_covariance(rng, 6, rank=2)      # PSD, rank 2: eigenvalues ~0 by rounding
    r = metrics.sqrtm_psd(singular)
    np.testing.assert_allclose(r @ r, singular, atol=1e-10)
    with pytest.raises(ValueError, match="positive semi-definite"):
        metrics.sqrtm_psd(np.diag([1.0, -0.5]))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(4)
    # Diagonal covariances: d² = |μ1 − μ2|² + Σ (σ1 − σ2)².
    s1, s2 = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    assert metrics.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) == pytest.approx(expected, rel=1e-10)
    # Identical Gaussians: 0 up to rounding, never a negative number.
    c = random_covariance(rng, 5)
    assert 0.0 <= metrics.frechet_distance(m1, c, m1, c) < 1e-8
    # Scaled covariance: for Σ2 = k²Σ1, tr((Σ1Σ2)^½) = k·tr(Σ1) so d² = (1 − k)²·tr(Σ1).
    assert metrics.frechet_distance(m1, c, m1, 9.0 * c) == pytest.approx(4.0 * np.trace(c), rel=1e-10)


def test_frechet_distance_matches_the_scipy_formula_and_an_iteration():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(5)
    for _ in range(3):
        c1, c2 = random_covariance(rng, 8), random_covariance(rng, 8)
        m1, m2 = rng.normal(size=8), rng.normal(size=8)
        # The usual FID code: tr(sqrtm(Σ1 Σ2)) of the non-symmetric product (complex sqrtm).
        product_root = scipy_linalg.sqrtm(c1 @ c2)
        reference = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(product_root).real
        # The same with the Denman–Beavers root of the product.
        iterated = (np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
                    - 2 * np.trace(denman_beavers_sqrt(c1 @ c2)))
        value = metrics.frechet_distance(m1, c1, m2, c2)
        assert value == pytest.approx(reference, rel=1e-8)
        assert value == pytest.approx(iterated, rel=1e-8)
        # Symmetric in its arguments.
        assert metrics.frechet_distance(m2, c2, m1, c1) == pytest.approx(value, rel=1e-9)


def test_frechet_distance_of_samples_shrinks_with_the_gap():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(400, 3))
    near = rng.normal(size=(400, 3)) + 0.1
    far = rng.normal(size=(400, 3)) * 2 + 1
    assert 0.0 <= metrics.frechet_distance_features(a, a) < 1e-8
    assert metrics.frechet_distance_features(a, near) < metrics.frechet_distance_features(a, far)
    with pytest.raises(ValueError, match="shapes"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
