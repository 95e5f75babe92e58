"""``context`` without BPF: the payload built from simulated sampler output (the same integer
arithmetic as probes/sampler.bpf.h, via test_byte_sampling's simulator) over synthetic kernel
stacks. Checks attribution (slab call sites, page sites from the stack, kmalloc's large pages
set aside), the estimates and their intervals against the simulated truth, the charged
share, the census, the rate keeper, the fallback notes and the report."""

from __future__ import annotations

import random

from test_byte_sampling import _simulate

from allocscope.collector.byte_sampling import WeightSums
from allocscope.collector.context import (
    Epoch,
    Options,
    RateKeeper,
    RawCapture,
    RawSample,
    next_rate,
    rate_for,
    tag_mode_notes,
)
from allocscope.collector.context_payload import build_payload, page_site
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.payloads import ContextPayload
from allocscope.collector.rollup import Filters
from allocscope.probes.context import CHARGED_NO, CHARGED_YES, SRC_CACHE, SRC_KMALLOC, SRC_PAGE
from allocscope.reports import context as report

FUNCS = [
    "bpf_trace_run4",
    "__kmalloc_noprof",
    "do_sys_poll",
    "__x64_sys_poll",
    "__x64_sys_ppoll",
    "__alloc_frozen_pages_noprof",
    "alloc_pages_mpol",
    "shmem_alloc_folio",
    "shmem_alloc_and_add_folio",
    "shmem_get_folio_gfp",
    "__kmalloc_large_noprof",
    "seq_read_iter",
    "kmem_cache_alloc_noprof",
    "alloc_empty_file",
    "path_openat",
    "getname_flags",
    "do_sys_openat2",
]
BASE = 0xFFFFFFFF81000000
KSYMS = Kallsyms([Symbol(BASE + 0x1000 * i, f, "") for i, f in enumerate(FUNCS)])


def at(name: str) -> int:
    return BASE + 0x1000 * FUNCS.index(name) + 0x10


def stack(*names: str) -> tuple[int, ...]:
    return tuple(at(n) for n in names)


POLL = stack("bpf_trace_run4", "__kmalloc_noprof", "do_sys_poll", "__x64_sys_poll")
PPOLL = stack("bpf_trace_run4", "__kmalloc_noprof", "do_sys_poll", "__x64_sys_ppoll")
SHMEM = stack(
    "bpf_trace_run4",
    "__alloc_frozen_pages_noprof",
    "alloc_pages_mpol",
    "shmem_alloc_folio",
    "shmem_alloc_and_add_folio",
    "shmem_get_folio_gfp",
)
LARGE = stack(
    "bpf_trace_run4", "__alloc_frozen_pages_noprof", "__kmalloc_large_noprof", "seq_read_iter"
)
FILE = stack("bpf_trace_run4", "kmem_cache_alloc_noprof", "alloc_empty_file", "path_openat")
NAME = stack("bpf_trace_run4", "kmem_cache_alloc_noprof", "getname_flags", "do_sys_openat2")


def _work(rng: random.Random, n: int = 40000) -> list[tuple[str, int]]:
    """poll: 3 of 4 calls at 1 KiB; ppoll: 1 of 4 at 4 KiB; and the open path's two caches."""
    out: list[tuple[str, int]] = []
    for _ in range(n):
        out.append(("poll", 1024) if rng.random() < 0.75 else ("ppoll", 4096))
        out.append(("file", 256))
        out.append(("name", 4096))
        if rng.random() < 0.05:
            out.append(("shmem", 4096))
    return out


KEYS = {
    "poll": (at("do_sys_poll") + 5, POLL, SRC_KMALLOC, CHARGED_NO),
    "ppoll": (at("do_sys_poll") + 5, PPOLL, SRC_KMALLOC, CHARGED_NO),
    "file": (at("alloc_empty_file") + 5, FILE, SRC_CACHE, CHARGED_YES),
    "name": (at("getname_flags") + 5, NAME, SRC_CACHE, CHARGED_NO),
    "shmem": (0, SHMEM, SRC_PAGE, CHARGED_YES),
}


def _raw(work: list[tuple[str, int]], rate: int, rng: random.Random) -> RawCapture:
    sums = _simulate(work, rate, rng)
    samples = [
        RawSample(KEYS[k][0], False, KEYS[k][1], KEYS[k][2], KEYS[k][3], s) for k, s in sums.items()
    ]
    samples.append(RawSample(0, False, LARGE, SRC_PAGE, CHARGED_NO, WeightSums(1, rate, 0, 1, 0)))
    return RawCapture(samples, {}, [len(work), 0, 0], [sum(s for _, s in work), 0, 0])


def _payload(
    rate: int, seed: int = 7, n: int = 40000, **kw: object
) -> tuple[ContextPayload, list[tuple[str, int]]]:
    rng = random.Random(seed)
    work = _work(rng, n)
    opts = Options(rate=rate, confidence=0.999, **kw)  # type: ignore[arg-type]
    p = build_payload(
        _raw(work, rate, rng),
        KSYMS,
        opts,
        epochs=[Epoch(rate, 2.0)],
        duration=2.0,
        backend="raw_tracepoint",
        tag_mode="call-site",
        charge_source="btf",
    )
    return p, work


