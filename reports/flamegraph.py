"""Flame graphs as static SVG, from folded stacks (``{"root;caller;...;site": count}``).

The SVG is complete on its own: frames are sized by count, coloured by a stable hash of the
name (the same function has the same colour in every graph of a report), and carry a
``<title>`` tooltip with count and share, so it reads fine with scripting off or printed.
``report.js`` adds click-to-zoom and search on top, using the ``data-*`` attributes each frame
carries (its position as a fraction of the total, its depth and its full name).

Orientation is the classic one: the root at the bottom, the leaf (for who-calls: the
allocation site) on top.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from allocscope.reports.format import count_exact, pct
from allocscope.reports.svg import esc

FRAME_H = 18
FONT_PX = 11
CHAR_W = 6.7  # monospace advance at FONT_PX, used to clip labels (report.js uses the same)
PAD = 4


@dataclass(slots=True)
class Node:
    name: str
    value: int = 0
    children: dict[str, Node] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Frame:
    """One rectangle: ``x``/``w`` are fractions of the root's count; depth 0 is the root."""

    name: str
    depth: int
    x: float
    w: float
    value: int


def parse_folded(lines: Iterable[str], source: str = "<folded>") -> dict[str, int]:
    """``a;b;c 12`` lines (Brendan Gregg's folded format) -> ``{"a;b;c": 12}``."""
    from allocscope.errors import InputError

    out: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            raise InputError(
                source, lineno, f"folded line lacks a trailing count: {line[:80]!r}"
            ) from None
        if not stack:
            raise InputError(source, lineno, "folded line has no stack")
        out[stack] = out.get(stack, 0) + n
    return out


def build_tree(folded: Mapping[str, int | float], root: str = "all") -> Node:
    """Merge stacks into a tree; non-positive counts are ignored (they can't be drawn)."""
    top = Node(root)
    for stack, count in folded.items():
        n = int(count)
        if n <= 0:
            continue
        top.value += n
        node = top
        for name in (p for p in stack.split(";") if p != ""):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Node(name)
            child.value += n
            node = child
    return top


def layout(tree: Node, min_frac: float = 0.0) -> list[Frame]:
    """Frames in drawing order; siblings biggest first, frames narrower than min_frac dropped."""
    total = tree.value
    frames: list[Frame] = []
    if total <= 0:
        return frames
    stack: list[tuple[Node, int, float]] = [(tree, 0, 0.0)]
    while stack:
        node, depth, x = stack.pop()
        w = node.value / total
        if w < min_frac:
            continue
        frames.append(Frame(node.name, depth, x, w, node.value))
        cx = x
        kids = sorted(node.children.values(), key=lambda c: (-c.value, c.name))
        placed = []
        for c in kids:
            placed.append((c, depth + 1, cx))
            cx += c.value / total
        stack.extend(reversed(placed))
    return frames


def frame_color(name: str) -> str:
    """Warm colour from a stable hash (crc32, not Python's randomized hash())."""
    h = zlib.crc32(name.encode("utf-8", "replace"))
    hue = h % 50
    sat = 65 + (h >> 8) % 25
    light = 52 + (h >> 16) % 14
    return f"hsl({hue},{sat}%,{light}%)"


def clip_label(name: str, px: float) -> str:
    n = int((px - 6) / CHAR_W)
    if n < 3:
        return ""
    return name if len(name) <= n else name[: n - 2] + ".."


