"""The HTML report's fleet sections: results ingested into a store, merged across hosts.

Input: ``fleet_callers`` and ``fleet_overhead`` of
:class:`~allocscope.collector.report_model.ReportData` (who-calls callers merged per site;
each host's latest overhead result, medians across hosts, pilot vs control when the hosts carry
a ``group`` label). The numbers come from the store queries in
:mod:`allocscope.collector.report_store`; this module only lays them out.
"""

from __future__ import annotations

from allocscope.collector.report_model import CONTROL, PILOT, ReportData
from allocscope.reports import html_context, svg
from allocscope.reports.flamegraph import render_flamegraph
from allocscope.reports.format import count_exact, decimal, pct
from allocscope.reports.html_parts import DASH, Block, figure, kv, rows_table, section
from allocscope.reports.svg import Series, esc


def sections(data: ReportData) -> list[Block]:
    """(id, nav title, html) of the fleet sections that have something to show."""
    blocks: list[Block] = []
    if data.fleet_callers:
        blocks.append(("fleet-callers", "Callers (fleet)", _fleet_callers_section(data)))
    overhead = _fleet_overhead_section(data)
    if overhead:
        blocks.append(("fleet-overhead", "Overhead (fleet)", overhead))
    if data.fleet_context is not None:
        body = html_context.fleet_context_section(data.fleet_context)
        blocks.append(
            (
                "fleet-context",
                "allocinfo with callers (fleet)",
                section("fleet-context", "allocinfo with callers across the fleet", body),
            )
        )
    if data.fleet_lifespan is not None:
        body = html_context.fleet_lifespan_section(data.fleet_lifespan)
        blocks.append(
            (
                "fleet-lifespan",
                "Lifespans (fleet)",
                section("fleet-lifespan", "Lifespans and leaks across the fleet", body),
            )
        )
    return blocks


def _fleet_callers_section(data: ReportData) -> str:
    parts = [
        "<p>who-calls results ingested into the store, merged per site across hosts: calls "
        "and bytes summed, share = a caller's calls over all results' calls of the site; the "
        "per-host share range shows how much hosts differ. The flame graph sums every "
        "result's stacks.</p>"
    ]
    for i, fc in enumerate(data.fleet_callers):
        parts.append(f"<h3>callers of <code>{esc(fc.site)}</code></h3>")
        parts.append(
            kv(
                [
                    ("results", count_exact(fc.results)),
                    ("hosts", count_exact(fc.hosts)),
                    ("total calls", count_exact(fc.total_calls)),
                    ("backends", fc.backends or DASH),
                ]
            )
        )
        if fc.callers:
            parts.append(rows_table(fc.callers, caption="callers, all hosts"))
        if fc.folded:
            parts.append(
                render_flamegraph(
                    fc.folded,
                    title=f"who calls {fc.site} (all hosts)",
                    unit="samples",
                    graph_id=f"flame-fleet-{i}",
                )
            )
    return section("fleet-callers", "Callers across the fleet", "".join(parts))


def _fleet_overhead_section(data: ReportData) -> str:
    fo = data.fleet_overhead
    if fo is None:
        return ""
    parts = [
        f"<p>overhead results ingested into the store: each of {fo.hosts} host(s)' latest "
        "result, medians across hosts"
        + (", pilot vs control by the hosts' <code>group</code> label" if fo.grouped else "")
        + ". For confidence intervals and p-values use <code>allocscope ab</code>.</p>"
    ]
    top = [r for r in fo.rows if r.get("inclusive_share_median")][:12]
    if fo.grouped:
        top = [r for r in top if r.get("pilot_ns_per_call") and r.get("control_ns_per_call")]
        if top:
            parts.append(
                figure(
                    svg.hbars(
                        [str(r["function"]) for r in top],
                        [
                            Series(PILOT, [float(r["pilot_ns_per_call"]) for r in top]),
                            Series(CONTROL, [float(r["control_ns_per_call"]) for r in top]),
                        ],
                        title="ns per call, pilot vs control",
                        fmt=lambda v: f"{decimal(v)} ns",
                        binary=False,
                        colors={PILOT: svg.PALETTE[3], CONTROL: svg.PALETTE[0]},
                    ),
                    "Median estimated CPU ns per call, pilot vs control hosts.",
                    "chart-fleet-overhead",
                )
            )
    elif top:
        parts.append(
            figure(
                svg.hbars(
                    [str(r["function"]) for r in top],
                    [Series("inclusive", [float(r["inclusive_share_median"]) for r in top])],
                    title="allocator CPU share across hosts",
                    fmt=lambda v: pct(v, 2),
                    colors={"inclusive": svg.PALETTE[3]},
                ),
                "Median inclusive CPU share across hosts.",
                "chart-fleet-overhead",
            )
        )
    first = (
        (
            "function",
            "kind",
            "pilot_hosts",
            "control_hosts",
            "pilot_ns_per_call",
            "control_ns_per_call",
            "ns_per_call_ratio",
            "pilot_inclusive_share",
            "control_inclusive_share",
        )
        if fo.grouped
        else ()
    )
    parts.append(rows_table(fo.rows, first, caption="allocator functions, medians across hosts"))
    return section("fleet-overhead", "Overhead across the fleet", "".join(parts))
