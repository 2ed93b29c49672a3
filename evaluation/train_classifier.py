"""Train one of the evaluation feature extractors: ``python -m spiral.evaluation.train_classifier --dataset mnist``.

* ``--dataset mnist``: the 10-way digit classifier on the 60,000 training digits (64×64, canvas
  polarity), checked on the 10,000 test digits; it must reach ``--min_accuracy`` (99%) or nothing
  is written. Written to ``evaluation/weights/mnist_classifier.npz`` (committed; ~0.5 MB).
* ``--dataset omniglot``: the 964-way character classifier on the background set, drawers 1–18;
  drawers 19–20 are its validation set. Written to ``evaluation/weights/omniglot_classifier.npz``.
* ``--dataset celeba``: the autoencoder on the CelebA training split, cached in
  ``~/.cache/spiral/evaluation/celeba_autoencoder.npz``: never committed (CelebA's terms).

A plain ``argparse`` script (absl flags live in ``launch/`` only). Deterministic on CPU for a seed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from spiral.envs import datasets
from spiral.envs.levels import quantise
from spiral.evaluation import classifier

# Settings that reach the targets on a 2-core CPU in minutes (the one-off training of the weights).
DEFAULTS = {
    "mnist": dict(steps=2000, batch_size=128, learning_rate=2e-3, max_shift=4),
    "omniglot": dict(steps=4000, batch_size=128, learning_rate=2e-3, max_shift=3),
    "celeba": dict(steps=3000, batch_size=64, learning_rate=1e-3, max_shift=0),
}
OMNIGLOT_DRAWERS = 20
OMNIGLOT_VALIDATION_DRAWERS = 2


def train(dataset: str, output=None, steps=None, batch_size=None, learning_rate=None,
          max_shift=None, seed: int = 0, data_dir=None, min_accuracy: float = 0.99,
          limit=None, log=print) -> dict:
    """Train ``dataset``'s extractor, check it, save it; returns its meta record (with the path)."""
    if dataset not in classifier.EXTRACTORS:
        raise ValueError(f"--dataset must be one of {sorted(classifier.EXTRACTORS)}, got {dataset!r}.")
    spec = classifier.EXTRACTORS[dataset]
    settings = dict(DEFAULTS[dataset])
    for name, value in (("steps", steps), ("batch_size", batch_size),
                        ("learning_rate", learning_rate), ("max_shift", max_shift)):
        if value is not None:
            settings[name] = value
    start = time.monotonic()
    train_set = datasets.load_dataset(dataset, "train", data_dir, limit=limit)
    images, labels = quantise(train_set.images), train_set.labels
    del train_set
    check_images = check_labels = None
    if dataset == "mnist":
        test_set = datasets.load_dataset("mnist", "test", data_dir)
        check_images, check_labels = quantise(test_set.images), test_set.labels
    elif dataset == "omniglot":
        # Images come in (character, drawer) order: hold out the last drawers of every character.
        drawer = np.arange(len(images)) % OMNIGLOT_DRAWERS
        held = drawer >= OMNIGLOT_DRAWERS - OMNIGLOT_VALIDATION_DRAWERS
        check_images, check_labels = images[held], labels[held]
        images, labels = images[~held], labels[~held]
        if labels.max() >= spec["num_classes"]:
            raise ValueError(f"Omniglot train labels go up to {labels.max()}; expected < {spec['num_classes']}.")
    else:
        labels = None
    log(f"{dataset}: training a {spec['kind']} on {len(images):,} images: {settings}")
    extractor = classifier.train_extractor(spec["kind"], images, labels, spec["num_classes"],
                                           seed=seed, log=log, **settings)
    extractor.meta.update(dataset=dataset, train_seconds=round(time.monotonic() - start, 1))
    if check_images is not None:
        acc = classifier.accuracy(extractor, check_images, check_labels)
        which = "test set" if dataset == "mnist" else "held-out drawers"
        extractor.meta.update(accuracy=acc, accuracy_on=which)
        log(f"{dataset}: accuracy on the {which}: {acc:.4f}")
        if dataset == "mnist" and acc < min_accuracy:
            raise SystemExit(f"error: the MNIST classifier reached {acc:.4f} < {min_accuracy} on the test "
                             f"set; nothing was written. Train longer (--steps) or check the data.")
    else:
        reconstruction = extractor._outputs(images[:500])[0]  # pylint: disable=protected-access
        mse = float(np.mean((reconstruction - images[:500] / 255.0) ** 2))
        extractor.meta.update(reconstruction_mse=mse)
        log(f"{dataset}: reconstruction MSE on 500 training images: {mse:.5f}")
    path = output or classifier.weights_path(dataset)
    extractor.save(path)
    note = (" (cached for this user only: never commit it, CelebA's terms forbid redistribution)"
            if dataset == "celeba" else "")
    log(f"wrote {path}{note}")
    return dict(extractor.meta, path=str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(classifier.EXTRACTORS))
    parser.add_argument("--output", default=None, help="weights file (default: the dataset's standard place)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--max_shift", type=int, default=None, help="random shift augmentation, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None, help="default: $SPIRAL_DATA_DIR or ~/.cache/spiral/data")
    parser.add_argument("--min_accuracy", type=float, default=0.99, help="MNIST: required test accuracy")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    args = parser.parse_args(argv)
    train(args.dataset, args.output, args.steps, args.batch_size, args.learning_rate, args.max_shift,
          args.seed, args.data_dir, args.min_accuracy, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
