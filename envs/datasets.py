"""The real images SPIRAL paints against: MNIST, Omniglot and CelebA as 64×64 float arrays in [0, 1].

Every loader returns a :class:`Dataset` whose ``images`` are float32 ``[N, 64, 64, C]`` in [0, 1]
(C = 1 for MNIST and Omniglot, 3 for CelebA), in the **canvas's polarity**: for MNIST and Omniglot the
ink is dark (0) on a white (1) background, like a fresh canvas painted in black. The MNIST files are
white ink on black, so they are inverted; Omniglot PNG/npz pixels are True on the white background, so
they are used as they are.

Resizing is a separable triangle (bilinear) filter whose width grows with the reduction factor when
shrinking, so it is anti-aliased. It gives the same numbers as Pillow's
``Image.resize(size, Image.BILINEAR, box=...)`` on float images (the tests check this), but runs on
whole batches as two small matrix products per chunk. MNIST's 28→64 enlargement is plain bilinear
interpolation, so strokes stay smooth; Omniglot's 105→64 and CelebA's crop→64 are averaging reductions.

Where the files are: ``data_dir`` if given, else ``$SPIRAL_DATA_DIR``, else the per-user cache folder
``$XDG_CACHE_HOME/spiral/data`` (``~/.cache/spiral/data``), with ``mnist/``, ``omniglot/``, ``celeba/``
inside (the layout of ``shared/data``).

* MNIST: the four standard IDX files (``.gz`` or uncompressed). Missing files are downloaded, trying
  ``MNIST_URLS`` in order (or ``$SPIRAL_MNIST_URL``, comma-separated), and kept only if the SHA-256 of
  the decompressed content matches.
* Omniglot: ``images_background.npz`` / ``images_evaluation.npz`` (the form in ``shared/data``), else
  the official ``images_background.zip`` / ``images_evaluation.zip`` of PNGs, downloaded from
  ``OMNIGLOT_URL`` (or ``$SPIRAL_OMNIGLOT_URL``) when absent and kept only if the SHA-256 of the
  decoded images matches. Decoding 19,280 PNGs takes seconds, so the decoded bits of a zip are cached
  in ``$XDG_CACHE_HOME/spiral/decoded`` (keyed by the zip's SHA-256; never in a data folder, which may
  be read-only). Labels are the Omniglot character ID − 1 (0–963 train, 964–1622 test).
* CelebA: never downloaded (its terms need the user's agreement). The official ``img_align_celeba/``
  folder or ``img_align_celeba.zip``, the shared 89×109 subset zip, or any ``path=`` to a folder/zip of
  ``NNNNNN.jpg`` files, at any image size. Each image is cropped to a square on the face (see
  ``celeba_crop_box``) and resized to 64×64. Splits come from ``list_eval_partition.txt`` when present,
  else from the official ID ranges. Nothing derived from CelebA is cached anywhere.

Bad input (missing files, truncated gzip, a zip without images, a checksum mismatch, an image that
does not decode) raises ``FileNotFoundError``, ``ValueError`` or ``DownloadError`` naming the file
and the fix; nothing is skipped silently.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import re
import tempfile
import zipfile
import zlib
from typing import Sequence

import numpy as np
import threadpoolctl
from PIL import Image

from spiral.envs import _download
from spiral.envs._download import DownloadError

__all__ = [
    "Dataset", "DownloadError", "IMAGE_SIZE", "NAMES", "load_dataset", "load_mnist", "load_omniglot",
    "load_celeba", "resolve_data_dir", "resize_weights", "resize_images", "celeba_crop_box",
]

IMAGE_SIZE = 64
NAMES = ("mnist", "omniglot", "celeba")
CHUNK = 256  # images resized per step: keeps the intermediate arrays in cache.

# ------------------------------------------------------------------------------------------------
# The dataset type and where the data lives.


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images in the canvas's format, with their labels.

    images: float32 [N, 64, 64, C] in [0, 1]; C = 1 (MNIST, Omniglot: dark ink on white) or 3 (CelebA).
    labels: int64 [N] (MNIST digit, Omniglot character ID − 1) or None (CelebA).
    source: the file or folder the images came from (for logs).
    """
    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray | None
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


