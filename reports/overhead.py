"""Terminal tables and verdict lines for ``overhead``, ``ab`` and ``ab --toggle``.

Presentation only: takes the payload dicts the collector built and returns text.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from allocscope.collector.units import human_bytes, human_count


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def _signed_pct(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{100 * (ratio - 1):+.1f}%"


def overhead_table(result: dict[str, Any], *, show_absent: bool = False) -> str:
    """The ``allocscope overhead`` table: one row per allocator function present."""
    s = result["settings"]
    p = result["payload"]
    host = result["host"]
    smp = p["samples"]
    lines = [
        f"host {host['hostname']}  kernel {host['kernel_release']}  "
        f"vm.mem_profiling={host.get('mem_profiling') or 'absent'}"
        + ("  (compressed)" if host.get("mem_profiling_compressed") else ""),
        f"event {s['event']} at {s['frequency']} Hz, {result['duration']:.1f} s"
        + (f", CPUs {','.join(map(str, s['cpus']))}" if s.get("cpus") else "")
        + (f", pid {s['pid']}" if s.get("pid") else "")
        + (" (interrupted)" if s.get("interrupted") else ""),
        f"samples {smp['total']:,} ({smp['busy']:,} busy, {smp['kernel']:,} with a kernel stack, "
        f"{smp['profiler']:,} in allocscope's own BPF)",
    ]
    lost = (
        smp["lost_stack_full"]
        + smp["lost_stack_collision"]
        + smp["lost_stack_other"]
        + smp["lost_counts_full"]
    )
    if lost:
        lines.append(
            f"warning: {lost:,} samples lost (stack map full {smp['lost_stack_full']:,}, "
            f"collisions {smp['lost_stack_collision']:,}); raise --stack-storage"
        )
    rows = []
    unsampled = []
    for r in p["functions"]:
        if not r["present"] and not show_absent:
            continue
        if r["present"] and not r["inclusive_samples"] and not show_absent:
            if not r["function"].startswith("["):
                unsampled.append(r["function"])
                continue
        rows.append(
            [
                r["function"],
                r["kind"],
                _pct(r["inclusive_share"]),
                _pct(r["self_share"]),
                human_count(r["calls_per_second"]) if r["calls_per_second"] is not None else "-",
                _num(r["ns_per_call"], 0),
            ]
        )
    lines.append("")
    lines.append(
        tabulate(
            rows,
            headers=["function", "kind", "inclusive", "self", "calls/s", "ns/call"],
            tablefmt="simple",
            colalign=("left", "left", "right", "right", "right", "right"),
        )
    )
    cps = p["calls_per_second"]
    lines.append("")
    lines.append(
        f"calls/s from kmem tracepoints: kmem_cache_alloc {human_count(cps['kmem_cache_alloc'])}, "
        f"kmalloc {human_count(cps['kmalloc'])}, mm_page_alloc "
        f"{human_count(cps['mm_page_alloc'])} ({human_count(cps['pages'])} pages)"
    )
    lines.append(
        "inclusive/self = share of busy (non-idle) samples; calls/s = events of the "
        "kind's tracepoint(s), shared by every function of that kind;"
    )
    lines.append(
        f"ns/call = inclusive samples x {p['period_ns']:,.0f} ns / calls "
        "(samples inside allocscope's own BPF counters excluded)"
    )
    if p.get("exact"):
        lines.append(exact_line(p["exact"]))
    lines.append(memory_line(p.get("profiling_memory") or {}))
    if unsampled:
        lines.append(f"present but not sampled: {', '.join(unsampled)}")
    absent = s.get("functions_absent") or []
    if absent and not show_absent:
        lines.append(f"not in this kernel: {', '.join(absent)} (--show-absent lists all)")
    return "\n".join(lines) + "\n"


def exact_line(e: dict[str, Any]) -> str:
    if not e.get("calls"):
        return f"exact (fexit) {e['function']}: no calls timed"
    return (
        f"exact (fexit) {e['function']}: {e['calls']:,} calls, mean {e['mean_ns']:,.0f} ns, "
        f"median ~{e['median_ns']:,.0f} ns, p99 ~{e['p99_ns']:,.0f} ns"
    )


def histogram_table(e: dict[str, Any]) -> str:
    rows = []
    peak = max((b["count"] for b in e.get("hist", [])), default=0) or 1
    for b in e.get("hist", []):
        rows.append(
            [
                f"{b['lo_ns']:,} .. {b['hi_ns'] - 1:,}",
                f"{b['count']:,}",
                "*" * max(1, round(40 * b["count"] / peak)),
            ]
        )
    return tabulate(rows, headers=["ns", "calls", "distribution"], tablefmt="simple")


def memory_line(m: dict[str, Any]) -> str:
    if m.get("status") != "known":
        return f"profiling memory: unknown ({m.get('reason', 'not measured')})"
    return (
        f"profiling memory: {human_bytes(m['total_bytes'])} (page_ext "
        f"{human_bytes(m['page_ext_bytes'])}, slab obj_ext "
        f"{human_bytes(m['slab_obj_ext_bytes'])}) from {m.get('source')}"
    )


# --- ab --------------------------------------------------------------------------------------

METRIC_WORDS = {
    "ns_per_call": "CPU per call",
    "inclusive_share": "CPU share",
    "exact_median_ns": "median time per call (fexit)",
    "exact_mean_ns": "mean time per call (fexit)",
}


def comparison_verdict(c: dict[str, Any], a: str, b: str) -> str:
    """One line a reader can quote, e.g. "pilot spends +41% (CI +35…+47%) CPU per call in
    `__alloc_pages_noprof` vs control, p=0.002, n=12/12"."""
    ratio, lo, hi = c["ratio"], c["ci_low"], c["ci_high"]
    if ratio is None:
        return f"{c['function']}: not enough data ({c.get('note', '')})"
    what = METRIC_WORDS.get(c["metric"], c["metric"])
    ci = f"CI {_signed_pct(lo)}…{_signed_pct(hi)}" if lo is not None else "no CI"
    p = c.get("p_value")
    pstr = f"p={p:.3g}" if p is not None else "p=-"
    sig = "" if c.get("significant") else " (not significant)"
    return (
        f"{a} spends {_signed_pct(ratio)} ({ci}) {what} in `{c['function']}` vs {b}, {pstr}, "
        f"n={c['n_a']}/{c['n_b']}{sig}"
    )


