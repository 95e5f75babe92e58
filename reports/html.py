"""The ``allocscope report`` page: one self-contained HTML file that works offline.

CSS and JS (``report.css``, ``report.js`` next to this module) are inlined once; charts are
static SVG from :mod:`allocscope.reports.svg` and :mod:`allocscope.reports.flamegraph`, so
the page shows everything with scripting off, and the script only adds flame-graph zoom and
search and table sorting. Nothing is fetched from the network.

All text that came from data (host names, file and function names, labels, result payloads)
passes through :func:`esc`, which also redacts raw kernel addresses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from allocscope.collector.report_data import (
    CONTROL,
    GROUP_LABEL,
    PILOT,
    Breakdown,
    GroupRow,
    ReportData,
    ResultEntry,
)
from allocscope.reports import svg
from allocscope.reports.flamegraph import parse_folded, render_flamegraph
from allocscope.reports.format import (
    bytes_compact,
    count_exact,
    decimal,
    duration,
    pct,
    pct_change,
    ratio,
    signed,
    significant,
    utc_datetime,
)
from allocscope.reports.svg import Series, esc

MAX_TABLE_ROWS = 200
DASH = "\u2014"  # a missing value


def asset(name: str) -> str:
    return resources.files("allocscope.reports").joinpath(name).read_text(encoding="utf-8")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("allocscope")
    except Exception:  # noqa: BLE001 - a missing dist-info must not break a report
        return "dev"


# --- cells ---------------------------------------------------------------------------------


def value_text(key: str, value: Any) -> tuple[str, float | None]:
    """(text, sort value) for a payload value, choosing units from the key's name."""
    k = key.lower()
    if value is None:
        return DASH, None
    if isinstance(value, bool):
        return ("yes" if value else "no"), float(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if k == "ratio" or k.endswith("_ratio"):
            return ratio(v), v
        if "share" in k or k.startswith("ci_") or k.endswith("_pct_frac"):
            return pct(v, 2), v
        if "bytes" in k:
            return bytes_compact(v), v
        if k.endswith("_ns") or k.startswith("ns_") or "ns_per" in k:
            return f"{decimal(v, 1)} ns", v
        if k.endswith("per_second"):
            return f"{decimal(v, 1)}/s", v
        if isinstance(value, int) or v.is_integer() and abs(v) >= 1:
            return count_exact(v), v
        return significant(v), v
    if isinstance(value, (list, tuple)):
        if all(not isinstance(x, (dict, list)) for x in value):
            return ", ".join(str(x) for x in value), None
        return json.dumps(value)[:200], None
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)[:200], None
    return str(value), None


