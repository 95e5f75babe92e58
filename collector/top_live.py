"""Per-call-site allocation bytes and calls from the kmem tracepoints: ``top --live``.

On kernels without ``/proc/allocinfo`` the nearest thing to an allocinfo line is "bytes and
calls per allocating function during a window", which the kmem tracepoints give directly:
``kmalloc`` and ``kmem_cache_alloc`` carry the caller's return address (``call_site``). The
probe (``probes/kmem_sites.bpf.c``, driven by :mod:`allocscope.probes.kmem_sites`) aggregates
per call site in a BPF hash, so the cost per event is a hash update, not a message to user
space; here the addresses are symbolised
through ``/proc/kallsyms`` and grouped per function (clone suffixes stripped), producing an
:class:`AllocinfoSnapshot` that every allocinfo table can show.

With ``frees=True`` bytes are *live* bytes of the window (allocated minus freed again before
it ended), matched through a bounded pointer hash; anything the hash could not hold is
reported in :attr:`LiveCapture.lost`, never dropped silently.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector import boot_cache
from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.capture import Capture
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms, hidden_addresses_message
from allocscope.collector.payloads import LiveSiteRow, TopLivePayload
from allocscope.collector.site import Site, canonical_function
from allocscope.errors import CapabilityError
from allocscope.probes import kmem_sites
from allocscope.probes.capabilities import kallsyms_state
from allocscope.probes.kmem_sites import PageStack, SiteEntry
from allocscope.probes.loader import Probe

PAGE_SITE = "[page_alloc]"  # pseudo function for page allocations (no call_site)
LOST_KEYS = ("sites_full", "live_full", "stale_ptr", "stack_fail", "stacks_full")
MAX_FUNCTION_SIZE = 1 << 20  # an offset past this from the nearest symbol is not in it

# Frames inside the page allocator (and BPF/tracing glue) skipped to find who asked for pages.
_PAGE_ALLOCATOR = re.compile(
    r"^_*(alloc_pages|alloc_frozen_pages|folio_alloc|alloc_folio|get_page_from_freelist"
    r"|get_free_pages|get_zeroed_page|alloc_pages_mpol|folio_alloc_mpol|vma_alloc_folio"
    r"|rmqueue|post_alloc_hook|prep_new_page|bpf_trace_run\d*|bpf_trace_\w+|traceiter_\w+"
    r"|alloc_pages_bulk\w*|alloc_pages_node\w*)|^\[bpf\]$"
)


class LostCounts(dict[str, int]):
    """Events the capture could not account for, by reason (a plain dict in JSON).

    Prints as a total with its non-zero reasons, e.g. ``319 (stale_ptr 319)``, so a title
    line can say ``... {cap.lost} lost``.
    """

    @property
    def total(self) -> int:
        return sum(self.values())

    def __str__(self) -> str:
        parts = [f"{k} {v}" for k, v in self.items() if v]
        return f"{self.total} ({', '.join(parts)})" if parts else "0"


@dataclass
class LiveCapture:
    """One ``top --live`` window.

    ``snapshot`` has one record per allocating function; ``bytes`` is live bytes
    (allocated - freed within the window) when ``bytes_kind == "live"``, else bytes allocated.
    ``calls`` is always the number of allocation events.
    """

    snapshot: AllocinfoSnapshot
    duration: float
    events: int
    lost: LostCounts
    backend: str
    interrupted: bool
    host: HostMetadata
    bytes_kind: str  # "live" | "allocated"
    settings: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def to_payload(self) -> TopLivePayload:
        """The typed body of a ``top-live`` :class:`Result` (``Result.of(payload, ...)``)."""
        return TopLivePayload(
            bytes_kind=self.bytes_kind,
            backend=self.backend,
            events=self.events,
            lost=dict(self.lost),
            counters=dict(self.counters),
            interrupted=self.interrupted,
            sites=tuple(
                LiveSiteRow(
                    function=r.site.function,
                    module=r.site.module,
                    bytes=r.bytes,
                    calls=r.calls,
                    extras=dict(r.extras),
                )
                for r in self.snapshot.records
            ),
        )


# --- reading and symbolising ---------------------------------------------------------------


@dataclass
class _Agg:
    calls: int = 0
    bytes: int = 0
    freed_calls: int = 0
    freed_bytes: int = 0
    addresses: int = 0
    by_source: Counter[str] = field(default_factory=Counter)


def page_caller(frames: list[str]) -> str:
    """First frame outside the page allocator: who asked for the pages."""
    for f in frames:
        if not _PAGE_ALLOCATOR.match(f):
            return f
    return frames[-1] if frames else "[unknown]"


def _frame_name(ksyms: Kallsyms, ip: int) -> str:
    """Function of a stack frame; frames in JIT-ed BPF code resolve to the last text symbol
    with an absurd offset (no kallsyms entry for them), so those become ``[bpf]``."""
    r = ksyms.resolve(ip)
    if r is None or r.offset > MAX_FUNCTION_SIZE:
        return "[bpf]"
    return r.function


def _page_extras(
    ksyms: Kallsyms, orders: list[int], stacks: list[PageStack] | None
) -> dict[str, str]:
    extras = {"orders": " ".join(f"{o}:{n}" for o, n in enumerate(orders) if n)}
    if stacks is None:
        return extras
    callers: Counter[str] = Counter()
    for st in stacks:
        callers[page_caller([_frame_name(ksyms, ip) for ip in st.ips])] += st.samples
    total = sum(callers.values())
    if total:
        extras["stack_samples"] = str(total)
        extras["sampled_callers"] = ", ".join(
            f"{name} {100 * n / total:.0f}%" for name, n in callers.most_common(5)
        )
    return extras


def read_records(probe: Probe, ksyms: Kallsyms, *, frees: bool) -> list[AllocRecord]:
    """Sites map -> one record per (function, module), biggest first."""
    return build_records(
        kmem_sites.read_sites(probe),
        kmem_sites.read_page_orders(probe),
        kmem_sites.read_page_stacks(probe),
        ksyms,
        frees=frees,
    )


def build_records(
    entries: Iterable[SiteEntry],
    orders: list[int],
    page_stacks: list[PageStack] | None,
    ksyms: Kallsyms,
    *,
    frees: bool,
) -> list[AllocRecord]:
    """Call-site entries -> one record per (function, module), biggest first."""
    aggs: dict[tuple[str, str], _Agg] = defaultdict(_Agg)
    for e in entries:
        v = e.totals
        if e.source == kmem_sites.SRC_PAGE:
            key = (PAGE_SITE, "")
        else:
            r = ksyms.resolve(e.call_site)
            if r is None or r.offset > MAX_FUNCTION_SIZE:
                key = ("[unknown]", "")
            else:
                key = (canonical_function(r.name), r.module)
        a = aggs[key]
        a.calls += v.calls
        a.bytes += v.bytes
        a.freed_calls += v.freed_calls
        a.freed_bytes += v.freed_bytes
        a.addresses += 1
        a.by_source[e.source_name] += v.calls
    records = []
    for (function, module), a in aggs.items():
        extras = {
            "source": a.by_source.most_common(1)[0][0],
            "alloc_bytes": str(a.bytes),
            "call_sites": str(a.addresses),
        }
        if len(a.by_source) > 1:
            extras["sources"] = " ".join(f"{s}:{n}" for s, n in a.by_source.most_common())
        if frees:
            extras["freed_bytes"] = str(a.freed_bytes)
            extras["freed_calls"] = str(a.freed_calls)
        if function == PAGE_SITE:
            extras.update(_page_extras(ksyms, orders, page_stacks))
        nbytes = a.bytes - a.freed_bytes if frees else a.bytes
        records.append(AllocRecord(Site("", 0, function, module), nbytes, a.calls, extras))
    records.sort(key=lambda r: (-r.bytes, -r.calls, r.site.function))
    return records


# --- the capture ---------------------------------------------------------------------------


def capture_top_live(
    duration: float | None,
    *,
    frees: bool = True,
    pid: int | None = None,
    workload: str | None = None,
    on_start: Callable[[], object] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> LiveCapture:
    """Capture per-function allocation bytes/calls for ``duration`` seconds (None = until
    Ctrl-C). Ctrl-C or SIGTERM ends the window early; what was captured is returned with
    ``interrupted=True``. ``workload`` (a :data:`WORKLOADS` name) runs in a child process
    during the window; ``pid`` keeps only allocations made by that process. ``on_start`` is
    called once the hooks are attached, when the window starts (tests use it to run a known
    number of operations inside the window; a BCC compile takes ~10 s in a VM)."""
    cap = Capture("top-live", duration=duration, workload=workload, pid=pid, verb="top --live")
    # Symbols are needed only to name what the window saw, so the table (0.2-0.4 s) is
    # loaded after the window, not before the hooks attach; whether kallsyms shows this
    # process addresses at all is checked now, so a restricted host fails before the window.
    if not kallsyms_state().readable:
        raise CapabilityError(hidden_addresses_message())
    boot = boot_cache.load()  # BTF facts of this boot: no BTF parse when cached
    defines = kmem_sites.KmemSitesSettings(frees=frees, pid=pid, btf=boot.btf_facts()).defines()
    boot.save()
    with cap:
        probe = cap.hold(Probe(kmem_sites.PROGRAM, defines))
        backend = kmem_sites.attach_all(probe, frees)
        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
        log(f"top --live: tracing kmem tracepoints via {backend} {until}")
        with cap.window(on_start=on_start) as w:
            cap.wait(w)
        kmem_sites.detach_all(probe)
        ksyms = Kallsyms.load()
        records = read_records(probe, ksyms, frees=frees)
        counts = kmem_sites.read_counters(probe)
        compile_s = probe.compile_seconds
        header_note = probe.headers.note if probe.headers else ""
    assert cap.host is not None
    host = cap.host
    elapsed, interrupted = w.seconds, w.interrupted
    snapshot = AllocinfoSnapshot(
        version=None,
        records=records,
        source="kmem tracepoints (live)",
        taken_at=time.time(),
        host=host,
    )
    lost = LostCounts({k: counts[k] for k in LOST_KEYS})
    return LiveCapture(
        snapshot=snapshot,
        duration=elapsed,
        events=counts["alloc_events"] + counts["free_events"],
        lost=lost,
        backend=backend,
        interrupted=interrupted,
        host=host,
        bytes_kind="live" if frees else "allocated",
        settings={
            "duration": duration,
            "frees": frees,
            "pid": pid,
            "workload": workload,
            "kmem_cache_bytes": "s->size via BTF"
            if "KMEM_CACHE_SIZE_OFF" in defines
            else "kmem:kmem_cache_alloc bytes_alloc",
            "page_stack_sample": kmem_sites.DEFAULT_PAGE_STACK_SAMPLE,
            "pages": bool(defines.get("TRACK_PAGES", True)),
            "compile_seconds": round(compile_s, 3),
            "headers": header_note,
        },
        counters=counts,
    )
