"""Shared test setup: where the data is, skips that must not happen silently, and a closing line
that names every group of skipped tests and what would run them.

Data. The tests read the real MNIST, Omniglot and CelebA files from ``$SPIRAL_DATA_DIR`` if set,
else from ``../shared/data`` beside the repository (the project's machines and CI). Without
either, before the first test runs, MNIST and Omniglot are downloaded once by the loaders
themselves (checked by SHA-256, ``spiral.envs.datasets``) into the loaders' own default folder,
``~/.cache/spiral/data``, and laid out as ``shared/data`` is: the four MNIST ``.gz`` files; for
Omniglot, beside the official zips, the two ``.npz`` arrays the tests compare against (written
from the zips' decoded images, which have the very SHA-256 of the shared ``.npz`` arrays) and the
official ``images_background_small1.zip`` (checked against its SHA-256). ``SPIRAL_MNIST_URL`` /
``SPIRAL_OMNIGLOT_URL`` point the downloads at a mirror. CelebA is never downloaded: tests marked
``@pytest.mark.celeba`` skip unless ``<data>/celeba`` holds a copy.

Skips. ``skip_unless`` skips a test whose system dependency is missing, but fails it in CI
(``$CI`` set), which installs everything (``tests/install_system_packages.sh``). After the run,
one line sums the skips up by group (CelebA, libmypaint, cluster, browser, datasets, GPU, ...).
"""

import hashlib
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = bool(os.environ.get("CI"))

# Tests and CI read the real datasets from ../shared/data through SPIRAL_DATA_DIR.
if "SPIRAL_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SPIRAL_DATA_DIR"] = str(SHARED_DATA)

# The official Omniglot zip with the PNG-decoder tests' real files (shared/data/omniglot/README.md).
OMNIGLOT_SMALL1 = ("images_background_small1.zip",
                   "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4")
DOWNLOAD_PROBLEM = []  # why the datasets could not be fetched, for the skip messages and summary


def skip_unless(condition: bool, reason: str):
    """Skip a test when a system dependency is missing, but fail instead in CI, which installs it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this, but: {reason}")
    pytest.skip(reason)


def dataset_dir() -> pathlib.Path:
    """The data folder (MNIST and Omniglot at least); skips (fails in CI) when there is none."""
    path = os.environ.get("SPIRAL_DATA_DIR")
    problem = f" ({DOWNLOAD_PROBLEM[0]})" if DOWNLOAD_PROBLEM else ""
    skip_unless(bool(path) and pathlib.Path(path).is_dir(),
                f"no dataset folder{problem}: set SPIRAL_DATA_DIR or put ../shared/data beside the repository")
    return pathlib.Path(path)


def has_celeba(folder: pathlib.Path) -> bool:
    celeba = folder / "celeba"
    return celeba.is_dir() and any(celeba.iterdir())


@pytest.fixture
def data_dir(request):
    path = dataset_dir()
    if request.node.get_closest_marker("celeba"):
        skip_unless(has_celeba(path), f"no CelebA in {path}/celeba: CelebA is never downloaded, bring "
                                      f"your own copy (BUILD.md)")
    return path


# ------------------------------------------------------------------------------------- downloads

def omniglot_npz(images, ids, first_id: int, expected_sha256: str, path: pathlib.Path) -> None:
    """Write decoded Omniglot images [N, 105, 105] (sorted by character ID, drawer) as shared/data's
    npz: ``images`` bool [characters, 20, 105, 105], ``labels`` int64 [characters, 20] (row index)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    n_chars = len(images) // 20
    expected_ids = np.repeat(np.arange(first_id, first_id + n_chars), 20)
    if len(images) != 20 * n_chars or not np.array_equal(ids, expected_ids):
        raise ValueError(f"{path.name}: the decoded zip is not 20 drawers of consecutive characters.")
    grid = np.ascontiguousarray(images, np.bool_).reshape(n_chars, 20, *images.shape[1:])
    if hashlib.sha256(grid.tobytes()).hexdigest() != expected_sha256:
        raise ValueError(f"{path.name}: the decoded images do not have the published SHA-256.")
    part = path.with_suffix(".part.npz")
    np.savez_compressed(part, images=grid, labels=np.repeat(np.arange(n_chars)[:, None], 20, axis=1))
    os.replace(part, path)


