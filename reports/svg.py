"""Small SVG chart primitives for the offline HTML report: stacked bars, lines, horizontal bars.

Why our own SVG instead of a plotting library: the report must be one file that opens offline,
from a mail attachment or an air-gapped box, years later. Plotly inlined is ~3.5 MB of JS per
report and still needs a JS engine to draw anything; these charts are a few KB of static SVG
that render (tooltips included, via ``<title>``) with scripting disabled, print well, and
can't break on a CDN or library upgrade. The charts a kernel engineer needs here are few and
simple, so the cost of owning them is small.

Every function returns an ``<svg>`` string sized by ``viewBox`` (CSS scales it to the page
width). All text goes through :func:`esc`: file and function names end up in the page.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from allocscope.reports.format import bytes_compact, pct, utc_datetime, utc_tick

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito first,
# then Tableau-like extras); "other" is always grey.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#8C564B",
    "#6A3D9A",
    "#17BECF",
    "#BCBD22",
    "#393B79",
    "#E377C2",
    "#A6D854",
)
OTHER_COLOR = "#B0B0B0"
FONT = 12


# A raw x86-64 kernel address (KASLR leaks if printed): 0xffff... or bare ffff... 16 digits.
_KADDR = re.compile(r"\b(?:0x)?ffff[0-9a-f]{12}\b", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace raw kernel addresses: a report is made to be shared."""
    return _KADDR.sub("[kernel address]", text)


# Characters XML 1.0 forbids (C0 controls but tab, newline and CR; lone surrogates; U+FFFE and
# U+FFFF), and DEL and the C1 controls, which HTML calls parse errors. A function or file name
# read from a result file can hold any of them; shown as ``\x01`` or ``\ud800`` they keep the
# inline SVG well-formed, and a lone surrogate can no longer fail the UTF-8 write of the page.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _visible(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def esc(text: object) -> str:
    """Escape for both element text and attribute values; raw kernel addresses are redacted
    and characters invalid in XML are shown as escapes (``\\x01``)."""
    return html.escape(_NOT_XML.sub(_visible, redact(str(text))), quote=True)


