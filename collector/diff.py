"""Per-site change between two allocinfo reads: the logic behind ``allocscope diff``.

Sites are matched on their exact tag (``file:line [module] func:name``) first. What is left
unmatched on both sides is matched on the line-free :attr:`Site.loose_key` (file + function),
because a kernel upgrade moves lines without changing what allocates: those pairs are
marked ``moved`` (and counted as changes, not as a "gone" plus a "new"). Several tags with
the same loose key (one function allocating at several lines) are paired in line order.
Identical tags repeated in one read (a file compiled twice, e.g. ``binfmt_elf.c`` and its
compat twin) are summed first, since nothing can tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.containers import CountedTotals, container_kind, counted_once
from allocscope.collector.rollup import classify, container_group
from allocscope.collector.showmem import ROUNDING_KEY
from allocscope.collector.showmem import VERSION as SHOW_MEM
from allocscope.collector.site import Site
from allocscope.collector.subsystem import SubsystemMap, default_map

STATUSES = ("changed", "same", "new", "gone", "moved")
DIFF_SORT_KEYS = ("bytes", "calls", "name")


@dataclass(slots=True)
class _Agg:
    site: Site
    bytes: int = 0
    calls: int = 0
    tags: int = 0
    accurate: bool = True


class _Deltas:
    """B minus A, for anything that has both sides' bytes and calls."""

    __slots__ = ()
    bytes_a: int
    bytes_b: int
    calls_a: int
    calls_b: int

    @property
    def delta_bytes(self) -> int:
        return self.bytes_b - self.bytes_a

    @property
    def delta_calls(self) -> int:
        return self.calls_b - self.calls_a


@dataclass(slots=True)
class SiteChange(_Deltas):
    """One site's change from A to B. ``site`` is B's site (A's when gone)."""

    site: Site
    status: str
    bytes_a: int
    bytes_b: int
    calls_a: int
    calls_b: int
    subsystem: str
    old_site: Site | None = None  # A's site when it differs (moved)
    accurate: bool = True


@dataclass(slots=True)
class GroupChange(_Deltas):
    """The changes of all sites under one roll-up key (e.g. a subsystem)."""

    key: str
    bytes_a: int = 0
    bytes_b: int = 0
    calls_a: int = 0
    calls_b: int = 0
    sites: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class SnapshotInfo:
    """What the report says about each side."""

    source: str
    version: str | None
    kernel_release: str | None
    hostname: str | None
    taken_at: float
    tags: int
    bytes: int
    calls: int
    # the side's tags split into containers and objects (collector/containers.py): memory
    # counted once, exact when the read recorded /proc/slabinfo's object figure
    counted: CountedTotals = field(default_factory=CountedTotals)

    @classmethod
    def of(cls, snap: AllocinfoSnapshot) -> SnapshotInfo:
        host = snap.host
        return cls(
            snap.source,
            snap.version,
            host.kernel_release if host else None,
            host.hostname if host else None,
            snap.taken_at,
            len(snap.records),
            snap.total_bytes,
            snap.total_calls,
            counted_once(snap.records, slab_objects_bytes=snap.slab_objects_bytes),
        )


@dataclass(slots=True)
class Diff:
    a: SnapshotInfo
    b: SnapshotInfo
    changes: list[SiteChange]  # every site on either side, unsorted, unfiltered
    notes: list[str] = field(default_factory=list)

    @property
    def kernels_differ(self) -> bool:
        """True when A and B come from different kernels (release or allocinfo version)."""
        va, vb = self.a.version, self.b.version
        if va and vb and SHOW_MEM not in (va, vb) and va != vb:
            return True
        ka, kb = self.a.kernel_release, self.b.kernel_release
        return bool(ka and kb and ka != kb)

    def count(self, status: str) -> int:
        return sum(1 for c in self.changes if c.status == status)


def _aggregate(records: Iterable[AllocRecord]) -> dict[str, _Agg]:
    out: dict[str, _Agg] = {}
    for rec in records:
        tag = rec.site.tag
        agg = out.get(tag)
        if agg is None:
            agg = out[tag] = _Agg(rec.site)
        agg.bytes += rec.bytes
        agg.calls += rec.calls
        agg.tags += 1
        agg.accurate = agg.accurate and rec.accurate
    return out


def _subsystem(site: Site, sub: SubsystemMap) -> str:
    """As top's roll-up: container tags (slab pages) are not mm's memory."""
    kind = container_kind(site)
    return container_group(kind) if kind else classify(site, sub)


