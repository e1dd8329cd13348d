"""Small server-rendered SVG charts for the status page: bars (stacked) and lines over time.

Plain SVG with presentation attributes (no scripts, no inline styles, so the page's strict
Content-Security-Policy holds), readable without JavaScript and printable. Each chart carries a
<title> and a <desc> with its numbers for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: Colour-blind-safe palette (Okabe-Ito), in a fixed order so a reason keeps its colour.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)

WIDTH = 1200
HEIGHT = 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 34, 34


def axis(value: float, max_ticks: int = 5) -> tuple[float, float]:
    """(top, step) of a count axis: a step of 1, 2 or 5 x 10^k (at least 1: counts are whole)
    and the fewest steps, at most `max_ticks`, that reach `value`."""
    if value <= 0:
        return 1.0, 1.0
    rough = value / (max_ticks - 1)
    exp = math.floor(math.log10(rough)) if rough >= 1 else 0
    step = 10.0**exp
    for factor in (1, 2, 5, 10):
        step = max(1.0, factor * 10.0**exp)
        if math.ceil(value / step) <= max_ticks - 1:
            break
    return step * math.ceil(value / step), step


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    top: float,
    step: float,
    colours: Mapping[str, str],
) -> list[str]:
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    desc = "; ".join(
        f"{name}: " + ", ".join(f"{lab} {_fmt(v)}" for lab, v in zip(labels, values, strict=True))
        for name, values in series.items()
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        f' role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(desc)}</desc>",
    ]
    ticks = round(top / step)
    for i in range(ticks + 1):
        value = step * i
        y = _TOP + plot_h - plot_h * value / top
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"'
            f' stroke="{"#9aa3ad" if i == 0 else "#e3e7eb"}" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11"'
            f' fill="#5b6672">{_fmt(value)}</text>'
        )
    n = len(labels)
    every = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = _LEFT + plot_w * (i + 0.5) / n
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" font-size="11"'
            f' fill="#5b6672">{escape(label)}</text>'
        )
    # legend, top right
    x = WIDTH - _RIGHT
    for name in reversed(list(series)):
        width = 16 + 7 * len(name)
        x -= width
        parts.append(
            f'<rect x="{x}" y="8" width="10" height="10" rx="2" fill="{colours[name]}"/>'
            f'<text x="{x + 14}" y="17" font-size="11" fill="#26313c">{escape(name)}</text>'
        )
    parts.append(
        f'<text x="{_LEFT}" y="17" font-size="12" font-weight="600" fill="#26313c">'
        f"{escape(title)}</text>"
    )
    return parts


def colours_for(names: Sequence[str], fixed: Sequence[str] = ()) -> dict[str, str]:
    """A colour per name; names in `fixed` (the full vocabulary) keep their place across charts."""
    order = list(fixed) + [n for n in names if n not in fixed]
    return {name: PALETTE[order.index(name) % len(PALETTE)] for name in names}


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    colours: Mapping[str, str] | None = None,
) -> str:
    """Stacked bars, one per label."""
    colours = colours or colours_for(list(series))
    n = len(labels)
    totals = [sum(values[i] for values in series.values()) for i in range(n)]
    top, step = axis(max(totals, default=0))
    parts = _frame(title, labels, series, top, step, colours)
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(2.0, slot * 0.7)
    for i in range(n):
        base = 0.0
        x = _LEFT + slot * i + (slot - bar_w) / 2
        for name, values in series.items():
            v = float(values[i])
            if v <= 0:
                continue
            h = plot_h * v / top
            y = _TOP + plot_h - plot_h * base / top - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}"'
                f' fill="{colours[name]}"><title>{escape(labels[i])} {escape(name)}:'
                f" {_fmt(v)}</title></rect>"
            )
            base += v
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    colours: Mapping[str, str] | None = None,
) -> str:
    """One line per series, a dot on each point."""
    colours = colours or colours_for(list(series))
    n = len(labels)
    top, step = axis(max((max(v, default=0) for v in series.values()), default=0))
    parts = _frame(title, labels, series, top, step, colours)
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    for name, values in series.items():
        points = [
            (_LEFT + plot_w * (i + 0.5) / n, _TOP + plot_h - plot_h * float(v) / top)
            for i, v in enumerate(values)
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline class="line" points="{path}" fill="none" stroke="{colours[name]}"'
            f' stroke-width="2" stroke-linejoin="round"/>'
        )
        for (x, y), v, label in zip(points, values, labels, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colours[name]}">'
                f"<title>{escape(label)} {escape(name)}: {_fmt(float(v))}</title></circle>"
            )
    parts.append("</svg>")
    return "\n".join(parts)