def ab_table(payload: dict[str, Any]) -> str:
    a, b = payload["labels"]
    rows = []
    for c in payload["comparisons"]:
        rows.append(
            [
                c["function"],
                c["metric"],
                _num(c["mean_a"], 4 if c["metric"] == "inclusive_share" else 1),
                _num(c["mean_b"], 4 if c["metric"] == "inclusive_share" else 1),
                _signed_pct(c["ratio"]),
                f"{_signed_pct(c['ci_low'])}…{_signed_pct(c['ci_high'])}"
                if c["ci_low"] is not None
                else "-",
                f"{c['p_value']:.3g}" if c.get("p_value") is not None else "-",
                f"{c['n_a']}/{c['n_b']}",
            ]
        )
    head = [f"{payload.get('kind_note', '')}".strip()]
    table = tabulate(
        rows,
        headers=["function", "metric", f"mean {a}", f"mean {b}", f"{a}/{b}", "95% CI", "p", "n"],
        tablefmt="simple",
    )
    lines = [h for h in head if h] + [table, ""]
    lines += [comparison_verdict(c, a, b) for c in payload["verdicts"]]
    for note in payload.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def toggle_table(payload: dict[str, Any]) -> str:
    lines = [
        f"vm.mem_profiling alternated {payload['windows']} windows of "
        f"{payload['period']:.1f} s ({payload['pairs']} on/off pairs); original value "
        f"{payload['original']!r} restored: {payload['restored']}"
    ]
    lines.append(ab_table(payload).rstrip("\n"))
    rows = [
        [
            r["function"],
            _num(r["on_ns_per_call"], 1),
            _num(r["off_ns_per_call"], 1),
            _signed_pct(r["ratio"]),
            f"{r['on_calls']:,}/{r['off_calls']:,}",
        ]
        for r in payload.get("pooled", [])
        if r["ratio"] is not None
    ]
    if rows:
        lines.append("")
        lines.append("pooled over all windows (total CPU / total calls):")
        lines.append(
            tabulate(
                rows,
                headers=["function", "ns/call on", "ns/call off", "on/off", "calls on/off"],
                tablefmt="simple",
            )
        )
    if payload.get("interrupted"):
        lines.append("interrupted: the windows finished so far are reported")
    return "\n".join(lines) + "\n"
