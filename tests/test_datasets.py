"""Tests of spiral.envs.datasets: the real-image loaders, their resize, downloads and bad-input errors.

What is real here: MNIST, Omniglot and CelebA come from ../shared/data (SPIRAL_DATA_DIR, set by
conftest.py), and expected values are recomputed in this file from the raw files (IDX bytes decoded by
hand, npz arrays, JPEGs decoded by Pillow) or taken from the data READMEs (published MNIST means,
label counts). The downloads run against a local HTTP server on 127.0.0.1: for MNIST it serves the real
.gz files; for Omniglot it serves an official-layout zip that this file builds from the real npz
(PNG-encoded, only the first 5 characters to stay fast), so the download, PNG decoding and
verification code run for real but the official 9 MB zip itself is not fetched. The hard-coded SHA-256
of the full official zips is checked against the npz arrays, and the PNG decoder against the real
official small1 zip. Bad files are made in tmp_path.
"""

import functools
import gzip
import hashlib
import http.server
import io
import re
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from spiral.envs import datasets


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the decoded-image cache out of the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SPIRAL_MNIST_URL", raising=False)
    monkeypatch.delenv("SPIRAL_OMNIGLOT_URL", raising=False)


# ------------------------------------------------------------------------------------------------
# Helpers: an independent reference resize, raw-file decoders, file builders and a local HTTP server.


def pillow_resize(image, box=None):
    """Pillow's own BILINEAR resize of one float image [H, W] to 64×64 (the reference)."""
    height, width = image.shape
    left, top, box_w, box_h = box or (0, 0, width, height)
    resized = Image.fromarray(np.asarray(image, np.float32)).resize(
        (64, 64), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    return np.asarray(resized)


def idx_by_hand(path, offset):
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=offset)


