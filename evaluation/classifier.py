"""This project's feature extractors for evaluation: a small CNN per dataset, its training, its weights.

One job: map 64×64 images in the **canvas polarity** (grayscale: dark ink on a white background,
as ``spiral.envs.datasets`` returns them and the environment paints them; CelebA: RGB) to a
64-d feature vector, and, for the labelled datasets, to class probabilities. These are the
project's own measures, **not** the Inception network of the standard FID:

* MNIST: a 10-way digit classifier (``mnist_classifier.npz``, committed, about 0.5 MB; >= 99% on
  the MNIST test set). Its penultimate (64-d, post-ReLU) features feed the Fréchet distance and its
  probabilities the classifier score. MNIST is CC BY-SA 3.0 (LeCun & Cortes): the weights are a
  work derived from it.
* Omniglot: a 964-way character classifier trained on the background set (``omniglot_classifier.npz``,
  committed; Omniglot is MIT-licensed, Lake et al.); its 64-d features are applied to the
  evaluation set's unseen alphabets.
* CelebA: a convolutional autoencoder (its 64-d bottleneck), trained on the user's own CelebA copy
  and **cached** in ``user_cache_dir()/evaluation/`` only: CelebA's terms forbid redistribution,
  so nothing trained on it is ever committed.

All three share one encoder: four 3×3 stride-2 convolutions (16, 32, 64, 64 channels, ReLU)
64→4, flatten (1,024), Dense(64) + ReLU = the features. The classifier adds Dense(classes); the
autoencoder adds Dense(1,024) and four stride-2 transposed convolutions back to 64×64.
Inputs narrower than 64 (reduced runs observe 32×32) are enlarged by pixel repetition, so the
real images and the canvases they are compared with pass through the same operation.

Weights are stored as ``.npz``: one array per parameter ("encoder/Conv_0/kernel", ...) plus a
JSON ``meta`` record (kind, dataset, classes, accuracy, training settings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spiral.envs.levels import quantise

INPUT_WIDTH = 64
FEATURE_DIM = 64
KINDS = ("classifier", "autoencoder")
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
# What each dataset's extractor is, and where its weights live ("package": committed beside this
# file; "cache": the per-user cache, for CelebA, whose derived weights must never be committed).
EXTRACTORS = {
    "mnist": dict(kind="classifier", num_classes=10, channels=1, location="package"),
    "omniglot": dict(kind="classifier", num_classes=964, channels=1, location="package"),
    "celeba": dict(kind="autoencoder", num_classes=0, channels=3, location="cache"),
}


# ------------------------------------------------------------------------------------- networks

class Encoder(nn.Module):
    """64×64×C images in [0, 1] (canvas polarity) → 64-d features (post-ReLU)."""
    channels: Sequence[int] = (16, 32, 64, 64)
    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images):
        # 1 − x puts the blank (white) background at 0, the value SAME zero-padding adds.
        x = 1.0 - images
        for width in self.channels:
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.feature_dim)(x))


class Classifier(nn.Module):
    """Encoder + Dense(num_classes): returns (logits, features)."""
    num_classes: int

    @nn.compact
    def __call__(self, images):
        features = Encoder(name="encoder")(images)
        return nn.Dense(self.num_classes, name="head")(features), features


class AutoEncoder(nn.Module):
    """Encoder + a mirror decoder: returns (reconstruction in [0, 1], features)."""
    out_channels: int

    @nn.compact
    def __call__(self, images):
        features = Encoder(name="encoder")(images)
        x = nn.relu(nn.Dense(4 * 4 * 64, name="decoder_in")(features)).reshape(-1, 4, 4, 64)
        for i, width in enumerate((64, 32, 16)):
            x = nn.relu(nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME",
                                         name=f"decoder_{i}")(x))
        x = nn.ConvTranspose(self.out_channels, (4, 4), strides=(2, 2), padding="SAME",
                             name="decoder_out")(x)
        return nn.sigmoid(x), features


def make_module(kind: str, num_classes: int, channels: int) -> nn.Module:
    if kind == "classifier":
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}.")
        return Classifier(num_classes)
    if kind == "autoencoder":
        return AutoEncoder(channels)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


# ------------------------------------------------------------------------------------- inputs

def to_network_input(images) -> np.ndarray:
    """uint8 levels or float [0, 1] images [N, w, w, C] → float32 [N, 64, 64, C] in [0, 1].

    ``w`` must divide 64 (64, 32, 16, 8); narrower images are enlarged by pixel repetition.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, w, w, C], got shape {images.shape}.")
    w = images.shape[1]
    if w > INPUT_WIDTH or INPUT_WIDTH % w:
        raise ValueError(f"image width {w} must divide {INPUT_WIDTH} (64, 32, 16 or 8).")
    if images.dtype == np.uint8:
        out = images.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(images.dtype, np.floating):
        out = images.astype(np.float32)
        if out.size and (np.isnan(out).any() or out.min() < 0.0 or out.max() > 1.0):
            raise ValueError("float images must lie in [0, 1] (canvas polarity); got values outside "
                             "it or NaN. Pass uint8 levels 0..255 or floats in [0, 1].")
    else:
        raise ValueError(f"images must be uint8 levels or floats in [0, 1], got dtype {images.dtype}.")
    factor = INPUT_WIDTH // w
    if factor > 1:
        out = np.repeat(np.repeat(out, factor, axis=1), factor, axis=2)
    return out