def color_map(names: Sequence[str]) -> dict[str, str]:
    """Stable colours for series names, in the given order; ``other*`` is grey."""
    out: dict[str, str] = {}
    i = 0
    for name in names:
        if name.startswith("other"):
            out[name] = OTHER_COLOR
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def nice_ticks(vmax: float, binary: bool = True, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``vmax``: 1-2-5 steps in the display unit.

    For bytes the unit is a power of 1024, so ticks read ``0, 64M, 128M`` rather than
    ``0, 67.1M``.
    """
    if vmax <= 0 or not math.isfinite(vmax):
        return [0.0, 1.0]
    base = 1.0
    if binary:
        while vmax / base >= 1024:
            base *= 1024
    raw = vmax / base / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw) * base
    n = math.ceil(vmax / step - 1e-9)
    return [i * step for i in range(n + 1)]


@dataclass(slots=True)
class Series:
    """One named series; ``values[i]`` belongs to the i-th category (bar, time point, row)."""

    name: str
    values: list[float]


def _legend(
    series: Sequence[Series], colors: dict[str, str], x: float, y: float, width: float
) -> tuple[str, float]:
    """A wrapping legend; returns (svg, height used)."""
    parts = []
    cx, cy = x, y
    for s in series:
        w = 18 + 7.5 * len(s.name) + 18
        if cx + w > x + width and cx > x:
            cx = x
            cy += 18
        parts.append(
            f'<g class="legend-item"><rect x="{cx:.1f}" y="{cy:.1f}" width="12" height="12" '
            f'fill="{colors[s.name]}"/><text x="{cx + 16:.1f}" y="{cy + 10:.1f}">'
            f"{esc(s.name)}</text></g>"
        )
        cx += w
    return "".join(parts), cy - y + 18


def _y_axis(
    ticks: list[float],
    x0: float,
    x1: float,
    y_of: Callable[[float], float],
    fmt: Callable[[float], str],
) -> str:
    parts = []
    for t in ticks:
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">'
            f"{esc(fmt(t))}</text>"
        )
    return "".join(parts)


def _open(width: float, height: float, cls: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {cls}" viewBox="0 0 {width:.0f} '
        f'{height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="{esc(label)}" font-size="{FONT}">'
    )


def stacked_bars(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[float], str] = bytes_compact,
    width: int = 1000,
    height: int = 360,
    colors: dict[str, str] | None = None,
    binary: bool = True,
) -> str:
    """Vertical bars, one per category, each stacked from ``series`` (bottom = first)."""
    colors = colors or color_map([s.name for s in series])
    n = len(categories)
    totals = [sum(max(0.0, s.values[i]) for s in series) for i in range(n)]
    ticks = nice_ticks(max(totals, default=0.0), binary)
    top_v = ticks[-1] or 1.0
    rotate = n > 8 or max((len(c) for c in categories), default=0) * 7 > (width - 90) / max(n, 1)
    label_h = min(120, 7 * max((len(c) for c in categories), default=4)) if rotate else 20
    legend, legend_h = _legend(series, colors, 70, 0, width - 80)
    left, right, top = 70.0, width - 10.0, 10.0
    if rotate:  # the first label runs down-left from its bar: leave it room
        longest = min(28, max((len(c) for c in categories), default=0))
        left = max(left, longest * 4.8 - (right - left) / max(n, 1) / 2 + 8)
    bottom = height - label_h - 10
    total_h = height + legend_h + 10
    plot_h = bottom - top

    def y_of(v: float) -> float:
        return bottom - v / top_v * plot_h

    slot = (right - left) / max(n, 1)
    bar_w = max(2.0, min(60.0, slot * 0.7))
    parts = [_open(width, total_h, "stacked-bars", title)]
    parts.append(_y_axis(ticks, left, right, y_of, fmt))
    for i, cat in enumerate(categories):
        x = left + slot * i + (slot - bar_w) / 2
        acc = 0.0
        parts.append(f'<g class="bar" data-cat="{esc(cat)}">')
        for s in series:
            v = max(0.0, s.values[i])
            if v <= 0:
                continue
            y1, y0 = y_of(acc + v), y_of(acc)
            share = v / totals[i] if totals[i] else 0.0
            parts.append(
                f'<rect x="{x:.1f}" y="{y1:.1f}" width="{bar_w:.1f}" '
                f'height="{max(0.5, y0 - y1):.1f}" '
                f'fill="{colors[s.name]}"><title>{esc(cat)} \u00b7 {esc(s.name)}: {esc(fmt(v))} '
                f"({pct(share)})</title></rect>"
            )
            acc += v
        parts.append(f"<title>{esc(cat)}: {esc(fmt(totals[i]))} total</title></g>")
        lx = x + bar_w / 2
        shown = cat if len(cat) <= 28 else cat[:27] + "\u2026"
        if rotate:
            parts.append(
                f'<text class="cat" x="{lx:.1f}" y="{bottom + 12:.1f}" text-anchor="end" '
                f'transform="rotate(-45 {lx:.1f} {bottom + 12:.1f})">{esc(shown)}</text>'
            )
        else:
            parts.append(
                f'<text class="cat" x="{lx:.1f}" y="{bottom + 16:.1f}" text-anchor="middle">'
                f"{esc(cat)}</text>"
            )
    parts.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    parts.append(f'<g transform="translate(0 {height + 4})">{legend}</g>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    times: Sequence[float],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[float], str] = bytes_compact,
    width: int = 1000,
    height: int = 320,
    colors: dict[str, str] | None = None,
    binary: bool = True,
) -> str:
    """One line per series over unix ``times`` (x axis in UTC)."""
    colors = colors or color_map([s.name for s in series])
    vmax = max((v for s in series for v in s.values), default=0.0)
    vmin = min((v for s in series for v in s.values), default=0.0)
    ticks = nice_ticks(max(vmax, 0.0), binary)
    if vmin < 0:
        neg = nice_ticks(-vmin, binary)
        ticks = [-t for t in reversed(neg[1:])] + ticks
    lo_v, hi_v = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1
    legend, legend_h = _legend(series, colors, 70, 0, width - 80)
    left, right, top, bottom = 70.0, width - 20.0, 10.0, height - 30.0
    t0 = min(times, default=0.0)
    t1 = max(times, default=1.0)
    span = t1 - t0 or 1.0

    def x_of(t: float) -> float:
        return left + (t - t0) / span * (right - left) if t1 > t0 else (left + right) / 2

    def y_of(v: float) -> float:
        return bottom - (v - lo_v) / (hi_v - lo_v) * (bottom - top)

    parts = [_open(width, height + legend_h + 10, "line-chart", title)]
    parts.append(_y_axis(ticks, left, right, y_of, fmt))
    nx = min(8, len(times))
    for k in range(nx):
        t = t0 + span * k / max(nx - 1, 1)
        x = x_of(t)
        parts.append(
            f'<line class="xtick" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom:.1f}" '
            f'y2="{bottom + 4:.1f}"/>'
            f'<text class="tick" x="{x:.1f}" y="{bottom + 18:.1f}" text-anchor="middle">'
            f"{esc(utc_tick(t, span))}</text>"
        )
    for s in series:
        pts = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in zip(times, s.values, strict=True))
        c = colors[s.name]
        parts.append(
            f'<g class="line"><polyline fill="none" stroke="{c}" stroke-width="2" '
            f'points="{pts}"><title>{esc(s.name)}</title></polyline>'
        )
        if len(times) <= 200:
            for t, v in zip(times, s.values, strict=True):
                parts.append(
                    f'<circle cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="3" fill="{c}">'
                    f"<title>{esc(s.name)} @ {utc_datetime(t)}: {esc(fmt(v))}</title></circle>"
                )
        parts.append("</g>")
    parts.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    parts.append(f'<g transform="translate(0 {height + 4})">{legend}</g>')
    parts.append("</svg>")
    return "".join(parts)


def hbars(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[float], str] = bytes_compact,
    width: int = 1000,
    colors: dict[str, str] | None = None,
    label_width: int | None = None,
    binary: bool = True,
) -> str:
    """Horizontal bars, one row per label; several series are drawn side by side (grouped)."""
    colors = colors or color_map([s.name for s in series])
    k = max(1, len(series))
    bar_h = 14.0
    row_h = bar_h * k + 8
    lw = label_width or min(400, 16 + 8 * max((len(x) for x in labels), default=4))
    left, right = float(lw), width - 90.0
    vmax = max((v for s in series for v in s.values), default=0.0)
    ticks = nice_ticks(max(vmax, 0.0), binary)
    top_v = ticks[-1] or 1.0
    legend = ""
    legend_h = 0.0
    if len(series) > 1:
        legend, legend_h = _legend(series, colors, left, 0, right - left)
        legend_h += 6
    top = 6.0 + legend_h
    height = top + row_h * len(labels) + 24

    def x_of(v: float) -> float:
        return left + max(0.0, v) / top_v * (right - left)

    parts = [_open(width, height, "hbars", title)]
    if legend:
        parts.append(f'<g transform="translate(0 4)">{legend}</g>')
    for t in ticks:
        x = x_of(t)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" '
            f'y2="{height - 20:.1f}"/><text class="tick" x="{x:.1f}" y="{height - 6:.1f}" '
            f'text-anchor="middle">{esc(fmt(t))}</text>'
        )
    max_chars = int((lw - 12) / 6.5)
    for i, label in enumerate(labels):
        y = top + row_h * i + 4
        shown = label if len(label) <= max_chars else label[: max_chars - 1] + "\u2026"
        parts.append(
            f'<text class="rowlabel" x="{left - 6:.1f}" y="{y + row_h / 2:.1f}" '
            f'text-anchor="end"><title>{esc(label)}</title>{esc(shown)}</text>'
        )
        for j, s in enumerate(series):
            v = s.values[i]
            yy = y + j * bar_h
            w = x_of(v) - left
            who = f" \u00b7 {esc(s.name)}" if k > 1 else ""
            parts.append(
                f'<rect x="{left:.1f}" y="{yy:.1f}" width="{max(w, 0.5):.1f}" '
                f'height="{bar_h - 2:.1f}" fill="{colors[s.name]}"><title>{esc(label)}'
                f"{who}: {esc(fmt(v))}</title></rect>"
                f'<text class="val" x="{left + w + 4:.1f}" y="{yy + bar_h - 4:.1f}">'
                f"{esc(fmt(v))}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
