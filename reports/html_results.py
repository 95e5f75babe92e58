"""The HTML report's result sections: one per ``--result`` file (who-calls, overhead, any kind).

Input: :class:`~allocscope.collector.report_model.ResultEntry` (a result file as read by
:mod:`allocscope.collector.result`). who-calls gets a callers table, a share chart and a flame
graph per site; overhead a CPU-share chart, the functions table and the fexit histogram; any
other kind its payload as generic tables (:func:`~allocscope.reports.html_parts.generic`), so a
new result kind is readable in a report before it has a section of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from allocscope.collector.payloads import ContextPayload, LifespanPayload
from allocscope.collector.report_model import ReportData, ResultEntry
from allocscope.reports import html_context, svg
from allocscope.reports.flamegraph import parse_folded, render_flamegraph
from allocscope.reports.format import count_exact, duration, pct, utc_datetime
from allocscope.reports.html_parts import (
    DASH,
    Block,
    figure,
    generic,
    kv,
    rows_table,
    section,
    value_text,
)
from allocscope.reports.svg import Series, esc


def sections(data: ReportData) -> list[Block]:
    """(id, nav title, html) of each result file's section, in the order given."""
    return [
        (
            f"result-{i}",
            f"{entry.result.kind} ({entry.result.host.hostname})",
            _result_section(entry, i),
        )
        for i, entry in enumerate(data.results)
    ]


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
            rows_table(
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
    rest = generic(
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
            rows_table(
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
    parts.append(generic(p, skip=("event", "seconds", "period_ns", "functions", "exact")))
    return "".join(parts)


def _result_section(entry: ResultEntry, idx: int) -> str:
    r = entry.result
    body = _result_header(entry)
    if r.kind == "who-calls":
        body += _who_calls(entry, idx)
    elif r.kind == "overhead":
        body += _overhead(entry, idx)
    elif r.kind == "context":
        body += html_context.context_result(r.typed(ContextPayload, entry.path), idx)
    elif r.kind == "lifespan":
        body += html_context.lifespan_result(r.typed(LifespanPayload, entry.path), idx)
    else:
        body += generic(r.payload)
    title = f"{r.kind}: {r.host.hostname}, {utc_datetime(r.start, DASH)}"
    return section(f"result-{idx}", title, body, cls=f"result kind-{r.kind}")
