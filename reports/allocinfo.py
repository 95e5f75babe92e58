"""Presentation of ``top`` and ``diff``: terminal tables, JSON documents, CSV.

Presentation only: everything here takes finished :class:`~allocscope.collector.rollup.Rollup`
and :class:`~allocscope.collector.diff.Diff` objects and formats them.

JSON shapes (stable; tests and scripts rely on them):

* top, ``--by site``: ``{"source", "version", "by", "sort", "totals": {"bytes", "calls",
  "tags", "rows"}, "shown": {...}, "sites": [{"bytes", "calls", "file", "line", "module",
  "function", "accurate", "subsystem", "key", "tags", "extras"}], "warnings": [...]}``
* top, any other ``--by``: same, with ``"groups": [{"key", "bytes", "calls", "tags",
  "accurate", "subsystem"}]`` instead of ``sites``.
* diff: ``{"a": {...}, "b": {...}, "kernels_differ", "totals": {"bytes_a", "bytes_b",
  "delta_bytes", "calls_a", "calls_b", "delta_calls", "new", "gone", "moved", "changed"},
  "changes": [...]}`` or ``"groups"`` with ``--by``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from allocscope.collector.containers import LABELS
from allocscope.collector.diff import Diff, GroupChange, SiteChange
from allocscope.collector.rollup import BUILTIN_MODULE, UNKNOWN_SUBSYSTEM, Rollup, Row
from allocscope.reports.table import (
    fmt_bytes,
    fmt_count,
    fmt_pct,
    fmt_signed_bytes,
    fmt_signed_count,
    render,
    to_csv,
)

INACCURATE_MARK = "*"


def site_label(row: Row) -> str:
    """``file:line [module] func:name``; just the function when the file is unknown (live)."""
    site = row.site
    if site is None:
        return row.key
    if not site.file:
        return f"{site.function} [{site.module}]" if site.module else site.function
    return site.tag


# ---------------------------------------------------------------- top


def top_table(r: Rollup, *, human: bool = True, title: str | None = None) -> str:
    by_site = r.by == "site"
    # Live captures know functions, not files: a column of "unknown" says nothing.
    show_subsystem = r.by != "subsystem" and any(
        row.subsystem != UNKNOWN_SUBSYSTEM for row in r.rows
    )
    headers = ["BYTES", "CALLS", "%BYTES"]
    align = ["right", "right", "right"]
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
            fmt_bytes(row.bytes, human) + mark,
            fmt_count(row.calls, human),
            fmt_pct(row.bytes, r.total_bytes),
        ]
        if not by_site:
            cells.append(str(row.tags))
        if show_subsystem:
            cells.append(row.subsystem)
        cells.append(site_label(row))
        rows.append(cells)
    label = f"total ({r.total_tags} tags"
    label += f", {r.all_rows} {r.by}s)" if not by_site else ")"
    totals = [fmt_bytes(r.total_bytes, human), fmt_count(r.total_calls, human), ""]
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
            f"{fmt_bytes(r.shown_bytes, human)} of {fmt_bytes(r.total_bytes, human)}; "
            "see -n, --min-bytes)"
        )
    line = counted_once_line(r, human)
    if line:
        out.append(line)
    if any_inaccurate:
        out.append(
            f"{INACCURATE_MARK} accurate:no - the counter missed allocations made before "
            "profiling started (early boot)"
        )
    return "\n".join(out) + "\n"


def counted_once_line(r: Rollup, human: bool = True) -> str:
    """One line under the total when containers are in it: the plain sum counts the slab
    and per-CPU pages and the objects inside them (collector/containers.py)."""
    t = r.counted
    held = {k: c for k, c in t.containers.items() if c.bytes}
    if not held:
        return ""
    parts = []
    for c in held.values():
        label = LABELS[c.kind]
        if c.overhead_bytes is None:
            parts.append(f"{label} {fmt_bytes(c.bytes, human)}")
        else:
            parts.append(
                f"{label} {fmt_bytes(c.bytes, human)}, of which free or fragmented "
                f"{fmt_bytes(c.overhead_bytes, human)}"
            )
    bound = "" if t.exact else " (at least: free slab space unknown for a saved file)"
    return (
        f"memory counted once: {fmt_bytes(t.memory_bytes, human)}{bound}; the total also "
        f"counts the objects' containers: {'; '.join(parts)}"
    )


def _site_json(row: Row) -> dict[str, Any]:
    site = row.site
    assert site is not None
    return {
        "bytes": row.bytes,
        "calls": row.calls,
        **site.to_dict(),
        "accurate": row.accurate,
        "subsystem": row.subsystem,
        "tags": row.tags,
        "extras": row.extras,
    }


def _group_json(row: Row) -> dict[str, Any]:
    return {
        "key": row.key,
        "bytes": row.bytes,
        "calls": row.calls,
        "tags": row.tags,
        "accurate": row.accurate,
        "subsystem": row.subsystem,
    }


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
    if r.by == "site":
        doc["sites"] = [_site_json(row) for row in r.rows]
    else:
        doc["groups"] = [_group_json(row) for row in r.rows]
    doc["warnings"] = list(warnings)
    if extra:
        doc.update(extra)
    return doc


def top_csv(r: Rollup) -> str:
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
                ]
            )
        return to_csv(headers, rows)
    headers = [r.by, "bytes", "calls", "tags", "accurate", "subsystem"]
    rows = [
        [row.key, row.bytes, row.calls, row.tags, "yes" if row.accurate else "no", row.subsystem]
        for row in r.rows
    ]
    return to_csv(headers, rows)


# ---------------------------------------------------------------- diff


def _side(info: Any) -> str:
    parts = [info.source]
    if info.kernel_release:
        parts.append(f"kernel {info.kernel_release}")
    if info.version:
        parts.append(f"allocinfo {info.version}")
    return ", ".join(parts)


def _diff_totals(d: Diff) -> dict[str, int]:
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
    }


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
                fmt_bytes(g.bytes_a, human),
                fmt_bytes(g.bytes_b, human),
                fmt_signed_bytes(g.delta_bytes, human),
                fmt_signed_count(g.delta_calls, human),
                g.sites,
                g.counts.get("new", 0),
                g.counts.get("gone", 0),
                g.counts.get("moved", 0),
                g.key,
            ]
            for g in groups
        ]
        totals = [
            fmt_bytes(t["bytes_a"], human),
            fmt_bytes(t["bytes_b"], human),
            fmt_signed_bytes(t["delta_bytes"], human),
            fmt_signed_count(t["delta_calls"], human),
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
                fmt_bytes(c.bytes_a, human),
                fmt_bytes(c.bytes_b, human),
                fmt_signed_bytes(c.delta_bytes, human),
                fmt_signed_count(c.delta_calls, human),
                c.status,
                c.subsystem,
                _change_label(c),
            ]
            for c in (changes or [])
        ]
        totals = [
            fmt_bytes(t["bytes_a"], human),
            fmt_bytes(t["bytes_b"], human),
            fmt_signed_bytes(t["delta_bytes"], human),
            fmt_signed_count(t["delta_calls"], human),
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
