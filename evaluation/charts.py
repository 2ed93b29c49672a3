"""Line charts as inline SVG: a run report's curves with no plotting library and no network.

``line_chart(series, references, ...)`` draws one or more ``Series`` (x, y points; non-finite y
values break the line) and optional horizontal reference lines (a metric's blank / random / real
values), with axes, "nice" tick values (1, 2, 2.5 or 5 × 10^k) and a legend. The data-to-pixel map is
linear on both axes: ``x ↦ left + (x − x0) / (x1 − x0) · plot width``, y likewise, upwards.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Mapping, Sequence

# Colour-blind-safe (Okabe–Ito); references are drawn dashed in gray shades.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
REFERENCE_COLOURS = ("#555555", "#999999", "#2a7f2a", "#bbbbbb")
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 12, 26, 40


@dataclasses.dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]

    def __post_init__(self):
        if len(self.xs) != len(self.ys):
            raise ValueError(f"series {self.label!r}: {len(self.xs)} x values but {len(self.ys)} y values.")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (step 1, 2, 2.5 or 5 × 10^k), the first <= low, the last >= high."""
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise ValueError(f"nice_ticks needs finite low <= high, got {low}, {high}.")
    if high == low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def format_tick(value: float) -> str:
    """Short, exact enough to read: 0.25, 1.2e+04, 3000."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.6g}"


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _segments(xs, ys) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite points (a NaN or infinity ends a run)."""
    runs, current = [], []
    for x, y in zip(xs, ys):
        if y is None or not math.isfinite(float(y)) or not math.isfinite(float(x)):
            if current:
                runs.append(current)
            current = []
        else:
            current.append((float(x), float(y)))
    if current:
        runs.append(current)
    return runs


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:  # a flat line: give it some room
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def line_chart(series: Sequence[Series], references: Mapping[str, float] | None = None, *,
               title: str = "", x_label: str = "", width: int = 420, height: int = 240) -> str:
    """One ``<svg>`` element: the series as lines (dots where a point stands alone), the
    references as dashed horizontal lines, axes with tick labels, a legend above the plot."""
    references = {k: float(v) for k, v in (references or {}).items()
                  if v is not None and math.isfinite(float(v))}
    xs = _finite(x for s in series for x in s.xs)
    ys = _finite(y for s in series for y in s.ys) + list(references.values())
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<title>{html.escape(title)}</title>',
             f'<rect width="{width}" height="{height}" fill="#fff"/>']
    if not xs or not ys:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">'
                     f'{html.escape(title)}: no finite values logged</text></svg>')
        return "\n".join(parts)
    x0, x1 = _range(xs)
    y_ticks = nice_ticks(*_range(ys))
    y0, y1 = y_ticks[0], y_ticks[-1]  # the y axis spans whole ticks
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    # Axes and ticks.
    parts.append(f'<g class="axes" stroke="#444" stroke-width="1" fill="none">'
                 f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/></g>')
    for tick in y_ticks:
        parts.append(f'<g class="ytick" data-value="{tick!r}"><line x1="{left - 4}" y1="{py(tick):.2f}" '
                     f'x2="{right}" y2="{py(tick):.2f}" stroke="#e4e4e4"/>'
                     f'<text x="{left - 6}" y="{py(tick) + 4:.2f}" text-anchor="end">{format_tick(tick)}</text></g>')
    x_ticks = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1]
    if all(float(x).is_integer() for x in xs):  # counts (updates, steps): no ticks between them
        x_ticks = [t for t in x_ticks if t.is_integer()] or [x0, x1]
    for tick in x_ticks:
        parts.append(f'<g class="xtick" data-value="{tick!r}"><line x1="{px(tick):.2f}" y1="{bottom}" '
                     f'x2="{px(tick):.2f}" y2="{bottom + 4}" stroke="#444"/>'
                     f'<text x="{px(tick):.2f}" y="{bottom + 16}" text-anchor="middle">{format_tick(tick)}</text></g>')
    if x_label:
        parts.append(f'<text x="{(left + right) / 2}" y="{height - 6}" text-anchor="middle" '
                     f'class="axis-label">{html.escape(x_label)}</text>')

    # References, then the series on top.
    legend = []
    for i, (label, value) in enumerate(references.items()):
        colour = REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)]
        parts.append(f'<line class="reference" data-label="{html.escape(label)}" data-value="{value!r}" '
                     f'x1="{left}" y1="{py(value):.2f}" x2="{right}" y2="{py(value):.2f}" '
                     f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 4"/>')
        legend.append((label, colour, True))
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for run in _segments(s.xs, s.ys):
            points = " ".join(f"{px(x):.2f},{py(y):.2f}" for x, y in run)
            if len(run) == 1:
                parts.append(f'<circle class="series" data-label="{html.escape(s.label)}" cx="{px(run[0][0]):.2f}" '
                             f'cy="{py(run[0][1]):.2f}" r="3" fill="{colour}"/>')
            else:
                parts.append(f'<polyline class="series" data-label="{html.escape(s.label)}" points="{points}" '
                             f'fill="none" stroke="{colour}" stroke-width="1.8"/>')
        legend.append((s.label, colour, False))

    # Legend above the plot area, left to right.
    x = left
    for label, colour, dashed in legend:
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        parts.append(f'<line x1="{x}" y1="12" x2="{x + 16}" y2="12" stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{x + 20}" y="16">{html.escape(label)}</text>')
        x += 30 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts)
