"""Presentation of ``top`` and ``diff``: terminal tables, JSON documents, CSV.

Presentation only: everything here takes finished :class:`~allocscope.collector.rollup.Rollup`
and :class:`~allocscope.collector.diff.Diff` objects and formats them.

JSON shapes (stable; tests and scripts rely on them):

* top, ``--by site``: ``{"source", "version", "by", "sort", "totals": {"bytes", "calls",
  "tags", "rows"}, "shown": {...}, "sites": [{"bytes", "calls", "file", "line", "module",
  "function", "accurate", "subsystem", "key", "tags", "extras"}], "warnings": [...]}``
* top, any other ``--by``: same, with ``"groups": [{"key", "bytes", "calls", "tags",
  "accurate", "subsystem"}]`` instead of ``sites``.
* top of an allocinfo 1.1 read (accumulative calls printed): every row with them, and
  ``totals``, also have ``"cumulative_calls"``; the key is absent otherwise.
* top's ``totals`` also hold memory counted once: ``"memory_bytes", "memory_exact",
  "containers": {"slab": {...}, "percpu": {...}}`` (collector/containers.py).
* diff: ``{"a": {...}, "b": {...}, "kernels_differ", "totals": {"bytes_a", "bytes_b",
  "delta_bytes", "calls_a", "calls_b", "delta_calls", "new", "gone", "moved", "changed",
  "same", "memory_bytes_a", "memory_bytes_b", "delta_memory_bytes", "memory_exact_a",
  "memory_exact_b", "containers_a", "containers_b"}, "changes": [...]}`` or ``"groups"``
  with ``--by``. ``bytes_*``/``calls_*`` stay the plain sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from allocscope.collector.containers import LABELS
from allocscope.collector.diff import Diff, GroupChange, SiteChange
from allocscope.collector.rollup import BUILTIN_MODULE, UNKNOWN_SUBSYSTEM, Rollup, Row
from allocscope.reports.format import bytes_short, count_short, integer, pct_of, signed
from allocscope.reports.table import render, to_csv

INACCURATE_MARK = "*"
CUMULATIVE_NOTE = (
    "CUM CALLS: calls since boot, freed ones included (allocinfo 1.1 accumulative counter)"
)


def site_label(row: Row) -> str:
    """``file:line [module] func:name``; just the function when the file is unknown (live)."""
    site = row.site
    if site is None:
        return row.key
    if not site.file:
        return f"{site.function} [{site.module}]" if site.module else site.function
    return site.tag


# ---------------------------------------------------------------- top


def _units(human: bool) -> tuple[Callable[[float], str], Callable[[float], str]]:
    """(bytes, calls) formatters: human units, or exact integers for ``--raw``."""
    return (bytes_short, count_short) if human else (integer, integer)


def top_table(r: Rollup, *, human: bool = True, title: str | None = None) -> str:
    size, count = _units(human)
    by_site = r.by == "site"
    # Live captures know functions, not files: a column of "unknown" says nothing.
    show_subsystem = r.by != "subsystem" and any(
        row.subsystem != UNKNOWN_SUBSYSTEM for row in r.rows
    )
    # allocinfo 1.1 (a patched kernel): a column only when some row has the counter
    show_cumulative = r.total_cumulative_calls is not None
    headers = ["BYTES", "CALLS", "%BYTES"]
    align = ["right", "right", "right"]
    if show_cumulative:
        headers.insert(2, "CUM CALLS")
        align.insert(2, "right")
    if not by_site:
        headers.append("TAGS")
        align.append("right")
    if show_subsystem:
        headers.append("SUBSYSTEM")
        align.append("left")
    headers.append({"site": "SITE"}.get(r.by, r.by.upper()))
    align.append("left")
    any_inaccurate = False
    rows: list[list[str]] = []
    for row in r.rows:
        mark = "" if row.accurate else INACCURATE_MARK
        any_inaccurate = any_inaccurate or not row.accurate
        cells = [
            size(row.bytes) + mark,
            count(row.calls),
            pct_of(row.bytes, r.total_bytes),
        ]
        if show_cumulative:
            cum = row.cumulative_calls
            cells.insert(2, "-" if cum is None else count(cum))
        if not by_site:
            cells.append(str(row.tags))
        if show_subsystem:
            cells.append(row.subsystem)
        cells.append(site_label(row))
        rows.append(cells)
    label = f"total ({r.total_tags} tags"
    label += f", {r.all_rows} {r.by}s)" if not by_site else ")"
    totals = [size(r.total_bytes), count(r.total_calls), ""]
    if show_cumulative:
        totals.insert(2, count(r.total_cumulative_calls or 0))
    if not by_site:
        totals.append(str(r.total_tags))
    if show_subsystem:
        totals.append("")
    totals.append(label)
    out: list[str] = []
    if title:
        out.append(title)
    out.append(render(headers, rows, align=align, totals=totals))
    hidden = r.all_rows - len(r.rows)
    if hidden > 0:
        out.append(
            f"({len(r.rows)} of {r.all_rows} rows shown: "
            f"{size(r.shown_bytes)} of {size(r.total_bytes)}; "
            "see -n, --min-bytes)"
        )
    line = counted_once_line(r, human)
    if line:
        out.append(line)
    if show_cumulative:
        out.append(CUMULATIVE_NOTE)
    if any_inaccurate:
        out.append(
            f"{INACCURATE_MARK} accurate:no - the counter missed allocations made before "
            "profiling started (early boot)"
        )
    return "\n".join(out) + "\n"


def counted_once_line(r: Rollup, human: bool = True) -> str:
    """One line under the total when containers are in it: the plain sum counts the slab
    and per-CPU pages and the objects inside them (collector/containers.py)."""
    size, _ = _units(human)
    t = r.counted
    held = {k: c for k, c in t.containers.items() if c.bytes}
    if not held:
        return ""
    parts = []
    for c in held.values():
        label = LABELS[c.kind]
        if c.overhead_bytes is None:
            parts.append(f"{label} {size(c.bytes)}")
        else:
            parts.append(
                f"{label} {size(c.bytes)}, of which free or fragmented {size(c.overhead_bytes)}"
            )
    bound = "" if t.exact else " (at least: free slab space unknown for a saved file)"
    return (
        f"memory counted once: {size(t.memory_bytes)}{bound}; the total also "
        f"counts the objects' containers: {'; '.join(parts)}"
    )


def _with_cumulative(doc: dict[str, Any], cumulative: int | None) -> dict[str, Any]:
    if cumulative is not None:
        doc["cumulative_calls"] = cumulative
    return doc


def _site_json(row: Row) -> dict[str, Any]:
    site = row.site
    assert site is not None
    doc = {
        "bytes": row.bytes,
        "calls": row.calls,
        **site.to_dict(),
        "accurate": row.accurate,
        "subsystem": row.subsystem,
        "tags": row.tags,
        "extras": row.extras,
    }
    return _with_cumulative(doc, row.cumulative_calls)


def _group_json(row: Row) -> dict[str, Any]:
    doc = {
        "key": row.key,
        "bytes": row.bytes,
        "calls": row.calls,
        "tags": row.tags,
        "accurate": row.accurate,
        "subsystem": row.subsystem,
    }
    return _with_cumulative(doc, row.cumulative_calls)


def top_json(
    r: Rollup,
    *,
    source: str,
    version: str | None,
    warnings: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "source": source,
        "version": version,
        "by": r.by,
        "sort": r.sort,
        "totals": {
            "bytes": r.total_bytes,
            "calls": r.total_calls,
            "tags": r.total_tags,
            "rows": r.all_rows,
            "memory_bytes": r.counted.memory_bytes,
            "memory_exact": r.counted.exact,
            "containers": r.counted.to_dict(),
        },
        "shown": {"bytes": r.shown_bytes, "calls": r.shown_calls, "rows": len(r.rows)},
    }
    _with_cumulative(doc["totals"], r.total_cumulative_calls)
    if r.by == "site":
        doc["sites"] = [_site_json(row) for row in r.rows]
    else:
        doc["groups"] = [_group_json(row) for row in r.rows]
    doc["warnings"] = list(warnings)
    if extra:
        doc.update(extra)
    return doc


def top_csv(r: Rollup) -> str:
    cum = r.total_cumulative_calls is not None  # allocinfo 1.1: one more column, last

    def tail(row: Row) -> list[Any]:
        return ["" if row.cumulative_calls is None else row.cumulative_calls] if cum else []

    if r.by == "site":
        headers = ["bytes", "calls", "file", "line", "module", "function", "accurate", "subsystem"]
        rows: list[list[Any]] = []
        for row in r.rows:
            s = row.site
            assert s is not None
            rows.append(
                [
                    row.bytes,
                    row.calls,
                    s.file,
                    s.line,
                    s.module,
                    s.function,
                    "yes" if row.accurate else "no",
                    row.subsystem,
                    *tail(row),
                ]
            )
        return to_csv(headers + ["cumulative_calls"] * cum, rows)
    headers = [r.by, "bytes", "calls", "tags", "accurate", "subsystem"]
    rows = [
        [
            row.key,
            row.bytes,
            row.calls,
            row.tags,
            "yes" if row.accurate else "no",
            row.subsystem,
            *tail(row),
        ]
        for row in r.rows
    ]
    return to_csv(headers + ["cumulative_calls"] * cum, rows)


# ---------------------------------------------------------------- diff


def _side(info: Any) -> str:
    parts = [info.source]
    if info.kernel_release:
        parts.append(f"kernel {info.kernel_release}")
    if info.version:
        parts.append(f"allocinfo {info.version}")
    return ", ".join(parts)


def _diff_totals(d: Diff) -> dict[str, Any]:
    ca, cb = d.a.counted, d.b.counted
    return {
        "bytes_a": d.a.bytes,
        "bytes_b": d.b.bytes,
        "delta_bytes": d.b.bytes - d.a.bytes,
        "calls_a": d.a.calls,
        "calls_b": d.b.calls,
        "delta_calls": d.b.calls - d.a.calls,
        "changed": d.count("changed"),
        "new": d.count("new"),
        "gone": d.count("gone"),
        "moved": d.count("moved"),
        "same": d.count("same"),
        "memory_bytes_a": ca.memory_bytes,
        "memory_bytes_b": cb.memory_bytes,
        "delta_memory_bytes": cb.memory_bytes - ca.memory_bytes,
        "memory_exact_a": ca.exact,
        "memory_exact_b": cb.exact,
        "containers_a": ca.to_dict(),
        "containers_b": cb.to_dict(),
    }


def diff_counted_once_line(d: Diff, human: bool = True) -> str:
    """top's counted-once line for both sides and the change, when either side holds
    containers (the plain sums count slab and per-CPU pages and the objects inside them)."""
    size, _ = _units(human)
    ca, cb = d.a.counted, d.b.counted
    kinds = [k for k in ca.containers if ca.container_bytes(k) or cb.container_bytes(k)]
    if not kinds:
        return ""
    parts = []
    for k in kinds:
        part = f"{LABELS[k]} {size(ca.container_bytes(k))} -> {size(cb.container_bytes(k))}"
        oa, ob = ca.overhead_bytes(k), cb.overhead_bytes(k)
        if oa is not None or ob is not None:
            free_a = size(oa) if oa is not None else "?"
            free_b = size(ob) if ob is not None else "?"
            part += f", of which free or fragmented {free_a} -> {free_b}"
        parts.append(part)
    bound = ""
    if not (ca.exact and cb.exact):
        slab_unknown = any(
            c.container_bytes("slab") and c.overhead_bytes("slab") is None for c in (ca, cb)
        )
        why = (
            "free slab space unknown for a saved file"
            if slab_unknown
            else "free space in per-CPU chunks unknown"
        )
        bound = f" (at least: {why})"
    change = signed(size, cb.memory_bytes - ca.memory_bytes)
    return (
        f"memory counted once: A {size(ca.memory_bytes)}, B {size(cb.memory_bytes)}, "
        f"change {change}{bound}; the totals also count the objects' containers: "
        f"{'; '.join(parts)}"
    )


def _change_label(c: SiteChange) -> str:
    s = c.site
    label = s.tag if s.file else s.function
    if c.status == "moved" and c.old_site is not None:
        label += (
            f" (was :{c.old_site.line})"
            if c.old_site.file == s.file
            else (f" (was {c.old_site.key})")
        )
    return label


def diff_table(
    d: Diff,
    changes: Sequence[SiteChange] | None = None,
    groups: Sequence[GroupChange] | None = None,
    *,
    by: str = "site",
    human: bool = True,
    hidden: int = 0,
) -> str:
    size, count = _units(human)
    t = _diff_totals(d)
    out = [f"A: {_side(d.a)}", f"B: {_side(d.b)}"]
    if d.kernels_differ:
        out.append(
            "kernels differ: sites whose line moved are matched on file+function (status 'moved')"
        )
    if groups is not None:
        headers = [
            "BYTES A",
            "BYTES B",
            "CHANGE",
            "CALLS CHANGE",
            "SITES",
            "NEW",
            "GONE",
            "MOVED",
            by.upper(),
        ]
        align = ["right"] * 8 + ["left"]
        rows = [
            [
                size(g.bytes_a),
                size(g.bytes_b),
                signed(size, g.delta_bytes),
                signed(count, g.delta_calls),
                g.sites,
                g.counts.get("new", 0),
                g.counts.get("gone", 0),
                g.counts.get("moved", 0),
                g.key,
            ]
            for g in groups
        ]
        totals = [
            size(t["bytes_a"]),
            size(t["bytes_b"]),
            signed(size, t["delta_bytes"]),
            signed(count, t["delta_calls"]),
            len(d.changes),
            t["new"],
            t["gone"],
            t["moved"],
            "total",
        ]
    else:
        headers = ["BYTES A", "BYTES B", "CHANGE", "CALLS CHANGE", "STATUS", "SUBSYSTEM", "SITE"]
        align = ["right"] * 4 + ["left"] * 3
        rows = [
            [
                size(c.bytes_a),
                size(c.bytes_b),
                signed(size, c.delta_bytes),
                signed(count, c.delta_calls),
                c.status,
                c.subsystem,
                _change_label(c),
            ]
            for c in (changes or [])
        ]
        totals = [
            size(t["bytes_a"]),
            size(t["bytes_b"]),
            signed(size, t["delta_bytes"]),
            signed(count, t["delta_calls"]),
            "",
            "",
            f"total ({t['changed']} changed, {t['new']} new, {t['gone']} gone, "
            f"{t['moved']} moved, {t['same']} same)",
        ]
    if not rows and not hidden:
        out.append(
            f"no changes: {t['same']} sites identical"
            + (" (or below --min-change)" if d.count("same") != len(d.changes) else "")
        )
        return "\n".join(out) + "\n"
    out.append(render(headers, rows, align=align, totals=totals))
    if hidden > 0:
        out.append(f"({hidden} more rows not shown; see -n, --min-change)")
    line = diff_counted_once_line(d, human)
    if line:
        out.append(line)
    return "\n".join(out) + "\n"


def _change_json(c: SiteChange) -> dict[str, Any]:
    s = c.site
    return {
        "status": c.status,
        **s.to_dict(),
        "old_line": c.old_site.line if c.old_site is not None else None,
        "old_file": c.old_site.file if c.old_site is not None else None,
        "subsystem": c.subsystem,
        "bytes_a": c.bytes_a,
        "bytes_b": c.bytes_b,
        "delta_bytes": c.delta_bytes,
        "calls_a": c.calls_a,
        "calls_b": c.calls_b,
        "delta_calls": c.delta_calls,
        "accurate": c.accurate,
    }


def _group_change_json(g: GroupChange) -> dict[str, Any]:
    return {
        "key": g.key,
        "bytes_a": g.bytes_a,
        "bytes_b": g.bytes_b,
        "delta_bytes": g.delta_bytes,
        "calls_a": g.calls_a,
        "calls_b": g.calls_b,
        "delta_calls": g.delta_calls,
        "sites": g.sites,
        "new": g.counts.get("new", 0),
        "gone": g.counts.get("gone", 0),
        "moved": g.counts.get("moved", 0),
        "changed": g.counts.get("changed", 0),
    }


def _info_json(info: Any) -> dict[str, Any]:
    return {
        "source": info.source,
        "version": info.version,
        "kernel_release": info.kernel_release,
        "hostname": info.hostname,
        "taken_at": info.taken_at,
        "tags": info.tags,
        "bytes": info.bytes,
        "calls": info.calls,
    }


def diff_json(
    d: Diff,
    changes: Sequence[SiteChange] | None = None,
    groups: Sequence[GroupChange] | None = None,
    *,
    by: str = "site",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "a": _info_json(d.a),
        "b": _info_json(d.b),
        "kernels_differ": d.kernels_differ,
        "by": by,
        "totals": _diff_totals(d),
    }
    if groups is not None:
        doc["groups"] = [_group_change_json(g) for g in groups]
    else:
        doc["changes"] = [_change_json(c) for c in (changes or [])]
    return doc


def diff_csv(
    changes: Sequence[SiteChange] | None = None,
    groups: Sequence[GroupChange] | None = None,
    *,
    by: str = "site",
) -> str:
    if groups is not None:
        headers = [
            by,
            "bytes_a",
            "bytes_b",
            "delta_bytes",
            "calls_a",
            "calls_b",
            "delta_calls",
            "sites",
            "new",
            "gone",
            "moved",
        ]
        return to_csv(
            headers,
            [
                [
                    g.key,
                    g.bytes_a,
                    g.bytes_b,
                    g.delta_bytes,
                    g.calls_a,
                    g.calls_b,
                    g.delta_calls,
                    g.sites,
                    g.counts.get("new", 0),
                    g.counts.get("gone", 0),
                    g.counts.get("moved", 0),
                ]
                for g in groups
            ],
        )
    headers = [
        "status",
        "file",
        "line",
        "old_line",
        "module",
        "function",
        "subsystem",
        "bytes_a",
        "bytes_b",
        "delta_bytes",
        "calls_a",
        "calls_b",
        "delta_calls",
    ]
    return to_csv(
        headers,
        [
            [
                c.status,
                c.site.file,
                c.site.line,
                c.old_site.line if c.old_site is not None else "",
                c.site.module or "",
                c.site.function,
                c.subsystem,
                c.bytes_a,
                c.bytes_b,
                c.delta_bytes,
                c.calls_a,
                c.calls_b,
                c.delta_calls,
            ]
            for c in (changes or [])
        ],
    )


__all__ = [
    "BUILTIN_MODULE",
    "diff_csv",
    "diff_json",
    "diff_table",
    "top_csv",
    "top_json",
    "top_table",
]
