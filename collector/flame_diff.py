"""Two captures of one site compared: stack shares (for a differential flame graph) and caller
share changes with intervals.

The comparison works on two generic shapes, not on one result kind: folded stacks (``"root;
caller;...;site" -> weight``) and caller rows (``caller -> share with its interval``). A result
kind becomes comparable by registering a reader in :data:`SIDE_READERS` that turns its payload
into a :class:`DiffSide` (who-calls: one site; context: one side per tag, compared tag by
tag, with the tags only one result holds listed as new or gone).

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
    # a result of many keys (context: tags): one side per key, compared key by key
    keys: dict[str, KeyedSide] = field(default_factory=dict)
    truncated: int = 0  # keys the result left out (its -n / -m): "only in" may mean "cut"


@dataclass(slots=True)
class KeyedSide:
    """One key's side inside a many-keyed result, with what selects and ranks it."""

    side: DiffSide
    function: str  # a second name --tag matches
    bytes: float  # estimated bytes in the window (ranking)
    byte_share: float


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
    # A result of many keys (context: one per tag) compares key by key: ``parts`` holds one
    # diff per key in both results; ``only_a`` / ``only_b`` the keys one result lacks. The
    # top-level diff then has no frames or changes of its own.
    parts: list[StackDiff] = field(default_factory=list)
    only_a: list[KeyOnly] = field(default_factory=list)
    only_b: list[KeyOnly] = field(default_factory=list)
    part_stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> bytes A, B


@dataclass(frozen=True, slots=True)
class KeyOnly:
    """A key (tag) only one result has: its size there and its callers (which appeared, or
    which went away)."""

    key: str
    bytes: float
    byte_share: float
    samples: float
    callers: tuple[ShareRow, ...]


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


def context_sides(source: str, result: Result) -> DiffSide:
    """A context result: one side per tag (in :attr:`DiffSide.keys`), each with the tag's
    folded stacks and its callers' call shares with their intervals; the whole result's
    "site" is its roll-up (two results rolled up differently do not compare)."""
    p = result.payload
    conf = _num(p.get("confidence")) or 0.95
    conf = conf if 0 < conf < 1 else 0.95
    by = str(p.get("by") or "site")
    whole = DiffSide(source, result.kind, f"every tag (by {by})", {}, {}, None, conf)
    for t in p.get("tags") or []:
        if not isinstance(t, Mapping) or not isinstance(t.get("tag"), str):
            continue
        rows: dict[str, ShareRow] = {}
        for c in t.get("callers") or []:
            if not isinstance(c, Mapping) or not isinstance(c.get("caller"), str):
                continue
            share = _num(c.get("call_share"))
            if share is None:
                continue
            low, high = _num(c.get("call_share_low")), _num(c.get("call_share_high"))
            rows[c["caller"]] = ShareRow(
                c["caller"], share, share if low is None else low, share if high is None else high
            )
        side = DiffSide(
            source,
            result.kind,
            t["tag"],
            folded_from(t.get("folded")),
            rows,
            _num(t.get("samples")),
            conf,
        )
        whole.keys[t["tag"]] = KeyedSide(
            side,
            str(t.get("function") or ""),
            _num(t.get("bytes")) or 0.0,
            _num(t.get("byte_share")) or 0.0,
        )
    n, total = len(whole.keys), _num(p.get("tags_total"))
    if total is not None and total > n:
        whole.truncated = int(total) - n
    return whole


# kind -> reader
SIDE_READERS: dict[str, Callable[[str, Result], DiffSide]] = {
    "who-calls": who_calls_side,
    "context": context_sides,
}


def side_of(source: str, result: Result) -> DiffSide:
    reader = SIDE_READERS.get(result.kind)
    if reader is None:
        raise AllocscopeError(
            f"{source}: a {result.kind} result has no stacks to compare "
            f"(--diff takes {' or '.join(sorted(SIDE_READERS))} results)"
        )
    return reader(source, result)


def compare_sides(
    a: DiffSide, b: DiffSide, *, top_n: int = 20, key: str | None = None
) -> StackDiff:
    """The comparison; two different sites (or kinds) are refused in one line. Many-keyed
    sides (context) compare key by key (:func:`compare_keyed`)."""
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
    if a.keys or b.keys:
        return compare_keyed(a, b, top_n=top_n, key=key)
    if key is not None:
        raise AllocscopeError(f"--diff: --tag is for context results, not {a.kind} results")
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


def _only(k: KeyedSide) -> KeyOnly:
    rows = sorted(k.side.rows.values(), key=lambda r: (-r.share, r.key))
    return KeyOnly(k.side.site, k.bytes, k.byte_share, k.side.samples or 0.0, tuple(rows))


def _only_in(this: dict[str, KeyedSide], other: dict[str, KeyedSide]) -> list[KeyOnly]:
    """The keys of ``this`` that ``other`` lacks, biggest first."""
    keep = [v for k, v in this.items() if k not in other]
    return [_only(v) for v in sorted(keep, key=lambda v: (-v.bytes, v.side.site))]


def compare_keyed(
    a: DiffSide, b: DiffSide, *, top_n: int = 20, key: str | None = None
) -> StackDiff:
    """Two many-keyed results (context: tags) compared key by key: the ``top_n`` keys both
    hold, ranked by bytes (A's plus B's window estimate), each a full :class:`StackDiff`; or,
    with ``key``, the keys named so (the tag itself, or its function). Keys only one result
    holds are listed as gone (only in A) or new (only in B), biggest first, ``top_n`` each."""

    def chosen(side: DiffSide) -> dict[str, KeyedSide]:
        if key is None:
            return side.keys
        return {k: v for k, v in side.keys.items() if key in (k, v.function)}

    ka, kb = chosen(a), chosen(b)
    if key is not None and not ka and not kb:
        raise AllocscopeError(
            f"--diff: no tag {key!r} in {a.source} or {b.source} "
            "(give a tag as the context result names it, or its function)"
        )
    both = sorted(ka.keys() & kb.keys(), key=lambda k: (-(ka[k].bytes + kb[k].bytes), k))
    d = StackDiff(a, b, confidence=min(a.confidence, b.confidence))
    for k in both[:top_n]:
        part = compare_sides(ka[k].side, kb[k].side)
        part.a.label, part.b.label = a.label, b.label
        d.parts.append(part)
        d.part_stats[k] = (ka[k].bytes, kb[k].bytes)
    if len(both) > top_n:
        d.notes.append(f"{len(both) - top_n} more tag(s) in both results not compared (-n {top_n})")
    d.only_a = _only_in(ka, kb)
    d.only_b = _only_in(kb, ka)
    for name, lst in (("gone", d.only_a), ("new", d.only_b)):
        if len(lst) > top_n:
            d.notes.append(f"{len(lst) - top_n} more {name} tag(s) not listed (-n {top_n})")
            del lst[top_n:]
    for side, name in ((a, "A"), (b, "B")):
        if side.truncated:
            d.notes.append(
                f"{name} ({side.source}) left out {side.truncated} smaller tag(s) (its -n/-m): "
                f"a tag listed as {'new' if name == 'A' else 'gone'} may only have been cut "
                "from it"
            )
    return d


def compare_results(
    a: tuple[str, Result], b: tuple[str, Result], *, top_n: int = 20, key: str | None = None
) -> StackDiff:
    """Two result files (path, result) -> their comparison (see :func:`compare_sides`)."""
    return compare_sides(side_of(*a), side_of(*b), top_n=top_n, key=key)
