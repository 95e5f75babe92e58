"""Building the ``overhead`` payload of one window, and the fexit histogram's arithmetic.

Pure given a :class:`~allocscope.collector.overhead.Window` (counter and stack deltas) and the
allocator list, so every share, call rate and ns/call is unit-tested on synthetic windows. It
returns the typed :class:`~allocscope.collector.payloads.OverheadPayload`; the probe side
(``Sampler``, ``run_overhead``) stays in :mod:`allocscope.collector.overhead`.

The fexit histogram (``probes/alloc_latency.bpf.c``) is log-linear: 16 one-ns slots, then 16
sub-slots per power of two (64 x 16 = 1024 slots up to 2^63 ns), so a quantile read from it is
within 1/16 = 6% of the true value at any scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from allocscope.collector.overhead import (
    GROUP_KIND,
    GROUPS,
    KIND_TRACEPOINTS,
    AllocFunction,
    Window,
    attribute_samples,
    calls_for,
)
from allocscope.collector.payloads import (
    ExactTiming,
    FunctionRow,
    HistBucket,
    OverheadPayload,
    SampleCounts,
    TopSelfRow,
)
from allocscope.probes.alloc_latency import HIST_SLOTS, slot_bounds

__all__ = ["HIST_SLOTS", "exact_payload", "hist_quantile", "hist_slot_bounds", "window_payload"]
CALL_TRACEPOINTS = ("kmem_cache_alloc", "kmalloc", "mm_page_alloc", "pages")


def window_payload(
    window: Window,
    functions: list[AllocFunction],
    frames_of: Callable[[int], tuple[str, ...]],
    frequency: int,
    ncpus: int | None = None,
) -> OverheadPayload:
    """The ``overhead`` payload for one window.

    ``ncpus``: the number of CPUs sampled when every task (idle included) was sampled; the
    period one sample stands for is then measured (seconds x CPUs / samples) instead of
    assumed to be 1/frequency, which matters where the kernel cannot keep the rate up
    (emulated guests, overloaded hosts).
    """
    c = window.counters
    seconds = max(window.seconds, 1e-9)
    period_ns = 1e9 / frequency
    period_source = "nominal"
    if ncpus and c.get("samples", 0) > 0:
        period_ns = seconds * ncpus * 1e9 / c["samples"]
        period_source = "measured"
    att = attribute_samples(window, functions, frames_of)
    busy = c.get("samples", 0) - c.get("idle", 0)
    denom_busy = max(busy, 1)
    denom_all = max(c.get("samples", 0), 1)

    def row(name: str, kind: str, present: bool, inc: int, slf: int) -> FunctionRow:
        calls = calls_for(kind, c) if present else None
        return FunctionRow(
            function=name,
            kind=kind,
            present=present,
            inclusive_samples=inc,
            self_samples=slf,
            inclusive_share=inc / denom_busy if present else None,
            self_share=slf / denom_busy if present else None,
            inclusive_share_all=inc / denom_all if present else None,
            calls_tracepoints=KIND_TRACEPOINTS[kind],
            calls=calls,
            calls_per_second=calls / seconds if calls is not None else None,
            ns_per_call=(inc * period_ns / calls) if calls else None,
        )

    rows = [
        row(f.name, f.kind, f.present, att["inclusive"].get(f.name, 0), att["self"].get(f.name, 0))
        for f in functions
    ]
    any_present = {f.kind for f in functions if f.present}
    for g, kinds in GROUPS.items():
        present = bool(any_present.intersection(kinds))
        rows.append(row(g, GROUP_KIND[g], present, att["groups"][g], att["group_self"][g]))
    return OverheadPayload(
        seconds=window.seconds,
        period_ns=period_ns,
        nominal_period_ns=1e9 / frequency,
        period_source=period_source,
        samples=SampleCounts(
            total=c.get("samples", 0),
            busy=busy,
            idle=c.get("idle", 0),
            user=c.get("user", 0),
            kernel=c.get("kernel", 0),
            profiler=att["profiler"],
            lost_stack_full=c.get("lost_stack_full", 0),
            lost_stack_collision=c.get("lost_stack_collision", 0),
            lost_stack_other=c.get("lost_stack_other", 0),
            lost_counts_full=c.get("lost_counts_full", 0),
        ),
        calls={k: c.get(k, 0) for k in CALL_TRACEPOINTS},
        calls_per_second={k: c.get(k, 0) / seconds for k in CALL_TRACEPOINTS},
        functions=tuple(rows),
        top_self=tuple(
            TopSelfRow(function=f, samples=n, share=n / denom_busy) for f, n in att["top_self"]
        ),
        exact=exact_payload(window.exact) if window.exact is not None else None,
    )


# One definition of the slot layout: the probe half mirrors alloc_latency.bpf.c.
hist_slot_bounds = slot_bounds


def exact_payload(exact: Mapping[str, Any]) -> ExactTiming:
    """fexit timing: calls, mean, median/p90/p99 and the histogram's non-empty buckets.

    The median is the robust per-call cost: the mean also carries the rare calls that slept
    in reclaim or were interrupted, which swamp a 10-40% change in the common path.
    """
    calls = int(exact["calls"])
    total = int(exact["total_ns"])
    hist = []
    for i, n in enumerate(exact["hist"]):
        if n:
            lo, hi = hist_slot_bounds(i)
            hist.append(HistBucket(lo_ns=lo, hi_ns=hi, count=int(n)))
    return ExactTiming(
        function=exact["function"],
        calls=calls,
        total_ns=total,
        mean_ns=total / calls if calls else None,
        median_ns=hist_quantile(hist, 0.5),
        p90_ns=hist_quantile(hist, 0.9),
        p99_ns=hist_quantile(hist, 0.99),
        hist=tuple(hist),
    )


def hist_quantile(buckets: Sequence[HistBucket], q: float) -> float | None:
    """Quantile of a bucket list, linear within the bucket it falls in."""
    total = sum(b.count for b in buckets)
    if total <= 0:
        return None
    target = q * total
    run = 0
    for b in sorted(buckets, key=lambda b: b.lo_ns):
        n = b.count
        if n and run + n >= target:
            return b.lo_ns + (b.hi_ns - b.lo_ns) * (target - run) / n
        run += n
    return None
