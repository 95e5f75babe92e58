"""Presentation of a ``who-calls`` payload: header + table, JSON, folded stacks.

Presentation only: every number here was computed by
:mod:`allocscope.collector.who_calls_payload`; fields are read from the typed payload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from allocscope.collector.payloads import CallerRow, OtherRow, WhoCallsPayload
from allocscope.reports.format import bytes_short, count_short, duration, pct
from allocscope.reports.table import render


def _ci(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{pct(low)}-{pct(high)}"


def header(payload: WhoCallsPayload, settings: Mapping[str, Any] | None = None) -> str:
    """What ran, for how long, how much was seen, sampled and lost."""
    lines = []
    rate = payload.sample_rate if payload.sample_rate is not None else 1
    sampling = "every event" if rate == 1 else f"1 in {rate}"
    if payload.sample_mode == "bytes":  # a page site through the context engine
        sampling = f"by bytes (mean gap {bytes_short(rate)})"
    elif payload.sample_mode == "auto":
        ns = [e.n for e in payload.sample_epochs if e.n]
        if len(set(ns)) > 1:
            sampling = f"1 in {min(ns)}..{max(ns)}, now 1 in {rate}"
        eff = payload.effective_sample_rate
        sampling += f" (auto{f', overall 1 in {eff:g}' if eff else ''})"
    interrupted = bool(settings and settings.get("interrupted"))
    for block in payload.sites:
        tag = block.tag or "(tag unknown: matched by function name)"
        lines.append(f"site: {block.site}  tag: {tag}")
        lines.append(
            f"  events: {count_short(block.total_calls)} ({bytes_short(block.total_bytes or 0)}"
            + (
                f", {bytes_short(block.bytes_low)}..{bytes_short(block.bytes_high)}"
                if block.bytes_low is not None and block.bytes_high is not None
                else ""
            )
            + ")"
            f"  stacks sampled: {count_short(block.stacks or 0)}"
            f"  lost: {block.lost or 0} (stack map {block.stack_errors or 0}, "
            f"hash full {block.hash_full or 0})"
        )
        join = block.allocinfo
        if join and not join.tags:
            lines.append(f"  allocinfo: no line names {block.function or block.site}")
        if join and join.after is not None:
            a = join.after
            line = (
                f"  allocinfo ({join.match}): {bytes_short(a.bytes)} in "
                f"{count_short(a.calls)} live allocations"
            )
            if join.delta is not None:
                d = join.delta
                line += f"; during capture {d.bytes:+d} bytes, {d.calls:+d} calls"
            lines.append(line)
    lines.insert(
        0,
        (
            f"who-calls: backend {payload.backend}, {duration(payload.duration or 0)}"
            f"{' (interrupted)' if interrupted else ''}, sampling {sampling}, "
            f"tags {payload.tag_mode}"
        ),
    )
    extra = [f"{k.replace('_', ' ')} {v}" for k, v in payload.counters.items() if v]
    if extra:
        lines.append("  counters: " + ", ".join(extra))
    for note in payload.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def table(payload: WhoCallsPayload) -> str:
    """Callers at or above ``min_share``, then one ``other`` row per site."""
    callers = payload.callers
    min_share = payload.min_share or 0.0
    confidence = payload.confidence if payload.confidence is not None else 0.95
    multi = len(payload.sites) > 1
    per_process = any(r.pid is not None for r in callers)
    with_tag = any(r.tag is not None for r in callers) and multi
    joined = any(r.joined_bytes is not None for r in callers)
    headers = (
        (["site"] if multi else [])
        + (["pid", "comm"] if per_process else [])
        + [
            "caller",
            "calls",
            "share",
            "95% CI" if confidence == 0.95 else f"{100 * confidence:g}% CI",
            "bytes",
        ]
        + (["joined bytes"] if joined else [])
        + (["tag"] if with_tag else [])
    )
    rows = []
    shown = [r for r in callers if r.share >= min_share]
    others = {o.site: o for o in payload.other}
    for site in [b.site for b in payload.sites]:
        picked: list[CallerRow | OtherRow] = [x for x in shown if x.site == site]
        if site in others:
            picked.append(others[site])
        for r in picked:
            caller = r.caller
            if isinstance(r, OtherRow):
                caller = f"other ({r.callers} callers < {pct(min_share)})"
            elif r.caller_address is not None:
                caller = f"{caller} ({r.caller_address})"
            row: list[Any] = [site] if multi else []
            if per_process:
                pid = r.pid if isinstance(r, CallerRow) else None
                comm = r.comm if isinstance(r, CallerRow) else None
                row += ["" if pid is None else pid, comm or ""]
            row += [
                caller,
                count_short(r.calls),
                pct(r.share),
                _ci(r.ci_low, r.ci_high),
                bytes_short(r.bytes or 0),
            ]
            if joined:
                row.append(bytes_short(r.joined_bytes) if r.joined_bytes is not None else "")
            if with_tag:
                row.append((r.tag if isinstance(r, CallerRow) else None) or "")
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


def text(payload: WhoCallsPayload, settings: Mapping[str, Any] | None = None) -> str:
    return header(payload, settings) + "\n\n" + table(payload)


def folded(payload: WhoCallsPayload) -> str:
    """Flame-graph input: ``root;...;leaf count`` per line (sampled counts)."""
    return "".join(f"{stack} {count}\n" for stack, count in payload.folded.items())


def json_text(payload: WhoCallsPayload) -> str:
    return json.dumps(payload.to_dict(), indent=2) + "\n"
