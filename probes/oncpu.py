"""The Python half of ``oncpu.bpf.c``: the on-CPU stack sampler and its kmem call counters.

``oncpu.bpf.c`` samples kernel stacks with a perf event and counts three kmem tracepoints over
the same window with the same filter (the C file's header says why both live in one object).
This module owns everything user space must agree on with it:

* :class:`OncpuSettings` -> the ``-D`` flags (``FILTER_*``/``MAX_CPUS`` via
  :class:`~allocscope.probes.filters.EventFilter`, ``STACK_STORAGE``);
* the hooks: :data:`COUNTER_HOOKS` (raw tracepoints, ~40 ns/event against ~120 ns for classic
  ones) and the sampling perf event, cpu-cycles where a PMU exists, else cpu-clock (VMs and
  emulated guests have no PMU);
* :data:`COUNTERS`, the ``CNT_*`` index order of the ``counters`` map, and
  :data:`DEFAULT_STACK_STORAGE` (``tests/unit/test_bpf_constants.py`` fails on drift);
* readers returning :class:`OncpuCounts`, never a BCC table.

Maps are cumulative and never cleared while attached (stack ids stay stable), so callers take
windows as differences of two reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from allocscope.errors import CapabilityError
from allocscope.probes.filters import EventFilter
from allocscope.probes.loader import Probe, captured_stderr
from allocscope.probes.maps import as_int, items, percpu_sums

PROGRAM = "oncpu"

# Index order of the ``counters`` map: CNT_* in oncpu.bpf.c.
COUNTERS: tuple[str, ...] = (
    "samples",
    "idle",
    "user",
    "kernel",
    "lost_stack_full",
    "lost_stack_collision",
    "lost_stack_other",
    "lost_counts_full",
    "kmem_cache_alloc",
    "kmalloc",
    "mm_page_alloc",
    "pages",
)

DEFAULT_STACK_STORAGE = 16384  # STACK_STORAGE's default in oncpu.bpf.c
DEFAULT_FREQUENCY = 99  # Hz per CPU: off the kernel's 100/250/1000 Hz ticks

# raw tracepoint -> the program that counts it (CNT_CACHE_ALLOC, CNT_KMALLOC, CNT_PAGE_ALLOC)
COUNTER_HOOKS: tuple[tuple[str, str], ...] = (
    ("kmem_cache_alloc", "count_cache_alloc"),
    ("kmalloc", "count_kmalloc"),
    ("mm_page_alloc", "count_page_alloc"),
)
SAMPLE_PROGRAM = "on_sample"

# perf_event_open(2) type/config values (include/uapi/linux/perf_event.h); the one definition.
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_SW_CPU_CLOCK = 0


@dataclass(frozen=True, slots=True)
class PerfEvent:
    """A perf event the sampler can run on."""

    name: str
    type: int
    config: int


CPU_CYCLES = PerfEvent("cpu-cycles", PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES)
CPU_CLOCK = PerfEvent("cpu-clock", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK)
SAMPLING_EVENTS: tuple[PerfEvent, ...] = (CPU_CYCLES, CPU_CLOCK)  # in order of preference


@dataclass(frozen=True, slots=True)
class OncpuSettings:
    """What ``oncpu.bpf.c`` is compiled for. ``frequency`` is used at attach time only."""

    filter: EventFilter = field(default_factory=EventFilter)
    stack_storage: int = DEFAULT_STACK_STORAGE

    def defines(self) -> dict[str, int | str | bool]:
        return {**self.filter.defines(), "STACK_STORAGE": self.stack_storage}


@dataclass(frozen=True, slots=True)
class OncpuCounts:
    """Cumulative map contents at one read: counter name -> count, stack id -> samples."""

    counters: dict[str, int]
    stacks: dict[int, int]


class OncpuProbe:
    """``oncpu.bpf.c`` compiled, its CPU filter filled, nothing attached yet.

    Attach with :meth:`attach_counters` and :meth:`attach_sampling`; :meth:`close` (or the
    ``with`` block) detaches everything.
    """

    def __init__(self, settings: OncpuSettings) -> None:
        self.settings = settings
        self.event: PerfEvent | None = None
        with captured_stderr():  # kernel headers make clang print pages of harmless warnings
            self.probe = Probe(PROGRAM, settings.defines())
        try:
            settings.filter.fill(self.probe)
        except BaseException:
            self.probe.close()
            raise

    def __enter__(self) -> OncpuProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach_counters(self) -> None:
        for tp, fn in COUNTER_HOOKS:
            self.probe.attach_raw_tracepoint(tp, fn)

    def detach_counters(self) -> None:
        for tp, _ in COUNTER_HOOKS:
            self.probe.detach_raw_tracepoint(tp)

    def attach_sampling(
        self, frequency: int, events: tuple[PerfEvent, ...] = SAMPLING_EVENTS
    ) -> PerfEvent:
        """Sample at ``frequency`` Hz per CPU on the first of ``events`` the host can open."""
        errors = []
        for ev in events:
            try:
                self.probe.attach_perf_event(
                    ev.type, ev.config, SAMPLE_PROGRAM, sample_freq=frequency
                )
            except Exception as e:  # noqa: BLE001 - BCC raises bare Exception; no PMU
                errors.append(f"{ev.name}: {e}")
                continue
            self.event = ev
            return ev
        raise CapabilityError(f"cannot open a sampling perf event ({'; '.join(errors)})")

    def detach_sampling(self) -> None:
        if self.event is not None:
            self.probe.detach_perf_event(self.event.type, self.event.config)
            self.event = None

    def read(self) -> OncpuCounts:
        counters = percpu_sums(self.probe["counters"], len(COUNTERS))
        stacks = {as_int(k): as_int(v) for k, v in items(self.probe["stack_counts"])}
        return OncpuCounts(dict(zip(COUNTERS, counters, strict=True)), stacks)

    def stack(self, stackid: int) -> list[int]:
        """Kernel addresses of a sampled stack, leaf first ([] for an unknown id)."""
        try:
            return [int(a) for a in self.probe["stack_traces"].walk(stackid)]
        except KeyError:
            return []

    @property
    def backends(self) -> set[str]:
        return {a.backend for a in self.probe.attachments}

    def close(self) -> None:
        self.probe.close()


def online_cpus() -> list[int]:
    """CPUs the perf events were opened on (BCC opens one per online CPU)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus
