"""Shared test setup: where the data is, and skips that must not happen silently in CI."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests and CI read the real datasets from ../shared/data through SPIRAL_DATA_DIR.
if "SPIRAL_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SPIRAL_DATA_DIR"] = str(SHARED_DATA)

IN_CI = bool(os.environ.get("CI"))


def skip_unless(condition: bool, reason: str):
    """Skip a test when a system dependency is missing, but fail instead in CI, which installs it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this, but: {reason}")
    pytest.skip(reason)


@pytest.fixture
def data_dir():
    path = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(path) and pathlib.Path(path).is_dir(),
                "no dataset folder: set SPIRAL_DATA_DIR or put ../shared/data beside the repository")
    return pathlib.Path(path)
