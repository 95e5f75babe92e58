"""The ``lifespan`` payload: sampled objects followed to their free, per site/tag and caller.

One payload kind serves both verbs: ``allocscope lifespan`` (lifespans of what was freed, and
what is still live) and ``allocscope leaks`` (outstanding allocations older than
``older_than_ns``, ordered by their bytes); ``view`` says which one produced it. The fleet
side (``collect --lifespan``, the store's dataset, the report section) reads these types.

Every estimate is an :class:`Estimate` (value and its confidence interval, method in
``docs/design/lifespan.md``): objects are tracked with inclusion probability
``P(byte sample hit) * 2**-addr_shift`` and weighted by its inverse (Horvitz-Thompson).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocscope.collector.contracts import Contract, opt, req


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate(Contract):
    """An estimated total or time with its confidence interval."""

    value: float = req("the estimate", nonneg=True)
    low: float = req("interval, low end", nonneg=True)
    high: float = req("interval, high end", nonneg=True)
    var: float | None = opt(
        "variance of a total (additive across rows, hosts and windows: fleet combination)",
        nonneg=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LifespanStats(Contract):
    """Lifespans (allocation to free, ns) of the freed objects of one row, calls-weighted."""

    n_eff: float = req(
        "effective number of independent draws behind the intervals: Kish's over the "
        "sampled objects, or over the kept addresses when that is smaller",
        nonneg=True,
    )
    addr_calls: float | None = opt(
        "sum over the row's kept addresses of their allocated calls totals (Kish's size over "
        "addresses is addr_calls^2 / addr_calls_sq; the fleet report combines these); null "
        "when the intervals count objects (no address stage, or addr_sums was full)",
        nullable=True,
        nonneg=True,
    )
    addr_calls_sq: float | None = opt(
        "sum of the squares of those per-address totals", nullable=True, nonneg=True
    )
    mean_ns: Estimate = req("mean lifespan")
    p50_ns: Estimate = req("median lifespan")
    p90_ns: Estimate = req("90th percentile")
    p99_ns: Estimate = req("99th percentile")


@dataclass(frozen=True, slots=True, kw_only=True)
class HistSlot(Contract):
    """One log2 bucket of a time histogram: [low_ns, high_ns)."""

    low_ns: int = req("bucket start, ns", nonneg=True)
    high_ns: int = req("bucket end, ns", nonneg=True)
    sampled: int = req("sampled objects in the bucket", nonneg=True)
    calls: float = req("estimated calls in the bucket", nonneg=True)
    calls_var: float | None = opt("sum of squared calls weights in the bucket", nonneg=True)
    bytes: float | None = opt("estimated bytes in the bucket (age histograms)", nonneg=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class LifespanRow(Contract):
    """One (site or tag, caller): what was allocated in the window, freed, and still live."""

    site: str = req("allocating function (call_site), or [page_alloc] for pages")
    tag: str | None = opt("exact allocinfo tag (file:line func:f), when the kernel has them")
    source: str = req("kmalloc | kmem_cache_alloc | mm_page_alloc")
    caller: str = req("first frame above the site that is not allocator machinery")
    sampled: int = req("objects tracked (sampled) from this row", nonneg=True)
    freed_sampled: int = req("of them, seen freed in the window", nonneg=True)
    live_sampled: int = req("of them, still live at the end", nonneg=True)
    missed_frees: int = req("tracked objects allocated again while tracked", nonneg=True)
    allocated_calls: Estimate = req("calls allocated in the window")
    allocated_bytes: Estimate = req("bytes allocated in the window")
    freed_calls: Estimate = req("of them, freed in the window")
    live_calls: Estimate = req("outstanding at the end of the window")
    live_bytes: Estimate = req("outstanding bytes at the end of the window")
    old_calls: Estimate = req("outstanding and older than older_than_ns")
    old_bytes: Estimate = req("outstanding bytes older than older_than_ns")
    lifespan: LifespanStats | None = req("lifespans of the freed objects (null: none freed)")
    lifespan_hist: tuple[HistSlot, ...] = opt("freed objects per log2 lifespan", default=())
    age_hist: tuple[HistSlot, ...] = opt("live objects per log2 age at the end", default=())
    stacks: dict[str, int] = opt(
        "sampled stacks (folded, root first) -> live sampled objects (leaks) or all sampled",
        default={},
        nonneg=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LifespanPayload(Contract):
    """lifespan / leaks: sampled allocations followed to their free, per site and caller."""

    KIND: ClassVar[str] = "lifespan"

    view: str = req("lifespan | leaks: the verb that produced it (rows are the same)")
    backend: str = req("hooks used")
    tag_mode: str = req("exact-tag | call-site")
    sample_rate: int = req("mean gap R between byte sample points, bytes", nonneg=True)
    addr_shift: int = req("addresses kept: 1 in 2**addr_shift", nonneg=True)
    page_sample_rate: int | None = opt(
        "page allocations' mean gap between byte sample points, bytes (their own sampler; "
        "null in results before 2026-12-07, when pages used sample_rate)",
        nullable=True,
        nonneg=True,
    )
    confidence: float = req("interval confidence level", nonneg=True)
    older_than_ns: int = req("leaks: outstanding objects older than this", nonneg=True)
    window_ns: int = req("the window's length as the probe's clock saw it", nonneg=True)
    sampled: int = req("objects tracked", nonneg=True)
    freed_sampled: int = req("tracked objects seen freed", nonneg=True)
    live_sampled: int = req("tracked objects live at the end", nonneg=True)
    missed_frees: int = req("tracked objects allocated again while tracked", nonneg=True)
    counters: dict[str, int] = req("the probe's counters (events, kept, full, stack failures)")
    traced_frees: tuple[str, ...] = req("free tracepoints hooked")
    untraced_frees: tuple[str, ...] = req("free paths with no tracepoint here (missed)")
    rows: tuple[LifespanRow, ...] = req("per (site, caller), ordered for the view")
    notes: tuple[str, ...] = opt("what the reader must know", default=())
    interrupted: bool | None = opt("stopped early")
