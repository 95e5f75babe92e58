"""The HTML report's allocinfo sections: hosts, subsystems, trends, pilot vs control, sites.

Input: the allocinfo half of :class:`~allocscope.collector.report_model.ReportData` (snapshot
files or a store's ``allocinfo`` dataset, already reduced to totals, bars, trends, changes and
groups by :mod:`allocscope.collector.report_data`). Byte cells use
:func:`~allocscope.reports.format.bytes_compact`, as the charts beside them do; every cell's
exact value is its sort key (``data-v``) and every bar's is in its tooltip.
"""

from __future__ import annotations

from allocscope.collector.containers import LABELS
from allocscope.collector.report_model import (
    CONTROL,
    GROUP_LABEL,
    PILOT,
    Breakdown,
    GroupRow,
    HostRow,
    ReportData,
)
from allocscope.reports import svg
from allocscope.reports.format import (
    bytes_compact,
    count_exact,
    pct_change,
    ratio,
    signed,
    utc_datetime,
)
from allocscope.reports.html_parts import (
    DASH,
    MAX_TABLE_ROWS,
    Block,
    figure,
    section,
    table,
    td,
)
from allocscope.reports.svg import Series, esc


def sections(data: ReportData, colors: dict[str, str]) -> list[Block]:
    """(id, nav title, html) of each allocinfo section that has something to show."""
    if not data.has_allocinfo:
        return []
    blocks = [
        ("hosts", "Hosts", _hosts_section(data)),
        ("subsystems", "Subsystems", _subsystem_section(data, colors)),
        ("trend", "Trends", _trend_section(data, colors)),
        ("groups", "Pilot vs control", _groups_section(data)),
        ("top-sites", "Top sites", _sites_section(data)),
        ("top-changes", "Top changes", _changes_section(data)),
    ]
    return [b for b in blocks if b[2]]


def _hosts_section(data: ReportData) -> str:
    rows = []
    for h in data.hosts[:MAX_TABLE_ROWS]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(h.labels.items()))
        rows.append(
            [
                td(h.hostname),
                td(labels),
                td(h.kernel_release),
                td(h.mem_profiling if h.mem_profiling is not None else DASH),
                td(count_exact(h.snapshots), h.snapshots),
                td(utc_datetime(h.first_t, DASH), h.first_t),
                td(utc_datetime(h.last_t, DASH), h.last_t),
                td(bytes_compact(h.bytes), h.bytes),
                _counted_td(h),
                td(count_exact(h.calls), h.calls),
                td(count_exact(h.sites), h.sites),
            ]
        )
    more = ""
    if len(data.hosts) > MAX_TABLE_ROWS:
        more = f"<p class='note'>{len(data.hosts) - MAX_TABLE_ROWS} more hosts not listed.</p>"
    total = sum(h.bytes for h in data.hosts)
    intro = (
        f"<p>{len(data.hosts)} host(s), {sum(h.snapshots for h in data.hosts)} "
        f"snapshot(s); latest snapshots hold {esc(bytes_compact(total))} in total "
        "(allocinfo's plain sum).</p>" + _counted_note(data.hosts)
    )
    return section(
        "hosts",
        "Hosts",
        intro
        + table(
            [
                "host",
                "labels",
                "kernel",
                "vm.mem_profiling",
                "snapshots",
                "first",
                "last",
                "bytes (latest)",
                "counted once",
                "calls (latest)",
                "sites",
            ],
            rows,
        )
        + more,
    )


def _counted_td(h: HostRow) -> str:
    c = h.counted
    if c is None:
        return td(DASH)
    text = bytes_compact(c.memory_bytes) + ("" if c.exact else " (at least)")
    return td(text, c.memory_bytes)


