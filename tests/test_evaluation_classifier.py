"""The feature extractors: the committed MNIST classifier's accuracy, sane metrics on known cases,
training that learns, weights that round-trip, and CelebA weights kept out of the repository."""

import os
import pathlib

import numpy as np
import pytest

from conftest import skip_unless
from spiral.envs import datasets
from spiral.evaluation import classifier, metrics, scoring

REPO = pathlib.Path(__file__).resolve().parents[1]


def levels(images):
    return np.rint(images * 255.0).astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_test():
    data_dir = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(data_dir) and os.path.isdir(data_dir), "no dataset folder: set SPIRAL_DATA_DIR")
    test = datasets.load_dataset("mnist", "test", data_dir)
    return levels(test.images), test.labels


def test_committed_mnist_classifier_reaches_99_percent(mnist_test):
    images, labels = mnist_test
    extractor = classifier.load_extractor("mnist")
    assert extractor.meta["dataset"] == "mnist" and extractor.kind == "classifier"
    accuracy = classifier.accuracy(extractor, images, labels)
    assert accuracy >= 0.99, accuracy
    assert extractor.meta["accuracy"] == pytest.approx(accuracy, abs=1e-9)  # what the file claims
    assert classifier.weights_path("mnist").stat().st_size < 1_000_000


def test_metrics_are_sane_on_known_cases(mnist_test):
    """Real digits against themselves: distance ~0; against other real digits: small; blank
    canvases: far, and the classifier sees one class only."""
    images, _ = mnist_test
    extractor = classifier.load_extractor("mnist")
    real, other = images[:500], images[500:1000]
    blank = np.full_like(real, 255)
    f_real, f_other, f_blank = (extractor.features(x) for x in (real, other, blank))
    itself = metrics.frechet_distance_features(f_real, f_real)
    real_real = metrics.frechet_distance_features(f_real, f_other)
    blank_real = metrics.frechet_distance_features(f_blank, f_real)
    assert 0.0 <= itself < 1e-6 * real_real
    assert blank_real > 10 * real_real, (blank_real, real_real)
    real_score = metrics.classifier_score(extractor.probabilities(real))
    blank_score = metrics.classifier_score(extractor.probabilities(blank))
    assert real_score.mean_max_probability > 0.97
    assert real_score.class_entropy > 0.95 * np.log(10)
    assert blank_score.class_entropy == 0.0
    # The same digits at a 32-wide observation (area-averaged, then enlarged back) still classify.
    small = scoring.area_downsample(images[:1000], 32)
    assert classifier.accuracy(extractor, small, mnist_test[1][:1000]) > 0.97


def test_committed_omniglot_extractor_tells_characters_from_blanks():
    """The Omniglot extractor (trained on the background alphabets) on the evaluation set's unseen
    alphabets: real characters are near other real characters and far from blank canvases."""
    data_dir = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(data_dir) and os.path.isdir(data_dir), "no dataset folder: set SPIRAL_DATA_DIR")
    extractor = classifier.load_extractor("omniglot")
    assert extractor.meta["dataset"] == "omniglot" and extractor.num_classes == 964
    assert extractor.meta["accuracy"] > 0.6  # 964-way, on the two held-out drawers
    assert classifier.weights_path("omniglot").stat().st_size < 1_000_000
    test = levels(datasets.load_dataset("omniglot", "test", data_dir, limit=4000).images)
    rng = np.random.default_rng(0)
    picked = test[rng.permutation(len(test))[:600]]   # many alphabets, not one
    real, other = picked[:300], picked[300:]
    f_real = extractor.features(real)
    real_real = metrics.frechet_distance_features(f_real, extractor.features(other))
    blank_real = metrics.frechet_distance_features(extractor.features(np.full_like(real, 255)), f_real)
    assert blank_real > 10 * real_real, (blank_real, real_real)


def bars(n, rng):
    """Synthetic two-class task: a dark horizontal (0) or vertical (1) bar at a random place."""
    images = np.full((n, 64, 64, 1), 255, np.uint8)
    labels = rng.integers(0, 2, n)
    where = rng.integers(8, 56, n)
    for i in range(n):
        if labels[i]:
            images[i, 8:56, where[i] - 3:where[i] + 3] = 0
        else:
            images[i, where[i] - 3:where[i] + 3, 8:56] = 0
    return images, labels


def test_training_learns_and_weights_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = bars(256, rng)
    untrained = classifier.init_extractor("classifier", 2, 1, seed=1)
    trained = classifier.train_extractor("classifier", images, labels, 2, steps=40, batch_size=32,
                                         seed=1, log=None)
    test_images, test_labels = bars(200, np.random.default_rng(1))
    assert classifier.accuracy(untrained, test_images, test_labels) < 0.8
    assert classifier.accuracy(trained, test_images, test_labels) > 0.97
    path = trained.save(tmp_path / "bars.npz")
    loaded = classifier.FeatureExtractor.load(path)
    np.testing.assert_array_equal(loaded.features(test_images), trained.features(test_images))
    assert loaded.meta["steps"] == 40


def test_autoencoder_training_lowers_reconstruction_error():
    rng = np.random.default_rng(2)
    images, _ = bars(128, rng)
    rgb = np.repeat(images, 3, axis=-1)
    before = classifier.init_extractor("autoencoder", 0, 3, seed=0)
    after = classifier.train_extractor("autoencoder", rgb, None, 0, steps=25, batch_size=8,
                                       learning_rate=3e-3, max_shift=0, seed=0, log=None)

    def error(extractor):
        reconstruction = extractor._outputs(rgb)[0]  # pylint: disable=protected-access
        return float(np.mean((reconstruction - rgb / 255.0) ** 2))

    assert error(after) < 0.5 * error(before)
    assert after.features(rgb).shape == (128, classifier.FEATURE_DIM)
    with pytest.raises(ValueError, match="classifier"):
        after.probabilities(rgb)


def test_inputs_are_checked_and_small_images_enlarged():
    x = np.arange(32 * 32, dtype=np.float32).reshape(1, 32, 32, 1) / (32 * 32)
    big = classifier.to_network_input(x)
    assert big.shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(big[0, ::2, ::2], x[0])
    np.testing.assert_array_equal(big[0, 1::2, 1::2], x[0])
    with pytest.raises(ValueError, match="divide"):
        classifier.to_network_input(np.zeros((1, 48, 48, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier.to_network_input(np.full((1, 64, 64, 1), 2.0, np.float32))
    with pytest.raises(ValueError, match="3-channel"):
        classifier.init_extractor("autoencoder", 0, 3).features(np.zeros((1, 64, 64, 1), np.uint8))


def test_celeba_extractor_lives_outside_the_repository(tmp_path, monkeypatch):
    """Anything trained on CelebA is cached per user and never committed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = classifier.weights_path("celeba")
    assert path.is_relative_to(tmp_path) and not path.resolve().is_relative_to(REPO)
    committed = {p.name for p in classifier.WEIGHTS_DIR.iterdir()}
    assert not any("celeba" in name for name in committed), committed
    with pytest.raises(FileNotFoundError, match="never committed"):
        classifier.load_extractor("celeba")
