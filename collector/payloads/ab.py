"""The ``ab`` and ``ab-toggle`` payloads: comparison rows, verdicts, pooled rows, windows.

Field order is the order ``collector/ab.py`` has always written them; see
:mod:`allocscope.collector.contracts` for how optional, nullable and unknown fields are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocscope.collector.contracts import Contract, opt, req
from allocscope.collector.payloads.overhead import OverheadPayload


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison(Contract):
    """One function x metric comparison (also a verdict line)."""

    function: str = req("function (or group) compared")
    metric: str = opt("ns_per_call | inclusive_share | exact_median_ns | ...", default="")
    stat: str | None = opt("statistic compared: mean | median")
    n_a: int = opt("values in group A", default=0, nonneg=True)
    n_b: int = opt("values in group B", default=0, nonneg=True)
    mean_a: float | None = opt("group A mean", nullable=True)
    mean_b: float | None = opt("group B mean", nullable=True)
    median_a: float | None = opt("group A median", nullable=True)
    median_b: float | None = opt("group B median", nullable=True)
    ratio: float | None = opt("A over B", nullable=True)
    ci_low: float | None = opt("bootstrap interval, low end", nullable=True)
    ci_high: float | None = opt("bootstrap interval, high end", nullable=True)
    p_value: float | None = opt("rank test p-value", nullable=True)
    test: str | None = opt("the rank test used", nullable=True)
    welch_p: float | None = opt("Welch t-test p-value", nullable=True)
    significant: bool = opt("p < alpha and the interval excludes 1", default=False)
    note: str = opt("why a row has no ratio or interval", default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemmapComparison(Contract):
    """Profiling's per-page memory, pilot minus control: struct page plus page_ext from
    /proc/vmstat (nr_memmap_pages + nr_memmap_boot_pages, Linux 6.11+) per GiB of RAM, beside
    allocinfo's ``alloc_page_ext`` tag. Group means over the results that have the figures."""

    n_a: int = req("results of group A with the vmstat figures", nonneg=True)
    n_b: int = req("results of group B with them", nonneg=True)
    memmap_bytes_a: float | None = req("group A mean struct page + page_ext bytes")
    memmap_bytes_b: float | None = req("group B mean")
    per_gib_a: float | None = req("group A mean memmap bytes per GiB of RAM")
    per_gib_b: float | None = req("group B mean")
    delta_per_gib: float | None = req("A minus B, bytes per GiB of RAM")
    delta_bytes: float | None = req("delta_per_gib times group A's mean RAM in GiB")
    page_ext_tag_a: float | None = opt("group A mean alloc_page_ext tag bytes", nullable=True)
    page_ext_tag_b: float | None = opt("group B mean alloc_page_ext tag bytes", nullable=True)
    note: str = opt("why a figure is missing", default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class AbPayload(Contract):
    """ab: pilot vs control overhead results."""

    KIND: ClassVar[str] = "ab"

    labels: tuple[str, ...] = opt("the two groups' names", default=())
    stat: str | None = opt("statistic compared")
    alpha: float | None = opt("significance level", nonneg=True)
    seed: int | None = opt("bootstrap seed")
    inputs: dict[str, tuple[str, ...]] = opt("label -> result files", default={})
    event: str | None = opt("perf event of the results", nullable=True)
    frequency: float | None = opt("sampling frequency of the results", nullable=True)
    kernel: str | None = opt("kernel release of the results")
    comparisons: tuple[Comparison, ...] = req("one row per function and metric")
    verdicts: tuple[Comparison, ...] = req("headline verdicts")
    notes: tuple[str, ...] = opt("caveats", default=())
    memory: MemmapComparison | None = opt("profiling's per-page memory, A minus B (vmstat)")


@dataclass(frozen=True, slots=True, kw_only=True)
class PooledRow(Contract):
    """One function over all on windows vs all off windows."""

    function: str = req("a function, `exact:<function>` (fexit) or `<function> (median)`")
    on_ns_per_call: float | None = req("profiling on")
    off_ns_per_call: float | None = req("profiling off")
    on_samples: int = req("samples, profiling on", nonneg=True)
    off_samples: int = req("samples, profiling off", nonneg=True)
    on_calls: int = req("calls, profiling on", nonneg=True)
    off_calls: int = req("calls, profiling off", nonneg=True)
    ratio: float | None = req("on over off")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToggleWindowResult(Contract):
    """One window of an ``ab --toggle`` run: its index, the sysctl state, its overhead payload."""

    index: int | None = opt("position in the run", nonneg=True)
    mem_profiling: str = req("vm.mem_profiling during the window")
    window: OverheadPayload = req("the window's overhead payload", flatten=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TogglePayload(Contract):
    """ab --toggle: profiling on vs off in alternating windows on one host."""

    KIND: ClassVar[str] = "ab-toggle"

    labels: tuple[str, ...] = opt("profiling on, profiling off", default=())
    sample_notes: tuple[str, ...] = opt("caveats about thin samples", default=())
    alpha: float | None = opt("significance level", nonneg=True)
    seed: int | None = opt("bootstrap seed")
    pairs: int | None = opt("on/off pairs compared", nonneg=True)
    comparisons: tuple[Comparison, ...] = req("paired windows, one row per function and metric")
    verdicts: tuple[Comparison, ...] = opt("headline verdicts", default=())
    pooled: tuple[PooledRow, ...] = opt("all windows pooled per state", default=())
    original: str | None = opt("vm.mem_profiling before the run")
    restored: bool | None = opt("put back afterwards")
    period: float | None = opt("window seconds", nonneg=True)
    windows: int | None = opt("windows measured", nonneg=True)
    interrupted: bool | None = opt("stopped early")
    window_results: tuple[ToggleWindowResult, ...] = opt("in order", default=())
    notes: tuple[str, ...] = opt("caveats", default=())
