"""overhead's arithmetic on synthetic windows: shares, calls, ns/call, profiler exclusion,
function resolution per kernel, the exact-timing histogram."""

from __future__ import annotations

from typing import Any

import pytest

from allocscope.collector.overhead import (
    diff_samples,
    exact_target,
    parse_function_arg,
    resolve_functions,
)
from allocscope.collector.overhead_payload import exact_payload, hist_slot_bounds, window_payload
from allocscope.collector.payloads import OverheadPayload
from allocscope.collector.sampler import CounterSample, parse_cpus
from allocscope.probes.alloc_latency import HIST_SLOTS, LatencyTotals, slot_bounds, slot_of
from allocscope.probes.oncpu import COUNTERS

K612 = {
    "__alloc_pages_noprof",
    "get_page_from_freelist",
    "kmem_cache_alloc_noprof",
    "__kmalloc_noprof",
    "__pgalloc_tag_add",
}
STACKS = {
    1: ("get_page_from_freelist", "__alloc_pages_noprof", "alloc_pages_mpol_noprof", "vfs_write"),
    2: ("__pgalloc_tag_add", "get_page_from_freelist", "__alloc_pages_noprof", "vfs_write"),
    3: ("memset", "kmem_cache_alloc_noprof", "alloc_empty_file", "do_sys_open"),
    # our counter running inside kmem_cache_alloc: the profiler's, not the allocator's
    4: (
        "bpf_prog_6deef7357e7b4530_count_cache_alloc",
        "bpf_trace_run2",
        "__bpf_trace_kmem_cache_alloc",
        "kmem_cache_alloc_noprof",
        "do_sys_open",
    ),
    # the allocator body under an fentry trampoline (--exact): the allocator's
    5: (
        "get_page_from_freelist",
        "__alloc_pages_noprof",
        "bpf_trampoline_6442494890",
        "__alloc_pages_noprof",
        "vfs_write",
    ),
    6: ("copy_user_generic", "vfs_write"),
}


def _snap(t: float, stacks: dict[int, int], **counters: int) -> CounterSample:
    c = dict.fromkeys(COUNTERS, 0)
    c.update(counters)
    return CounterSample(t, c, stacks)


def _payload() -> dict[str, Any]:
    functions = resolve_functions(K612.__contains__)
    a = _snap(0.0, {1: 5})
    b = _snap(
        2.0,
        {1: 15, 2: 5, 3: 20, 4: 7, 5: 10, 6: 40},
        samples=200,
        idle=80,
        kmem_cache_alloc=1000,
        kmalloc=10,
        mm_page_alloc=100,
        pages=120,
    )
    return window_payload(diff_samples(a, b), functions, lambda sid: STACKS[sid], 100).to_dict()


def _row(p: dict[str, Any], name: str) -> dict[str, Any]:
    rows = p["functions"]
    assert isinstance(rows, list)
    return next(r for r in rows if r["function"] == name)


def test_shares_calls_and_ns_per_call() -> None:
    p = _payload()
    assert p["samples"]["busy"] == 120 and p["samples"]["profiler"] == 7
    page = _row(p, "__alloc_pages_noprof")
    # stacks 1 (10 new), 2 (5), 5 (10): 25 samples with it on the stack, none as leaf
    assert page["inclusive_samples"] == 25 and page["self_samples"] == 0
    assert page["inclusive_share"] == pytest.approx(25 / 120)
    assert page["calls"] == 100 and page["calls_per_second"] == pytest.approx(50)
    assert page["ns_per_call"] == pytest.approx(25 * 1e7 / 100)  # period 1/100 s
    assert _row(p, "__pgalloc_tag_add")["self_samples"] == 5
    slab = _row(p, "kmem_cache_alloc_noprof")
    assert slab["inclusive_samples"] == 20  # the 7 samples in our BPF counter are excluded
    assert slab["calls"] == 1000
    assert _row(p, "[slab allocator]")["calls"] == 1010  # kmem_cache_alloc + kmalloc
    assert _row(p, "[page allocator]")["inclusive_samples"] == 25
    absent = _row(p, "__alloc_pages")
    assert absent["present"] is False and absent["ns_per_call"] is None
    assert p["top_self"][0] == {
        "function": "copy_user_generic",
        "samples": 40,
        "share": pytest.approx(40 / 120),
    }