def td(text: str, sort: float | None = None, cls: str = "") -> str:
    attrs = f' data-v="{sort!r}"' if sort is not None else ""
    if sort is not None:
        cls = (cls + " num").strip()
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{esc(text)}</td>"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", caption: str = ""
) -> str:
    """Rows are pre-rendered ``<td>`` strings (see :func:`td`); headers are plain text."""
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return (
        f'<div class="tablewrap"><table class="sortable {cls}">{cap}<thead><tr>{head}'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def kv(pairs: Sequence[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return f'<dl class="kv">{items}</dl>'


def figure(svg_text: str, caption: str, fig_id: str) -> str:
    return f'<figure id="{esc(fig_id)}">{svg_text}<figcaption>{esc(caption)}</figcaption></figure>'


# --- allocinfo sections ------------------------------------------------------------------


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
        f"snapshot(s); latest snapshots hold {esc(bytes_compact(total))} in total.</p>"
    )
    return _section(
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
                "calls (latest)",
                "sites",
            ],
            rows,
        )
        + more,
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
    return _section("subsystems", "Where kernel memory goes", "".join(parts))


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
    return _section("trend", "Trends over time", body)


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
    return _section(
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
    return _section(
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
    return _section("groups", "Pilot vs control", body)


# --- result sections ---------------------------------------------------------------------


def _folded_of(value: Any, source: str) -> dict[str, float]:
    """The folded stacks of a payload in any of the shapes a writer might use."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}
    if isinstance(value, str):
        return {k: float(v) for k, v in parse_folded(value.splitlines(), source).items()}
    if isinstance(value, list):
        if all(isinstance(x, str) for x in value):
            return {k: float(v) for k, v in parse_folded(value, source).items()}
        out: dict[str, float] = {}
        for x in value:
            if isinstance(x, (list, tuple)) and len(x) == 2:
                out[str(x[0])] = out.get(str(x[0]), 0.0) + float(x[1])
            elif isinstance(x, Mapping) and "stack" in x:
                n = x.get("count", x.get("calls", x.get("samples", 0)))
                out[str(x["stack"])] = out.get(str(x["stack"]), 0.0) + float(n or 0)
        return out
    return {}


def _rows_table(
    rows: Sequence[Mapping[str, Any]],
    first: Sequence[str] = (),
    caption: str = "",
    skip: Sequence[str] = (),
) -> str:
    """A table of a list of dicts: the ``first`` keys in order, then the rest as they come."""
    keys: list[str] = [k for k in first if any(k in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in keys and k not in skip:
                keys.append(k)
    body = []
    for r in rows[:MAX_TABLE_ROWS]:
        cells = []
        for k in keys:
            text, sort = value_text(k, r.get(k))
            cells.append(td(text, sort, "mono" if k in ("caller", "function", "site") else ""))
        body.append(cells)
    more = f" (first {MAX_TABLE_ROWS} of {len(rows)})" if len(rows) > MAX_TABLE_ROWS else ""
    return table(keys, body, caption=caption + more)


def _generic(payload: Mapping[str, Any], skip: Sequence[str] = (), depth: int = 0) -> str:
    """Any payload: scalars as a key/value list, lists of dicts as tables, dicts recursively."""
    scalars: list[tuple[str, str]] = []
    blocks: list[str] = []
    for k, v in payload.items():
        if k in skip:
            continue
        if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            blocks.append(_rows_table(v, caption=k))
        elif isinstance(v, Mapping) and v and depth < 3:
            if all(not isinstance(x, (Mapping, list)) for x in v.values()):
                scalars.extend((f"{k}.{kk}", value_text(kk, vv)[0]) for kk, vv in v.items())
            else:
                blocks.append(f"<h4>{esc(k)}</h4>" + _generic(v, depth=depth + 1))
        else:
            scalars.append((k, value_text(k, v)[0]))
    return (kv(scalars) if scalars else "") + "".join(blocks)


def _result_header(entry: ResultEntry) -> str:
    r = entry.result
    h = r.host
    pairs = [
        ("file", entry.path),
        ("host", h.hostname),
        ("kernel", h.kernel_release),
        ("vm.mem_profiling", h.mem_profiling if h.mem_profiling is not None else "absent"),
        ("start", utc_datetime(r.start, DASH)),
        ("duration", duration(r.duration)),
    ]
    if h.labels:
        pairs.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(h.labels.items()))))
    settings = {k: v for k, v in r.settings.items() if v not in (None, [], {}, "")}
    if settings:
        pairs.append(
            ("settings", ", ".join(f"{k}={value_text(k, v)[0]}" for k, v in settings.items()))
        )
    return kv(pairs)


WHO_CALLS_FIRST = ("caller", "calls", "share", "ci_low", "ci_high", "bytes")


def _who_calls_block(p: Mapping[str, Any], idx: str, source: str) -> str:
    site = str(p.get("site", "?"))
    head = [("site", site)]
    for k in ("backend", "total_calls", "lost", "sample", "sampled", "events", "duration"):
        if k in p and not isinstance(p[k], (list, dict)):
            head.append((k, value_text(k, p[k])[0]))
    parts = [f"<h3>callers of <code>{esc(site)}</code></h3>", kv(head)]
    callers = p.get("callers")
    if isinstance(callers, list) and callers:
        rows = [c for c in callers if isinstance(c, Mapping)]
        other = [c for c in p.get("other") or [] if isinstance(c, Mapping)]
        one_site = len({str(c.get("site")) for c in rows + other}) <= 1
        parts.append(
            _rows_table(
                rows + other, WHO_CALLS_FIRST, caption="callers", skip=("site",) if one_site else ()
            )
        )
        top = rows[:15]
        labels = [str(c.get("caller", "?")) for c in top]
        shares = [float(c.get("share") or 0.0) for c in top]
        parts.append(
            figure(
                svg.hbars(
                    labels,
                    [Series("share", shares)],
                    title="caller shares",
                    fmt=lambda v: pct(v, 1),
                    colors={"share": svg.PALETTE[2]},
                ),
                "Share of the site's calls by caller.",
                f"chart-callers-{idx}",
            )
        )
    folded = _folded_of(p.get("folded"), source)
    if folded:
        rate = p.get("sample_rate")
        unit = "samples" if isinstance(rate, (int, float)) and rate > 1 else "calls"
        parts.append(
            render_flamegraph(folded, title=f"who calls {site}", unit=unit, graph_id=f"flame-{idx}")
        )
        parts.append(
            "<p class='note'>Root at the bottom, the allocation site on top. Hover "
            "for counts; click a frame to zoom, search by regular expression.</p>"
        )
    elif "folded" in p:
        parts.append("<p class='note'>No stacks in this result (nothing sampled).</p>")
    rest = _generic(
        p,
        skip=(
            "site",
            "backend",
            "total_calls",
            "lost",
            "callers",
            "folded",
            "other",
            *[k for k, _ in head],
        ),
    )
    return "".join(parts) + rest


def _who_calls(entry: ResultEntry, idx: int) -> str:
    p = entry.result.payload
    sites = p.get("sites")
    if "callers" not in p and isinstance(sites, list) and sites:
        return "".join(
            _who_calls_block(s, f"{idx}-{j}", entry.path)
            for j, s in enumerate(sites)
            if isinstance(s, Mapping)
        )
    return _who_calls_block(p, str(idx), entry.path)


def _overhead(entry: ResultEntry, idx: int) -> str:
    p = entry.result.payload
    parts = []
    head = [(k, value_text(k, p[k])[0]) for k in ("event", "seconds", "period_ns") if k in p]
    if head:
        parts.append(kv(head))
    funcs = [f for f in p.get("functions") or [] if isinstance(f, Mapping)]
    present = [f for f in funcs if f.get("present", True)]
    absent = [str(f.get("function")) for f in funcs if not f.get("present", True)]
    if present:
        shown = [f for f in present if (f.get("inclusive_share") or 0) > 0] or present
        shown = sorted(shown, key=lambda f: -(f.get("inclusive_share") or 0.0))[:20]
        labels = [str(f.get("function")) for f in shown]
        chart = svg.hbars(
            labels,
            [
                Series("inclusive", [float(f.get("inclusive_share") or 0) for f in shown]),
                Series("self", [float(f.get("self_share") or 0) for f in shown]),
            ],
            title="allocator CPU share",
            fmt=lambda v: pct(v, 2),
            colors={"inclusive": svg.PALETTE[3], "self": svg.PALETTE[1]},
        )
        parts.append(
            figure(
                chart,
                "Share of busy CPU samples with the function on the stack "
                "(inclusive) or running (self).",
                f"chart-overhead-{idx}",
            )
        )
        parts.append(
            _rows_table(
                present,
                (
                    "function",
                    "kind",
                    "inclusive_share",
                    "self_share",
                    "calls_per_second",
                    "ns_per_call",
                    "inclusive_samples",
                    "self_samples",
                    "calls",
                ),
                caption="allocator functions",
                skip=("present", "calls_tracepoints"),
            )
        )
    if absent:
        parts.append(f"<p class='note'>Not in this kernel: {esc(', '.join(absent))}.</p>")
    exact = p.get("exact")
    if isinstance(exact, Mapping):
        hist = [h for h in exact.get("hist") or [] if isinstance(h, Mapping) and h.get("count")]
        parts.append(f"<h4>exact timing of <code>{esc(exact.get('function', '?'))}</code></h4>")
        parts.append(kv([(k, value_text(k, v)[0]) for k, v in exact.items() if k != "hist"]))
        if hist:
            parts.append(
                figure(
                    svg.hbars(
                        [f"{h.get('lo_ns')}\u2013{h.get('hi_ns')} ns" for h in hist],
                        [Series("calls", [float(h["count"]) for h in hist])],
                        title="latency histogram",
                        fmt=count_exact,
                        colors={"calls": svg.PALETTE[0]},
                        binary=False,
                    ),
                    "Latency histogram (fexit).",
                    f"chart-exact-{idx}",
                )
            )
    parts.append(_generic(p, skip=("event", "seconds", "period_ns", "functions", "exact")))
    return "".join(parts)


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
            parts.append(_rows_table(fc.callers, caption="callers, all hosts"))
        if fc.folded:
            parts.append(
                render_flamegraph(
                    fc.folded,
                    title=f"who calls {fc.site} (all hosts)",
                    unit="samples",
                    graph_id=f"flame-fleet-{i}",
                )
            )
    return _section("fleet-callers", "Callers across the fleet", "".join(parts))


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
    parts.append(_rows_table(fo.rows, first, caption="allocator functions, medians across hosts"))
    return _section("fleet-overhead", "Overhead across the fleet", "".join(parts))


def _result_section(entry: ResultEntry, idx: int) -> str:
    r = entry.result
    body = _result_header(entry)
    if r.kind == "who-calls":
        body += _who_calls(entry, idx)
    elif r.kind == "overhead":
        body += _overhead(entry, idx)
    else:
        body += _generic(r.payload)
    title = f"{r.kind}: {r.host.hostname}, {utc_datetime(r.start, DASH)}"
    return _section(f"result-{idx}", title, body, cls=f"result kind-{r.kind}")


# --- the page ----------------------------------------------------------------------------


def _section(sid: str, title: str, body: str, cls: str = "") -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<section id="{esc(sid)}"{c}><h2>{esc(title)}</h2>{body}</section>'


def _nav(sections: Sequence[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in sections)
    return f"<nav>{links}</nav>"


def render_report(data: ReportData) -> str:
    """The whole page as one string."""
    order = [s for s, _ in data.subsystem_totals]
    if data.trend is not None:
        order += [s for s in data.trend.subsystems if s not in order]
    colors = svg.color_map(order + ["other subsystems"])
    blocks: list[tuple[str, str, str]] = []  # (id, nav title, html)

    def add(sid: str, title: str, html_text: str) -> None:
        if html_text:
            blocks.append((sid, title, html_text))

    if data.has_allocinfo:
        add("hosts", "Hosts", _hosts_section(data))
        add("subsystems", "Subsystems", _subsystem_section(data, colors))
        add("trend", "Trends", _trend_section(data, colors))
        add("groups", "Pilot vs control", _groups_section(data))
        add("top-sites", "Top sites", _sites_section(data))
        add("top-changes", "Top changes", _changes_section(data))
    if data.fleet_callers:
        add("fleet-callers", "Callers (fleet)", _fleet_callers_section(data))
    add("fleet-overhead", "Overhead (fleet)", _fleet_overhead_section(data))
    for i, entry in enumerate(data.results):
        add(
            f"result-{i}",
            f"{entry.result.kind} ({entry.result.host.hostname})",
            _result_section(entry, i),
        )
    if not blocks:
        add(
            "empty",
            "Nothing",
            _section(
                "empty",
                "Nothing to show",
                "<p>No allocinfo snapshots and no results were given.</p>",
            ),
        )
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
    sources = "".join(f"<li>{esc(s)}</li>" for s in data.sources)
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="allocscope report">',
            f"<title>{esc(data.title)}</title><style>{asset('report.css')}</style></head><body>",
            f'<header><h1>{esc(data.title)}</h1><p class="meta">Generated '
            f"{esc(utc_datetime(data.generated_at, DASH))} by allocscope {esc(_version())}. "
            "Self-contained: "
            "works offline; hover any bar or frame for exact values.</p>",
            f'<details class="sources"><summary>inputs</summary><ul>{sources}</ul></details>',
            _nav([(i, t) for i, t, _ in blocks]),
            "</header><main>",
            (
                f'<section id="notes" class="notes"><h2>Notes</h2><ul>{notes}</ul></section>'
                if notes
                else ""
            ),
            "".join(h for _, _, h in blocks),
            '</main><pre id="selftest-out" hidden></pre>',
            f"<script>{_script_safe(asset('report.js'))}</script></body></html>\n",
        ]
    )


def _script_safe(js: str) -> str:
    """Inline JS must not contain ``</script`` (it would end the element early)."""
    return js.replace("</script", "<\\/script")