def user_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/spiral``, or ``~/.cache/spiral``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(base) if base else pathlib.Path.home() / ".cache") / "spiral"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data folder: ``data_dir`` if given (not empty), else ``$SPIRAL_DATA_DIR``, else ``user_cache_dir()/data``."""
    if data_dir is not None and str(data_dir) != "":
        return pathlib.Path(data_dir).expanduser()
    from_env = os.environ.get("SPIRAL_DATA_DIR")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return user_cache_dir() / "data"


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 download: bool = True, limit: int | None = None) -> Dataset:
    """Load ``name`` (one of ``NAMES``) as a :class:`Dataset`; ``limit`` keeps at most the first ``limit`` images.

    ``download`` applies to MNIST and Omniglot; CelebA is never downloaded (use ``load_celeba(path=...)``
    for a CelebA copy outside ``data_dir/celeba``).
    """
    if name == "mnist":
        return load_mnist(split, data_dir, download, limit=limit)
    if name == "omniglot":
        return load_omniglot(split, data_dir, download, limit=limit)
    if name == "celeba":
        return load_celeba(split, data_dir, limit=limit)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}.")


def _check_split(dataset: str, split: str, splits: Sequence[str]) -> str:
    if split not in splits:
        raise ValueError(f"{dataset} has no split {split!r}; choose one of {', '.join(map(repr, splits))}.")
    return split


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, not {limit!r}.")
    return None if limit is None else int(limit)


# ------------------------------------------------------------------------------------------------
# Resizing: Pillow's bilinear filter as matrices.


def resize_weights(in_size: int, out_size: int, start: float = 0.0, length: float | None = None) -> np.ndarray:
    """Filter matrix [out_size, in_size] mapping the input span [start, start + length) onto out_size samples.

    Output sample o sits at input position c = start + (o + 0.5) * scale (scale = length / out_size),
    and input pixel i (centre i + 0.5) gets weight max(0, 1 - |i + 0.5 - c| / max(scale, 1)): linear
    interpolation when enlarging, a triangle as wide as the reduction when shrinking (anti-aliased).
    Pixels outside [0, in_size) do not exist, so each row is renormalised to sum to 1. This is
    Pillow's BILINEAR resampling, including its ``box`` argument.
    """
    length = in_size - start if length is None else length
    if not (0 <= start and length > 0 and start + length <= in_size + 1e-9 and out_size >= 1):
        raise ValueError(f"span [{start}, {start} + {length}) does not fit in {in_size} pixels "
                         f"(or out_size {out_size} < 1).")
    scale = length / out_size
    support = max(scale, 1.0)
    centres = start + (np.arange(out_size) + 0.5) * scale
    distance = (np.arange(in_size) + 0.5)[None, :] - centres[:, None]
    weights = np.maximum(0.0, 1.0 - np.abs(distance) / support)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: int = IMAGE_SIZE,
                  box: tuple[float, float, float, float] | None = None, value_scale: float = 1.0) -> np.ndarray:
    """Resize images [N, H, W, C] (any real dtype) to float32 [N, size, size, C] with :func:`resize_weights`.

    ``box`` = (left, top, width, height) in input pixels selects the region to resize (a crop);
    None means the whole image. Values are multiplied by ``value_scale`` (e.g. 1/255 for uint8).
    Outputs are convex combinations of inputs, so the value range is kept (up to float rounding).
    """
    n, height, width, channels = images.shape
    return _Resizer(height, width, channels, size, box, value_scale, max_batch=n)(images).copy()


class _Resizer:
    """:func:`resize_images` for many batches of one image shape, reusing its buffers.

    Fresh temporaries for every batch cost more than the arithmetic: the allocator hands large
    blocks back to the kernel, and faulting them in again took most of the time (measured:
    ~400,000 page faults, over half the run time, for MNIST's 60,000 images).
    """

    def __init__(self, height: int, width: int, channels: int, size: int = IMAGE_SIZE,
                 box: tuple[float, float, float, float] | None = None, value_scale: float = 1.0,
                 max_batch: int = 1):
        left, top, box_w, box_h = (0.0, 0.0, width, height) if box is None else box
        rows = resize_weights(height, size, top, box_h) * value_scale
        cols = resize_weights(width, size, left, box_w)
        # Only pixels inside the filter's reach matter (a crop leaves the rest out).
        self.row_span, self.col_span = _reach(rows), _reach(cols)
        self.rows_t = np.ascontiguousarray(rows[:, slice(*self.row_span)].T, np.float32)  # [H', size]
        self.cols_t = np.ascontiguousarray(cols[:, slice(*self.col_span)].T, np.float32)  # [W', size]
        self.shape, self.size, self.max_batch = (height, width, channels), size, max_batch
        used_h, used_w = self.rows_t.shape[0], self.cols_t.shape[0]
        planes = max_batch * channels
        self._planes = np.empty(planes * used_w * used_h, np.float32)
        self._by_rows = np.empty(planes * used_w * size, np.float32)
        self._turned = np.empty(planes * size * used_w, np.float32)
        self._both = np.empty(planes * size * size, np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """A view [n, size, size, C] of this resizer's output buffer (valid until the next call)."""
        n = len(images)
        if images.shape[1:] != self.shape or n > self.max_batch:
            raise ValueError(f"images {images.shape} do not fit this resizer ({self.shape}, at most {self.max_batch}).")
        channels, size = self.shape[2], self.size
        used_h, used_w = self.rows_t.shape[0], self.cols_t.shape[0]
        planes = n * channels
        # Two plain 2-D matrix products per batch, not one per image: OpenBLAS synchronises its
        # threads on every call. Each channel is a plane; rows are reduced first so that the
        # columns' product leaves [plane, row, column] order (the output layout when C == 1).
        crop = images[:, slice(*self.row_span), slice(*self.col_span)]
        x = self._planes[:planes * used_w * used_h].reshape(n, channels, used_w, used_h)
        np.copyto(x, crop.transpose(0, 3, 2, 1), casting="unsafe")
        by_rows = self._by_rows[:planes * used_w * size].reshape(planes * used_w, size)
        np.matmul(x.reshape(planes * used_w, used_h), self.rows_t, out=by_rows)
        turned = self._turned[:planes * size * used_w].reshape(planes, size, used_w)
        np.copyto(turned, by_rows.reshape(planes, used_w, size).transpose(0, 2, 1))
        both = self._both[:planes * size * size].reshape(planes * size, size)
        np.matmul(turned.reshape(planes * size, used_w), self.cols_t, out=both)
        return both.reshape(n, channels, size, size).transpose(0, 2, 3, 1)


def _reach(weights: np.ndarray) -> tuple[int, int]:
    """First and one-past-last input index with a nonzero weight in any row."""
    used = np.flatnonzero(weights.any(axis=0))
    return int(used[0]), int(used[-1]) + 1


def _to_canvas(raw: np.ndarray, value_scale: float, offset: float) -> np.ndarray:
    """float32 [N, 64, 64, 1] = offset + resized(raw * value_scale), for raw images [N, H, W] in chunks.

    The resize is linear with rows of weights summing to 1, so ``offset`` may be added after it
    (MNIST: 1 - x / 255 is offset 1, scale -1/255). Chunks run on a few threads (NumPy and BLAS
    release the GIL), each thread with its own buffers and BLAS on one thread.
    """
    count, height, width = raw.shape
    out = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    workers = min(_workers(), -(-count // CHUNK))  # no more threads than chunks

    def convert(worker: int) -> None:
        resizer = _Resizer(height, width, 1, value_scale=value_scale, max_batch=CHUNK)
        for start in range(worker * CHUNK, count, workers * CHUNK):  # every workers-th chunk
            target = out[start:start + CHUNK]
            np.add(resizer(raw[start:start + CHUNK, :, :, None]), offset, out=target)
            # Rounding only: each output is a convex combination of values in [0, 1], but float32
            # sums can land one ulp outside.
            np.clip(target, 0.0, 1.0, out=target)

    with _single_threaded_blas(), concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        for _ in pool.map(convert, range(workers)):
            pass  # re-raises a worker's exception here
    return out


def _workers() -> int:
    """Threads for chunk conversion: the CPUs this process may use, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _single_threaded_blas():
    """Run BLAS on one thread for the resize products (process-wide, while the context is open).

    The products are small (one chunk of images each). OpenBLAS splits each over all cores and waits
    for every thread at its end, so on a busy machine (Ray actors, a learner, other users) each call
    waits for a descheduled thread: on this project's shared 2-core machine, 2 BLAS threads made the
    chunked resize 6-20x slower than 1 (when idle, 1.5x faster). ``_to_canvas`` uses the other
    cores with its own threads instead, one chunk at a time each, without those per-call waits.
    """
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


# ------------------------------------------------------------------------------------------------
# MNIST.

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the decompressed IDX files: the canonical values (shared/data/mnist/README.md).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Tried in order; LeCun's own site is last because it is often down. $SPIRAL_MNIST_URL replaces the list.
MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_URL_ENV = "SPIRAL_MNIST_URL"
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ndim -> magic (uint8 data)


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True, *,
               limit: int | None = None) -> Dataset:
    """MNIST as dark digits on white: images float32 [N, 64, 64, 1], labels int64 digits [N].

    Splits: 'train' (60,000), 'test' (10,000), 'all' (train then test). The 28×28 white-on-black
    digits are inverted and enlarged to 64×64 by bilinear interpolation.
    """
    split = _check_split("mnist", split, ("train", "test", "all"))
    limit = _check_limit(limit)
    folder = resolve_data_dir(data_dir) / "mnist"
    images, labels = [], []
    for part in ("train", "test") if split == "all" else (split,):
        wanted = None if limit is None else limit - sum(len(x) for x in labels)
        if wanted is not None and wanted <= 0:
            break
        image_name, label_name = MNIST_FILES[part]
        image_path = _mnist_file(folder, image_name, download)
        label_path = _mnist_file(folder, label_name, download)
        part_images = _read_idx(image_path, ndim=3, max_items=wanted)
        part_labels = _read_idx(label_path, ndim=1, max_items=wanted)
        if len(part_images) != len(part_labels) or part_images.shape[1:] != (28, 28):
            raise ValueError(f"{image_path} holds {part_images.shape} images but {label_path} holds "
                             f"{len(part_labels)} labels (expected 28×28 images, one label each). "
                             f"Fix: replace both with the standard MNIST files.")
        if part_labels.size and part_labels.max() > 9:
            raise ValueError(f"{label_path} holds labels up to {part_labels.max()}, not digits 0-9. "
                             f"Fix: replace it with the standard MNIST file.")
        images.append(part_images)
        labels.append(part_labels)
    raw = np.concatenate(images) if len(images) > 1 else images[0]
    # White (255) ink on black becomes dark ink on white: 1 - x / 255.
    pixels = _to_canvas(raw, value_scale=-1 / 255, offset=1.0)  # 1 - x / 255
    return Dataset("mnist", split, pixels, np.concatenate(labels).astype(np.int64), str(folder))


def _url_list(env_name: str, defaults: Sequence[str]) -> list[str]:
    """Base URLs from ``$env_name`` (comma-separated) or ``defaults``, each ending in '/'."""
    from_env = os.environ.get(env_name, "").strip()
    urls = [u.strip() for u in from_env.split(",") if u.strip()] if from_env else list(defaults)
    return [u if u.endswith("/") else u + "/" for u in urls]


def _mnist_file(folder: pathlib.Path, name: str, download: bool) -> pathlib.Path:
    """The local path of IDX file ``name`` (.gz preferred), downloading it if allowed and absent."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    bases = _url_list(MNIST_URL_ENV, MNIST_URLS)
    if not download:
        raise FileNotFoundError(
            f"MNIST file {folder / name}.gz is missing. Fix: load with download=True (fetches it from "
            f"{bases[0] if bases else 'a mirror'}), or put the four standard MNIST files there, or pass "
            f"data_dir= / set SPIRAL_DATA_DIR to a folder with mnist/ inside.")
    dest = folder / f"{name}.gz"
    _download.fetch([base + dest.name for base in bases], dest,
                    lambda part: _check_gzip_sha256(part, MNIST_SHA256[name]),
                    fix=f"check the network, or set {MNIST_URL_ENV} to a mirror's base URL, or put "
                        f"{dest.name} (standard MNIST) into {folder} yourself.")
    return dest


def _check_gzip_sha256(path: pathlib.Path, expected: str) -> None:
    """Raise ValueError unless ``path`` is a complete gzip whose decompressed SHA-256 is ``expected``."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"not a complete gzip file ({err})") from err
    if digest.hexdigest() != expected:
        raise ValueError(f"SHA-256 of the decompressed content is {digest.hexdigest()}, expected {expected}")


def _read_idx(path: pathlib.Path, ndim: int, max_items: int | None = None) -> np.ndarray:
    """Read an IDX file of uint8 (gzip or not) into an array; at most ``max_items`` along the first axis.

    Reading the whole file also checks the gzip CRC and that nothing follows the data.
    """
    fix = (f"Fix: delete {path} and load again with download=True for a fresh copy, "
           f"or copy the standard MNIST file there again.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise ValueError(f"{path} is too short to hold an IDX header (truncated). {fix}")
            magic, *dims = np.frombuffer(header, ">u4").tolist()
            if magic != _IDX_MAGIC[ndim]:
                raise ValueError(f"{path} starts with magic 0x{magic:08x}, not 0x{_IDX_MAGIC[ndim]:08x} "
                                 f"(a {ndim}-d uint8 IDX file). {fix}")
            count = dims[0] if max_items is None else min(dims[0], max_items)
            size = count * int(np.prod(dims[1:], dtype=np.int64))
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{path} ends after {len(data)} of its {size} data bytes (truncated). {fix}")
            if max_items is None and f.read(1):
                raise ValueError(f"{path} has bytes after the {dims[0]} items its header announces. {fix}")
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is truncated or corrupt ({err}). {fix}") from err
    return np.frombuffer(data, np.uint8).reshape(count, *dims[1:])


# ------------------------------------------------------------------------------------------------
# Omniglot.

OMNIGLOT_SETS = {"train": "images_background", "test": "images_evaluation"}
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_URL_ENV = "SPIRAL_OMNIGLOT_URL"
OMNIGLOT_SIDE = 105
# SHA-256 of the decoded images of each official zip: the bool array [N, 105, 105] (True = white
# background) in (character ID, drawer) order, as C-order bytes. Computed once from the shared npz
# files, which hold the same pixels as the official PNGs (shared/data/omniglot/README.md), with
#   hashlib.sha256(np.load(".../images_background.npz")["images"].tobytes()).hexdigest()
OMNIGLOT_SHA256 = {
    "images_background": "97db6dcdf39955c3a949e197621f8f318092986b37e116c9b4996150e8d2d8a3",
    "images_evaluation": "a76180acf0908643e1a9494a1a841d2af4bbbbdc6d7e01e0db92eed7d1c6f902",
}
_OMNIGLOT_PNG_NAME = re.compile(r"(\d+)_(\d+)\.png", re.IGNORECASE)


def load_omniglot(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True, *,
                  limit: int | None = None) -> Dataset:
    """Omniglot as dark strokes on white: images float32 [N, 64, 64, 1], labels int64 character ID − 1.

    Splits: 'train' = images_background (19,280), 'test' = images_evaluation (13,180), 'all' (both).
    Images are in (character, drawer) order; the 105×105 binary images are reduced to 64×64.
    """
    split = _check_split("omniglot", split, ("train", "test", "all"))
    limit = _check_limit(limit)
    folder = resolve_data_dir(data_dir) / "omniglot"
    images, char_ids, sources = [], [], []
    for part in ("train", "test") if split == "all" else (split,):
        if limit is not None and sum(len(x) for x in images) >= limit:
            break
        part_images, part_ids, source = _omniglot_set(folder, OMNIGLOT_SETS[part], download)
        images.append(part_images)
        char_ids.append(part_ids)
        sources.append(str(source))
    raw = np.concatenate(images) if len(images) > 1 else images[0]
    ids = np.concatenate(char_ids) if len(char_ids) > 1 else char_ids[0]
    if limit is not None:
        raw, ids = raw[:limit], ids[:limit]
    pixels = _to_canvas(raw, value_scale=1.0, offset=0.0)  # True (white) -> 1.0
    return Dataset("omniglot", split, pixels, (ids - 1).astype(np.int64), ", ".join(sources))


def _omniglot_set(folder: pathlib.Path, set_name: str, download: bool):
    """(images bool [N, 105, 105], character IDs [N], source path) of one set: npz, else zip, else download."""
    npz_path, zip_path = folder / f"{set_name}.npz", folder / f"{set_name}.zip"
    if npz_path.is_file():
        first_id = 1 if set_name == "images_background" else 1 + 964
        images, ids = _read_omniglot_npz(npz_path, first_id)
        return images, ids, npz_path
    if zip_path.is_file():
        images, ids = _omniglot_zip_cached(zip_path)
        return images, ids, zip_path
    url = _url_list(OMNIGLOT_URL_ENV, [OMNIGLOT_URL])[0] + zip_path.name
    if not download:
        raise FileNotFoundError(
            f"Omniglot {set_name} is missing: neither {npz_path} nor {zip_path} exists. Fix: load with "
            f"download=True (fetches {url}), or put the official {zip_path.name} there, or pass data_dir= / "
            f"set SPIRAL_DATA_DIR to a folder with omniglot/ inside.")

    def verify(part: pathlib.Path):
        images, ids = _decode_omniglot_zip(part)
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        if digest != OMNIGLOT_SHA256[set_name]:
            raise ValueError(f"SHA-256 of the decoded images is {digest}, expected {OMNIGLOT_SHA256[set_name]}")
        return images, ids

    images, ids = _download.fetch(
        [url], zip_path, verify,
        fix=f"check the network, or set {OMNIGLOT_URL_ENV} to another base URL holding {zip_path.name}, "
            f"or put the official {zip_path.name} into {folder} yourself.")
    _store_decoded(zip_path, images, ids)
    return images, ids, zip_path


def _read_omniglot_npz(path: pathlib.Path, first_id: int):
    """images bool [n_chars * 20, 105, 105] and character IDs from an npz like shared/data/omniglot."""
    fix = f"Fix: delete {path} so the official zip is used (or downloaded), or copy the file again."
    try:
        with np.load(path) as archive:
            if "images" not in archive.files:
                raise ValueError(f"{path} has no 'images' array (it has {archive.files}). {fix}")
            images = archive["images"]
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is truncated or corrupt ({err}). {fix}") from err
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[2:] != (OMNIGLOT_SIDE, OMNIGLOT_SIDE):
        raise ValueError(f"{path}: 'images' is {images.dtype} {images.shape}, expected bool "
                         f"[characters, drawers, 105, 105]. {fix}")
    n_chars, n_drawers = images.shape[:2]
    ids = np.repeat(np.arange(first_id, first_id + n_chars, dtype=np.int64), n_drawers)
    return images.reshape(-1, OMNIGLOT_SIDE, OMNIGLOT_SIDE), ids


def _decode_omniglot_zip(path: pathlib.Path | io.BytesIO, name: str | None = None):
    """images bool [N, 105, 105] and character IDs of an official-layout zip of CCCC_DD.png files.

    Sorted by (character ID, drawer), the order of the npz form, so both give the same array.
    """
    name = name or str(path)
    fix = f"Fix: delete {name} and load with download=True, or replace it with the official zip ({OMNIGLOT_URL})."
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name} is not a readable zip ({err}). {fix}") from err
    with archive:
        entries = []
        for info in archive.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if info.is_dir() or not base.lower().endswith(".png") or _is_metadata(info.filename):
                continue
            match = _OMNIGLOT_PNG_NAME.fullmatch(base)
            if not match:
                raise ValueError(f"{info.filename} in {name} is not named CCCC_DD.png (character ID, drawer) "
                                 f"like the official Omniglot files. {fix}")
            entries.append((int(match[1]), int(match[2]), info))
        if not entries:
            raise ValueError(f"{name} holds no PNG images (expected <set>/<alphabet>/characterNN/CCCC_DD.png). {fix}")
        entries.sort(key=lambda e: e[:2])
        keys = [e[:2] for e in entries]
        for a, b in zip(keys, keys[1:]):
            if a == b:
                raise ValueError(f"{name} holds character {a[0]} drawer {a[1]} twice. {fix}")
        images = np.empty((len(entries), OMNIGLOT_SIDE, OMNIGLOT_SIDE), np.bool_)
        for i, (_, _, info) in enumerate(entries):
            images[i] = _decode_binary_png(archive, info, name, fix)
    return images, np.array([e[0] for e in entries], np.int64)


def _decode_binary_png(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, fix: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(archive.read(info))) as img:
            img.load()
            mode, size = img.mode, img.size
            pixels = np.asarray(img)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot decode {info.filename} in {name} ({err}). {fix}") from err
    if mode != "1" or size != (OMNIGLOT_SIDE, OMNIGLOT_SIDE):
        raise ValueError(f"{info.filename} in {name} is a {mode} image of {size[0]}×{size[1]}, "
                         f"expected 1-bit (mode '1') 105×105 like the official Omniglot PNGs. {fix}")
    return pixels


def _is_metadata(member: str) -> bool:
    """Entries some zip tools add (macOS resource forks) that are not images."""
    return member.startswith("__MACOSX/") or member.rsplit("/", 1)[-1].startswith("._")


def _decoded_cache_path(zip_path: pathlib.Path) -> pathlib.Path:
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()[:20]
    return user_cache_dir() / "decoded" / "omniglot" / f"{zip_path.stem}-{digest}.npz"


def _omniglot_zip_cached(zip_path: pathlib.Path):
    """Decode an Omniglot zip, or reuse the bits decoded before from the same zip bytes."""
    cache = _decoded_cache_path(zip_path)
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                bits, ids = stored["bits"], stored["ids"]
            images = np.unpackbits(bits, axis=-1, count=OMNIGLOT_SIDE).view(np.bool_)
            if images.shape == (len(ids), OMNIGLOT_SIDE, OMNIGLOT_SIDE):
                return images, ids
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
            pass  # A damaged cache is only a lost shortcut: decode the zip again and rewrite it.
    images, ids = _decode_omniglot_zip(zip_path)
    _store_decoded(zip_path, images, ids, cache)
    return images, ids


def _store_decoded(zip_path: pathlib.Path, images: np.ndarray, ids: np.ndarray,
                   cache: pathlib.Path | None = None) -> None:
    """Save decoded bits (packed, 1/8 the size) in the user cache, atomically; skip if it is not writable."""
    cache = cache or _decoded_cache_path(zip_path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, bits=np.packbits(images, axis=-1), ids=ids)
            os.replace(part, cache)
        finally:
            pathlib.Path(part).unlink(missing_ok=True)
    except OSError:
        pass  # No writable cache folder: loading still works, it only decodes the PNGs each time.


# ------------------------------------------------------------------------------------------------
# CelebA.

CELEBA_PAGE = "http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
# Official ID ranges of the partition, used when no list_eval_partition file is found.
CELEBA_ID_RANGES = {"train": (1, 162770), "valid": (162771, 182637), "test": (182638, 202599)}
CELEBA_PARTITION_CODES = {"train": 0, "valid": 1, "test": 2}
# Looked for in data_dir/celeba, in this order: the official folder and zip, then the shared subset.
CELEBA_SOURCES = ("img_align_celeba", "img_align_celeba.zip",
                  "celeba_align_89x109_000001-010000.zip", "img_align_celeba_89x109")
CELEBA_PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The square crop on the face, as fractions of the aligned image (178×218 originals; any size
# scales the same): side 140/178 of the width, centred horizontally and at 121/218 of the height.
# In the aligned set the eyes sit at y ≈ 111/218 and the mouth at ≈ 152/218; this square runs from
# the top of the hair to just below the chin. (The DCGAN 108×108 centre crop cuts the chin.)
CELEBA_CROP_SIDE = 140 / 178
CELEBA_CROP_CENTRE_Y = 121 / 218


def celeba_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, side, side) of the face square in a CelebA image of width × height pixels."""
    side = min(CELEBA_CROP_SIDE * width, float(height))
    top = min(max(CELEBA_CROP_CENTRE_Y * height - side / 2, 0.0), height - side)
    return ((width - side) / 2, top, side, side)


def load_celeba(split: str = "train", data_dir: str | os.PathLike | None = None,
                path: str | os.PathLike | None = None, *, limit: int | None = None) -> Dataset:
    """CelebA faces: images float32 [N, 64, 64, 3] in [0, 1], labels None. Never downloads.

    ``path``: a folder or zip of ``NNNNNN.jpg`` files (CelebA IDs) at any size; default: the first of
    ``CELEBA_SOURCES`` found in ``data_dir/celeba``. Splits 'train', 'valid', 'test' follow
    ``list_eval_partition.txt`` (or .csv) beside the source when present, else the official ID ranges;
    'all' takes every image. Each image is cropped by :func:`celeba_crop_box` and reduced to 64×64.
    """
    split = _check_split("celeba", split, ("train", "valid", "test", "all"))
    limit = _check_limit(limit)
    source = _celeba_source(data_dir, path)
    files = _CelebaFiles(source)
    try:
        chosen = _celeba_select(files.ids, split, source, _celeba_partition(source))
        if limit is not None:
            chosen = chosen[:limit]
        pixels = _celeba_pixels(files, chosen)
    finally:
        files.close()
    return Dataset("celeba", split, pixels, None, str(source))


def _celeba_source(data_dir, path) -> pathlib.Path:
    help_text = (f"CelebA is not downloaded automatically: its terms need your agreement. Get the aligned "
                 f"images from the official page {CELEBA_PAGE} (Google Drive: 'Align&Cropped Images', "
                 f"img_align_celeba.zip, and Eval/list_eval_partition.txt)")
    if path is not None:
        source = pathlib.Path(path).expanduser()
        if not source.exists():
            raise FileNotFoundError(f"CelebA path {source} does not exist. {help_text}, then pass path= "
                                    f"to img_align_celeba.zip or the extracted img_align_celeba/ folder.")
        return source
    folder = resolve_data_dir(data_dir) / "celeba"
    for name in CELEBA_SOURCES:
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no CelebA images in {folder} (looked for {', '.join(CELEBA_SOURCES)}). "
                            f"{help_text}, then put img_align_celeba.zip (or the extracted img_align_celeba/ "
                            f"folder) into {folder}, or pass path= to it.")


class _CelebaFiles:
    """The image files of one CelebA source (folder or zip), sorted by CelebA ID (the file name)."""

    def __init__(self, source: pathlib.Path):
        self.source = source
        self._zip = None
        if source.is_dir():
            members = [p for p in source.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
                       and not _is_metadata(p.relative_to(source).as_posix())]
            names = [p.relative_to(source).as_posix() for p in members]
            self._members = members
        else:
            try:
                self._zip = zipfile.ZipFile(source)
            except (OSError, zipfile.BadZipFile) as err:
                raise ValueError(f"{source} is neither a folder nor a readable zip ({err}). Fix: pass the "
                                 f"official img_align_celeba.zip or the extracted folder.") from err
            self._members = [i for i in self._zip.infolist() if not i.is_dir()
                             and i.filename.lower().endswith(_IMAGE_SUFFIXES) and not _is_metadata(i.filename)]
            names = [i.filename for i in self._members]
        if not names:
            self.close()
            raise ValueError(f"{source} holds no .jpg/.png images. Fix: pass the official img_align_celeba.zip "
                             f"or folder (files 000001.jpg ...), from {CELEBA_PAGE}.")
        ids = []
        for name in names:
            stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if not stem.isdigit():
                self.close()
                raise ValueError(f"{name} in {source} is not named by a CelebA ID (NNNNNN.jpg), so its split is "
                                 f"unknown. Fix: keep the official file names.")
            ids.append(int(stem))
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, np.int64)[order]
        self.names = [names[i] for i in order]
        self._members = [self._members[i] for i in order]
        repeated = self.ids[1:][self.ids[1:] == self.ids[:-1]]
        if len(repeated):
            self.close()
            raise ValueError(f"{source} holds CelebA ID {repeated[0]} more than once. Fix: keep one file per ID.")

    def read(self, index: int) -> bytes:
        member = self._members[index]
        return self._zip.read(member) if self._zip else member.read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _celeba_partition(source: pathlib.Path) -> tuple[pathlib.Path, dict[int, int]] | None:
    """(file, {ID: 0 train / 1 valid / 2 test}) from the first list_eval_partition file beside ``source``."""
    folders = ([source] if source.is_dir() else []) + [source.parent, source.parent / "Eval"]
    for folder in folders:
        for name in CELEBA_PARTITION_FILES:
            candidate = folder / name
            if candidate.is_file():
                return candidate, _read_partition(candidate)
    return None


def _read_partition(path: pathlib.Path) -> dict[int, int]:
    """Parse '000001.jpg 0' lines (official .txt) or 'image_id,partition' rows (the .csv copy)."""
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or (number == 1 and fields[0] == "image_id"):
            continue
        stem = fields[0].rsplit(".", 1)[0]
        if len(fields) != 2 or not stem.isdigit() or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path} line {number} is {line!r}, expected 'NNNNNN.jpg 0|1|2'. "
                             f"Fix: use the official list_eval_partition.txt or delete it (ID ranges are used then).")
        partition[int(stem)] = int(fields[1])
    return partition


