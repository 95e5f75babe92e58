"""``top --live --interval N``: one kmem_sites probe for the whole watch, read each refresh.

``top --interval`` turns two allocinfo reads into Δ and Δ/s (collector/top_interval.py). On a
kernel without allocinfo the same view comes from the kmem tracepoints: the probe of
``top --live`` (probes/kmem_sites.bpf.c) is compiled and attached ONCE, its maps are never
emptied, and each refresh reads them while attached (:class:`LiveSitesReader`) into an
:class:`AllocinfoSnapshot` with one record per allocating function, symbolised as
``top --live`` does it (collector/top_live.py :func:`read_records`). The sums are cumulative
since the attach, so :class:`~allocscope.collector.top_interval.Watcher`'s differences are
exactly each refresh's (an event counted while a read is in progress lands in the next
refresh, never in none or two):

* CALLS is allocations since the watch started, so ΔCALLS is allocations during the refresh
  (allocinfo's calls are live objects: here they are events).
* BYTES is live bytes since the start (allocated and not yet freed; estimated from 1 in 32
  addresses unless ``exact_frees``), or bytes allocated with ``frees=False``; ΔBYTES is its
  growth during the refresh.

The lifetime is :class:`~allocscope.collector.capture.Capture`'s, as for every live verb: the
probe is closed (detached) on every exit path (``q``, ``--iterations``, Ctrl-C, SIGTERM, an
error), the workload child stopped first. Addresses are symbolised once, with the kallsyms
table loaded after the attach; a site the table cannot name (a module loaded during the
watch) is ``[unknown]``, never a raw address. Events the maps could not hold are in each
snapshot's warnings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.capture import Capture
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.top_live import LOST_KEYS, LostCounts, probe_settings, read_records
from allocscope.probes import kmem_sites
from allocscope.probes.loader import Probe

SOURCE = "kmem tracepoints (live)"


@dataclass
class LiveSitesReader:
    """Reads the attached probe's cumulative per-site sums into a snapshot, once per call."""

    probe: Any  # a kmem_sites Probe (tests: an object with the same maps)
    ksyms: Kallsyms
    frees: bool
    addr_shift: int
    backend: str = ""
    host: HostMetadata | None = None
    reads: int = 0
    lost: LostCounts | None = None
    events: int = 0

    @property
    def bytes_kind(self) -> str:
        return "live" if self.frees else "allocated"

    def describe(self) -> str:
        """What the columns mean, for the start-up line."""
        if not self.frees:
            what = "BYTES = bytes allocated"
        elif self.addr_shift > 0:
            what = (
                f"BYTES = live bytes (estimated from 1 in {1 << self.addr_shift} addresses; "
                "--exact-frees for exact)"
            )
        else:
            what = "BYTES = live bytes (exact)"
        return f"CALLS = allocations, {what}, both since the watch started"

    def __call__(self) -> AllocinfoSnapshot:
        records = read_records(self.probe, self.ksyms, frees=self.frees, addr_shift=self.addr_shift)
        counts = kmem_sites.read_counters(self.probe)
        self.lost = LostCounts({k: counts.get(k, 0) for k in LOST_KEYS})
        self.events = counts.get("alloc_events", 0) + counts.get("free_events", 0)
        self.reads += 1
        snap = AllocinfoSnapshot(
            version=None, records=records, source=SOURCE, taken_at=time.time(), host=self.host
        )
        if self.lost.total:
            snap.warnings.append(f"{self.lost} events lost since the start")
        return snap


@contextmanager
def watch_top_live(
    *,
    frees: bool = True,
    exact_frees: bool = False,
    pid: int | None = None,
    workload: str | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Iterator[LiveSitesReader]:
    """Attach one kmem_sites probe for the block; yields the reader each refresh calls.

    The window (and a ``workload`` child) runs for the block; the probe is detached when it
    ends, whatever ends it. Ctrl-C or SIGTERM inside the block ends it quietly (the caller
    asks :func:`~allocscope.probes.loader.interrupting_signal` for the exit code).
    """
    cap = Capture(
        "top-live", duration=None, workload=workload, pid=pid, verb="top --live --interval"
    )
    defines, shift = probe_settings(frees=frees, exact_frees=exact_frees, pid=pid)
    with cap:
        probe = cap.hold(Probe(kmem_sites.PROGRAM, defines))
        backend = kmem_sites.attach_all(probe, frees)
        reader = LiveSitesReader(
            probe, Kallsyms.load(), frees=frees, addr_shift=shift, backend=backend, host=cap.host
        )
        log(
            f"top --live: tracing kmem tracepoints via {backend} until q or Ctrl-C; "
            + reader.describe()
        )
        with cap.window():
            yield reader
