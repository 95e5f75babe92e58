"""Comparing ``overhead`` results: pilot hosts vs control hosts, or on/off windows on one host.

Each pilot/control result contributes one value per function and metric (its ns per call and
its CPU share); the groups are compared with a bootstrap CI of the ratio of means (or
medians) and a Mann-Whitney U p-value. Results taken with a different perf event, sampling
frequency or kernel are not comparable (a cpu-clock sample is not a cycles sample, and the
allocator itself differs between kernels), so mixing them is refused unless ``--force``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from allocscope.collector import stats
from allocscope.collector.overhead_payload import hist_quantile
from allocscope.collector.payloads import (
    AbPayload,
    Comparison,
    HistBucket,
    MemmapComparison,
    OverheadPayload,
    PooledRow,
    TogglePayload,
)
from allocscope.collector.result import Result
from allocscope.errors import AllocscopeError

# The headline function for "CPU per page allocation", most specific first.
PRIMARY_PAGE = (
    "__alloc_frozen_pages_noprof",
    "__alloc_pages_noprof",
    "__alloc_pages",
    "__alloc_pages_nodemask",
)
HEADLINE_GROUPS = ("[page allocator]", "[slab allocator]")


@dataclass(frozen=True, slots=True)
class Loaded:
    path: str
    result: Result


def check_comparable(results: Sequence[Loaded], *, force: bool = False) -> list[str]:
    """Refuse mixed event types, frequencies or kernels (unless ``force``); returns notes."""
    notes: list[str] = []
    getters: tuple[tuple[str, Callable[[Result], Any]], ...] = (
        ("event types", lambda r: r.settings.get("event")),
        ("sampling frequencies", lambda r: r.settings.get("frequency")),
        ("kernels", lambda r: r.host.kernel_release),
    )
    for what, get in getters:
        seen: dict[Any, str] = {}
        for item in results:
            seen.setdefault(get(item.result), item.path)
        if len(seen) > 1:
            detail = ", ".join(f"{k} ({p})" for k, p in seen.items())
            if not force:
                raise AllocscopeError(
                    f"results were taken with different {what}: {detail}; they are not "
                    "comparable (use --force to compare anyway)"
                )
            notes.append(f"--force: mixing {what}: {detail}")
    return notes


def function_values(item: Loaded) -> dict[tuple[str, str], float]:
    """(function, metric) -> value for every present function with data in one result."""
    return _window_values(item.result.typed(OverheadPayload, item.path))


def compare(
    function: str,
    metric: str,
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool = False,
    stat: str = "mean",
    alpha: float = 0.05,
    seed: int = stats.DEFAULT_SEED,
    n_boot: int = 2000,
) -> Comparison:
    """One row of an ab table: group statistics, ratio a/b with CI, p-value, verdict flag."""
    row = Comparison(
        function=function,
        metric=metric,
        stat=stat,
        n_a=len(a),
        n_b=len(b),
        mean_a=stats._mean(a) if a else None,
        mean_b=stats._mean(b) if b else None,
        median_a=stats.STATS["median"](a) if a else None,
        median_b=stats.STATS["median"](b) if b else None,
    )
    if len(a) < 2 or len(b) < 2:
        ratio = stats._ratio(stats.STATS[stat](a), stats.STATS[stat](b)) if a and b else None
        return replace(row, ratio=ratio, note="needs at least 2 values per group")
    welch_p = None
    if paired:
        ci = stats.paired_bootstrap_ratio_ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed)
        test = stats.wilcoxon_signed_rank([x - y for x, y in zip(a, b, strict=True)])
        test_name = f"wilcoxon-{test.method}"
    else:
        ci = stats.bootstrap_ratio_ci(a, b, stat=stat, n_boot=n_boot, alpha=alpha, seed=seed)
        test = stats.mann_whitney_u(a, b)
        test_name = f"mann-whitney-{test.method}"
        try:
            welch_p = stats.welch_t(a, b)[2]
        except ValueError:
            pass
    return replace(
        row,
        ratio=ci.ratio,
        ci_low=ci.low,
        ci_high=ci.high,
        p_value=test.p_value,
        test=test_name,
        welch_p=welch_p,
        significant=test.p_value < alpha and ci.excludes_one(),
        note="control value is zero" if ci.ratio is None else "",
    )


def headline(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The verdict lines: CPU per call of the page allocator core and of each allocator group,
    plus any other significant difference."""
    by_key = {(c.function, c.metric): c for c in comparisons}
    picked: list[Comparison] = []
    for name in PRIMARY_PAGE:
        for metric in ("exact_median_ns", "ns_per_call"):
            if (name, metric) in by_key:
                picked.append(by_key[(name, metric)])
        if any(c.function == name for c in picked):
            break
    for g in HEADLINE_GROUPS:
        if (g, "ns_per_call") in by_key:
            picked.append(by_key[(g, "ns_per_call")])
    for c in comparisons:
        if c.significant and c not in picked and c.metric == "ns_per_call":
            picked.append(c)
    return picked