def write_idx(path, array):
    header = np.array([0x800 + array.ndim, *array.shape], ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_omniglot_zip(path, images, first_id, set_name="images_background"):
    """An official-layout zip: <set>/<alphabet>/characterNN/CCCC_DD.png for images [chars, drawers, 105, 105]."""
    with zipfile.ZipFile(path, "w") as archive:
        for row, drawings in enumerate(images):
            char_id = first_id + row
            for drawer, image in enumerate(drawings, 1):
                name = f"{set_name}/Alphabet_{row // 10}/character{row % 10 + 1:02d}/{char_id:04d}_{drawer:02d}.png"
                archive.writestr(name, png_bytes(image))


def celeba_jpegs(data_dir, count):
    """{ID: JPEG bytes} of the first ``count`` full-size (178×218) CelebA images."""
    with zipfile.ZipFile(data_dir / "celeba" / "celeba_align_178x218_000001-000032.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[:count]
        return {int(n[-10:-4]): archive.read(n) for n in names}


@pytest.fixture
def http_server():
    """Start local HTTP servers on 127.0.0.1: serve(folder) -> base URL; requests are recorded."""
    servers, requests = [], []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    def serve(folder):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    serve.requests = requests
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def assert_same_pixels(actual, expected):
    """Equal up to float32 rounding: BLAS may sum in another order for another batch size."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def assert_canvas(ds, count, channels):
    assert ds.images.shape == (count, 64, 64, channels)
    assert ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0


# ------------------------------------------------------------------------------------------------
# Resize: matches Pillow.


@pytest.mark.parametrize("height, width, box", [
    (28, 28, None),                  # MNIST enlargement
    (105, 105, None),                # Omniglot reduction
    (109, 89, (9.5, 25.5, 70, 70)),  # CelebA half-size crop, fractional box
    (218, 178, datasets.celeba_crop_box(178, 218)),
    (40, 90, (3.25, 1.5, 30.0, 37.0)),
])
def test_resize_matches_pillow_bilinear(height, width, box):
    rng = np.random.default_rng(height * width)
    images = rng.random((3, height, width, 3), dtype=np.float32)
    resized = datasets.resize_images(images, box=box)
    assert resized.shape == (3, 64, 64, 3) and resized.dtype == np.float32
    for n in range(3):
        for channel in range(3):
            np.testing.assert_allclose(resized[n, ..., channel], pillow_resize(images[n, ..., channel], box),
                                       atol=2e-6)
    single = datasets.resize_images(images[..., :1], box=box)
    np.testing.assert_allclose(single[..., 0], resized[..., 0], atol=1e-6)


def test_resize_weights_are_a_convex_antialiasing_filter():
    weights = datasets.resize_weights(105, 64)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # Reducing averages over about 105/64 input pixels: a 1-pixel checkerboard comes out nearly flat.
    checker = (np.indices((105, 105)).sum(axis=0) % 2).astype(np.float32)[None, ..., None]
    assert datasets.resize_images(checker)[0, 4:-4, 4:-4].std() < 0.1
    with pytest.raises(ValueError, match="does not fit"):
        datasets.resize_weights(10, 4, start=8, length=5)


# ------------------------------------------------------------------------------------------------
# MNIST.


def test_mnist_train_matches_the_raw_files(data_dir):
    folder = data_dir / "mnist"
    raw = idx_by_hand(folder / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    raw_labels = idx_by_hand(folder / "train-labels-idx1-ubyte.gz", 8)
    ds = datasets.load_mnist("train")
    assert (ds.name, ds.split) == ("mnist", "train")
    assert_canvas(ds, 60000, 1)
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, raw_labels)
    assert ds.labels[:20].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5, 3, 6, 1, 7, 2, 8, 6, 9]
    assert np.bincount(ds.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # Canvas polarity: white background (the IDX border is 0 = black), dark ink.
    assert ds.images[:, :3].mean() > 0.999 and ds.images[:, :, :3].mean() > 0.999
    ink = 1.0 - ds.images[..., 0]
    assert abs(ink.mean() - 0.1307) < 5e-4  # the published train mean / 255
    # First image: exactly Pillow's bilinear enlargement of the inverted raw digit, and the same ink.
    np.testing.assert_allclose(ds.images[0, ..., 0], pillow_resize(1.0 - raw[0] / 255.0), atol=2e-6)
    raw_ink = raw[:100].reshape(100, -1).sum(axis=1) / 255.0
    scaled_ink = ink[:100].reshape(100, -1).sum(axis=1) * (28 / 64) ** 2
    np.testing.assert_allclose(scaled_ink, raw_ink, rtol=0.02)
    assert abs(raw[0].sum() / 255.0 - 107.94) < 0.01


def test_mnist_test_split_and_limit(data_dir):
    ds = datasets.load_dataset("mnist", "test")
    assert_canvas(ds, 10000, 1)
    assert np.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs((1.0 - ds.images).mean() - 0.1325) < 5e-4
    few = datasets.load_dataset("mnist", "test", limit=7)
    assert_canvas(few, 7, 1)
    assert_same_pixels(few.images, ds.images[:7])
    np.testing.assert_array_equal(few.labels, ds.labels[:7])


def make_small_mnist(folder, n_train=7, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        parts[prefix] = (images, labels)
    return parts


def test_mnist_all_concatenates_and_limit_crosses_splits(tmp_path):
    parts = make_small_mnist(tmp_path / "mnist")
    every = datasets.load_mnist("all", tmp_path, download=False)
    assert_canvas(every, 10, 1)
    np.testing.assert_array_equal(every.labels, np.concatenate([parts["train"][1], parts["t10k"][1]]))
    np.testing.assert_allclose(every.images[9, ..., 0], pillow_resize(1.0 - parts["t10k"][0][2] / 255.0), atol=2e-6)
    eight = datasets.load_dataset("mnist", "all", tmp_path, download=False, limit=8)
    assert_same_pixels(eight.images, every.images[:8])


# ------------------------------------------------------------------------------------------------
# Omniglot.


@pytest.mark.parametrize("split, set_name, count, first_label", [
    ("train", "images_background", 19280, 0), ("test", "images_evaluation", 13180, 964)])
def test_omniglot_splits_match_the_npz(data_dir, split, set_name, count, first_label):
    raw = np.load(data_dir / "omniglot" / f"{set_name}.npz")["images"]
    ds = datasets.load_omniglot(split)
    assert (ds.name, ds.split) == ("omniglot", split)
    assert_canvas(ds, count, 1)
    n_chars = count // 20
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(first_label, first_label + n_chars), 20))
    # Canvas polarity: True (white) background stays 1; ink fraction kept by the reduction.
    assert ds.images.mean() > 0.9
    assert abs((1.0 - ds.images).mean() - (~raw).mean()) < 2e-4
    for char, drawer in ((0, 0), (n_chars - 1, 19)):
        np.testing.assert_allclose(ds.images[char * 20 + drawer, ..., 0],
                                   pillow_resize(raw[char, drawer].astype(np.float32)), atol=2e-6)


def test_omniglot_hard_coded_sums_and_png_decoder_on_real_files(data_dir):
    """The official-zip SHA-256 constants equal the npz pixels; real official PNGs decode to them too."""
    background = np.load(data_dir / "omniglot" / "images_background.npz")["images"]
    evaluation = np.load(data_dir / "omniglot" / "images_evaluation.npz")["images"]
    assert hashlib.sha256(background.tobytes()).hexdigest() == datasets.OMNIGLOT_SHA256["images_background"]
    assert hashlib.sha256(evaluation.tobytes()).hexdigest() == datasets.OMNIGLOT_SHA256["images_evaluation"]
    images, ids = datasets._decode_omniglot_zip(data_dir / "omniglot" / "images_background_small1.zip")
    assert images.shape == (2720, 105, 105) and len(np.unique(ids)) == 136
    drawers = np.tile(np.arange(20), 136)
    np.testing.assert_array_equal(images, background[ids - 1, drawers])


def test_omniglot_zip_in_data_dir_and_its_cache(data_dir, tmp_path, monkeypatch):
    raw = np.load(data_dir / "omniglot" / "images_background.npz")["images"][:4]
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    write_omniglot_zip(folder / "images_background.zip", raw, first_id=1)
    from_zip = datasets.load_omniglot("train", tmp_path / "data", download=False)
    from_npz = datasets.load_omniglot("train", limit=80)
    assert_same_pixels(from_zip.images, from_npz.images)
    np.testing.assert_array_equal(from_zip.labels, from_npz.labels)
    cached = list((tmp_path / "xdg-cache" / "spiral" / "decoded" / "omniglot").glob("images_background-*.npz"))
    assert len(cached) == 1
    assert not [p for p in folder.iterdir() if p.name != "images_background.zip"]  # nothing written to data

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the zip again although it is cached")

    decode = datasets._decode_omniglot_zip
    monkeypatch.setattr(datasets, "_decode_omniglot_zip", no_decoding)
    again = datasets.load_omniglot("train", tmp_path / "data", download=False)
    assert_same_pixels(again.images, from_zip.images)
    # A different zip under the same name must not reuse the old cache.
    monkeypatch.setattr(datasets, "_decode_omniglot_zip", decode)
    write_omniglot_zip(folder / "images_background.zip", raw[:2], first_id=1)
    assert len(datasets.load_omniglot("train", tmp_path / "data", download=False)) == 40
    # An unusable cache folder only costs the shortcut.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert len(datasets.load_omniglot("train", tmp_path / "data", download=False)) == 40


# ------------------------------------------------------------------------------------------------
# Downloads against a local server.


def test_mnist_download_tries_mirrors_and_verifies(data_dir, tmp_path, monkeypatch, http_server):
    base = http_server(data_dir / "mnist")
    monkeypatch.setenv("SPIRAL_MNIST_URL", f"{base}no-such-mirror/,{base}")
    target = tmp_path / "data"
    ds = datasets.load_mnist("test", target)
    assert_canvas(ds, 10000, 1)
    train = datasets.load_mnist("train", target, limit=5)
    for name in datasets.MNIST_SHA256:
        assert (target / "mnist" / f"{name}.gz").read_bytes() == (data_dir / "mnist" / f"{name}.gz").read_bytes()
        assert http_server.requests.count(f"/no-such-mirror/{name}.gz") == 1  # the 404 mirror came first
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(f"{n}.gz" for n in datasets.MNIST_SHA256)
    assert_same_pixels(train.images, datasets.load_mnist("train", limit=5).images)
    # Present files are not fetched again.
    count = len(http_server.requests)
    datasets.load_mnist("test", target, limit=1)
    assert len(http_server.requests) == count


def test_mnist_download_rejects_corrupt_and_truncated_files(data_dir, tmp_path, monkeypatch, http_server):
    served = tmp_path / "served"
    served.mkdir()
    labels = bytearray(gzip.decompress((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # one wrong label: still a valid gzip and IDX file
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    real_images = (data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(real_images[:len(real_images) // 2])
    monkeypatch.setenv("SPIRAL_MNIST_URL", http_server(served))
    target = tmp_path / "data" / "mnist"
    with pytest.raises(datasets.DownloadError, match="t10k-images-idx3-ubyte.gz.*not a complete gzip"):
        datasets.load_mnist("test", tmp_path / "data")
    assert not (tmp_path / "data").exists()   # a failed download leaves no folder behind
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(real_images)
    with pytest.raises(datasets.DownloadError, match="(?s)t10k-labels-idx1-ubyte.gz.*SHA-256.*expected ff7bcfd4"):
        datasets.load_mnist("test", tmp_path / "data")
    assert [p.name for p in target.iterdir()] == ["t10k-images-idx3-ubyte.gz"]  # the good file stays


def test_download_reports_unreachable_servers(tmp_path, monkeypatch, http_server):
    base = http_server(tmp_path)  # serves an empty folder: 404 everywhere
    monkeypatch.setenv("SPIRAL_MNIST_URL", f"http://127.0.0.1:1/,{base}")
    with pytest.raises(datasets.DownloadError, match="(?s)127.0.0.1:1/.*404.*SPIRAL_MNIST_URL"):
        datasets.load_mnist("test", tmp_path / "data")
    assert not (tmp_path / "data" / "mnist").exists() or not list((tmp_path / "data" / "mnist").iterdir())


def test_omniglot_download_verifies_decoded_images(data_dir, tmp_path, monkeypatch, http_server):
    raw = np.load(data_dir / "omniglot" / "images_background.npz")["images"][:5]
    served = tmp_path / "served"
    served.mkdir()
    write_omniglot_zip(served / "images_background.zip", raw, first_id=1)
    # The served zip holds 5 of the 964 characters, so it has its own sum, computed like the real ones.
    monkeypatch.setitem(datasets.OMNIGLOT_SHA256, "images_background", hashlib.sha256(raw.tobytes()).hexdigest())
    monkeypatch.setenv("SPIRAL_OMNIGLOT_URL", http_server(served))
    ds = datasets.load_omniglot("train", tmp_path / "data")
    assert_canvas(ds, 100, 1)
    assert_same_pixels(ds.images, datasets.load_omniglot("train", limit=100).images)
    assert (tmp_path / "data" / "omniglot" / "images_background.zip").read_bytes() == \
        (served / "images_background.zip").read_bytes()
    # A zip whose one pixel differs is rejected and removed.
    flipped = raw.copy()
    flipped[2, 3, 50, 50] = ~flipped[2, 3, 50, 50]
    write_omniglot_zip(served / "images_evaluation.zip", flipped, first_id=965, set_name="images_evaluation")
    monkeypatch.setitem(datasets.OMNIGLOT_SHA256, "images_evaluation", hashlib.sha256(raw.tobytes()).hexdigest())
    with pytest.raises(datasets.DownloadError, match="images_evaluation.zip.*SHA-256 of the decoded images"):
        datasets.load_omniglot("test", tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data" / "omniglot").iterdir()) == ["images_background.zip"]


# ------------------------------------------------------------------------------------------------
# CelebA.


@pytest.mark.celeba
def test_celeba_shared_subset(data_dir):
    train = datasets.load_dataset("celeba", "train")
    assert (train.name, train.split, train.labels) == ("celeba", "train", None)
    assert_canvas(train, 10000, 3)
    every = datasets.load_celeba("all")
    np.testing.assert_array_equal(every.images, train.images)  # all 10,000 IDs are training IDs
    with zipfile.ZipFile(data_dir / "celeba" / "celeba_align_89x109_000001-010000.zip") as archive:
        first = np.asarray(Image.open(io.BytesIO(archive.read("img_align_celeba_89x109/000001.jpg"))), np.float32)
        last = np.asarray(Image.open(io.BytesIO(archive.read("img_align_celeba_89x109/010000.jpg"))), np.float32)
    box = datasets.celeba_crop_box(89, 109)
    for index, image in ((0, first), (9999, last)):
        for channel in range(3):
            np.testing.assert_allclose(train.images[index, ..., channel],
                                       pillow_resize(image[..., channel] / 255.0, box), atol=3e-6)
    for split in ("valid", "test"):
        with pytest.raises(ValueError, match=f"split '{split}' is empty.*split='all'"):
            datasets.load_celeba(split)


@pytest.mark.celeba
def test_celeba_full_size_images_crop_the_same_face(data_dir):
    """The 178×218 originals and the 89×109 copies of the same IDs give nearly the same 64×64 crops."""
    full = datasets.load_celeba("train", path=data_dir / "celeba" / "celeba_align_178x218_000001-000032.zip")
    half = datasets.load_celeba("train", limit=32)
    assert_canvas(full, 32, 3)
    same = np.abs(full.images - half.images).mean(axis=(1, 2, 3))
    other = np.abs(full.images - np.roll(half.images, 1, axis=0)).mean(axis=(1, 2, 3))
    assert same.max() < 0.03 and other.min() > 0.05


@pytest.mark.celeba
def test_celeba_official_names_partition_file_and_id_ranges(data_dir, tmp_path):
    jpegs = celeba_jpegs(data_dir, 5)
    # The official unzipped folder in data_dir/celeba, with no partition file: ID ranges decide.
    folder = tmp_path / "data" / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    ids = [162770, 162771, 182637, 182638, 202599]  # the edges of the official ranges
    for new_id, data in zip(ids, jpegs.values()):
        (folder / f"{new_id:06d}.jpg").write_bytes(data)
    counts = {split: len(datasets.load_celeba(split, tmp_path / "data")) for split in ("train", "valid", "test", "all")}
    assert counts == {"train": 1, "valid": 2, "test": 2, "all": 5}
    # list_eval_partition.txt beside the folder overrides the ranges.
    lines = [f"{i:06d}.jpg {code}" for i, code in zip(ids, (2, 2, 0, 1, 0))]
    (folder.parent / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    test = datasets.load_celeba("test", tmp_path / "data")
    first_two = datasets.load_celeba("all", tmp_path / "data", limit=2)
    assert_same_pixels(test.images, first_two.images)
    (folder.parent / "list_eval_partition.txt").write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(ValueError, match="no entry for CelebA ID 202599"):
        datasets.load_celeba("test", tmp_path / "data")
    # The official zip name, and the Kaggle-style csv partition file, through path=.
    official = tmp_path / "elsewhere" / "img_align_celeba.zip"
    official.parent.mkdir()
    with zipfile.ZipFile(official, "w") as archive:
        for celeba_id, data in jpegs.items():
            archive.writestr(f"img_align_celeba/{celeba_id:06d}.jpg", data)
    (official.parent / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{i:06d}.jpg,{i % 3}\n" for i in jpegs))
    valid = datasets.load_celeba("valid", path=official)
    assert len(valid) == 2  # IDs 1 and 4
    assert_same_pixels(valid.images[1], datasets.load_celeba("all", path=official).images[3])


# ------------------------------------------------------------------------------------------------
# Locations and bad input.


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRAL_DATA_DIR", str(tmp_path / "env"))
    assert datasets.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert datasets.resolve_data_dir() == tmp_path / "env"
    assert datasets.resolve_data_dir("") == tmp_path / "env"
    monkeypatch.delenv("SPIRAL_DATA_DIR")
    assert datasets.resolve_data_dir() == tmp_path / "xdg-cache" / "spiral" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.resolve_data_dir() == tmp_path / "home" / ".cache" / "spiral" / "data"


def test_bad_names_splits_and_limits():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        datasets.load_dataset("cifar")
    with pytest.raises(ValueError, match="mnist has no split 'valid'"):
        datasets.load_dataset("mnist", "valid")
    for limit in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="limit must be a positive int"):
            datasets.load_dataset("mnist", "test", limit=limit)
    ds = datasets.Dataset("x", "train", np.zeros((1, 64, 64, 1), np.float32), None)
    with pytest.raises(AttributeError):
        ds.name = "y"


def test_missing_files_name_the_folder_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}/mnist/t10k-images-idx3-ubyte.gz is missing") + ".*download=True"):
        datasets.load_mnist("test", missing, download=False)
    with pytest.raises(FileNotFoundError, match="(?s)" + re.escape(f"{missing}/omniglot/images_evaluation.npz") + ".*download=True"):
        datasets.load_omniglot("test", missing, download=False)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no CelebA images in {missing}/celeba") + ".*mmlab.*img_align_celeba.zip"):
        datasets.load_dataset("celeba", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="does not exist.*CelebA.html.*path="):
        datasets.load_celeba(path=tmp_path / "faces.zip")


def test_bad_mnist_files(data_dir, tmp_path):
    folder = tmp_path / "mnist"
    make_small_mnist(folder)
    real = (data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    bad = folder / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(real[:100_000])
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*truncated.*download=True"):
        datasets.load_mnist("test", tmp_path, download=False)
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=re.escape(f"{bad} is truncated or corrupt")):
        datasets.load_mnist("test", tmp_path, download=False)
    write_idx(bad, np.zeros((3, 28), np.uint8))  # a 2-d IDX: wrong magic for images
    with pytest.raises(ValueError, match="magic 0x00000802, not 0x00000803"):
        datasets.load_mnist("test", tmp_path, download=False)
    write_idx(bad, np.zeros((4, 28, 28), np.uint8))  # 4 images, 3 labels
    with pytest.raises(ValueError, match="holds 3 labels"):
        datasets.load_mnist("test", tmp_path, download=False)
    labels = folder / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(7, 12, np.uint8))
    with pytest.raises(ValueError, match="labels up to 12"):
        datasets.load_mnist("train", tmp_path, download=False)


def test_bad_omniglot_files(data_dir, tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    target = folder / "images_background.zip"
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("images_background/README.txt", "no images")
    with pytest.raises(ValueError, match=re.escape(f"{target} holds no PNG images") + ".*download=True"):
        datasets.load_omniglot("train", tmp_path, download=False)
    good = png_bytes(np.ones((105, 105), bool))
    for name, data, message in [
        ("a/b/0001_01.png", b"\x89PNG\r\n\x1a\n garbage", "cannot decode a/b/0001_01.png"),
        ("a/b/0001_01.png", good[:60], "cannot decode a/b/0001_01.png"),
        ("a/b/0001_01.png", png_bytes(np.ones((100, 105), bool)), "105×100, expected 1-bit"),
        ("a/b/0001_01.png", png_bytes(np.full((105, 105), 255, np.uint8)), "is a L image"),
        ("a/b/first.png", good, "not named CCCC_DD.png"),
    ]:
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("a/b/0001_02.png", good)
            archive.writestr(name, data)
        with pytest.raises(ValueError, match=message):
            datasets.load_omniglot("train", tmp_path, download=False)
    target.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        datasets.load_omniglot("train", tmp_path, download=False)
    npz = folder / "images_evaluation.npz"
    npz.write_bytes((data_dir / "omniglot" / "images_evaluation.npz").read_bytes()[:50_000])
    with pytest.raises(ValueError, match=re.escape(f"{npz} is truncated or corrupt")):
        datasets.load_omniglot("test", tmp_path, download=False)


@pytest.mark.celeba
def test_bad_celeba_files(data_dir, tmp_path):
    jpeg = celeba_jpegs(data_dir, 1)[1]
    source = tmp_path / "faces.zip"
    cases = [
        ({"faces/notes.txt": b"hello"}, "holds no .jpg/.png images"),
        ({"faces/000001.jpg": jpeg, "faces/000002.jpg": b"\xff\xd8 garbage"}, "cannot decode faces/000002.jpg"),
        ({"faces/000001.jpg": jpeg[:len(jpeg) // 2]}, "cannot decode faces/000001.jpg"),
        ({"faces/portrait.jpg": jpeg}, "not named by a CelebA ID"),
        ({"a/000001.jpg": jpeg, "b/000001.jpg": jpeg}, "ID 1 more than once"),
    ]
    for entries, message in cases:
        with zipfile.ZipFile(source, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        with pytest.raises(ValueError, match=message):
            datasets.load_celeba("all", path=source)
    source.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="neither a folder nor a readable zip"):
        datasets.load_celeba("all", path=source)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg train\n")
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("faces/000001.jpg", jpeg)
    with pytest.raises(ValueError, match="line 1 is '000001.jpg train'"):
        datasets.load_celeba("train", path=source)
