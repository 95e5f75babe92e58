"""overhead's arithmetic on synthetic windows: shares, calls, ns/call, profiler exclusion,
function resolution per kernel, the exact-timing histogram."""

from __future__ import annotations

import pytest

from allocscope.collector.overhead import (
    COUNTERS,
    Snapshot,
    diff_snapshots,
    exact_target,
    parse_cpus,
    parse_function_arg,
    resolve_functions,
)
from allocscope.collector.overhead_payload import exact_payload, hist_slot_bounds, window_payload
from allocscope.collector.payloads import OverheadPayload

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


def _snap(t: float, stacks: dict[int, int], **counters: int) -> Snapshot:
    c = dict.fromkeys(COUNTERS, 0)
    c.update(counters)
    return Snapshot(t, c, stacks)


def _payload() -> dict[str, object]:
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
    return window_payload(diff_snapshots(a, b), functions, lambda sid: STACKS[sid], 100).to_dict()


def _row(p: dict[str, object], name: str) -> dict[str, object]:
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
    w = diff_snapshots(_snap(0, {}), _snap(2.0, {1: 10}, samples=100, mm_page_alloc=10))
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
