"""Presentation of a ``who-calls`` payload: header + table, JSON, folded stacks.

Presentation only: every number here was computed by :mod:`allocscope.collector.whocalls`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from allocscope.reports.format import bytes_short, count_short, duration, pct
from allocscope.reports.table import render


def header(payload: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> str:
    """What ran, for how long, how much was seen, sampled and lost."""
    lines = []
    rate = payload.get("sample_rate", 1)
    mode = payload.get("sample_mode", "fixed")
    sampling = "every event" if rate == 1 else f"1 in {rate}"
    if mode == "auto":
        ns = [e["n"] for e in payload.get("sample_epochs") or [] if e.get("n")]
        if len(set(ns)) > 1:
            sampling = f"1 in {min(ns)}..{max(ns)}, now 1 in {rate}"
        eff = payload.get("effective_sample_rate")
        sampling += f" (auto{f', overall 1 in {eff:g}' if eff else ''})"
    interrupted = bool(settings and settings.get("interrupted"))
    for block in payload.get("sites", []):
        tag = block.get("tag") or "(tag unknown: matched by function name)"
        lines.append(f"site: {block['site']}  tag: {tag}")
        lines.append(
            f"  events: {count_short(block['total_calls'])} ({bytes_short(block['total_bytes'])})"
            f"  stacks sampled: {count_short(block['stacks'])}"
            f"  lost: {block['lost']} (stack map {block['stack_errors']}, "
            f"hash full {block['hash_full']})"
        )
        join = block.get("allocinfo")
        if join and not join.get("tags"):
            lines.append(f"  allocinfo: no line names {block.get('function', block['site'])}")
        if join and join.get("after"):
            a = join["after"]
            line = (
                f"  allocinfo ({join['match']}): {bytes_short(a['bytes'])} in "
                f"{count_short(a['calls'])} live allocations"
            )
            if join.get("delta"):
                d = join["delta"]
                line += f"; during capture {d['bytes']:+d} bytes, {d['calls']:+d} calls"
            lines.append(line)
    lines.insert(
        0,
        (
            f"who-calls: backend {payload.get('backend')}, {duration(payload.get('duration', 0))}"
            f"{' (interrupted)' if interrupted else ''}, sampling {sampling}, "
            f"tags {payload.get('tag_mode')}"
        ),
    )
    c = payload.get("counters") or {}
    extra = [f"{k.replace('_', ' ')} {v}" for k, v in c.items() if v]
    if extra:
        lines.append("  counters: " + ", ".join(extra))
    for note in payload.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def table(payload: Mapping[str, Any]) -> str:
    """Callers at or above ``min_share``, then one ``other`` row per site."""
    callers = payload.get("callers", [])
    min_share = float(payload.get("min_share", 0.0))
    multi = len(payload.get("sites", [])) > 1
    per_process = any("pid" in r for r in callers)
    with_tag = any("tag" in r for r in callers) and multi
    joined = any("joined_bytes" in r for r in callers)
    headers = (
        (["site"] if multi else [])
        + (["pid", "comm"] if per_process else [])
        + [
            "caller",
            "calls",
            "share",
            "95% CI"
            if payload.get("confidence", 0.95) == 0.95
            else f"{100 * payload.get('confidence', 0.95):g}% CI",
            "bytes",
        ]
        + (["joined bytes"] if joined else [])
        + (["tag"] if with_tag else [])
    )
    rows = []
    shown = [r for r in callers if r["share"] >= min_share]
    others = {o["site"]: o for o in payload.get("other", [])}
    order = [b["site"] for b in payload.get("sites", [])]
    for site in order:
        for r in [
            *(x for x in shown if x["site"] == site),
            *([others[site]] if site in others else []),
        ]:
            caller = r["caller"]
            if r["caller"] == "other":
                caller = f"other ({r['callers']} callers < {pct(min_share)})"
            elif "caller_address" in r:
                caller = f"{caller} ({r['caller_address']})"
            row: list[Any] = [site] if multi else []
            if per_process:
                row += [r.get("pid", ""), r.get("comm", "")]
            row += [
                caller,
                count_short(r["calls"]),
                pct(r["share"]),
                f"{pct(r['ci_low'])}-{pct(r['ci_high'])}",
                bytes_short(r["bytes"]),
            ]
            if joined:
                row.append(bytes_short(r["joined_bytes"]) if "joined_bytes" in r else "")
            if with_tag:
                row.append(r.get("tag", ""))
            rows.append(row)
    if not rows:
        return "(no sampled stacks: the site was not hit during the capture)"
    n_left = (1 if multi else 0) + (2 if per_process else 0)
    align = (
        ["left"] * n_left
        + ["left", "right", "right", "right", "right"]
        + (["right"] if joined else [])
        + (["left"] if with_tag else [])
    )
    return render(headers, rows, align=align)


def text(payload: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> str:
    return header(payload, settings) + "\n\n" + table(payload)


def folded(payload: Mapping[str, Any]) -> str:
    """Flame-graph input: ``root;...;leaf count`` per line (sampled counts)."""
    return "".join(f"{stack} {count}\n" for stack, count in payload.get("folded", {}).items())


def json_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=2) + "\n"