def diff_snapshots(
    a: AllocinfoSnapshot, b: AllocinfoSnapshot, subsystems: SubsystemMap | None = None
) -> Diff:
    """Match A's and B's sites (exact tag, then loose key) and compute every change."""
    sub = subsystems or default_map()
    aa = _aggregate(a.records)
    bb = _aggregate(b.records)
    changes: list[SiteChange] = []

    def change(x: _Agg | None, y: _Agg | None, status: str) -> SiteChange:
        site = y.site if y is not None else x.site  # type: ignore[union-attr]
        return SiteChange(
            site=site,
            status=status,
            bytes_a=x.bytes if x else 0,
            bytes_b=y.bytes if y else 0,
            calls_a=x.calls if x else 0,
            calls_b=y.calls if y else 0,
            subsystem=_subsystem(site, sub),
            old_site=x.site if (x is not None and y is not None and x.site != y.site) else None,
            accurate=(x.accurate if x else True) and (y.accurate if y else True),
        )

    only_a: dict[str, list[_Agg]] = {}
    for tag, x in aa.items():
        y = bb.get(tag)
        if y is None:
            only_a.setdefault(x.site.loose_key, []).append(x)
            continue
        same = x.bytes == y.bytes and x.calls == y.calls
        changes.append(change(x, y, "same" if same else "changed"))
    only_b: dict[str, list[_Agg]] = {}
    for tag, y in bb.items():
        if tag not in aa:
            only_b.setdefault(y.site.loose_key, []).append(y)
    for loose, ys in only_b.items():
        xs = only_a.pop(loose, [])
        xs.sort(key=lambda g: g.site.line)
        ys.sort(key=lambda g: g.site.line)
        for i, y in enumerate(ys):
            if i < len(xs):
                changes.append(change(xs[i], y, "moved"))
            else:
                changes.append(change(None, y, "new"))
        for x in xs[len(ys) :]:
            changes.append(change(x, None, "gone"))
    for xs in only_a.values():
        for x in xs:
            changes.append(change(x, None, "gone"))
    if not (a.partial or b.partial):
        return Diff(SnapshotInfo.of(a), SnapshotInfo.of(b), changes)
    return _restrict_to_listed(a, b, changes)


def _restrict_to_listed(
    a: AllocinfoSnapshot, b: AllocinfoSnapshot, changes: list[SiteChange]
) -> Diff:
    """A side that lists only some tags (a show_mem block) says nothing about the others:
    keep the tags it lists, and give both sides' totals over the tags kept."""
    kept = [
        c
        for c in changes
        if not (a.partial and c.status == "new") and not (b.partial and c.status == "gone")
    ]
    rounding = {
        rec.site.tag: int(rec.extras.get(ROUNDING_KEY, 0))
        for snap in (a, b)
        if snap.partial
        for rec in snap.records
    }
    for c in kept:  # a change within the kernel's rounding of the printed size is none
        if c.status == "changed" and c.delta_calls == 0:
            if abs(c.delta_bytes) <= rounding.get(c.site.tag, 0):
                c.status = "same"
    notes = [
        f"{side} lists only {len(snap.records)} tags (show_mem): only those are compared, "
        "and the totals are over them"
        for side, snap in (("A", a), ("B", b))
        if snap.partial
    ]

    def info(snap: AllocinfoSnapshot, bytes_of: str, calls_of: str) -> SnapshotInfo:
        base = SnapshotInfo.of(snap)
        base.tags = len(kept)
        base.bytes = sum(getattr(c, bytes_of) for c in kept)
        base.calls = sum(getattr(c, calls_of) for c in kept)
        # over the tags kept, as the plain sums; a listed slab tag's objects are unknown
        listed = [AllocRecord(c.site, getattr(c, bytes_of), getattr(c, calls_of)) for c in kept]
        base.counted = counted_once(listed)
        return base

    return Diff(info(a, "bytes_a", "calls_a"), info(b, "bytes_b", "calls_b"), kept, notes)


def select_changes(
    changes: Iterable[SiteChange],
    *,
    min_change: int | None = None,
    sort: str = "bytes",
    include_same: bool = False,
) -> list[SiteChange]:
    """Drop unchanged sites (unless asked) and those below ``min_change`` bytes; sort.

    Sorting is by absolute change, largest first; ``name`` sorts by tag. A ``new`` or
    ``gone`` site with zero bytes still counts as a change (a site appeared/disappeared).
    """
    out = [
        c
        for c in changes
        if (include_same or c.status != "same")
        and (min_change is None or abs(c.delta_bytes) >= min_change)
    ]
    if sort == "bytes":
        out.sort(key=lambda c: (-abs(c.delta_bytes), -abs(c.delta_calls), c.site.tag))
    elif sort == "calls":
        out.sort(key=lambda c: (-abs(c.delta_calls), -abs(c.delta_bytes), c.site.tag))
    elif sort == "name":
        out.sort(key=lambda c: c.site.tag)
    else:
        raise ValueError(f"unknown sort {sort!r} (have: {', '.join(DIFF_SORT_KEYS)})")
    return out


def rollup_changes(changes: Iterable[SiteChange], by: str = "subsystem") -> list[GroupChange]:
    """Sum changes per subsystem (or function/file/module); sorted by absolute change."""
    groups: dict[str, GroupChange] = {}
    for c in changes:
        if by == "subsystem":
            key = c.subsystem
        elif by == "function":
            key = c.site.function
        elif by == "file":
            key = c.site.file
        elif by == "module":
            key = c.site.module or "vmlinux"
        else:
            raise ValueError(f"unknown roll-up {by!r}")
        g = groups.get(key)
        if g is None:
            g = groups[key] = GroupChange(key)
        g.bytes_a += c.bytes_a
        g.bytes_b += c.bytes_b
        g.calls_a += c.calls_a
        g.calls_b += c.calls_b
        g.sites += 1
        g.counts[c.status] = g.counts.get(c.status, 0) + 1
    out = list(groups.values())
    out.sort(key=lambda g: (-abs(g.delta_bytes), -abs(g.delta_calls), g.key))
    return out
