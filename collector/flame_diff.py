"""Two captures of one site compared: stack shares (for a differential flame graph) and caller
share changes with intervals.

The comparison works on two generic shapes, not on one result kind: folded stacks (``"root;
caller;...;site" -> weight``) and caller rows (``caller -> share with its interval``). A result
kind becomes comparable by registering a reader in :data:`SIDE_READERS` that turns its payload
into a :class:`DiffSide` (who-calls here; ``context`` adds its own).

Weights are normalised per capture (each side's stacks sum to 1): two captures never have the
same length, rate or sampling, so only shares compare. A frame's share is inclusive (the
stacks passing through that path prefix), as its width in a flame graph.

Caller share changes are B minus A with Newcombe's hybrid score interval (Newcombe 1998,
"Interval estimation for the difference between independent proportions", method 10): the
difference's interval is built from each side's own Wilson interval,
``d - sqrt((pB - lB)^2 + (uA - pA)^2)`` to ``d + sqrt((uB - pB)^2 + (pA - lA)^2)``. Taking each
side's interval as its result wrote it keeps what who-calls put in (sampling weights through
Kish's effective sample size, the finite-population correction: collector/shares.py); a
Wald interval on the difference would collapse at shares of 0 or 1, exactly where a caller
appears or vanishes. A caller missing on one side was below that capture's ``--min-share``
(lumped into "other") or absent: it counts as share 0 with the Wilson interval of 0 of that
side's samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.result import Result
from allocscope.collector.shares import wilson_interval
from allocscope.errors import AllocscopeError


@dataclass(frozen=True, slots=True)
class ShareRow:
    """One caller's share of its capture, with the interval the capture computed."""

    key: str
    share: float
    ci_low: float
    ci_high: float


@dataclass(slots=True)
class DiffSide:
    """One capture, reduced to what a comparison needs."""

    source: str  # the file
    kind: str  # the result kind
    site: str  # what was captured: both sides must name the same
    folded: dict[str, float]
    rows: dict[str, ShareRow]
    samples: float | None  # stacks behind the shares (for a caller absent on this side)
    confidence: float = 0.95
    label: str = ""  # how tables and legends name this side (default: A / B)


@dataclass(frozen=True, slots=True)
class FrameDelta:
    """One flame-graph frame (a path prefix, root first) and its inclusive share per side."""

    path: tuple[str, ...]
    share_a: float
    share_b: float

    @property
    def delta(self) -> float:
        return self.share_b - self.share_a


@dataclass(frozen=True, slots=True)
class ShareChange:
    """One caller's share in A and B, B minus A, and the interval of that difference."""

    key: str
    share_a: float
    share_b: float
    ci_low: float
    ci_high: float
    in_a: bool
    in_b: bool

    @property
    def delta(self) -> float:
        return self.share_b - self.share_a

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci_low > 0.0 or self.ci_high < 0.0


@dataclass(slots=True)
class StackDiff:
    """A comparison of two captures of one site."""

    a: DiffSide
    b: DiffSide
    frames: list[FrameDelta] = field(default_factory=list)
    changes: list[ShareChange] = field(default_factory=list)
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)


def frame_shares(folded: Mapping[str, float]) -> dict[tuple[str, ...], float]:
    """Inclusive share of every path prefix; non-positive weights are ignored (not drawable)."""
    total = sum(w for w in folded.values() if w > 0)
    out: dict[tuple[str, ...], float] = {}
    if total <= 0:
        return out
    for stack, w in folded.items():
        if w <= 0:
            continue
        path = tuple(p for p in stack.split(";") if p)
        for i in range(1, len(path) + 1):
            out[path[:i]] = out.get(path[:i], 0.0) + w / total
    return out


def diff_frames(a: Mapping[str, float], b: Mapping[str, float]) -> list[FrameDelta]:
    """Every frame of either side, with its share in each (0 where it does not occur)."""
    sa, sb = frame_shares(a), frame_shares(b)
    return [FrameDelta(p, sa.get(p, 0.0), sb.get(p, 0.0)) for p in sorted(sa.keys() | sb.keys())]


