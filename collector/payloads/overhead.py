"""The ``overhead`` payload: one window's sample counts, per-function rows and fexit timing.

Field order is the order ``collector/overhead_payload.py`` has always written them; see
:mod:`allocscope.collector.contracts` for how optional, nullable and unknown fields are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocscope.collector.contracts import Contract, opt, req


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleCounts(Contract):
    """Sample counts by kind."""

    total: int = req("samples taken", nonneg=True)
    busy: int = req("samples not in the idle task")
    idle: int = opt("samples in the idle task", default=0)
    user: int = opt("samples in user space", default=0)
    kernel: int = opt("samples with a kernel stack", default=0)
    profiler: int = opt("samples in allocscope's own BPF", default=0)
    lost_stack_full: int = opt("stack map full", default=0)
    lost_stack_collision: int = opt("stack id collisions", default=0)
    lost_stack_other: int = opt("other stack walk failures", default=0)
    lost_counts_full: int = opt("counts map full", default=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionRow(Contract):
    """One allocator function (or a ``[page allocator]``/``[slab allocator]`` group)."""

    function: str = req("function name")
    kind: str = req("slab | page | vmalloc | ...")
    present: bool = req("in this kernel's kallsyms")
    inclusive_samples: int = req("samples with the function on the stack", nonneg=True)
    self_samples: int | None = opt("samples with the function as the leaf", nonneg=True)
    inclusive_share: float | None = req("of busy samples (null when absent)")
    self_share: float | None = opt("leaf samples of busy samples", nullable=True)
    inclusive_share_all: float | None = opt("of all samples, idle included", nullable=True)
    calls_tracepoints: tuple[str, ...] = opt("tracepoints counting its calls", default=())
    calls: int | None = req("calls counted at the tracepoints")
    calls_per_second: float | None = opt("calls / seconds", nullable=True)
    ns_per_call: float | None = opt("inclusive samples x period / calls", nullable=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopSelfRow(Contract):
    """One of the functions most often at the leaf."""

    function: str = req("function name")
    samples: int = req("leaf samples", nonneg=True)
    share: float = req("of busy samples", nonneg=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistBucket(Contract):
    """One non-empty bucket of the fexit latency histogram: [lo_ns, hi_ns)."""

    lo_ns: int = req("bucket low end, ns", nonneg=True)
    hi_ns: int = req("bucket high end, ns", nonneg=True)
    count: int = req("calls in the bucket", nonneg=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExactTiming(Contract):
    """fexit timing of one function (``--exact``): calls, mean, quantiles, histogram."""

    function: str = req("the function timed")
    calls: int = req("calls timed", nonneg=True)
    total_ns: int = req("their summed duration", nonneg=True)
    mean_ns: float | None = req("total_ns / calls", nonneg=True)
    median_ns: float | None = opt("from the histogram", nullable=True, nonneg=True)
    p90_ns: float | None = opt("from the histogram", nullable=True, nonneg=True)
    p99_ns: float | None = opt("from the histogram", nullable=True, nonneg=True)
    hist: tuple[HistBucket, ...] = req("non-empty buckets, low to high")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfilingMemory(Contract):
    """Memory the profiling itself uses (allocinfo's own lines), or why it is unknown.

    Only ``status`` and ``reason`` are typed: the figures of a known status (``source``,
    ``allocinfo_version``, ``page_ext_bytes``, ``slab_obj_ext_bytes``, ``lines``,
    ``total_bytes``) stay in ``extra`` in the order written, so the JSON is unchanged; so do
    /proc/vmstat's ``memmap_bytes``, ``memmap_boot_bytes``, ``memmap_total_bytes`` and
    ``memmap_source`` (struct page plus page_ext, Linux 6.11+), whatever the status.
    """

    status: str = req("known | unknown")
    reason: str | None = opt("why it is unknown")


@dataclass(frozen=True, slots=True, kw_only=True)
class OverheadPayload(Contract):
    """overhead: CPU spent in the allocators during a window."""

    KIND: ClassVar[str] = "overhead"

    seconds: float = req("window length", nonneg=True)
    period_ns: float | None = opt("CPU time one sample stands for", nonneg=True)
    nominal_period_ns: float | None = opt("1e9 / frequency", nonneg=True)
    period_source: str | None = opt("nominal | measured")
    samples: SampleCounts | None = opt("sample counts by kind")
    calls: dict[str, int] = opt("tracepoint events by tracepoint", default={}, nonneg=True)
    calls_per_second: dict[str, float] = opt("the same per second", default={}, nonneg=True)
    functions: tuple[FunctionRow, ...] = req("one row per allocator function")
    top_self: tuple[TopSelfRow, ...] = opt("the most frequent leaf functions", default=())
    exact: ExactTiming | None = opt("fexit timing, with --exact")
    profiling_memory: ProfilingMemory | None = opt("memory the profiling itself uses")
    event: str | None = opt("perf event sampled: cpu-cycles | cpu-clock")
