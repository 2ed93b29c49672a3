"""Shared by the benchmark scripts: the machine's name, and replacing one section of RESULTS.md.

Scripts run as ``python benchmarks/<name>.py``, so this module imports as ``results_md``.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's machine name where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            found = re.search(r"model name\s*:\s*(.+)", handle.read())
            if found:
                return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str) -> None:
    """Replace RESULTS.md's ``## <name> (benchmarks/<name>.py)`` section (heading kept) by body."""
    text = RESULTS.read_text()
    heading = f"## {name} (benchmarks/{name}.py)"
    if heading not in text:
        raise SystemExit(f"{RESULTS} has no '{heading}' section; add the heading, then rerun.")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    rest = "" if end < 0 else "\n" + text[end + 1:]  # the next section, after one blank line
    RESULTS.write_text(text[:start] + heading + "\n\n" + body.strip() + "\n" + rest)
