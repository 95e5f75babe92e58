"""The HTML report's context and lifespan sections: one result file, or the store's fleet.

* ``report --result context.json`` -> "allocinfo with callers": per top tag its live bytes
  and calls (allocinfo), allocation rate, charged share and callers with shares and intervals,
  and one flame graph per top tag.
* ``report --result lifespan.json`` -> lifespan distributions per top tag (percentiles with
  intervals, the log2 histogram) and the leaks table.
* ``report --store`` -> the same, fleet-wide, from collector/report_fleet.py (the named
  queries' answers).

Presentation only: every number was computed in collector/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from allocscope.collector.payloads import ContextPayload, LifespanPayload, LifespanRow
from allocscope.collector.report_fleet import FleetContext, FleetLifespan
from allocscope.reports import svg
from allocscope.reports.flamegraph import render_flamegraph
from allocscope.reports.format import bytes_short, count_short, duration, pct
from allocscope.reports.html_parts import DASH, figure, kv, rows_table
from allocscope.reports.lifespan import ns
from allocscope.reports.svg import Series, esc

TOP_TAGS = 5  # tags with their own callers table and flame graph
HIST_MIN_SLOT = 6  # lifespans under 64 ns are below the probe's clock resolution anyway


Fmt = Callable[[float], str]


def _iv(v: float | None, lo: float | None, hi: float | None, fmt: Fmt) -> str:
    if v is None:
        return DASH
    if lo is None or hi is None or lo == hi:
        return fmt(v)
    return f"{fmt(v)} ({fmt(lo)}\u2013{fmt(hi)})"


def _per_s(fmt: Fmt) -> Fmt:
    return lambda v: f"{fmt(v)}/s"


def context_result(p: ContextPayload, idx: int) -> str:
    secs = max(p.duration, 1e-9)
    parts = [
        "<h3>allocinfo with callers</h3>",
        kv(
            [
                ("window", duration(p.duration)),
                ("sites", p.tag_mode),
                ("tags", f"{len(p.tags)} shown of {p.tags_total}"),
                ("sample point per", bytes_short(p.rate)),
                (
                    "counted",
                    f"{count_short(p.totals.events)} events, {bytes_short(p.totals.bytes)}",
                ),
                ("memcg charge", p.charge_source),
            ]
        ),
    ]
    rows = [
        {
            "tag": t.tag,
            "subsystem": t.subsystem,
            "live bytes": DASH if t.live_bytes is None else bytes_short(t.live_bytes),
            "live calls": DASH if t.live_calls is None else count_short(t.live_calls),
            "bytes/s": _iv(
                t.bytes / secs, t.bytes_low / secs, t.bytes_high / secs, _per_s(bytes_short)
            ),
            "calls/s": _iv(
                t.calls / secs, t.calls_low / secs, t.calls_high / secs, _per_s(count_short)
            ),
            "charged": _iv(t.charged_share, t.charged_share_low, t.charged_share_high, pct),
            "samples": t.samples,
        }
        for t in p.tags
    ]
    parts.append(rows_table(rows, caption="tags, biggest byte rate first"))
    for j, t in enumerate(p.tags[:TOP_TAGS]):
        parts.append(f"<h4>callers of <code>{esc(t.tag)}</code></h4>")
        callers = [
            {
                "caller": c.caller + (f" ({c.callers} callers)" if c.callers else ""),
                "calls": _iv(c.calls, c.calls_low, c.calls_high, count_short),
                "call share": _iv(c.call_share, c.call_share_low, c.call_share_high, pct),
                "bytes": _iv(c.bytes, c.bytes_low, c.bytes_high, bytes_short),
                "byte share": _iv(c.byte_share, c.byte_share_low, c.byte_share_high, pct),
                "charged": pct(c.charged_share),
            }
            for c in t.callers
        ]
        parts.append(rows_table(callers))
        if t.folded:
            parts.append(
                render_flamegraph(
                    t.folded,
                    title=f"stacks allocating through {t.tag}",
                    unit="sample points",
                    graph_id=f"flame-context-{idx}-{j}",
                )
            )
    return "".join(parts)


def _hist_chart(w: Sequence[float], title: str, fig_id: str) -> str:
    slots = [i for i, x in enumerate(w) if x > 0]
    if not slots:
        return ""
    lo, hi = max(min(slots), 0), max(slots)
    labels = [f"\u2265{ns(float(1 << i)) if i else '0'}" for i in range(lo, hi + 1)]
    chart = svg.hbars(
        labels,
        [Series("calls", [float(w[i]) for i in range(lo, hi + 1)])],
        title=title,
        fmt=count_short,
        colors={"calls": svg.PALETTE[0]},
        binary=False,
    )
    return figure(chart, "Freed objects (estimated calls) per log2 lifespan bucket.", fig_id)


def _row_hist(r: LifespanRow) -> list[float]:
    w = [0.0] * 64
    for s in r.lifespan_hist:
        w[max(0, s.high_ns.bit_length() - 2)] += s.calls
    return w


def lifespan_result(p: LifespanPayload, idx: int) -> str:
    parts = [
        "<h3>lifespans</h3>",
        kv(
            [
                ("view", p.view),
                ("window", ns(float(p.window_ns))),
                ("sample point per", f"{bytes_short(p.sample_rate)} x 2^{p.addr_shift} addresses"),
                ("objects tracked", count_short(p.sampled)),
                ("old means older than", ns(float(p.older_than_ns))),
            ]
        ),
    ]
    by_tag: dict[str, list[LifespanRow]] = {}
    for r in p.rows:
        by_tag.setdefault(r.tag or r.site, []).append(r)
    ranked = sorted(by_tag.items(), key=lambda kv: -sum(r.freed_calls.value for r in kv[1]))
    table = []
    for key, rs in ranked:
        best = max(rs, key=lambda r: r.freed_calls.value)
        life = best.lifespan
        table.append(
            {
                "tag": key,
                "callers": len(rs),
                "freed calls": count_short(sum(r.freed_calls.value for r in rs)),
                "p50 (top caller)": DASH
                if life is None
                else _iv(life.p50_ns.value, life.p50_ns.low, life.p50_ns.high, ns),
                "p90": DASH
                if life is None
                else _iv(life.p90_ns.value, life.p90_ns.low, life.p90_ns.high, ns),
                "p99": DASH
                if life is None
                else _iv(life.p99_ns.value, life.p99_ns.low, life.p99_ns.high, ns),
                "live bytes": bytes_short(sum(r.live_bytes.value for r in rs)),
            }
        )
    parts.append(
        rows_table(
            table, caption="lifespan distributions per tag (percentiles: its busiest caller)"
        )
    )
    for j, (key, rs) in enumerate(ranked[:TOP_TAGS]):
        w = [sum(x) for x in zip(*(_row_hist(r) for r in rs), strict=True)]
        parts.append(_hist_chart(w, f"lifespans of {key}", f"chart-life-{idx}-{j}"))
    leaks = sorted(
        (r for r in p.rows if r.old_calls.value > 0),
        key=lambda r: (-r.old_bytes.value, r.site, r.caller),
    )
    parts.append("<h3>leaks: outstanding and older than the threshold</h3>")
    if leaks:
        parts.append(
            rows_table(
                [
                    {
                        "tag": r.tag or r.site,
                        "caller": r.caller,
                        "old bytes": _iv(
                            r.old_bytes.value, r.old_bytes.low, r.old_bytes.high, bytes_short
                        ),
                        "old calls": _iv(
                            r.old_calls.value, r.old_calls.low, r.old_calls.high, count_short
                        ),
                        "live bytes": bytes_short(r.live_bytes.value),
                        "top stack": max(r.stacks, key=lambda s: r.stacks[s]) if r.stacks else DASH,
                    }
                    for r in leaks
                ]
            )
        )
    else:
        parts.append("<p>No tracked object outlived the threshold.</p>")
    return "".join(parts)


def _row_cells(row: Mapping[str, Any], fmts: Mapping[str, Fmt]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith(("_low", "_high")) and k.rsplit("_", 1)[0] in fmts:
            continue
        if k in fmts and isinstance(v, (int, float)):
            out[k] = _iv(v, row.get(f"{k}_low"), row.get(f"{k}_high"), fmts[k])
        else:
            out[k] = v
    return out


def fleet_context_section(fc: FleetContext) -> str:
    parts = [
        f"<p>context rows of {fc.hosts} host(s), {fc.intervals} committed interval(s): each "
        "tag's rate is the sum over hosts of its bytes over the seconds the host was sampled; "
        "callers' calls, bytes and shares combine the sampler's summed weights and variances "
        "(the named queries tag-rates, tag-callers, charged-by-subsystem).</p>"
    ]
    rate_fmt: dict[str, Fmt] = {
        "bytes_per_s": _per_s(bytes_short),
        "calls_per_s": _per_s(count_short),
    }
    parts.append(rows_table([_row_cells(t.rate, rate_fmt) for t in fc.tags], caption="tags"))
    caller_fmt: dict[str, Fmt] = {
        "calls": count_short,
        "bytes": bytes_short,
        "call_share": pct,
        "byte_share": pct,
    }
    for j, t in enumerate(fc.tags[:TOP_TAGS]):
        parts.append(f"<h3>callers of <code>{esc(t.tag)}</code> (all hosts)</h3>")
        parts.append(rows_table([_row_cells(c, caller_fmt) for c in t.callers]))
        if t.folded:
            parts.append(
                render_flamegraph(
                    t.folded,
                    title=f"stacks allocating through {t.tag} (all hosts)",
                    unit="sample points",
                    graph_id=f"flame-fleet-context-{j}",
                )
            )
    if fc.charged:
        fmts: dict[str, Fmt] = {
            "bytes": bytes_short,
            "charged_bytes": bytes_short,
            "uncharged_bytes": bytes_short,
            "unknown_bytes": bytes_short,
            "charged_share": pct,
        }
        parts.append(
            rows_table(
                [_row_cells(c, fmts) for c in fc.charged],
                caption="charged vs uncharged bytes per subsystem",
            )
        )
    return "".join(parts)


def fleet_lifespan_section(fl: FleetLifespan) -> str:
    parts = [
        f"<p>lifespan rows of {fl.hosts} host(s), {fl.intervals} committed interval(s): "
        "histograms summed over hosts and intervals (lifespan-by-tag, leaks-fleet). "
        "Percentile intervals are order statistics on n_draws, the smaller of the objects' "
        "and the kept addresses' effective numbers, as for one capture; the addresses' is "
        "taken conservatively (a host's intervals count as if they kept the same "
        "addresses), so these intervals are wide rather than narrow. The mean's interval "
        "is normal, its variance scaled by the same design effect. rows_by_objects: "
        "sampled rows stored without address sums (before 2026-12-07, or a full "
        "addr_sums map), counted by objects.</p>"
    ]
    fmts = {"freed_calls": count_short, "mean_ns": ns, "p50_ns": ns, "p90_ns": ns, "p99_ns": ns}
    shown = [_row_cells({k: v for k, v in t.items() if k != "hist"}, fmts) for t in fl.tags]
    parts.append(rows_table(shown, caption="lifespan distributions per tag"))
    for j, t in enumerate(fl.tags[:TOP_TAGS]):
        parts.append(
            _hist_chart(
                t.get("hist") or [], f"lifespans of {t['tag']} (all hosts)", f"chart-fleet-life-{j}"
            )
        )
    parts.append("<h3>leaks across the fleet (each host's latest interval)</h3>")
    if fl.leaks:
        parts.append(rows_table([_row_cells(r, {"old_bytes": bytes_short}) for r in fl.leaks]))
    else:
        parts.append("<p>No tracked object outlived the threshold.</p>")
    return "".join(parts)