def render_flamegraph(
    folded: Mapping[str, int | float],
    *,
    title: str,
    unit: str = "samples",
    width: int = 1200,
    graph_id: str = "fg",
    root: str = "all",
    min_px: float = 0.4,
) -> str:
    """An HTML block: (hidden until JS) zoom/search controls plus the static SVG."""
    tree = build_tree(folded, root)
    inner_w = width - 2 * PAD
    frames = layout(tree, min_frac=min_px / inner_w)
    if not frames:
        return f'<p class="empty">{esc(title)}: no stacks to draw.</p>'
    max_depth = max(f.depth for f in frames)
    head = 24
    height = head + (max_depth + 1) * FRAME_H + PAD
    total = tree.value
    parts = [
        f'<div class="flame-wrap" id="{esc(graph_id)}">',
        '<div class="flame-ctl" hidden><button type="button" class="fg-reset">Reset zoom'
        '</button> <input type="search" class="fg-search" placeholder="search frames (regex)" '
        'aria-label="search frames"> <span class="fg-match"></span></div>',
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flame" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" data-total="{total}" data-unit="{esc(unit)}" '
        f'data-pad="{PAD}" data-fh="{FRAME_H}" data-maxdepth="{max_depth}" '
        f'font-size="{FONT_PX}" role="img" aria-label="{esc(title)}">',
        f'<text class="fg-title" x="{width / 2:.0f}" y="16" text-anchor="middle">{esc(title)}'
        "</text>",
    ]
    for f in frames:
        x = PAD + f.x * inner_w
        w = f.w * inner_w
        y = head + (max_depth - f.depth) * FRAME_H
        parts.append(
            f'<g class="f" data-x="{f.x:.6f}" data-w="{f.w:.6f}" data-d="{f.depth}" '
            f'data-n="{esc(f.name)}"><title>{esc(f.name)} \u2014 '
            f"{count_exact(f.value)} {esc(unit)} "
            f"({pct(f.value / total, 2)})</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{FRAME_H - 1}" '
            f'rx="2" fill="{frame_color(f.name)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + FRAME_H - 5}">{esc(clip_label(f.name, w))}</text></g>'
        )
    parts.append("</svg></div>")
    return "".join(parts)


# --- differential flame graph ---------------------------------------------------------------

GROW_HUE, SHRINK_HUE = 0, 215  # red grew, blue shrank (Gregg's differential flame graphs)
NEUTRAL = "hsl(0,0%,90%)"
EPSILON = 0.0005  # |B - A| under 0.05 percentage points is drawn as no change


def diff_color(delta: float, scale: float) -> str:
    """Red for a frame whose share grew, blue for one that shrank, deeper with the change
    relative to the largest change in the graph; near-white for no change."""
    if abs(delta) < EPSILON or scale <= 0:
        return NEUTRAL
    t = min(1.0, abs(delta) / scale)
    light = 88 - 40 * t
    return f"hsl({GROW_HUE if delta > 0 else SHRINK_HUE},78%,{light:.0f}%)"


@dataclass(frozen=True, slots=True)
class DiffFrame:
    """A frame of the differential graph: laid out on the mean of the two shares."""

    path: tuple[str, ...]
    depth: int
    x: float
    w: float
    share_a: float
    share_b: float


def layout_diff(frames: Iterable[tuple[tuple[str, ...], float, float]]) -> list[DiffFrame]:
    """(path, share A, share B) -> frames whose width is the mean share (so a frame only one
    side has is still drawn), siblings biggest first; depth 0 is the root."""
    kids: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    shares: dict[tuple[str, ...], tuple[float, float]] = {}
    for path, a, b in frames:
        shares[path] = (a, b)
        kids.setdefault(path[:-1], []).append(path)
    roots = kids.get((), [])
    ra = sum(shares[p][0] for p in roots)
    rb = sum(shares[p][1] for p in roots)
    total = (ra + rb) / 2
    if total <= 0:
        return []
    out = [DiffFrame((), 0, 0.0, 1.0, ra, rb)]
    stack: list[tuple[tuple[str, ...], float]] = [((), 0.0)]
    while stack:
        parent, x = stack.pop()
        cx = x
        placed = []
        for p in sorted(kids.get(parent, []), key=lambda p: (-sum(shares[p]), p[-1])):
            a, b = shares[p]
            w = (a + b) / 2 / total
            out.append(DiffFrame(p, len(p), cx, w, a, b))
            placed.append((p, cx))
            cx += w
        stack.extend(reversed(placed))
    return out


