"""Terminal tables and verdict lines for ``overhead``, ``ab`` and ``ab --toggle``.

Presentation only: takes the typed payloads the collector built (collector/payloads/) and
returns text.
"""

from __future__ import annotations

from tabulate import tabulate

from allocscope.collector.payloads import (
    AbPayload,
    Comparison,
    ExactTiming,
    MemmapComparison,
    OverheadPayload,
    ProfilingMemory,
    TogglePayload,
)
from allocscope.collector.result import Result
from allocscope.reports.format import (
    bytes_short,
    count_exact,
    count_short,
    decimal,
    duration,
    pct,
    pct_change,
)


def overhead_table(result: Result, *, show_absent: bool = False) -> str:
    """The ``allocscope overhead`` table: one row per allocator function present."""
    s = result.settings
    p = result.typed(OverheadPayload)
    host = result.host
    smp = p.samples
    cpus = s.get("cpus")
    lines = [
        f"host {host.hostname}  kernel {host.kernel_release}  "
        f"vm.mem_profiling={host.mem_profiling or 'absent'}"
        + ("  (compressed)" if host.mem_profiling_compressed else ""),
        f"event {s.get('event')} at {s.get('frequency')} Hz, {duration(result.duration)}"
        + (f", CPUs {','.join(map(str, cpus))}" if cpus else "")
        + (f", pid {s['pid']}" if s.get("pid") else "")
        + (" (interrupted)" if s.get("interrupted") else ""),
    ]
    if smp is not None:
        lines.append(
            f"samples {count_exact(smp.total)} ({count_exact(smp.busy)} busy, "
            f"{count_exact(smp.kernel)} with a kernel stack, "
            f"{count_exact(smp.profiler)} in allocscope's own BPF)"
        )
        lost = (
            smp.lost_stack_full
            + smp.lost_stack_collision
            + smp.lost_stack_other
            + smp.lost_counts_full
        )
        if lost:
            lines.append(
                f"warning: {count_exact(lost)} samples lost "
                f"(stack map full {count_exact(smp.lost_stack_full)}, "
                f"collisions {count_exact(smp.lost_stack_collision)}); raise --stack-storage"
            )
    rows = []
    unsampled = []
    for r in p.functions:
        if not r.present and not show_absent:
            continue
        if r.present and not r.inclusive_samples and not show_absent:
            if not r.function.startswith("["):
                unsampled.append(r.function)
                continue
        rows.append(
            [
                r.function,
                r.kind,
                pct(r.inclusive_share, 2),
                pct(r.self_share, 2),
                count_short(r.calls_per_second) if r.calls_per_second is not None else "-",
                decimal(r.ns_per_call, 0),
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
    cps = p.calls_per_second
    lines.append("")
    lines.append(
        "calls/s from kmem tracepoints: kmem_cache_alloc "
        f"{count_short(cps.get('kmem_cache_alloc', 0))}, "
        f"kmalloc {count_short(cps.get('kmalloc', 0))}, mm_page_alloc "
        f"{count_short(cps.get('mm_page_alloc', 0))} ({count_short(cps.get('pages', 0))} pages)"
    )
    lines.append(
        "inclusive/self = share of busy (non-idle) samples; calls/s = events of the "
        "kind's tracepoint(s), shared by every function of that kind;"
    )
    lines.append(
        f"ns/call = inclusive samples x {decimal(p.period_ns or 0)} ns / calls "
        "(samples inside allocscope's own BPF counters excluded)"
    )
    if p.exact is not None:
        lines.append(exact_line(p.exact))
    lines.append(memory_line(p.profiling_memory))
    if unsampled:
        lines.append(f"present but not sampled: {', '.join(unsampled)}")
    absent = s.get("functions_absent") or []
    if absent and not show_absent:
        lines.append(f"not in this kernel: {', '.join(absent)} (--show-absent lists all)")
    return "\n".join(lines) + "\n"


def exact_line(e: ExactTiming) -> str:
    if not e.calls:
        return f"exact (fexit) {e.function}: no calls timed"
    return (
        f"exact (fexit) {e.function}: {count_exact(e.calls)} calls, "
        f"mean {decimal(e.mean_ns)} ns, "
        f"median ~{decimal(e.median_ns)} ns, p99 ~{decimal(e.p99_ns)} ns"
    )


def histogram_table(e: ExactTiming) -> str:
    rows = []
    peak = max((b.count for b in e.hist), default=0) or 1
    for b in e.hist:
        rows.append(
            [
                f"{count_exact(b.lo_ns)} .. {count_exact(b.hi_ns - 1)}",
                f"{count_exact(b.count)}",
                "*" * max(1, round(40 * b.count / peak)),
            ]
        )
    return tabulate(rows, headers=["ns", "calls", "distribution"], tablefmt="simple")


def memory_line(m: ProfilingMemory | None) -> str:
    """The profiling's own memory; its figures are the untyped part of the block (see
    :class:`ProfilingMemory`), read defensively."""

    def size(key: str) -> str:
        v = m.extra.get(key) if m is not None else None
        return bytes_short(v) if isinstance(v, int) and not isinstance(v, bool) else "?"

    memmap = ""
    if m is not None and isinstance(m.extra.get("memmap_total_bytes"), int):
        memmap = (
            f"; struct page + page_ext (vmstat nr_memmap_pages + nr_memmap_boot_pages): "
            f"{size('memmap_total_bytes')} ({size('memmap_boot_bytes')} at boot)"
        )
    if m is None or m.status != "known":
        reason = m.reason if m is not None and m.reason else "not measured"
        return f"profiling memory: unknown ({reason}){memmap}"
    return (
        f"profiling memory: {size('total_bytes')} (page_ext "
        f"{size('page_ext_bytes')}, slab obj_ext "
        f"{size('slab_obj_ext_bytes')}) from {m.extra.get('source')}{memmap}"
    )


# --- ab --------------------------------------------------------------------------------------

METRIC_WORDS = {
    "ns_per_call": "CPU per call",
    "inclusive_share": "CPU share",
    "exact_median_ns": "median time per call (fexit)",
    "exact_mean_ns": "mean time per call (fexit)",
}


def comparison_verdict(c: Comparison, a: str, b: str) -> str:
    """One line a reader can quote, e.g. "pilot spends +41% (CI +35…+47%) CPU per call in
    `__alloc_pages_noprof` vs control, p=0.002, n=12/12"."""
    ratio, lo, hi = c.ratio, c.ci_low, c.ci_high
    if ratio is None:
        return f"{c.function}: not enough data ({c.note})"
    what = METRIC_WORDS.get(c.metric, c.metric)
    ci = f"CI {pct_change(lo)}…{pct_change(hi)}" if lo is not None else "no CI"
    pstr = f"p={c.p_value:.3g}" if c.p_value is not None else "p=-"
    sig = "" if c.significant else " (not significant)"
    return (
        f"{a} spends {pct_change(ratio)} ({ci}) {what} in `{c.function}` vs {b}, {pstr}, "
        f"n={c.n_a}/{c.n_b}{sig}"
    )


def ab_table(payload: AbPayload | TogglePayload) -> str:
    a, b = payload.labels
    rows = []
    for c in payload.comparisons:
        digits = 4 if c.metric == "inclusive_share" else 1
        rows.append(
            [
                c.function,
                c.metric,
                decimal(c.mean_a, digits),
                decimal(c.mean_b, digits),
                pct_change(c.ratio),
                f"{pct_change(c.ci_low)}…{pct_change(c.ci_high)}" if c.ci_low is not None else "-",
                f"{c.p_value:.3g}" if c.p_value is not None else "-",
                f"{c.n_a}/{c.n_b}",
            ]
        )
    head = [f"{payload.extra.get('kind_note', '')}".strip()]
    table = tabulate(
        rows,
        headers=["function", "metric", f"mean {a}", f"mean {b}", f"{a}/{b}", "95% CI", "p", "n"],
        tablefmt="simple",
    )
    lines = [h for h in head if h] + [table, ""]
    lines += [comparison_verdict(c, a, b) for c in payload.verdicts]
    if isinstance(payload, AbPayload) and payload.memory is not None:
        lines.append(memmap_line(payload.memory, a, b))
    for note in payload.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def memmap_line(m: MemmapComparison, a: str, b: str) -> str:
    """Profiling's per-page memory, A minus B (struct page + page_ext from /proc/vmstat)."""
    if m.delta_per_gib is None:
        return f"memory: struct page + page_ext not compared ({m.note})"

    def mib(v: float | None) -> str:
        return "?" if v is None else f"{v / (1 << 20):.2f} MiB"

    delta = m.delta_per_gib
    sign = "+" if delta >= 0 else "-"
    tag = ""
    if m.page_ext_tag_a is not None or m.page_ext_tag_b is not None:
        tag = f"; alloc_page_ext tag {mib(m.page_ext_tag_a)} ({a}) vs {mib(m.page_ext_tag_b)} ({b})"
    return (
        f"memory: struct page + page_ext (vmstat nr_memmap_pages + nr_memmap_boot_pages) "
        f"{mib(m.per_gib_a)}/GiB ({a}) vs {mib(m.per_gib_b)}/GiB ({b}): {a} minus {b} "
        f"{sign}{mib(abs(delta))} per GiB of RAM, {sign}{mib(abs(m.delta_bytes or 0))} "
        f"per {a} host, n={m.n_a}/{m.n_b}{tag}"
    )


def toggle_table(payload: TogglePayload) -> str:
    period = f"{payload.period:.1f}" if payload.period is not None else "?"
    lines = [
        f"vm.mem_profiling alternated {payload.windows} windows of "
        f"{period} s ({payload.pairs} on/off pairs); original value "
        f"{payload.original!r} restored: {payload.restored}"
    ]
    lines.append(ab_table(payload).rstrip("\n"))
    rows = [
        [
            r.function,
            decimal(r.on_ns_per_call, 1),
            decimal(r.off_ns_per_call, 1),
            pct_change(r.ratio),
            f"{count_exact(r.on_calls)}/{count_exact(r.off_calls)}",
        ]
        for r in payload.pooled
        if r.ratio is not None
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
    if payload.interrupted:
        lines.append("interrupted: the windows finished so far are reported")
    return "\n".join(lines) + "\n"
