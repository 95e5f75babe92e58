"""The ``context`` payload: per allocation tag (or call site), allocinfo's live numbers plus what
a byte-sampled capture saw during the window: rates, memcg-charged share and callers, each
estimate with its confidence interval.

This is the contract the fleet side builds on (``collect --context``, the store's context
dataset, named queries, Prometheus, the report section): the names below are stable. Every
estimate is a triple ``x``, ``x_low``, ``x_high`` (the interval at ``confidence``); see
docs/design/context.md for how they are derived from the sampler's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocscope.collector.contracts import Contract, opt, req


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSums(Contract):
    """The byte sampler's raw sums for one key (collector/byte_sampling.py WeightSums, in
    bytes and calls): additive across keys, hosts and windows, so fleet estimates and their
    intervals are combined from them, never from intervals (docs/design/store.md)."""

    hits: int = req("sample points", nonneg=True)
    calls: float = req("sum of calls weights (the calls estimate)", nonneg=True)
    calls_var: float = req("sum of squared calls weights (its variance)", nonneg=True)
    bytes: float = req("sum of bytes weights (the bytes estimate)", nonneg=True)
    bytes_var: float = req("sum of squared bytes weights (its variance)", nonneg=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextCaller(Contract):
    """One caller of a tag: its estimated calls and bytes, and its shares of the tag's."""

    caller: str = req("the attributed caller (function, or a chain with --depth)")
    samples: int = req("sample points that fell on this caller's allocations", nonneg=True)
    calls: float = req("estimated calls during the window", nonneg=True)
    calls_low: float = req("calls interval, low end", nonneg=True)
    calls_high: float = req("calls interval, high end", nonneg=True)
    bytes: float = req("estimated bytes allocated during the window", nonneg=True)
    bytes_low: float = req("bytes interval, low end", nonneg=True)
    bytes_high: float = req("bytes interval, high end", nonneg=True)
    call_share: float = req("share of the tag's calls", nonneg=True)
    call_share_low: float = req("call share interval, low end", nonneg=True)
    call_share_high: float = req("call share interval, high end", nonneg=True)
    byte_share: float = req("share of the tag's bytes", nonneg=True)
    byte_share_low: float = req("byte share interval, low end", nonneg=True)
    byte_share_high: float = req("byte share interval, high end", nonneg=True)
    charged_share: float | None = opt("share of this caller's bytes charged to a memcg")
    callers: int | None = opt("for the 'other' row: how many callers it sums", nonneg=True)
    sums: SampleSums | None = opt("raw sampler sums of this caller (fleet combination)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextTag(Contract):
    """One allocation tag (exact allocinfo tag) or call site (the fallback): live numbers from
    allocinfo, and the window's estimates from the sampled capture."""

    tag: str = req("allocinfo tag 'file:line func:name', or the site function (call-site mode)")
    function: str = req("clone-free function name")
    file: str | None = opt("source file (exact tags and allocinfo-matched sites)")
    line: int | None = opt("source line (exact tags)", nonneg=True)
    module: str = opt("module, empty for the core kernel", default="")
    subsystem: str = req("subsystem (collector/subsystems.toml rules)")
    sources: tuple[str, ...] = req("hooks its samples came from: kmalloc, kmem_cache_alloc, page")
    match: str = req("exact-tag | call-site | page-stack: how the site was found")
    live_bytes: int | None = req("allocinfo live bytes after the window (null: no allocinfo)")
    live_calls: int | None = req("allocinfo live calls after the window (null: no allocinfo)")
    live_bytes_delta: int | None = opt("allocinfo bytes after - before the window")
    live_calls_delta: int | None = opt("allocinfo calls after - before the window")
    samples: int = req("sample points on this tag", nonneg=True)
    calls: float = req("estimated calls during the window", nonneg=True)
    calls_low: float = req("calls interval, low end", nonneg=True)
    calls_high: float = req("calls interval, high end", nonneg=True)
    bytes: float = req("estimated bytes allocated during the window", nonneg=True)
    bytes_low: float = req("bytes interval, low end", nonneg=True)
    bytes_high: float = req("bytes interval, high end", nonneg=True)
    calls_per_s: float = req("calls / window seconds", nonneg=True)
    bytes_per_s: float = req("bytes / window seconds", nonneg=True)
    byte_share: float = req("share of all bytes allocated in the window", nonneg=True)
    byte_share_low: float = req("byte share interval, low end", nonneg=True)
    byte_share_high: float = req("byte share interval, high end", nonneg=True)
    charged_share: float | None = req("share of its bytes charged to a memcg (null: unknown)")
    charged_share_low: float | None = req("charged share interval, low end")
    charged_share_high: float | None = req("charged share interval, high end")
    charged_call_share: float | None = opt("share of its calls charged to a memcg")
    callers: tuple[ContextCaller, ...] = req("top callers by estimated calls, then 'other'")
    folded: dict[str, int] = opt("folded stack -> sample points", default={}, nonneg=True)
    sums: SampleSums | None = opt("raw sampler sums of the tag (fleet combination)")
    charged_sums: SampleSums | None = opt("raw sampler sums of its memcg-charged points")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateEpoch(Contract):
    """One stretch of the window sampled with one mean gap R."""

    rate: int = req("mean gap R in bytes (1 = census)", nonneg=True)
    seconds: float = req("how long it lasted", nonneg=True)
    events: int = req("allocation events counted in it", nonneg=True)
    bytes: int = req("bytes allocated in it (counted, exact)", nonneg=True)
    hits: int = req("sample points taken in it", nonneg=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextTotals(Contract):
    """Every event the probe counted (exact, per-CPU counters) next to the sampled estimate of
    the same total: the capture's own check of its estimator."""

    events: int = req("allocation events counted (all hooks)", nonneg=True)
    bytes: int = req("bytes of those events, counted", nonneg=True)
    calls_est: float = req("calls estimated from the samples", nonneg=True)
    calls_est_low: float = req("interval, low end", nonneg=True)
    calls_est_high: float = req("interval, high end", nonneg=True)
    bytes_est: float = req("bytes estimated from the samples", nonneg=True)
    bytes_est_low: float = req("interval, low end", nonneg=True)
    bytes_est_high: float = req("interval, high end", nonneg=True)
    by_source: dict[str, int] = opt("events counted per hook", default={}, nonneg=True)
    bytes_by_source: dict[str, int] = opt("bytes counted per hook", default={}, nonneg=True)
    sums: SampleSums | None = opt("raw sampler sums over every sample point")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextPayload(Contract):
    """context: every allocation tag at once, byte-sampled: rates, charged share, callers."""

    KIND: ClassVar[str] = "context"

    backend: str = req("hooks: raw_tracepoint, or raw_tracepoint+tracepoint")
    tag_mode: str = req("exact-tag | call-site")
    allocinfo_source: str | None = req("text | ioctl | null (no allocinfo on this kernel)")
    mem_profiling: int | None = opt("vm.mem_profiling during the window (null: no sysctl)")
    charge_source: str = req("btf | tracepoint-field | none: where the memcg charge bit comes from")
    duration: float = req("seconds captured", nonneg=True)
    confidence: float = req("interval confidence level", nonneg=True)
    rate_mode: str = req("auto | fixed")
    rate: int = req("the last mean gap R in bytes", nonneg=True)
    budget: float | None = opt("CPU budget of the sampled work (auto), fraction of one CPU")
    rate_epochs: tuple[RateEpoch, ...] = req("the R values used, in order")
    totals: ContextTotals = req("counted events vs their sampled estimate")
    tags: tuple[ContextTag, ...] = req("tags, biggest byte rate first (after filters, -n, -m)")
    tags_total: int = req("tags seen before -n and -m", nonneg=True)
    by: str = opt("roll-up key: site | function | file | module | subsystem", default="site")
    counters: dict[str, int] = opt(
        "stack-walk failures, hash-full drops, missing stacks: never silent", default={}
    )
    map_bytes: int | None = opt("memory of the probe's maps (approximate)", nonneg=True)
    skip_rules: tuple[str, ...] = opt("frames skipped to find the caller", default=())
    notes: tuple[str, ...] = opt("what the reader must know (fallbacks, losses)", default=())