def compare_groups(
    a: Sequence[Loaded],
    b: Sequence[Loaded],
    *,
    labels: tuple[str, str] = ("pilot", "control"),
    stat: str = "mean",
    alpha: float = 0.05,
    seed: int = stats.DEFAULT_SEED,
    force: bool = False,
) -> AbPayload:
    """The ``ab`` payload for two groups of overhead results."""
    if not a or not b:
        raise AllocscopeError("ab needs at least one result in each group")
    notes = check_comparable([*a, *b], force=force)
    va = [function_values(x) for x in a]
    vb = [function_values(x) for x in b]
    keys: list[tuple[str, str]] = []
    for vals in [*va, *vb]:
        for k in vals:
            if k not in keys:
                keys.append(k)
    comparisons = []
    for fn, metric in keys:
        xs = [v[(fn, metric)] for v in va if (fn, metric) in v]
        ys = [v[(fn, metric)] for v in vb if (fn, metric) in v]
        if not xs or not ys or not any([*xs, *ys]):
            continue  # absent, or never sampled anywhere: nothing to compare
        comparisons.append(compare(fn, metric, xs, ys, stat=stat, alpha=alpha, seed=seed))
    for lab, group in zip(labels, (a, b), strict=True):
        states = {x.result.host.mem_profiling for x in group}
        if len(states) > 1:
            notes.append(f"{lab} hosts differ in vm.mem_profiling: {sorted(map(str, states))}")
    return AbPayload(
        labels=labels,
        stat=stat,
        alpha=alpha,
        seed=seed,
        inputs={labels[0]: tuple(x.path for x in a), labels[1]: tuple(x.path for x in b)},
        event=a[0].result.settings.get("event"),
        frequency=a[0].result.settings.get("frequency"),
        kernel=a[0].result.host.kernel_release,
        comparisons=tuple(comparisons),
        verdicts=tuple(headline(comparisons)),
        notes=tuple(notes),
        memory=memmap_comparison(a, b),
    )


GIB = 1 << 30


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _page_ext_tag(item: Loaded) -> float | None:
    """The ``alloc_page_ext`` tag's bytes in an overhead result's profiling_memory block."""
    m = item.result.payload.get("profiling_memory")
    v = m.get("page_ext_bytes") if isinstance(m, dict) else None
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else None


def memmap_comparison(a: Sequence[Loaded], b: Sequence[Loaded]) -> MemmapComparison:
    """Profiling's per-page memory, pilot minus control, straight from /proc/vmstat.

    struct page plus page_ext (nr_memmap_pages + nr_memmap_boot_pages, in each result's host
    metadata) scales with RAM, so the groups are compared per GiB of RAM and the difference
    is scaled back by group A's mean RAM. A pilot with profiling's page_ext (8 bytes per 4 KiB
    page, ~2 MiB per GiB) against a control without it (a kernel without
    CONFIG_MEM_ALLOC_PROFILING, or booted with ``sysctl.vm.mem_profiling=never``) shows it;
    toggling the sysctl at run time does not free page_ext, so the same host shows ~0.
    """

    def figures(group: Sequence[Loaded]) -> tuple[list[float], list[float], list[float]]:
        totals, per_gib, ram = [], [], []
        for item in group:
            h = item.result.host
            total = h.memmap_total_bytes
            if total is None or h.memory_bytes <= 0:
                continue
            totals.append(float(total))
            per_gib.append(total / (h.memory_bytes / GIB))
            ram.append(h.memory_bytes / GIB)
        return totals, per_gib, ram

    ta, ga, ra = figures(a)
    tb, gb, _ = figures(b)
    pa_, pb_ = _mean(ga), _mean(gb)
    delta = pa_ - pb_ if pa_ is not None and pb_ is not None else None
    mean_ram = _mean(ra)
    tags_a = [x for x in map(_page_ext_tag, a) if x is not None]
    tags_b = [x for x in map(_page_ext_tag, b) if x is not None]
    note = ""
    if not ta or not tb:
        note = (
            "no nr_memmap_pages/nr_memmap_boot_pages in "
            + ("either group" if not ta and not tb else "group A" if not ta else "group B")
            + " (kernel before 6.11, or a result written before allocscope recorded them)"
        )
    return MemmapComparison(
        n_a=len(ta),
        n_b=len(tb),
        memmap_bytes_a=_mean(ta),
        memmap_bytes_b=_mean(tb),
        per_gib_a=pa_,
        per_gib_b=pb_,
        delta_per_gib=delta,
        delta_bytes=delta * mean_ram if delta is not None and mean_ram is not None else None,
        page_ext_tag_a=_mean(tags_a),
        page_ext_tag_b=_mean(tags_b),
        note=note,
    )


def _window_values(payload: OverheadPayload) -> dict[tuple[str, str], float]:
    """(function, metric) -> value from one overhead payload (a host, or a toggle window)."""
    out: dict[tuple[str, str], float] = {}
    for row in payload.functions:
        if not row.present:
            continue
        for metric, v in (
            ("ns_per_call", row.ns_per_call),
            ("inclusive_share", row.inclusive_share),
        ):
            if v is not None:
                out[(row.function, metric)] = float(v)
    exact = payload.exact
    if exact is not None:
        for metric, v in (("exact_median_ns", exact.median_ns), ("exact_mean_ns", exact.mean_ns)):
            if v is not None:
                out[(exact.function, metric)] = float(v)
    return out