def test_measured_period_when_every_task_is_sampled() -> None:
    functions = resolve_functions(K612.__contains__)
    w = diff_samples(_snap(0, {}), _snap(2.0, {1: 10}, samples=100, mm_page_alloc=10))
    p = window_payload(w, functions, lambda sid: STACKS[sid], 100, ncpus=2)
    assert p.period_source == "measured"
    assert p.period_ns == pytest.approx(2.0 * 2 * 1e9 / 100)  # 40 ms, not 10 ms
    page = next(r for r in p.functions if r.function == "__alloc_pages_noprof")
    assert page.ns_per_call == pytest.approx(10 * 4e7 / 10)
    assert OverheadPayload.from_dict(p.to_dict()) == p


def test_function_resolution_per_kernel() -> None:
    names = {
        f.name: f
        for f in resolve_functions(
            {"__alloc_pages_nodemask"}.__contains__, [("shmem_alloc_folio", "page")]
        )
    }
    assert names["__alloc_pages_nodemask"].present and not names["__alloc_pages_noprof"].present
    assert names["shmem_alloc_folio"].tracepoints == ("mm_page_alloc",)
    assert exact_target({"__alloc_pages_noprof", "__alloc_pages"}.__contains__) == (
        "__alloc_pages_noprof"
    )
    assert exact_target({"__alloc_frozen_pages_noprof", "__alloc_pages_noprof"}.__contains__) == (
        "__alloc_frozen_pages_noprof"
    )
    assert parse_function_arg("foo_kmalloc_thing") == ("foo_kmalloc_thing", "kmalloc")
    assert parse_function_arg("bar:slab") == ("bar", "slab")
    with pytest.raises(ValueError, match="kind must be"):
        parse_function_arg("bar:nonsense")


def test_parse_cpus() -> None:
    assert parse_cpus("0") == [0]
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus("a-b")
    with pytest.raises(ValueError, match="does not exist"):
        parse_cpus("0-4095")


def test_exact_histogram_slots_and_quantiles() -> None:
    assert hist_slot_bounds(5) == (5, 6)
    assert hist_slot_bounds(10 * 16 + 3) == (1024 + 3 * 64, 1024 + 4 * 64)
    # every slot is contiguous with the next one from 16 ns up
    for slot in range(4 * 16, 40 * 16 - 1):
        assert hist_slot_bounds(slot)[1] == hist_slot_bounds(slot + 1)[0]
    hist = [0] * (64 * 16)
    hist[10 * 16] = 90  # [1024, 1088)
    hist[20 * 16] = 10  # ~1 ms: calls that slept
    e = exact_payload({"function": "f", "calls": 100, "total_ns": 100 * 11000, "hist": hist})
    assert e.median_ns is not None and 1024 <= e.median_ns < 1088 and e.mean_ns == 11000
    assert e.p99_ns is not None and e.p99_ns >= 1 << 20


def test_exact_window_is_the_difference_of_two_reads() -> None:
    hist0 = [0] * HIST_SLOTS
    hist1 = list(hist0)
    hist0[slot_of(1000)] = 3
    hist1[slot_of(1000)] = 10
    hist1[slot_of(5)] = 2
    a = CounterSample(0.0, {}, {}, LatencyTotals("f", 3, 3000, tuple(hist0)))
    b = CounterSample(1.0, {}, {}, LatencyTotals("f", 12, 9010, tuple(hist1)))
    w = diff_samples(a, b)
    assert w.exact is not None
    assert (w.exact["function"], w.exact["calls"], w.exact["total_ns"]) == ("f", 9, 6010)
    assert w.exact["hist"][slot_of(1000)] == 7 and w.exact["hist"][5] == 2
    assert sum(w.exact["hist"]) == 9
    # a window has timing only when both of its reads do
    assert diff_samples(_snap(0, {}), b).exact is None


def test_slot_of_mirrors_the_c_and_falls_in_its_bounds() -> None:
    # the C: ns < 16 -> slot ns; else octave o = log2(ns), sub = (ns >> (o - 4)) & 15
    assert [slot_of(n) for n in (0, 15, 16, 17, 31, 32, 1024, 1088)] == [
        0,
        15,
        4 * 16,
        4 * 16 + 1,
        4 * 16 + 15,
        5 * 16,
        10 * 16,
        10 * 16 + 1,
    ]
    for ns in [*range(0, 5000), *(1 << k for k in range(13, 63)), (1 << 63) + 12345]:
        lo, hi = slot_bounds(slot_of(ns))
        assert lo <= ns < hi, (ns, lo, hi)
    assert slot_of(1 << 70) == HIST_SLOTS - 1  # the C clamps to the last slot
    with pytest.raises(ValueError, match="never filled"):
        slot_bounds(16)
    for slot in [*range(16), *range(64, HIST_SLOTS)]:  # the payload's buckets are the probe's
        assert hist_slot_bounds(slot) == slot_bounds(slot)
