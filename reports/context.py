"""Presentation of a ``context`` payload: header + one table per tag group, folded stacks.

Presentation only: every number was computed by :mod:`allocscope.collector.context`. A tag's
row gives allocinfo's live bytes and calls ("-" on kernels without allocinfo), the window's
rates, the memcg-charged share, then its top callers, each with its call share and the
interval, indented under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from allocscope.collector.payloads import ContextPayload, ContextTag
from allocscope.reports.format import MISSING, bytes_short, count_short, duration, pct
from allocscope.reports.table import render


def _ci(low: float | None, high: float | None) -> str:
    return MISSING if low is None or high is None else f"{pct(low)}-{pct(high)}"


def _rate(value: float, low: float, high: float, secs: float, fmt: Any) -> str:
    s = max(secs, 1e-9)
    if low == high:
        return f"{fmt(value / s)}/s"
    return f"{fmt(value / s)}/s ({fmt(low / s)}-{fmt(high / s)})"


def header(p: ContextPayload, settings: Mapping[str, Any] | None = None) -> str:
    t = p.totals
    interrupted = bool(settings and settings.get("interrupted"))
    rates = sorted({e.rate for e in p.rate_epochs})
    if p.rate_mode == "auto":
        span = f"{bytes_short(rates[0])}..{bytes_short(rates[-1])}" if len(rates) > 1 else ""
        how = f"auto, budget {pct(p.budget or 0, 2)} of a CPU" + (f", R {span}" if span else "")
    else:
        how = "fixed" + (" (census)" if p.rate == 1 else "")
    lines = [
        f"context: {p.backend}, {duration(p.duration)}"
        f"{' (interrupted)' if interrupted else ''}, sites {p.tag_mode}, "
        f"1 sample point per {bytes_short(p.rate)} allocated ({how})",
        f"  events: {count_short(t.events)} ({bytes_short(t.bytes)}) counted; estimated from "
        f"{count_short(p.counters.get('hits', 0))} points: {count_short(t.calls_est)} calls "
        f"({count_short(t.calls_est_low)}-{count_short(t.calls_est_high)}), "
        f"{bytes_short(t.bytes_est)}",
        f"  lost: stack walks {p.counters.get('stack_err', 0)}, map full "
        f"{p.counters.get('hash_full', 0)}, stacks gone {p.counters.get('missing_stacks', 0)}"
        f"  memcg charge: {p.charge_source}"
        + (f"  maps: {bytes_short(p.map_bytes)}" if p.map_bytes else ""),
    ]
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def _tag_rows(tag: ContextTag, secs: float, by: str) -> list[list[Any]]:
    live_b = MISSING if tag.live_bytes is None else bytes_short(tag.live_bytes)
    live_c = MISSING if tag.live_calls is None else count_short(tag.live_calls)
    charged = MISSING if tag.charged_share is None else pct(tag.charged_share)
    rows: list[list[Any]] = [
        [
            tag.tag,
            live_b,
            live_c,
            _rate(tag.calls, tag.calls_low, tag.calls_high, secs, count_short),
            f"{bytes_short(tag.bytes_per_s)}/s",
            charged,
            "",
            "",
        ]
    ]
    for c in tag.callers:
        name = c.caller if c.callers is None else f"other ({c.callers} callers)"
        rows.append(
            [
                f"  <- {name}",
                "",
                "",
                f"{count_short(c.calls / max(secs, 1e-9))}/s",
                f"{bytes_short(c.bytes / max(secs, 1e-9))}/s",
                MISSING if c.charged_share is None else pct(c.charged_share),
                f"{pct(c.call_share)} ({_ci(c.call_share_low, c.call_share_high)})",
                f"{pct(c.byte_share)} ({_ci(c.byte_share_low, c.byte_share_high)})",
            ]
        )
    return rows


def table(p: ContextPayload) -> str:
    if not p.tags:
        return "(no sample points: nothing allocated, or everything filtered out)"
    first = "TAG" if p.by == "site" and p.tag_mode == "exact-tag" else p.by.upper()
    headers = [
        first,
        "LIVE",
        "LIVE CALLS",
        "CALLS/S",
        "BYTES/S",
        "CHARGED",
        "CALL SHARE",
        "BYTE SHARE",
    ]
    rows: list[list[Any]] = []
    for tag in p.tags:
        rows += _tag_rows(tag, p.duration, p.by)
    shown = len(p.tags)
    out = render(headers, rows, align=["left"] + ["right"] * 7)
    if shown < p.tags_total:
        out += f"\n({shown} of {p.tags_total} rows shown; see -n, -m)"
    return out


def text(p: ContextPayload, settings: Mapping[str, Any] | None = None) -> str:
    return header(p, settings) + "\n\n" + table(p) + "\n"


def folded(p: ContextPayload) -> str:
    """Flame-graph input, one block per tag: ``tag;root;...;leaf points``."""
    out: list[str] = []
    for tag in p.tags:
        for stack, n in sorted(tag.folded.items()):
            out.append(f"{tag.tag.replace(' ', '_')};{stack} {n}\n")
    return "".join(out)