# ------------------------------------------------------------------------------------- the model

@dataclasses.dataclass
class FeatureExtractor:
    """A trained network and what it is: ``features``, ``probabilities`` (classifiers) and saving."""
    kind: str
    num_classes: int
    channels: int
    params: dict
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.module = make_module(self.kind, self.num_classes, self.channels)
        self._apply = jax.jit(lambda params, x: self.module.apply({"params": params}, x))

    def _outputs(self, images, batch_size: int = 500):
        x = to_network_input(images)
        if x.shape[-1] != self.channels:
            raise ValueError(f"this {self.meta.get('dataset', '')} {self.kind} takes {self.channels}-channel "
                             f"images, got {x.shape[-1]}.")
        heads, features = [], []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            # Pad the last chunk to the batch size: one compiled shape for every call.
            pad = batch_size - len(chunk) if len(x) > batch_size else 0
            if pad:
                chunk = np.concatenate([chunk, np.ones((pad,) + chunk.shape[1:], np.float32)])
            head, feature = jax.device_get(self._apply(self.params, chunk))
            heads.append(head[:len(head) - pad])
            features.append(feature[:len(feature) - pad])
        if not heads:
            raise ValueError("no images given.")
        return np.concatenate(heads), np.concatenate(features)

    def features(self, images) -> np.ndarray:
        """float64 [N, 64]: the penultimate features (the Fréchet distance's space)."""
        return self._outputs(images)[1].astype(np.float64)

    def probabilities(self, images) -> np.ndarray:
        """float64 [N, classes]: softmax class probabilities (classifiers only)."""
        if self.kind != "classifier":
            raise ValueError(f"probabilities needs a classifier; this extractor is a {self.kind}.")
        logits = self._outputs(images)[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path) -> str:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = {"/".join(str(k.key) for k in keys): np.asarray(v)
                for keys, v in jax.tree_util.tree_flatten_with_path(self.params)[0]}
        meta = dict(self.meta, kind=self.kind, num_classes=self.num_classes, channels=self.channels)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta, sort_keys=True)), **flat)
        os.replace(tmp, path)
        return str(path)

    @classmethod
    def load(cls, path) -> "FeatureExtractor":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature-extractor weights at {path}.")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            params: dict = {}
            for name in data.files:
                if name == "meta":
                    continue
                node = params
                *parents, leaf = name.split("/")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = jnp.asarray(data[name])
        return cls(meta["kind"], int(meta["num_classes"]), int(meta["channels"]), params, meta)


def init_extractor(kind: str, num_classes: int, channels: int, seed: int = 0) -> FeatureExtractor:
    module = make_module(kind, num_classes, channels)
    params = module.init(jax.random.PRNGKey(seed),
                         jnp.zeros((1, INPUT_WIDTH, INPUT_WIDTH, channels), jnp.float32))["params"]
    return FeatureExtractor(kind, num_classes, channels, params)


# ------------------------------------------------------------------------------------- training

