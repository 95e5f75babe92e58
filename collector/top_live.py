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
it ended). By default they are ESTIMATED from a sample of addresses (1 in 2^5, the address
hash of probes/sampler.bpf.h): the frees of every other object return after one hash of the
pointer, and the sampled objects still live at the end, times 2^5, are each site's live bytes
(a Horvitz-Thompson total over distinct objects, with an interval in ``extras``); calls and
bytes allocated stay exact. ``exact_frees=True`` tracks every object in the pointer hash (the
old mode, ~3 us per open/close on the development VM against ~0.5 us sampled: worth it when
a site's live bytes must be exact, e.g. a few hundred objects, where 1 in 32 sees a handful).
Anything the hash could not hold is reported in :attr:`LiveCapture.lost`, never dropped.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector import boot_cache, byte_sampling
from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.capture import Capture
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms, hidden_addresses_message
from allocscope.collector.payloads import LiveSiteRow, TopLivePayload
from allocscope.collector.result import Result
from allocscope.collector.site import Site, canonical_function
from allocscope.errors import CapabilityError
from allocscope.probes import kmem_sites
from allocscope.probes.capabilities import kallsyms_state
from allocscope.probes.kmem_sites import LiveObject, PageStack, SiteEntry
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
    # the capture runner's Result of this window (kind top-live), for ``top --live -o``
    result: Result | None = None

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
    live_n: int = 0  # sampled objects still live (estimated mode)
    live_bytes: float = 0.0
    live_var: float = 0.0


@dataclass(frozen=True, slots=True)
class LiveSample:
    """The objects left in the probe's ``live`` map, each standing for 2^addr_shift."""

    objects: list[LiveObject]
    addr_shift: int


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


def read_records(
    probe: Probe, ksyms: Kallsyms, *, frees: bool, addr_shift: int = 0
) -> list[AllocRecord]:
    """Sites map -> one record per (function, module), biggest first. With frees and
    ``addr_shift`` > 0, live bytes are estimated from the ``live`` map's sample."""
    sample = None
    if frees and addr_shift > 0:
        sample = LiveSample(kmem_sites.read_live(probe), addr_shift)
    return build_records(
        kmem_sites.read_sites(probe),
        kmem_sites.read_page_orders(probe),
        kmem_sites.read_page_stacks(probe),
        ksyms,
        frees=frees,
        live=sample,
    )


def build_records(
    entries: Iterable[SiteEntry],
    orders: list[int],
    page_stacks: list[PageStack] | None,
    ksyms: Kallsyms,
    *,
    frees: bool,
    live: LiveSample | None = None,
) -> list[AllocRecord]:
    """Call-site entries -> one record per (function, module), biggest first. ``live``: the
    sampled objects still allocated (estimated mode); their sites' freed calls and bytes are
    then what was allocated minus the estimate of what is live."""

    def key_of(call_site: int, source: int) -> tuple[str, str]:
        if source == kmem_sites.SRC_PAGE:
            return (PAGE_SITE, "")
        r = ksyms.resolve(call_site)
        if r is None or r.offset > MAX_FUNCTION_SIZE:
            return ("[unknown]", "")
        return (canonical_function(r.name), r.module)

    aggs: dict[tuple[str, str], _Agg] = defaultdict(_Agg)
    if live is not None:
        w = float(1 << live.addr_shift)
        q = 1.0 - 1.0 / w
        for o in live.objects:
            a = aggs[key_of(o.call_site, o.source)]
            a.live_n += 1
            a.live_bytes += w * o.bytes
            a.live_var += q * (w * o.bytes) ** 2
    for e in entries:
        v = e.totals
        a = aggs[key_of(e.call_site, e.source)]
        a.calls += v.calls
        a.bytes += v.bytes
        a.freed_calls += v.freed_calls
        a.freed_bytes += v.freed_bytes
        a.addresses += 1
        a.by_source[e.source_name] += v.calls
    records = []
    for (function, module), a in aggs.items():
        if a.calls == 0:  # live objects of a site the sites map could not hold
            continue
        if live is not None:
            # outstanding <= allocated in the window: the estimate is clamped to it
            live_bytes = min(a.bytes, round(a.live_bytes))
            live_calls = min(a.calls, round(a.live_n * (1 << live.addr_shift)))
            a.freed_bytes = a.bytes - live_bytes
            a.freed_calls = a.calls - live_calls
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
        if live is not None:
            est = byte_sampling.total(a.live_bytes, a.live_var, 0.0)
            extras["live_sampled"] = str(a.live_n)
            extras["live_bytes_ci"] = f"{est.low:.0f}-{min(float(a.bytes), est.high):.0f}"
        if function == PAGE_SITE:
            extras.update(_page_extras(ksyms, orders, page_stacks))
        nbytes = a.bytes - a.freed_bytes if frees else a.bytes
        records.append(AllocRecord(Site("", 0, function, module), nbytes, a.calls, extras))
    records.sort(key=lambda r: (-r.bytes, -r.calls, r.site.function))
    return records


# --- the capture ---------------------------------------------------------------------------


def probe_settings(
    *, frees: bool, exact_frees: bool, pid: int | None
) -> tuple[kmem_sites.Defines, int]:
    """The kmem_sites ``-D`` flags of a top --live capture (window or watch) and its address
    shift (0 = exact frees, else 1 in ``2**shift`` addresses).

    Symbols are needed only to name what was seen, so the table (0.2-0.4 s) is loaded after
    the hooks attach; whether kallsyms shows this process addresses at all is checked here, so
    a restricted host fails before anything is compiled. BTF facts come from this boot's cache
    (no BTF parse when cached)."""
    if not kallsyms_state().readable:
        raise CapabilityError(hidden_addresses_message())
    boot = boot_cache.load()
    shift = 0 if exact_frees else kmem_sites.DEFAULT_ADDR_SHIFT
    defines = kmem_sites.KmemSitesSettings(
        frees=frees,
        pid=pid,
        addr_shift=shift,
        salt=random.getrandbits(64),
        btf=boot.btf_facts(),
    ).defines()
    boot.save()
    return defines, shift


def capture_top_live(
    duration: float | None,
    *,
    frees: bool = True,
    exact_frees: bool = False,
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
    number of operations inside the window; a BCC compile takes ~10 s in a VM). Live bytes
    are estimated from 1 in 32 addresses unless ``exact_frees`` (see the module docstring)."""
    cap = Capture("top-live", duration=duration, workload=workload, pid=pid, verb="top --live")
    defines, shift = probe_settings(frees=frees, exact_frees=exact_frees, pid=pid)
    with cap:
        probe = cap.hold(Probe(kmem_sites.PROGRAM, defines))
        backend = kmem_sites.attach_all(probe, frees)
        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
        log(f"top --live: tracing kmem tracepoints via {backend} {until}")
        with cap.window(on_start=on_start) as w:
            cap.wait(w)
        kmem_sites.detach_all(probe)
        ksyms = Kallsyms.load()
        records = read_records(probe, ksyms, frees=frees, addr_shift=shift)
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
    live = LiveCapture(
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
            "live_bytes": ("exact" if shift == 0 else f"estimated from 1 in {1 << shift} addresses")
            if frees
            else None,
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
    live.result = cap.result(live.settings, live.to_payload().to_dict())
    return live
