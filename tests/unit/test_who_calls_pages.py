"""who-calls --pages: a page site's callers from the context engine's raw maps (no BPF).

The raw samples are built as the context probe leaves them: a census (R = 1 byte, every
point's weight its own size, variance 0) so every figure has one right answer; a sampled
capture (weights with variance) must give intervals that contain the true totals.
"""

from __future__ import annotations

from allocscope.collector.byte_sampling import SAMPLER_FRAC_BITS, SAMPLER_W2_SHIFT, WeightSums
from allocscope.collector.context import Epoch, RawCapture, RawSample
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.payloads import WhoCallsPayload
from allocscope.collector.who_calls import Options, SiteTarget
from allocscope.collector.who_calls_pages import build_payload
from allocscope.probes.context import CHARGED_NO, SRC_CACHE, SRC_PAGE
from allocscope.reports import who_calls as report

FUNCS = [
    "bpf_trace_run4",
    "__alloc_frozen_pages_noprof",
    "alloc_pages_mpol",
    "shmem_alloc_folio",
    "shmem_alloc_and_add_folio",
    "shmem_get_folio_gfp",
    "do_anonymous_page",
    "__handle_mm_fault",
    "kmem_cache_alloc_noprof",
    "getname_flags",
    "shmem_swapin_folio",
]
BASE = 0xFFFFFFFF81000000
KSYMS = Kallsyms([Symbol(BASE + 0x1000 * i, f, "") for i, f in enumerate(FUNCS)])
PAGE = 4096


def stack(*names: str) -> tuple[int, ...]:
    return tuple(BASE + 0x1000 * FUNCS.index(n) + 0x10 for n in names)


ALLOC = ("bpf_trace_run4", "__alloc_frozen_pages_noprof", "alloc_pages_mpol")
SHMEM_ADD = stack(*ALLOC, "shmem_alloc_folio", "shmem_alloc_and_add_folio", "shmem_get_folio_gfp")
SHMEM_SWAP = stack(*ALLOC, "shmem_alloc_folio", "shmem_swapin_folio")
ANON = stack(*ALLOC, "do_anonymous_page", "__handle_mm_fault")
SLAB = stack("bpf_trace_run4", "kmem_cache_alloc_noprof", "getname_flags")


def sums(hits: int, nbytes: float, bytes_var: float, calls: float, calls_var: float) -> WeightSums:
    """As the probe stores them: calls in fixed point, bytes' squares shifted."""
    frac = 1 << SAMPLER_FRAC_BITS
    return WeightSums(hits, int(nbytes), int(bytes_var) >> SAMPLER_W2_SHIFT,
                      int(calls * frac), int(calls_var * frac))  # fmt: skip


def census(pages: int, order: int = 0) -> WeightSums:
    return sums(pages, pages * (PAGE << order), 0, pages, 0)


def target() -> SiteTarget:
    return SiteTarget(1, "shmem_alloc_folio", [(BASE, BASE + 0x1000)], ["shmem_alloc_folio"],
                      label="shmem_alloc_folio")  # fmt: skip


def raw(samples: list[RawSample]) -> RawCapture:
    pages = sum(int(s.sums.calls) for s in samples if s.source == SRC_PAGE)
    return RawCapture(samples, {}, [0, 0, pages], [0, 0, pages * PAGE])


def payload(r: RawCapture, rate: int = 1, **kw: object) -> WhoCallsPayload:
    opts = Options(sites=["shmem_alloc_folio"], pages=True, **kw)  # type: ignore[arg-type]
    return build_payload(
        r, [target()], KSYMS, opts, epochs=[Epoch(rate, 1.0)], duration=1.0,
        backend="context/raw_tracepoint", before=None, after=None,
    )  # fmt: skip


def test_census_counts_the_site_and_splits_it_by_caller() -> None:
    r = raw(
        [
            RawSample(0, False, SHMEM_ADD, SRC_PAGE, CHARGED_NO, census(990)),
            RawSample(0, False, SHMEM_SWAP, SRC_PAGE, CHARGED_NO, census(5, order=2)),
            RawSample(0, False, ANON, SRC_PAGE, CHARGED_NO, census(700)),  # another page site
            RawSample(BASE + 0x9010, False, SLAB, SRC_CACHE, CHARGED_NO, census(50)),  # slab
        ]
    )
    p = payload(r)
    (block,) = p.sites
    assert block.total_calls == 995 and p.total_calls == 995
    assert block.total_bytes == 990 * PAGE + 5 * 4 * PAGE
    assert block.bytes_low == block.bytes_high == block.total_bytes  # a census is exact
    rows = {c.caller: c for c in p.callers}
    assert set(rows) == {"shmem_alloc_and_add_folio", "shmem_swapin_folio"}
    add = rows["shmem_alloc_and_add_folio"]
    assert add.calls == 990 and add.bytes == 990 * PAGE and add.samples == 990
    assert abs(add.share - 990 / 995) < 1e-9
    assert p.sample_mode == "bytes" and p.sample_rate == 1
    assert p.counters["page_events"] == 1695
    assert any(n.startswith("engine: context") for n in p.notes)
    # under --min-share, the swap-in caller is summed in the other row
    (other,) = p.other
    assert other.callers == 1 and other.calls == 5
    assert any("shmem_swapin_folio" in f for f in p.folded)
    assert not any("do_anonymous_page" in f for f in p.folded)
    # the payload round-trips through its contract, and the report names the sampling
    again = WhoCallsPayload.from_dict(p.to_dict())
    assert again.sites[0].bytes_high == block.bytes_high
    text = report.text(again)
    assert "by bytes" in text and "shmem_alloc_and_add_folio" in text


def test_sampled_estimate_interval_contains_the_truth() -> None:
    # 64 points of a byte sampler with R = 64 KiB over 4 MiB of single pages: each point
    # stands for R bytes (weight R/size pages), the variance of a Poisson total
    rate = 64 * 1024
    hits = 64
    w = sums(hits, hits * rate, hits * rate * rate, hits * rate / PAGE, hits * (rate / PAGE) ** 2)
    p = payload(raw([RawSample(0, False, SHMEM_ADD, SRC_PAGE, CHARGED_NO, w)]), rate=rate)
    (block,) = p.sites
    truth = hits * rate
    assert block.bytes_low is not None and block.bytes_high is not None
    assert block.bytes_low < truth < block.bytes_high
    assert p.callers[0].bytes_low == block.bytes_low


def test_no_point_at_the_site_says_so() -> None:
    p = payload(raw([RawSample(0, False, ANON, SRC_PAGE, CHARGED_NO, census(10))]))
    assert p.total_calls == 0 and not p.callers
    assert any("no sampled page allocation" in n for n in p.notes)
