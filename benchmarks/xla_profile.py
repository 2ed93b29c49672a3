"""Where a jitted function's time goes: XLA's own per-op timings, grouped by layer and direction.

``op_table(compiled, run, calls)`` runs ``run()`` (which calls the compiled function and waits)
``calls`` times under ``jax.profiler``, reads the per-op durations from the trace and labels each
op of the compiled HLO by its source (the layer in ``op_name``: "Torso/input_conv") and its
direction: "forward", "backward" (the transpose of a forward op, i.e. its gradient) or, for a
gradient penalty, "double backward" (the transpose of a gradient). Scripts run as
``python benchmarks/<name>.py`` import this as ``xla_profile``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^ ]+ (\w[\w-]*)\(.*?op_name=\"([^\"]*)\"")


def _labels(hlo_text: str) -> dict:
    """HLO instruction name -> (opcode, op_name path) from the compiled module's text."""
    labels = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            labels[match.group(1)] = (match.group(2), match.group(3))
    return labels


def direction(op_name: str) -> str:
    depth = op_name.count("transpose(")
    return {0: "forward", 1: "backward"}.get(depth, "double backward")


def layer(op_name: str, depth: int = 3) -> str:
    """The module path of an op, without jit/jvp/transpose wrappers: "Torso/input_conv"."""
    parts = [p for p in op_name.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose("))
             and not p.endswith(")")]
    parts = [re.sub(r"\(.*", "", p) for p in parts]
    return "/".join(parts[:depth]) or "(other)"


def op_times(run, calls: int) -> tuple[dict, float]:
    """(mean seconds per call of each op (trace event name), wall seconds per call) over
    ``calls`` calls of ``run``."""
    import jax
    folder = tempfile.mkdtemp(prefix="xla_profile_")
    run()  # outside the trace: nothing left to compile
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    wall = (time.perf_counter() - start) / calls
    jax.profiler.stop_trace()
    files = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no perfetto trace under {folder}.")
    with gzip.open(files[-1]) as handle:
        events = json.load(handle)["traceEvents"]
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] += event.get("dur", 0) * 1e-6 / calls
    return totals, wall


def op_table(compiled, run, calls: int = 3, group=lambda opcode, op_name: (
        direction(op_name), layer(op_name), opcode)) -> tuple[list[tuple], float]:
    """([(key, seconds per call, share of the ops' total)] sorted by time, grouped by ``group``;
    the fraction of the calls' wall time the ops' events cover).

    Only the compiled module's own ops count (not Python dispatch or the executor's waits). The
    coverage is below 1 where XLA runs ops on its thread pool (all cores): the trace then times
    a multi-threaded convolution by less than its span, so read the shares as indicative there.
    """
    labels = _labels(compiled.as_text())
    totals, wall = op_times(run, calls)
    grouped = collections.Counter()
    for name, seconds in totals.items():
        if name in labels:
            grouped[group(*labels[name])] += seconds
    total = sum(grouped.values()) or 1.0
    return [(key, seconds, seconds / total) for key, seconds in grouped.most_common()], total / wall


def summarise(rows, top: int = 12) -> list[str]:
    """Markdown lines for the ``top`` groups of ``op_table`` (the rest summed)."""
    lines = ["| direction | layer | op | ms/call | share |", "|---|---|---|---:|---:|"]
    for key, seconds, share in rows[:top]:
        lines.append(f"| {' | '.join(map(str, key))} | {seconds * 1e3:.2f} | {share:.0%} |")
    rest = rows[top:]
    if rest:
        lines.append(f"| (the other {len(rest)}) | | | {sum(r[1] for r in rest) * 1e3:.2f} | "
                     f"{sum(r[2] for r in rest):.0%} |")
    return lines