def newcombe_interval(a: ShareRow, b: ShareRow) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``b.share - a.share`` from the two intervals."""
    d = b.share - a.share
    low = d - math.hypot(b.share - b.ci_low, a.ci_high - a.share)
    high = d + math.hypot(b.ci_high - b.share, a.share - a.ci_low)
    return max(-1.0, low), min(1.0, high)


def _absent(key: str, side: DiffSide) -> ShareRow:
    """A caller one side does not list: share 0, the Wilson interval of 0 of its samples."""
    n = side.samples or 0.0
    low, high = wilson_interval(0, n, side.confidence) if n > 0 else (0.0, 1.0)
    return ShareRow(key, 0.0, low, high)


def share_changes(a: DiffSide, b: DiffSide) -> list[ShareChange]:
    """B minus A for every caller of either side, largest change first."""
    out = []
    for key in list(a.rows) + [k for k in b.rows if k not in a.rows]:
        ra = a.rows.get(key) or _absent(key, a)
        rb = b.rows.get(key) or _absent(key, b)
        low, high = newcombe_interval(ra, rb)
        out.append(ShareChange(key, ra.share, rb.share, low, high, key in a.rows, key in b.rows))
    out.sort(key=lambda c: (-abs(c.delta), c.key))
    return out


# --- result kinds ----------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def rows_from(items: Any, sites: int) -> tuple[dict[str, ShareRow], float]:
    """Caller rows (who-calls ``callers`` + ``other``: caller, share, ci_low, ci_high, samples)
    -> rows keyed by caller (by ``site: caller`` when several sites), and their samples."""
    rows: dict[str, ShareRow] = {}
    samples = 0.0
    for r in items if isinstance(items, list) else []:
        if not isinstance(r, Mapping) or not isinstance(r.get("caller"), str):
            continue
        share = _num(r.get("share"))
        if share is None:
            continue
        key = r["caller"] if sites <= 1 else f"{r.get('site', '?')}: {r['caller']}"
        low, high = _num(r.get("ci_low")), _num(r.get("ci_high"))
        rows[key] = ShareRow(
            key, share, share if low is None else low, share if high is None else high
        )
        samples += _num(r.get("samples")) or 0.0
    return rows, samples


def folded_from(value: Any) -> dict[str, float]:
    """A payload's ``folded`` object (stack -> weight); other shapes give {}."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if _num(v) is not None}


def who_calls_side(source: str, result: Result) -> DiffSide:
    p = result.payload
    sites = str(p.get("site", ""))
    n_sites = len([s for s in sites.split(",") if s])
    rows, samples = rows_from([*(p.get("callers") or []), *(p.get("other") or [])], n_sites)
    conf = _num(p.get("confidence")) or 0.95
    return DiffSide(
        source,
        result.kind,
        sites,
        folded_from(p.get("folded")),
        rows,
        samples or _num(p.get("sampled")),
        conf if 0 < conf < 1 else 0.95,
    )


# kind -> reader; context (a per-tag capture with folded stacks) registers its own
SIDE_READERS: dict[str, Callable[[str, Result], DiffSide]] = {"who-calls": who_calls_side}


def side_of(source: str, result: Result) -> DiffSide:
    reader = SIDE_READERS.get(result.kind)
    if reader is None:
        raise AllocscopeError(
            f"{source}: a {result.kind} result has no stacks to compare "
            f"(--diff takes {' or '.join(sorted(SIDE_READERS))} results)"
        )
    return reader(source, result)


def compare_sides(a: DiffSide, b: DiffSide) -> StackDiff:
    """The comparison; two different sites (or kinds) are refused in one line."""
    if a.kind != b.kind:
        raise AllocscopeError(
            f"--diff: {a.source} is a {a.kind} result, {b.source} a {b.kind} result: "
            "compare two results of one kind"
        )
    if a.site != b.site:
        raise AllocscopeError(
            f"--diff: {a.source} captured {a.site!r}, {b.source} captured {b.site!r}: "
            "a differential flame graph needs two captures of the same site"
        )
    d = StackDiff(a, b, diff_frames(a.folded, b.folded), share_changes(a, b))
    d.confidence = min(a.confidence, b.confidence)
    for side, name in ((a, "A"), (b, "B")):
        if not side.folded:
            d.notes.append(f"{name} ({side.source}) has no stacks: its flame graph side is empty")
        if not side.samples:
            d.notes.append(
                f"{name} ({side.source}) does not say how many stacks it sampled: callers "
                "absent from it get the widest interval"
            )
    return d


def compare_results(a: tuple[str, Result], b: tuple[str, Result]) -> StackDiff:
    """Two result files (path, result) -> their comparison (see :func:`compare_sides`)."""
    return compare_sides(side_of(*a), side_of(*b))