@dataclass(slots=True)
class Pool:
    """One function over a set of windows (or ``exact:<function>``, the fexit timing)."""

    samples: int = 0
    calls: int = 0
    ns: float = 0.0
    hist: dict[tuple[int, int], int] | None = None
    ns_per_call: float | None = None
    median_ns: float | None = None


def pooled(windows: Sequence[OverheadPayload]) -> dict[str, Pool]:
    """Per function over a set of windows: total samples x period / total calls, and exact."""
    out: dict[str, Pool] = {}
    for w in windows:
        for row in w.functions:
            if not row.present:
                continue
            d = out.setdefault(row.function, Pool())
            d.samples += row.inclusive_samples
            d.calls += row.calls or 0
            d.ns += row.inclusive_samples * (w.period_ns or 0.0)
        exact = w.exact
        if exact is not None:
            d = out.setdefault(f"exact:{exact.function}", Pool(hist={}))
            d.calls += exact.calls
            d.ns += exact.total_ns
            hist = d.hist if d.hist is not None else {}
            for bucket in exact.hist:
                k = (bucket.lo_ns, bucket.hi_ns)
                hist[k] = hist.get(k, 0) + bucket.count
            d.hist = hist
    for d in out.values():
        d.ns_per_call = d.ns / d.calls if d.calls else None
        if d.hist is not None:
            buckets = [HistBucket(lo_ns=lo, hi_ns=hi, count=n) for (lo, hi), n in d.hist.items()]
            d.median_ns = hist_quantile(buckets, 0.5)
    return out


def compare_toggle(
    windows: Sequence[tuple[str, OverheadPayload]],
    *,
    alpha: float = 0.05,
    seed: int = stats.DEFAULT_SEED,
) -> TogglePayload:
    """Paired comparison of on/off windows: ``windows`` is [(state, window payload)] in order,
    paired as (0,1), (2,3), ... The ratio is on/off. The caller adds the run's facts (sysctl
    values, windows, notes) with ``dataclasses.replace``."""
    pairs: list[tuple[OverheadPayload, OverheadPayload]] = []
    for i in range(0, len(windows) - 1, 2):
        (sa, pa), (sb, pb) = windows[i], windows[i + 1]
        if {sa, sb} == {"1", "0"}:
            pairs.append((pa, pb) if sa == "1" else (pb, pa))
    values = [(_window_values(on), _window_values(off)) for on, off in pairs]
    keys: list[tuple[str, str]] = []
    for von, voff in values:
        for k in [*von, *voff]:
            if k not in keys:
                keys.append(k)
    comparisons = []
    for fn, metric in keys:
        xs, ys = [], []
        for von, voff in values:
            if (fn, metric) in von and (fn, metric) in voff:
                xs.append(von[(fn, metric)])
                ys.append(voff[(fn, metric)])
        if xs and any([*xs, *ys]):
            comparisons.append(compare(fn, metric, xs, ys, paired=True, alpha=alpha, seed=seed))
    return TogglePayload(
        labels=("profiling on", "profiling off"),
        sample_notes=tuple(_thin_notes(windows)),
        alpha=alpha,
        seed=seed,
        pairs=len(pairs),
        comparisons=tuple(comparisons),
        verdicts=tuple(headline(comparisons)),
        pooled=tuple(_pooled_rows(pairs)),
    )


def _pooled_rows(pairs: Sequence[tuple[OverheadPayload, OverheadPayload]]) -> list[PooledRow]:
    """Every on window pooled against every off window, per function (and fexit median)."""
    on_pool = pooled([on for on, _ in pairs])
    off_pool = pooled([off for _, off in pairs])
    rows = []
    for name, d in on_pool.items():
        o = off_pool.get(name)
        if o is None:
            continue
        a, b = d.ns_per_call, o.ns_per_call
        rows.append(
            PooledRow(
                function=name,
                on_ns_per_call=a,
                off_ns_per_call=b,
                on_samples=d.samples,
                off_samples=o.samples,
                on_calls=d.calls,
                off_calls=o.calls,
                ratio=a / b if a is not None and b else None,
            )
        )
        if d.hist is not None and o.hist is not None:
            ma, mb = d.median_ns, o.median_ns
            rows.append(
                PooledRow(
                    function=f"{name} (median)",
                    on_ns_per_call=ma,
                    off_ns_per_call=mb,
                    on_samples=0,
                    off_samples=0,
                    on_calls=d.calls,
                    off_calls=o.calls,
                    ratio=ma / mb if ma is not None and mb else None,
                )
            )
    return rows


def _thin_notes(windows: Sequence[tuple[str, OverheadPayload]]) -> list[str]:
    thin = [
        row.inclusive_samples
        for _, w in windows
        for row in w.functions
        if row.function == "[page allocator]" and row.present
    ]
    if thin and min(thin) < 20:
        return [
            f"as few as {min(thin)} page-allocator samples in a window: the sampled ns/call is "
            "noisy; raise -F or --period, or add --exact"
        ]
    return []