def diff_legend(scale: float, labels: tuple[str, str]) -> str:
    """The colour key: five swatches from 'shrank' to 'grew', in percentage points."""
    a, b = labels
    # identical shapes (scale 0 after rounding): one swatch, not "grew 0 pp or more"
    steps = [-1.0, -0.5, 0.0, 0.5, 1.0] if scale >= 0.00005 else [0.0]
    items = []
    for s in steps:
        delta = s * scale
        if s == 0:
            text = "no change"
        else:
            word = "grew" if s > 0 else "shrank"
            text = f"{word} {abs(delta) * 100:.2g} pp" + (" or more" if abs(s) == 1 else "")
        items.append(
            f'<span class="fg-key"><i style="background:{diff_color(delta, scale)}"></i>'
            f"{esc(text)}</span>"
        )
    return (
        f'<div class="fg-legend" role="note">{"".join(items)}<span class="fg-key-note">'
        f"colour: share in {esc(b)} minus share in {esc(a)} (percentage points of each "
        f"capture's stacks); width: the mean of the two shares</span></div>"
    )


def render_diff_flamegraph(
    frames: Iterable[tuple[tuple[str, ...], float, float]],
    *,
    title: str,
    labels: tuple[str, str] = ("A", "B"),
    width: int = 1200,
    graph_id: str = "fgd",
    root: str = "all",
    min_px: float = 0.4,
) -> str:
    """A differential flame graph (legend, zoom/search controls, static SVG) from
    (path, share in A, share in B) per frame."""
    laid = layout_diff(frames)
    inner_w = width - 2 * PAD
    shown = [f for f in laid if f.w * inner_w >= min_px]
    if not shown:
        return f'<p class="empty">{esc(title)}: no stacks to draw.</p>'
    scale = max((abs(f.share_b - f.share_a) for f in shown if f.depth), default=0.0)
    max_depth = max(f.depth for f in shown)
    head = 24
    height = head + (max_depth + 1) * FRAME_H + PAD
    a, b = labels
    parts = [
        f'<div class="flame-wrap flame-diff" id="{esc(graph_id)}">',
        diff_legend(scale, labels),
        '<div class="flame-ctl" hidden><button type="button" class="fg-reset">Reset zoom'
        '</button> <input type="search" class="fg-search" placeholder="search frames (regex)" '
        'aria-label="search frames"> <span class="fg-match"></span></div>',
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flame" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" data-total="100" data-unit="% of the mean width" '
        f'data-pad="{PAD}" data-fh="{FRAME_H}" data-maxdepth="{max_depth}" '
        f'font-size="{FONT_PX}" role="img" aria-label="{esc(title)}">',
        f'<text class="fg-title" x="{width / 2:.0f}" y="16" text-anchor="middle">{esc(title)}'
        "</text>",
    ]
    for f in shown:
        name = f.path[-1] if f.path else root
        x = PAD + f.x * inner_w
        w = f.w * inner_w
        y = head + (max_depth - f.depth) * FRAME_H
        delta = f.share_b - f.share_a
        sign = "+" if delta >= 0 else "\u2212"
        parts.append(
            f'<g class="f" data-x="{f.x:.6f}" data-w="{f.w:.6f}" data-d="{f.depth}" '
            f'data-n="{esc(name)}" data-delta="{delta:.6f}"><title>{esc(name)} \u2014 '
            f"{esc(a)} {pct(f.share_a, 2)}, {esc(b)} {pct(f.share_b, 2)} "
            f"({sign}{abs(delta) * 100:.2f} pp)</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{max(w - 0.5, 0.1):.2f}" height="{FRAME_H - 1}" '
            f'rx="2" fill="{diff_color(delta, scale)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + FRAME_H - 5}">{esc(clip_label(name, w))}</text></g>'
        )
    parts.append("</svg></div>")
    return "".join(parts)
