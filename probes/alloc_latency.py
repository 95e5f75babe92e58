"""The Python half of ``alloc_latency.bpf.c``: exact time per call of one function (fexit).

Sampling estimates CPU per call as samples x period / calls; ``--exact`` times every call of
one allocator with fentry/fexit instead, which needs BTF and BPF trampolines. This module owns:

* :class:`LatencySettings` -> the ``-D`` flags (``FUNC``, ``START_MAX`` and the shared
  :class:`~allocscope.probes.filters.EventFilter`);
* the hooks: ``kfunc__FUNC``/``kretfunc__FUNC``, attached by BCC itself when the object loads;
* the C-mirrored layout: :data:`STATS` (``STAT_*`` indexes), :data:`HIST_SLOTS` and
  :func:`slot_bounds`, the log-linear histogram's buckets (16 per power of two, ~6% wide, so
  a median moves visibly with a 10-40% change); ``tests/unit/test_bpf_constants.py`` fails on
  drift;
* the reader, returning :class:`LatencyTotals`, never a BCC table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from allocscope.errors import CapabilityError
from allocscope.probes.filters import EventFilter
from allocscope.probes.loader import Probe, captured_stderr
from allocscope.probes.maps import percpu_sums

PROGRAM = "alloc_latency"

STATS: tuple[str, ...] = ("calls", "total_ns")  # STAT_CALLS, STAT_NS in alloc_latency.bpf.c
SUB_BITS = 4  # log2 of the sub-buckets per power of two (SUB_BITS)
HIST_SLOTS = 64 * 16  # HIST_SLOTS: 64 octaves of 16 sub-buckets
DEFAULT_START_MAX = 10240  # START_MAX: threads inside FUNC at once


def slot_of(ns: int) -> int:
    """The histogram slot ``kretfunc__FUNC`` adds a call of ``ns`` nanoseconds to."""
    if ns < 1 << SUB_BITS:
        return ns
    octave = ns.bit_length() - 1
    sub = (ns >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1)
    return min((octave << SUB_BITS) + sub, HIST_SLOTS - 1)


def slot_bounds(slot: int) -> tuple[int, int]:
    """[lo, hi) ns of a histogram slot: slots 0..15 count 0..15 ns exactly, 16..63 are never
    filled (16 ns is octave 4, slot 64), slot o*16+s counts [2^o + s*2^o/16, +2^o/16)."""
    if slot < 1 << SUB_BITS:
        return slot, slot + 1
    octave, sub = divmod(slot, 1 << SUB_BITS)
    if octave < SUB_BITS:
        raise ValueError(f"histogram slot {slot} is never filled")
    width = 1 << (octave - SUB_BITS)
    lo = (1 << octave) + sub * width
    return lo, lo + width


@dataclass(frozen=True, slots=True)
class LatencySettings:
    """What ``alloc_latency.bpf.c`` is compiled for: the function to time, and the filter."""

    function: str
    filter: EventFilter = field(default_factory=EventFilter)
    start_max: int = DEFAULT_START_MAX

    def defines(self) -> dict[str, int | str | bool]:
        return {**self.filter.defines(), "FUNC": self.function, "START_MAX": self.start_max}


@dataclass(frozen=True, slots=True)
class LatencyTotals:
    """Cumulative timing of ``function`` at one read; ``hist`` has :data:`HIST_SLOTS` slots."""

    function: str
    calls: int
    total_ns: int
    hist: tuple[int, ...]

    def since(self, earlier: LatencyTotals) -> LatencyTotals:
        """What was timed between ``earlier`` and this read."""
        return LatencyTotals(
            self.function,
            self.calls - earlier.calls,
            self.total_ns - earlier.total_ns,
            tuple(b - a for a, b in zip(earlier.hist, self.hist, strict=True)),
        )


class LatencyProbe:
    """``alloc_latency.bpf.c`` loaded and attached to ``settings.function`` (fentry + fexit).

    Loading is attaching: BCC attaches the KFUNC/KRETFUNC programs as the object loads, so a
    kernel without BTF or trampolines refuses here, with a :class:`CapabilityError`.
    """

    def __init__(self, settings: LatencySettings) -> None:
        self.settings = settings
        try:
            with captured_stderr():  # the verifier/attach log of a refused fentry is noise here
                self.probe = Probe(PROGRAM, settings.defines())
        except CapabilityError as e:
            raise CapabilityError(
                f"--exact needs fentry/fexit on {settings.function} (BTF + BPF trampolines), "
                f"which this kernel refused; run without --exact to use sampling only ({e})"
            ) from None
        try:
            settings.filter.fill(self.probe)
        except BaseException:
            self.probe.close()
            raise

    def __enter__(self) -> LatencyProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> LatencyTotals:
        calls, total_ns = percpu_sums(self.probe["stats"], len(STATS))
        hist = percpu_sums(self.probe["hist"], HIST_SLOTS)
        return LatencyTotals(self.settings.function, calls, total_ns, tuple(hist))

    def close(self) -> None:
        self.probe.close()