def _counted_note(hosts: list[HostRow]) -> str:
    """Memory counted once over the hosts' latest snapshots, as top says it: the plain sum
    counts slab and per-CPU chunk pages and the objects inside them (collector/containers.py)."""
    counted = [h.counted for h in hosts if h.counted is not None]
    held = {k for c in counted for k, x in c.containers.items() if x.bytes}
    if not held:
        return ""
    memory = sum(c.memory_bytes for c in counted)
    exact = all(c.exact for c in counted)
    parts = []
    for kind in sorted(held):
        pages = sum(c.container_bytes(kind) for c in counted)
        free = [c.overhead_bytes(kind) for c in counted if c.container_bytes(kind)]
        part = f"{LABELS[kind]} {bytes_compact(pages)}"
        if free and all(x is not None for x in free):
            overhead = sum(x or 0 for x in free)
            part += f", of which free or fragmented (container overhead) {bytes_compact(overhead)}"
        elif kind == "slab":
            part += ", container overhead unknown (no /proc/slabinfo figure recorded)"
        else:
            part += ", container overhead unknown (no kernel counter splits it)"
        parts.append(part)
    bound = "" if exact else " at least"
    return (
        f"<p class='counted-once'>Memory counted once:{bound} "
        f"{esc(bytes_compact(memory))}. The plain sum also counts the objects' containers: "
        f"{esc('; '.join(parts))}.</p>"
    )


def _subsystem_section(data: ReportData, colors: dict[str, str]) -> str:
    parts = []
    top = data.subsystem_totals[:15]
    rest = sum(b for _, b in data.subsystem_totals[15:])
    labels = [s for s, _ in top] + (["other subsystems"] if rest else [])
    values = [float(b) for _, b in top] + ([float(rest)] if rest else [])
    who = "all hosts' latest snapshots" if len(data.hosts) > 1 else "the latest snapshot"
    parts.append(
        figure(
            svg.hbars(
                labels,
                [Series("bytes", values)],
                title="bytes by subsystem",
                colors={"bytes": svg.PALETTE[0]},
                label_width=170,
            ),
            f"Bytes by subsystem, {who}.",
            "chart-subsystems",
        )
    )
    if data.bars is not None and len(data.bars.columns) > 1:
        b = data.bars
        what = "host (latest snapshot)" if data.bars_kind == "host" else "snapshot"
        cap = f"Bytes per subsystem, one bar per {what}" + (f"; {b.note}" if b.note else "") + "."
        parts.append(figure(_stacked(b, colors), cap, "chart-bars"))
    return section("subsystems", "Where kernel memory goes", "".join(parts))


def _stacked(b: Breakdown, colors: dict[str, str]) -> str:
    series = [Series(s, b.values[s]) for s in b.subsystems if s in b.values]
    series += [Series(s, v) for s, v in b.values.items() if s not in b.subsystems]
    return svg.stacked_bars(b.columns, series, title="bytes per subsystem", colors=colors)


def _trend_section(data: ReportData, colors: dict[str, str]) -> str:
    t = data.trend
    if t is None:
        return ""
    series = [Series(s, t.values[s]) for s in t.subsystems]
    body = figure(
        svg.line_chart(t.times, series, title="bytes per subsystem over time", colors=colors),
        f"Bytes per subsystem over time ({t.note}); times in UTC.",
        "chart-trend",
    )
    return section("trend", "Trends over time", body)


def _sites_section(data: ReportData) -> str:
    rows = [
        [
            td(s.site_key, cls="mono"),
            td(s.function, cls="mono"),
            td(s.module),
            td(s.subsystem),
            td(bytes_compact(s.bytes), s.bytes),
            td(count_exact(s.calls), s.calls),
            td(count_exact(s.hosts), s.hosts),
        ]
        for s in data.top_sites
    ]
    scope = (
        "summed over every host's latest snapshot"
        if len(data.hosts) > 1
        else "in the latest snapshot"
    )
    top = data.top_sites[:15]
    chart = (
        figure(
            svg.hbars(
                [f"{x.function} ({x.site_key})" for x in top],
                [Series("bytes", [float(x.bytes) for x in top])],
                title="top sites",
                colors={"bytes": svg.PALETTE[2]},
            ),
            "The largest sites by bytes.",
            "chart-sites",
        )
        if top
        else ""
    )
    return section(
        "top-sites",
        "Top sites",
        f"<p>Largest allocation sites by bytes, {scope}."
        "</p>"
        + chart
        + table(["site", "function", "module", "subsystem", "bytes", "calls", "hosts"], rows),
    )