def random_shifts(images: np.ndarray, max_shift: int, rng: np.random.Generator,
                  background: float = 1.0) -> np.ndarray:
    """Translate each image by up to ``max_shift`` pixels in y and x, filling with ``background``.

    Augmentation: painted digits are rarely centred exactly as MNIST's are.
    """
    if max_shift == 0:
        return images
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                    constant_values=background)
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_train_step(module: nn.Module, kind: str, optimizer: optax.GradientTransformation) -> Callable:
    """Pure ``step(params, opt_state, images, labels) -> (params, opt_state, loss)``."""

    def loss_fn(params, images, labels):
        out, _ = module.apply({"params": params}, images)
        if kind == "classifier":
            return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
        return jnp.mean((out - images) ** 2)

    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_extractor(kind: str, images: np.ndarray, labels: Optional[np.ndarray], num_classes: int,
                    *, steps: int, batch_size: int = 128, learning_rate: float = 1e-3,
                    max_shift: int = 4, seed: int = 0, log: Optional[Callable[[str], None]] = print,
                    log_every: int = 200) -> FeatureExtractor:
    """Train a classifier (``labels`` given) or an autoencoder on ``images`` [N, 64, 64, C].

    ``images``: uint8 levels or float [0, 1] in the canvas polarity. Adam with a cosine decay of
    the learning rate to 0 over ``steps``; random shifts of up to ``max_shift`` pixels.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if kind == "classifier" and (labels is None or len(labels) != len(images)):
        raise ValueError("a classifier needs one label per image.")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}.")
    images = np.asarray(images)
    if images.dtype != np.uint8:  # keep the training set compact: uint8 levels
        images = quantise(to_network_input(images))
    channels = images.shape[-1]
    extractor = init_extractor(kind, num_classes, channels, seed)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    opt_state = optimizer.init(extractor.params)
    step_fn = jax.jit(make_train_step(extractor.module, kind, optimizer))
    rng = np.random.default_rng(seed)
    params = extractor.params
    labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
    order, cursor = rng.permutation(len(images)), 0
    start, running = time.monotonic(), []
    for i in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(images)), 0
        index = order[cursor:cursor + batch_size]
        cursor += batch_size
        batch = to_network_input(images[index])
        batch = random_shifts(batch, max_shift, rng)
        params, opt_state, loss = step_fn(params, opt_state, batch, labels[index])
        running.append(loss)
        if log and ((i + 1) % log_every == 0 or i + 1 == steps):
            log(f"step {i + 1}/{steps}: loss {float(np.mean(jax.device_get(running))):.4f} "
                f"({time.monotonic() - start:.0f} s)")
            running = []
    extractor.params = params
    extractor.meta.update(kind=kind, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                          max_shift=max_shift, seed=seed, train_images=len(images))
    return extractor


def accuracy(extractor: FeatureExtractor, images, labels) -> float:
    """Fraction of ``images`` whose most probable class is their label."""
    predicted = np.argmax(extractor.probabilities(images), axis=1)
    return float(np.mean(predicted == np.asarray(labels)))


# ------------------------------------------------------------------------------------- locations

def cache_dir() -> pathlib.Path:
    """Where extractors trained on the user's own data (CelebA) are cached: never committed."""
    from spiral.envs.datasets import user_cache_dir  # pylint: disable=import-outside-toplevel
    return user_cache_dir() / "evaluation"


def weights_path(dataset: str) -> pathlib.Path:
    """The file of ``dataset``'s extractor: beside this module (MNIST, Omniglot) or in the cache (CelebA)."""
    if dataset not in EXTRACTORS:
        raise ValueError(f"no feature extractor for dataset {dataset!r}; choose one of {sorted(EXTRACTORS)}.")
    spec = EXTRACTORS[dataset]
    name = f"{dataset}_{spec['kind']}.npz"
    return (WEIGHTS_DIR if spec["location"] == "package" else cache_dir()) / name


_LOADED: dict = {}


def load_extractor(dataset: str, path=None) -> FeatureExtractor:
    """The trained extractor of ``dataset`` (cached in memory after the first load)."""
    path = pathlib.Path(path) if path is not None else weights_path(dataset)
    key = str(path)
    if key not in _LOADED:
        if not path.is_file():
            raise FileNotFoundError(
                f"No {dataset} feature extractor at {path}. Train it once with "
                f"`python -m spiral.evaluation.train_classifier --dataset {dataset}`"
                + (" (CelebA: it is cached for this user only and never committed, as CelebA's terms "
                   "forbid redistributing anything derived from it)." if dataset == "celeba" else "."))
        extractor = FeatureExtractor.load(path)
        if extractor.meta.get("dataset") not in (None, dataset):
            raise ValueError(f"{path} holds the {extractor.meta['dataset']} extractor, not {dataset}'s.")
        _LOADED[key] = extractor
    return _LOADED[key]
