"""The Python half of ``allocscope.bpf.h``'s process and CPU filters, for the programs that
share them (``oncpu.bpf.c`` and ``alloc_latency.bpf.c``).

The overhead figure divides samples by calls, so the sampler, the tracepoint counters and the
fexit timer must select exactly the same events: one :class:`EventFilter` gives each of them
the same ``-DFILTER_TGID/FILTER_CPUS/MAX_CPUS`` and the same ``cpu_ok`` contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from allocscope.probes.loader import Probe

# allocscope.bpf.h's name of the CPU filter map (ARRAY u8 [MAX_CPUS], 1 = measured).
CPU_MAP = "cpu_ok"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Only process ``pid`` (None = all) and only ``cpus`` (None = all)."""

    pid: int | None = None
    cpus: tuple[int, ...] | None = None

    def defines(self) -> dict[str, int | str | bool]:
        return {
            "FILTER_TGID": self.pid or 0,
            "FILTER_CPUS": bool(self.cpus),
            # cpu_ok must hold the highest CPU asked for, even one above os.cpu_count()
            "MAX_CPUS": max(os.cpu_count() or 1, max(self.cpus or (0,)) + 1),
        }

    def fill(self, probe: Probe) -> None:
        """Mark the measured CPUs in ``cpu_ok``; before attaching, or nothing passes."""
        if not self.cpus:
            return
        ok = probe[CPU_MAP]
        for cpu in self.cpus:
            ok[ok.Key(cpu)] = ok.Leaf(1)