def test_two_callers_call_and_byte_shares_fall_in_their_intervals() -> None:
    p, work = _payload(4096)
    tag = next(t for t in p.tags if t.tag == "do_sys_poll")
    n_poll = sum(1 for k, _ in work if k == "poll")
    n_ppoll = sum(1 for k, _ in work if k == "ppoll")
    true_call = n_poll / (n_poll + n_ppoll)
    true_byte = n_poll * 1024 / (n_poll * 1024 + n_ppoll * 4096)
    assert abs(true_call - true_byte) > 0.3  # the two ratios really differ
    by = {c.caller: c for c in tag.callers}
    assert set(by) == {"__x64_sys_poll", "__x64_sys_ppoll"}
    c = by["__x64_sys_poll"]
    assert c.call_share_low <= true_call <= c.call_share_high
    assert c.byte_share_low <= true_byte <= c.byte_share_high
    assert tag.calls_low <= n_poll + n_ppoll <= tag.calls_high
    assert tag.calls_per_s == tag.calls / 2.0


def test_census_is_exact() -> None:
    p, work = _payload(1, n=1500)  # a census draws one gap per byte: keep it small
    tag = next(t for t in p.tags if t.tag == "do_sys_poll")
    calls = sum(1 for k, _ in work if k in ("poll", "ppoll"))
    assert tag.calls == tag.calls_low == tag.calls_high == calls
    by = {c.caller: c for c in tag.callers}
    assert by["__x64_sys_ppoll"].calls == sum(1 for k, _ in work if k == "ppoll")


def test_page_site_is_the_first_frame_past_the_page_allocator() -> None:
    p, _ = _payload(4096)
    tag = next(t for t in p.tags if t.tag == "shmem_alloc_folio")
    assert tag.match == "page-stack" and tag.sources == ("page",)
    assert [c.caller for c in tag.callers] == ["shmem_alloc_and_add_folio"]
    # kmalloc's large path: its pages are the kmalloc event's, not a tag of their own
    assert all(t.function != "seq_read_iter" for t in p.tags)
    assert p.counters["kmalloc_large_page_points"] == 1
    names = [KSYMS.function_at(a) for a in LARGE]
    assert page_site(names) == ("", -1)
    assert page_site([]) == (None, -1)


def test_charged_and_uncharged_are_separated() -> None:
    p, _ = _payload(4096)
    by = {t.tag: t for t in p.tags}
    assert by["alloc_empty_file"].charged_share == 1.0
    assert by["getname_flags"].charged_share == 0.0
    assert by["do_sys_poll"].charged_share_high is not None
    assert by["do_sys_poll"].charged_share_high < 0.01


def test_filters_limit_and_rollup() -> None:
    p, _ = _payload(4096, filters=Filters.of(["getname*", "alloc_empty*"]))
    assert {t.tag for t in p.tags} == {"getname_flags", "alloc_empty_file"}
    p, _ = _payload(4096, limit=1)
    assert len(p.tags) == 1 and p.tags_total == 4
    assert p.tags[0].tag == "getname_flags"  # the most bytes
    p, _ = _payload(4096, by="subsystem")
    assert [t.tag for t in p.tags] == ["unknown"]  # call sites have no source file
    p, _ = _payload(4096, min_bytes=10e6)
    assert all(t.bytes >= 10e6 for t in p.tags)


def test_payload_round_trips_and_the_report_renders() -> None:
    p, _ = _payload(4096)
    assert ContextPayload.from_dict(p.to_dict()) == p
    text = report.text(p)
    assert "do_sys_poll" in text and "<- __x64_sys_poll" in text
    assert " - " in text or "-  " in text  # no allocinfo here: live columns are "-"
    folded = report.folded(p)
    assert (
        "do_sys_poll;__x64_sys_poll;do_sys_poll" in folded or "__x64_sys_poll;do_sys_poll" in folded
    )


def test_rate_follows_the_budget() -> None:
    # 1 GB/s at 2 us per point within 0.2% of a CPU: 1000 points/s, R = 1 MB
    assert rate_for(1e9, 0.002, 2e-6) == 1_000_000
    assert rate_for(0, 0.002) == 1
    assert next_rate(1000, 5000) == 5000  # up at once
    assert next_rate(1000, 10) == 500  # down by half at most
    assert next_rate(1000, 1100) == 1000  # small changes ignored
    written: list[int] = []
    vals = [(0, 0, 0)]
    keeper = RateKeeper(lambda: vals[-1], written.append, Options(budget=0.005), lambda s: None)
    vals.append((10, 100_000_000, 5))
    keeper.tick(0.1)  # 1 GB/s
    assert written == [1_000_000]
    keeper.close(0.5, (20, 200_000_000, 9))
    assert [e.rate for e in keeper.epochs] == [256 * 1024, 1_000_000]
    assert keeper.epochs[-1].bytes == 100_000_000


def test_fallback_is_stated() -> None:
    mode, notes = tag_mode_notes(True, True, 0, True, tags_seen=False)
    assert mode == "call-site" and "vm.mem_profiling is 0" in notes[0]
    mode, notes = tag_mode_notes(True, True, 0, True, tags_seen=True)  # 6.12 sets it anyway
    assert mode == "exact-tag" and "allocinfo does not count" in notes[0]
    mode, notes = tag_mode_notes(True, True, 1, True, tags_seen=False)
    assert mode == "call-site" and "no sample carried" in notes[0]
    assert tag_mode_notes(True, True, 1, True) == ("exact-tag", [])
    mode, notes = tag_mode_notes(False, False, None, False)
    assert mode == "call-site" and "no /proc/allocinfo" in notes[0]