def _changes_section(data: ReportData) -> str:
    if not data.change_hosts:
        return ""
    rows = []
    for c in data.top_changes:
        d = c.delta_bytes
        rows.append(
            [
                td(c.site_key, cls="mono"),
                td(c.function, cls="mono"),
                td(c.subsystem),
                td(bytes_compact(c.first_bytes), c.first_bytes),
                td(bytes_compact(c.last_bytes), c.last_bytes),
                td(signed(bytes_compact, d), d, "up" if d > 0 else "down"),
                td(count_exact(c.last_calls - c.first_calls), c.last_calls - c.first_calls),
            ]
        )
    intro = (
        f"<p>First vs last snapshot of each of {data.change_hosts} host(s) with two or more "
        "snapshots, summed over those hosts; sites matched by file and function so line "
        "moves between kernel builds do not count as changes.</p>"
    )
    if not rows:
        intro += "<p>No site changed.</p>"
    return section(
        "top-changes",
        "Top changes",
        intro
        + table(["site", "function", "subsystem", "first", "last", "change", "calls change"], rows),
    )


def _ratio_td(r: float | None) -> str:
    if r is None:
        return td(DASH)
    return td(f"{ratio(r)} ({pct_change(r)})", r)


def _group_cells(x: GroupRow) -> list[str]:
    diff = x.pilot_median - x.control_median
    return [
        td(bytes_compact(x.pilot_median), x.pilot_median),
        td(bytes_compact(x.control_median), x.control_median),
        td(signed(bytes_compact, diff), diff, "up" if diff > 0 else "down"),
        _ratio_td(x.ratio),
        td(bytes_compact(x.pilot_mean), x.pilot_mean),
        td(bytes_compact(x.control_mean), x.control_mean),
        _ratio_td(x.mean_ratio),
    ]


GROUP_HEAD = [
    "pilot median",
    "control median",
    "difference",
    "pilot/control",
    "pilot mean",
    "control mean",
    "pilot/control (means)",
]


def _groups_section(data: ReportData) -> str:
    g = data.groups
    if g is None:
        return ""
    mp = "; ".join(
        f"{grp}: " + ", ".join(f"vm.mem_profiling={k} on {n}" for k, n in sorted(v.items()))
        for grp, v in g.mem_profiling.items()
    )
    t = g.total
    r = t.ratio
    verdict = (
        f"<p class='verdict'>Pilot hosts hold {esc(bytes_compact(t.pilot_median))} "
        "per host (median) "
        f"vs {esc(bytes_compact(t.control_median))} on control hosts"
        + (f" ({pct_change(r)})" if r is not None else "")
        + f"; means {esc(bytes_compact(t.pilot_mean))} vs {esc(bytes_compact(t.control_mean))}.</p>"
    )
    intro = (
        f"<p>Hosts labelled <code>{GROUP_LABEL}={PILOT}</code> ({len(g.pilot_hosts)}) vs "
        f"<code>{GROUP_LABEL}={CONTROL}</code> ({len(g.control_hosts)}), each host's latest "
        f"snapshot; a host without a subsystem or site counts as 0 bytes. {esc(mp)}. "
        "For significance tests per site use <code>allocscope query pilot-vs-control</code>.</p>"
    )
    top = g.subsystems[:10]
    chart = figure(
        svg.hbars(
            [x.name for x in top],
            [
                Series(PILOT, [x.pilot_median for x in top]),
                Series(CONTROL, [x.control_median for x in top]),
            ],
            title="pilot vs control by subsystem",
            colors={PILOT: svg.PALETTE[3], CONTROL: svg.PALETTE[0]},
            label_width=170,
        ),
        "Median bytes per host by subsystem, pilot vs control.",
        "chart-groups",
    )
    sub_rows = [[td(x.name), *_group_cells(x)] for x in [t, *g.subsystems]]
    site_rows = [
        [td(x.label or x.name, cls="mono"), td(x.subsystem), *_group_cells(x)] for x in g.sites
    ]
    body = (
        verdict
        + intro
        + chart
        + table(["subsystem", *GROUP_HEAD], sub_rows, caption="by subsystem")
        + table(
            ["site", "subsystem", *GROUP_HEAD],
            site_rows,
            caption="sites with the largest pilot-control difference of medians "
            "(matched by file and function)",
        )
    )
    return section("groups", "Pilot vs control", body)