def _celeba_select(ids: np.ndarray, split: str, source: pathlib.Path, partition) -> np.ndarray:
    """Indices (into the sorted files) of the images in ``split``; raises if there are none."""
    if split == "all":
        return np.arange(len(ids))
    if partition is not None:
        partition_path, codes = partition
        missing = [i for i in ids.tolist() if i not in codes]
        if missing:
            raise ValueError(f"{partition_path} has no entry for CelebA ID {missing[0]} of {source} "
                             f"({len(missing)} IDs missing). Fix: use the official list_eval_partition.txt.")
        chosen = np.flatnonzero(np.array([codes[i] for i in ids.tolist()]) == CELEBA_PARTITION_CODES[split])
        rule = f"by {partition_path}"
    else:
        low, high = CELEBA_ID_RANGES[split]
        chosen = np.flatnonzero((ids >= low) & (ids <= high))
        rule = f"by the official ID ranges ({split} = IDs {low}-{high}; no list_eval_partition.txt found)"
    if len(chosen) == 0:
        raise ValueError(f"CelebA split {split!r} is empty in {source}: none of its {len(ids)} images "
                         f"(IDs {ids[0]}-{ids[-1]}) is in {split!r} {rule}. Fix: use split='all' (every image), "
                         f"or hold out part of another split yourself (e.g. the last 10% of 'train').")
    return chosen


