"""Fetch one file over HTTP(S) into place safely: temporary file, verification, then an atomic rename.

Used by ``spiral.envs.datasets`` for MNIST and Omniglot. A file reaches its final name only after the
caller's ``verify`` accepted it, so a half-finished or corrupted download never looks like data.
Progress goes to stderr. Nothing here knows about any dataset.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence, TypeVar

Result = TypeVar("Result")

BLOCK_BYTES = 1 << 20
TIMEOUT_S = 60.0
USER_AGENT = "spiral-datasets/0.1 (python urllib)"


class DownloadError(OSError):
    """No URL gave a file that passed verification; the message lists every attempt and the fix."""


def fetch(urls: Sequence[str], dest: pathlib.Path, verify: Callable[[pathlib.Path], Result], *,
          fix: str, timeout: float = TIMEOUT_S) -> Result:
    """Download the first of ``urls`` that works into ``dest`` and return ``verify(file)``.

    Each URL is written to a temporary file beside ``dest``; ``verify`` must raise ``ValueError``
    when the content is wrong (checksum, truncation). A rejected or failed file is deleted and the
    next URL is tried; only an accepted file is renamed to ``dest`` (atomic on one filesystem).
    ``fix`` is appended to the error when every URL fails.
    """
    dest = pathlib.Path(dest)
    # Folders made here are removed again when every URL fails: a mistyped data folder leaves
    # nothing behind.
    created = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create {dest.parent} to download {dest.name} into ({err}). "
                            f"Fix: pass data_dir= (or set SPIRAL_DATA_DIR to) a writable folder.") from err
    failures = []
    for url in urls:
        part = None
        try:
            fd, part_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            part = pathlib.Path(part_name)
            with os.fdopen(fd, "wb") as out:
                _copy_url(url, out, timeout)
            result = verify(part)
            os.replace(part, dest)
            part = None
            print(f"spiral: verified and saved {dest}", file=sys.stderr, flush=True)
            return result
        except ValueError as err:
            failures.append(f"{url}: downloaded but rejected: {err}")
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            failures.append(f"{url}: {err}")
        finally:
            if part is not None:
                part.unlink(missing_ok=True)
        print(f"spiral: {failures[-1]}", file=sys.stderr, flush=True)
    for folder in created:   # deepest first
        try:
            folder.rmdir()
        except OSError:
            break
    tried = "\n  ".join(failures) if failures else "(no URL given)"
    raise DownloadError(f"could not download {dest.name} to {dest.parent}; tried:\n  {tried}\nFix: {fix}")


def _copy_url(url: str, out, timeout: float) -> None:
    """Stream ``url`` into the open file ``out``, printing progress to stderr about every 10%."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        size_text = f"{total / 1e6:.1f} MB" if total else "unknown size"
        print(f"spiral: downloading {url} ({size_text})", file=sys.stderr, flush=True)
        received, next_report = 0, 0.1
        while block := response.read(BLOCK_BYTES):
            out.write(block)
            received += len(block)
            if total and received / total >= next_report and received < total:
                print(f"spiral:   {received / total:4.0%} of {size_text}", file=sys.stderr, flush=True)
                next_report = received / total + 0.1
    if total is not None and received != total:
        raise ValueError(f"the transfer stopped after {received} of {total} bytes")
    print(f"spiral:   {received / 1e6:.1f} MB in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
