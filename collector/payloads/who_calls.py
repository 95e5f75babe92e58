"""The ``who-calls`` payload: one block per site, one row per caller, the allocinfo tag join.

Field order is the order ``collector/who_calls_payload.py`` has always written them (the JSON
stays byte-compatible with earlier result files); see :mod:`allocscope.collector.contracts`
for how optional, nullable and unknown fields are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocscope.collector.contracts import Contract, opt, req


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocCounts(Contract):
    """allocinfo totals of the tag's line(s)."""

    bytes: int = req("live bytes (a delta may be negative)")
    calls: int = req("live calls (a delta may be negative)")


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocinfoJoin(Contract):
    """The tag's allocinfo line(s) read before and after the window, and the delta during it."""

    source: str = req("where allocinfo was read")
    match: str = req("exact-tag | allocinfo-line | function-name | none")
    tags: tuple[str, ...] = req("the allocinfo tags joined")
    after: AllocCounts | None = req("totals after the window (null: not read)")
    before: AllocCounts | None = req("totals before the window (null: not read)")
    delta: AllocCounts | None = req("after - before (null unless both were read)")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerRow(Contract):
    """One caller of a site."""

    site: str | None = opt("the site as the user named it")
    caller: str = req("the attributed caller (function, or a chain with --depth)")
    calls: int = req("estimated calls from this caller during the window", nonneg=True)
    samples: int | None = opt("stacks sampled", nonneg=True)
    share: float = req("estimated share of the site's calls", nonneg=True)
    ci_low: float | None = opt("share interval, low end", nonneg=True)
    ci_high: float | None = opt("share interval, high end", nonneg=True)
    bytes: int | None = opt("estimated bytes", nonneg=True)
    bytes_low: int | None = opt("bytes interval, low end (page sites: byte-sampled)", nonneg=True)
    bytes_high: int | None = opt("bytes interval, high end (page sites)", nonneg=True)
    tag: str | None = opt("the exact allocinfo tag the probe read")
    pid: int | None = opt("thread group id, with --per-process")
    comm: str | None = opt("command name, with --per-process")
    caller_address: str | None = opt("caller's return address, with --addresses")
    joined_bytes: int | None = opt("the tag's allocinfo bytes apportioned to this caller")
    joined_calls: int | None = opt("the tag's allocinfo calls apportioned to this caller")


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherRow(Contract):
    """The callers of one site under --min-share, summed into one row."""

    site: str | None = opt("the site as the user named it")
    caller: str = req('always "other"')
    callers: int | None = opt("callers summed", nonneg=True)
    calls: int = req("their estimated calls", nonneg=True)
    samples: int | None = opt("their stacks sampled", nonneg=True)
    share: float = req("their summed share", nonneg=True)
    ci_low: float | None = opt("share interval, low end", nonneg=True)
    ci_high: float | None = opt("share interval, high end", nonneg=True)
    bytes: int | None = opt("their estimated bytes", nonneg=True)
    joined_bytes: int | None = opt("their apportioned allocinfo bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteBlock(Contract):
    """One site of a who-calls capture."""

    site: str = req("as the user typed it")
    function: str = req("clone-free function name")
    tag: str | None = opt("allocinfo tag joined", nullable=True)
    tags_seen: tuple[str, ...] = opt("exact tags the probe read", default=())
    ranges: int | None = opt("code ranges traced", nonneg=True)
    symbols: tuple[str, ...] = opt("kallsyms names (clones included)", default=())
    total_calls: int = req(
        "every matching event counted in kernel (page sites: estimated)", nonneg=True
    )
    total_bytes: int | None = opt("bytes of those events", nonneg=True)
    bytes_low: int | None = opt("bytes interval, low end (page sites: estimated)", nonneg=True)
    bytes_high: int | None = opt("bytes interval, high end (page sites)", nonneg=True)
    sampled: int | None = opt("events whose stack was walked", nonneg=True)
    stacks: int | None = opt("stacks read back", nonneg=True)
    lost: int | None = opt("stack_errors + hash_full", nonneg=True)
    stack_errors: int | None = opt("stack walks that failed", nonneg=True)
    hash_full: int | None = opt("samples dropped on a full map", nonneg=True)
    allocinfo: AllocinfoJoin | None = opt("the tag's allocinfo join", nullable=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleEpoch(Contract):
    """One stretch of the capture sampled at one 1-in-N rate."""

    n: int = req("the 1-in-N rate", nonneg=True)
    seconds: float = req("how long it lasted", nonneg=True)
    events: int = req("events counted in it")


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoCallsPayload(Contract):
    """who-calls: callers of one or more allocation sites."""

    KIND: ClassVar[str] = "who-calls"

    site: str = req("the sites, comma-separated")
    sites: tuple[SiteBlock, ...] = opt("one block per site", default=())
    backend: str | None = opt(
        "raw_tracepoint | tracepoint | kprobe | fentry | context/<hook> (page sites)"
    )
    tag_mode: str | None = opt("exact-tag | function-name")
    total_calls: int = req("events over all sites", nonneg=True)
    total_bytes: int | None = opt("bytes over all sites", nonneg=True)
    lost: int | None = opt("stack walks lost over all sites", nonneg=True)
    sampled: int | None = opt("stacks sampled", nonneg=True)
    sample_rate: int | None = opt("the last 1-in-N", nonneg=True)
    sample_mode: str | None = opt("auto | fixed | bytes (page sites: sample_rate is R in bytes)")
    effective_sample_rate: float | None = opt("events per stack sampled", nullable=True)
    sample_epochs: tuple[SampleEpoch, ...] = opt("the rates used, in order", default=())
    duration: float | None = opt("seconds captured", nonneg=True)
    confidence: float | None = opt("interval confidence level", nonneg=True)
    depth: int | None = opt("caller chain depth asked", nonneg=True)
    min_share: float | None = opt("rows under this share are summed in other", nonneg=True)
    callers: tuple[CallerRow, ...] = req("callers of every site, by share")
    other: tuple[OtherRow, ...] = opt("one row per site", default=())
    allocinfo: AllocinfoJoin | None = opt("the first site's allocinfo join", nullable=True)
    folded: dict[str, int] = opt("folded stack -> samples", default={}, nonneg=True)
    counters: dict[str, int] = opt("map-full, stack-walk and symbolisation counters", default={})
    skip_rules: tuple[str, ...] = opt("frames skipped to find the caller", default=())
    notes: tuple[str, ...] = opt("what the reader must know", default=())