def _celeba_pixels(files: _CelebaFiles, chosen: np.ndarray) -> np.ndarray:
    """Decode, crop and resize the chosen images, a chunk at a time, grouped by image size."""
    out = np.empty((len(chosen), IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    with _single_threaded_blas():
        _celeba_fill(files, chosen, out)
    return out


def _celeba_fill(files: _CelebaFiles, chosen: np.ndarray, out: np.ndarray) -> None:
    resizers = {}  # image shape -> _Resizer with that shape's crop box
    for start in range(0, len(chosen), CHUNK):
        decoded = [_decode_rgb(files, int(i)) for i in chosen[start:start + CHUNK]]
        for shape in sorted({img.shape for img in decoded}):
            where = [k for k, img in enumerate(decoded) if img.shape == shape]
            if shape not in resizers:
                resizers[shape] = _Resizer(*shape, box=celeba_crop_box(shape[1], shape[0]),
                                           value_scale=1 / 255, max_batch=CHUNK)
            resized = resizers[shape](np.stack([decoded[k] for k in where]))
            # Rounding only (convex combinations of values in [0, 1]).
            if len(where) == len(decoded):  # the usual case: one image size
                np.clip(resized, 0.0, 1.0, out=out[start:start + len(decoded)])
            else:
                out[start + np.asarray(where)] = np.clip(resized, 0.0, 1.0)


def _decode_rgb(files: _CelebaFiles, index: int) -> np.ndarray:
    name = files.names[index]
    try:
        with Image.open(io.BytesIO(files.read(index))) as img:
            img.load()
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot decode {name} in {files.source} ({err}). Fix: replace it with the file "
                         f"from the official img_align_celeba.zip ({CELEBA_PAGE}), or remove it.") from err
