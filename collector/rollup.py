"""Ranking and rolling up allocinfo records: the logic behind ``allocscope top``.

allocinfo has one line per allocation *tag*; an engineer asks about functions, files,
modules or whole subsystems. This module filters records (globs on function/file/module),
groups them by the chosen key, keeps totals of everything that matched (so ``-n 10`` never
hides how much memory the filter covered), and sorts. Presentation lives in
:mod:`allocscope.reports.allocinfo`.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from allocscope.collector.allocinfo import AllocRecord
from allocscope.collector.containers import LABELS, CountedTotals, container_kind, counted_once
from allocscope.collector.site import Site, canonical_function
from allocscope.collector.subsystem import SubsystemMap, default_map, glob_regex

SORT_KEYS = ("bytes", "calls", "name")
GROUP_BY = ("site", "function", "file", "module", "subsystem")
UNKNOWN_SUBSYSTEM = "unknown"
BUILTIN_MODULE = "vmlinux"  # what --by module calls tags that are not in a loadable module


def normalize_path(file: str) -> str:
    """``./include/linux/vmalloc.h`` and ``drivers/iommu/amd/../iommu-pages.h`` as a tree path.

    The kernel prints ``__FILE__`` as the compiler saw it; header tags carry ``./`` or ``..``
    segments that would otherwise escape the subsystem rules.
    """
    if file.startswith("./") or "/../" in file or "/./" in file:
        return posixpath.normpath(file)
    return file


def classify(site: Site, subsystems: SubsystemMap | None = None) -> str:
    """The subsystem a site belongs to, under ``subsystems`` (default mapping if None).

    Sites without a source file (``top --live`` knows only the function) are ``unknown``.
    """
    if not site.file:
        return UNKNOWN_SUBSYSTEM
    sub = subsystems or default_map()
    return sub.classify(normalize_path(site.file), site.function)


def path_glob(pattern: str) -> re.Pattern[str]:
    """A source-path glob, as in .gitignore and subsystems.toml.

    ``*`` and ``?`` stay inside one path component, ``**`` crosses any number; a pattern
    without ``/`` matches the file's base name (``*.h``, ``xarray.c``).
    """
    body = glob_regex(pattern)
    return re.compile(body if "/" in pattern else f"(?:.*/)?{body}")


_path_glob_cached = lru_cache(maxsize=64)(path_glob)


@dataclass(frozen=True, slots=True)
class Filters:
    """Glob filters on records; each list is OR-ed, the three kinds AND-ed.

    A function glob matches the name as printed or clone-suffix-free (``xas_alloc`` matches
    ``xas_alloc.constprop.0``). A module glob matches :data:`BUILTIN_MODULE` for built-in tags.
    """

    functions: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        functions: Iterable[str] | None = None,
        files: Iterable[str] | None = None,
        modules: Iterable[str] | None = None,
    ) -> Filters:
        return cls(tuple(functions or ()), tuple(files or ()), tuple(modules or ()))

    def __bool__(self) -> bool:
        return bool(self.functions or self.files or self.modules)

    def _file_patterns(self) -> list[re.Pattern[str]]:
        return [_path_glob_cached(g) for g in self.files]

    def match(self, site: Site) -> bool:
        if self.functions:
            canon = canonical_function(site.function)
            if not any(
                fnmatch.fnmatchcase(site.function, g) or fnmatch.fnmatchcase(canon, g)
                for g in self.functions
            ):
                return False
        if self.files:
            norm = normalize_path(site.file)
            if not any(g.fullmatch(site.file) or g.fullmatch(norm) for g in self._file_patterns()):
                return False
        if self.modules:
            mod = site.module or BUILTIN_MODULE
            if not any(fnmatch.fnmatchcase(mod, g) for g in self.modules):
                return False
        return True


@dataclass(slots=True)
class Row:
    """One line of a ``top`` table: a site, or a group of sites under one key."""

    key: str
    bytes: int = 0
    calls: int = 0
    tags: int = 0
    accurate: bool = True
    subsystem: str = ""
    site: Site | None = None  # set when grouping by site
    extras: dict[str, str] = field(default_factory=dict)
    # allocinfo 1.1's accumulative calls, summed over the tags that print them; None: none do
    cumulative_calls: int | None = None
    _sub_bytes: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, rec: AllocRecord, subsystem: str) -> None:
        self.bytes += rec.bytes
        self.calls += rec.calls
        cum = rec.cumulative_calls
        if cum is not None:
            self.cumulative_calls = (self.cumulative_calls or 0) + cum
        self.tags += 1
        self.accurate = self.accurate and rec.accurate
        self._sub_bytes[subsystem] = self._sub_bytes.get(subsystem, 0) + abs(rec.bytes)


@dataclass(slots=True)
class Rollup:
    """The ranked rows plus totals of everything the filters matched."""

    by: str
    sort: str
    rows: list[Row]  # after --min-bytes and -n
    total_bytes: int  # all records the filters matched (before --min-bytes and -n)
    total_calls: int
    total_tags: int
    matched_rows: int  # rows before -n (after --min-bytes)
    all_rows: int  # rows before --min-bytes and -n
    # the matched records split into containers and objects (collector/containers.py)
    counted: CountedTotals = field(default_factory=CountedTotals)
    # allocinfo 1.1's accumulative calls of the matched records; None when none has them
    total_cumulative_calls: int | None = None

    @property
    def shown_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def shown_calls(self) -> int:
        return sum(r.calls for r in self.rows)


def container_group(kind: str) -> str:
    """The subsystem roll-up's own row for a container kind: slab pages hold every
    subsystem's objects, so counting them under ``mm`` would give mm the others' memory."""
    return f"({LABELS[kind]}: container)"


def group_key(site: Site, by: str, subsystem: str) -> str:
    if by == "site":
        return site.tag
    if by == "function":
        return canonical_function(site.function)
    if by == "file":
        return normalize_path(site.file)
    if by == "module":
        return site.module or BUILTIN_MODULE
    if by == "subsystem":
        return subsystem
    raise ValueError(f"unknown roll-up {by!r} (have: {', '.join(GROUP_BY)})")


def sort_rows(rows: list[Row], sort: str) -> None:
    """In place: bytes/calls descending (ties by name), or name ascending."""
    if sort == "bytes":
        rows.sort(key=lambda r: (-r.bytes, -r.calls, r.key))
    elif sort == "calls":
        rows.sort(key=lambda r: (-r.calls, -r.bytes, r.key))
    elif sort == "name":
        rows.sort(key=lambda r: r.key)
    else:
        raise ValueError(f"unknown sort {sort!r} (have: {', '.join(SORT_KEYS)})")


def rollup(
    records: Sequence[AllocRecord],
    *,
    by: str = "site",
    sort: str = "bytes",
    limit: int | None = None,
    min_bytes: int | None = None,
    filters: Filters | None = None,
    subsystems: SubsystemMap | None = None,
    slab_objects: int | None = None,
) -> Rollup:
    """Filter, group, threshold, sort and cut ``records`` (see :class:`Rollup`).
    ``slab_objects`` is /proc/slabinfo's object bytes when the records are this host's
    live allocinfo (it makes the counted-once total exact)."""
    if by not in GROUP_BY:
        raise ValueError(f"unknown roll-up {by!r} (have: {', '.join(GROUP_BY)})")
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort {sort!r} (have: {', '.join(SORT_KEYS)})")
    sub = subsystems or default_map()
    groups: dict[str, Row] = {}
    total_bytes = total_calls = total_tags = 0
    total_cumulative: int | None = None
    matched_records: list[AllocRecord] = []
    for rec in records:
        site = rec.site
        if filters and not filters.match(site):
            continue
        matched_records.append(rec)
        total_bytes += rec.bytes
        total_calls += rec.calls
        total_tags += 1
        cum = rec.cumulative_calls
        if cum is not None:
            total_cumulative = (total_cumulative or 0) + cum
        kind = container_kind(site)  # its own subsystem, in every roll-up (as diff does)
        subsystem = container_group(kind) if kind else classify(site, sub)
        key = group_key(site, by, subsystem)
        row = groups.get(key)
        if row is None:
            row = groups[key] = Row(key=key, site=site if by == "site" else None)
            if by == "site":
                row.extras = dict(rec.extras)
        row.add(rec, subsystem)
    rows = list(groups.values())
    for row in rows:
        # A group's subsystem is where most of its bytes are (a function or file is
        # normally in exactly one).
        row.subsystem = max(row._sub_bytes.items(), key=lambda kv: (kv[1], kv[0]))[0]
    all_rows = len(rows)
    if min_bytes is not None:
        rows = [r for r in rows if r.bytes >= min_bytes]
    sort_rows(rows, sort)
    matched = len(rows)
    if limit is not None and limit >= 0:
        rows = rows[:limit]
    return Rollup(
        by,
        sort,
        rows,
        total_bytes,
        total_calls,
        total_tags,
        matched,
        all_rows,
        counted_once(matched_records, slab_objects_bytes=slab_objects),
        total_cumulative,
    )