def download_datasets(folder: pathlib.Path) -> None:
    """MNIST and Omniglot into ``folder`` in shared/data's layout, through the loaders' checked downloads."""
    from spiral.envs import _download, datasets  # pylint: disable=import-outside-toplevel
    for split in ("train", "test"):
        datasets.load_mnist(split, folder, limit=1)  # fetches and checks the split's two files
    omniglot = folder / "omniglot"
    for (split, set_name), first_id in zip(datasets.OMNIGLOT_SETS.items(), (1, 965)):
        npz = omniglot / f"{set_name}.npz"
        if not npz.is_file():
            datasets.load_omniglot(split, folder, limit=1)  # fetches the official zip, checks its pixels
            # Decoded afresh: the decoded-bits cache gives equal pixels but other bool bytes (0/1
            # where Pillow's are 0/255), and the published SHA-256 is of Pillow's.
            images, ids = datasets._decode_omniglot_zip(omniglot / f"{set_name}.zip")  # pylint: disable=protected-access
            omniglot_npz(images, ids, first_id, datasets.OMNIGLOT_SHA256[set_name], npz)
    name, sha256 = OMNIGLOT_SMALL1
    if not (omniglot / name).is_file():
        def verify(part):
            digest = hashlib.sha256(part.read_bytes()).hexdigest()
            if digest != sha256:
                raise ValueError(f"SHA-256 {digest}, expected {sha256}")
        base = datasets._url_list(datasets.OMNIGLOT_URL_ENV, [datasets.OMNIGLOT_URL])[0]  # pylint: disable=protected-access
        _download.fetch([base + name], omniglot / name, verify,
                        fix=f"check the network or set {datasets.OMNIGLOT_URL_ENV}")


def _downloaded_complete(folder: pathlib.Path) -> bool:
    names = ["mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz",
             "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz",
             "omniglot/images_background.npz", "omniglot/images_evaluation.npz", f"omniglot/{OMNIGLOT_SMALL1[0]}"]
    return all((folder / name).is_file() for name in names)


def pytest_collection_finish(session):
    """Without ../shared/data or $SPIRAL_DATA_DIR: fetch the datasets once, before the tests run."""
    if "SPIRAL_DATA_DIR" in os.environ or session.config.option.collectonly or not session.items:
        return
    from spiral.envs.datasets import user_cache_dir  # pylint: disable=import-outside-toplevel
    folder = user_cache_dir() / "data"
    if not _downloaded_complete(folder):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        say = reporter.write_line if reporter else print
        say(f"conftest: no ../shared/data: downloading MNIST and Omniglot (about 30 MB, once) into {folder}")
        try:
            download_datasets(folder)
        except Exception as error:  # pylint: disable=broad-except
            what = " ".join(str(error).split())  # one line: the URLs tried and the fix
            DOWNLOAD_PROBLEM.append(f"the download into {folder} failed: {what[:500]}")
            say(f"conftest: {DOWNLOAD_PROBLEM[0]}")
            return
    os.environ["SPIRAL_DATA_DIR"] = str(folder)


# ------------------------------------------------------------------------------------- skip summary

# (group, words that identify its skip reasons, what runs the group), most specific first.
SKIP_GROUPS = (
    ("CelebA", ("celeba",), "a CelebA copy in $SPIRAL_DATA_DIR/celeba (never downloaded; BUILD.md)"),
    ("libmypaint", ("libmypaint", "dry_brush"), "apt-get install libmypaint-1.5-1 mypaint-brushes"),
    ("cluster", ("sshd", "rsync", "ssh"), "apt-get install openssh-server openssh-client rsync"),
    ("browser", ("chromium",), "apt-get install chromium (Debian; Ubuntu: snap install chromium)"),
    ("without-GPU", ("has a gpu",), "a machine without a GPU"),
    ("GPU", ("gpu", "cuda"), "a GPU and pip install -e '.[cuda]'"),
    ("datasets", ("dataset", "spiral_data_dir", "mnist", "omniglot"),
     "network access for the one-time download (or SPIRAL_MNIST_URL / SPIRAL_OMNIGLOT_URL), "
     "or SPIRAL_DATA_DIR, or ../shared/data"),
)


def skip_group(reason: str) -> tuple[str, str]:
    """(group, what enables it) of a skip reason; an unknown reason is its own group."""
    text = reason.lower()
    for group, words, enable in SKIP_GROUPS:
        if any(word in text for word in words):
            return group, enable
    return reason, "see the reason"


def skip_summary(reasons: list[str]) -> str:
    """One line: every skipped group with its count and what would run it."""
    if not reasons:
        return "skipped groups: none"
    counts: dict[tuple[str, str], int] = {}
    for reason in reasons:
        key = skip_group(reason)
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{group} {count} (needs {enable})" for (group, enable), count in
             sorted(counts.items(), key=lambda item: -item[1])]
    return f"skipped groups: {sum(counts.values())} tests: " + "; ".join(parts)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def pytest_configure(config):
    config.addinivalue_line("markers", "celeba: needs CelebA (never downloaded): skipped unless "
                                       "$SPIRAL_DATA_DIR/celeba holds a copy")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """After pytest's own summary (and just before its final counts): the skipped groups."""
    result = yield
    if terminalreporter.stats.get("passed") or terminalreporter.stats.get("skipped") or \
            terminalreporter.stats.get("failed"):
        reasons = [_skip_reason(r) for r in terminalreporter.stats.get("skipped", [])
                   if getattr(r, "when", "call") in ("setup", "call")]
        terminalreporter.write_line(skip_summary(reasons), bold=True, yellow=bool(reasons))
    sys.stdout.flush()
    return result
