"""Per-call-site allocation bytes and calls from the kmem tracepoints: ``top --live``.

On kernels without ``/proc/allocinfo`` the nearest thing to an allocinfo line is "bytes and
calls per allocating function during a window", which the kmem tracepoints give directly:
``kmalloc`` and ``kmem_cache_alloc`` carry the caller's return address (``call_site``). The
probe (``probes/kmem_sites.bpf.c``) aggregates per call site in a BPF hash, so the cost per
event is a hash update, not a message to user space; here the addresses are symbolised
through ``/proc/kallsyms`` and grouped per function (clone suffixes stripped), producing an
:class:`AllocinfoSnapshot` that every allocinfo table can show.

With ``frees=True`` bytes are *live* bytes of the window (allocated minus freed again before
it ended), matched through a bounded pointer hash; anything the hash could not hold is
reported in :attr:`LiveCapture.lost`, never dropped silently.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.capture import Capture
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import LiveSiteRow, TopLivePayload
from allocscope.collector.site import Site, canonical_function
from allocscope.errors import CapabilityError
from allocscope.probes import btf
from allocscope.probes.loader import Probe

PROGRAM = "kmem_sites"
SOURCES = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")  # index = SRC_* in the .bpf.c
SRC_PAGE = 2
PAGE_SITE = "[page_alloc]"  # pseudo function for page allocations (no call_site)
COUNTERS = (
    "alloc_events",
    "free_events",
    "sites_full",
    "live_full",
    "stale_ptr",
    "free_unmatched",
    "stack_samples",
    "stack_fail",
    "stacks_full",
)
LOST_KEYS = ("sites_full", "live_full", "stale_ptr", "stack_fail", "stacks_full")
TRACEFS_EVENTS = ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events")

DEFAULT_SITES_MAX = 16384
DEFAULT_LIVE_MAX = 262144
DEFAULT_PAGE_STACK_SAMPLE = 64
PAGE_STACK_DEPTH = 10
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


# --- building the probe --------------------------------------------------------------------


def tracepoint_field_offsets(category: str, event: str) -> dict[str, int]:
    """Offsets of a classic tracepoint record's fields, from its tracefs ``format`` file."""
    for base in TRACEFS_EVENTS:
        path = os.path.join(base, category, event, "format")
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        out = {}
        for m in re.finditer(r"field:[^;]*?(\w+)(?:\[\d*\])?;\s*offset:(\d+);", text):
            out[m[1]] = int(m[2])
        return out
    raise CapabilityError(
        f"tracepoint {category}:{event} has no format file: is tracefs "
        "mounted at /sys/kernel/tracing? (allocscope doctor)"
    )


Defines = dict[str, int | str | bool]


def probe_defines(
    *,
    frees: bool,
    pid: int | None,
    sites_max: int = DEFAULT_SITES_MAX,
    live_max: int = DEFAULT_LIVE_MAX,
    page_stack_sample: int = DEFAULT_PAGE_STACK_SAMPLE,
) -> Defines:
    """The ``-D`` settings for ``kmem_sites.bpf.c`` on this kernel.

    ``KMEM_CACHE_SIZE_OFF`` comes from the running kernel's BTF; without it the classic
    ``kmem:kmem_cache_alloc`` tracepoint is used, located by its tracefs format.
    """
    defines: Defines = {
        "SITES_MAX": sites_max,
        "LIVE_MAX": live_max,
        "TRACK_FREES": frees,
        "FILTER_TGID": pid or 0,
        "PAGE_SIZE_BYTES": resource.getpagesize(),
        "PAGE_STACK_SAMPLE": page_stack_sample,
        "PAGE_STACK_DEPTH": PAGE_STACK_DEPTH,
    }
    offs = btf.kmem_cache_offsets()
    if offs is not None and raw_args_match("kmem_cache_alloc", {2: "struct kmem_cache *"}):
        defines["KMEM_CACHE_SIZE_OFF"] = offs["size"]
    else:
        defines.update(_classic_offsets("kmem_cache_alloc", "TP_CACHE"))
    if not raw_args_match("kmalloc", {1: "const void *", 3: "size_t"}):
        defines.update(_classic_offsets("kmalloc", "TP_KMALLOC"))
    page_layout = {0: "struct page *", 1: "unsigned int"}
    pages = raw_args_match("mm_page_alloc", page_layout) and (
        not frees or raw_args_match("mm_page_free", page_layout)
    )
    defines["TRACK_PAGES"] = pages
    if frees and not (
        raw_args_match("kfree", {1: "const void *"})
        and raw_args_match("kmem_cache_free", {1: "const void *"})
    ):
        raise CapabilityError(
            "kfree/kmem_cache_free have an unexpected argument layout on this kernel: "
            "use --no-frees (bytes allocated instead of live bytes)"
        )
    return defines


def raw_args_match(tracepoint: str, expect: dict[int, str]) -> bool:
    """Do the raw tracepoint's ``ctx->args[i]`` have the types this probe reads (per BTF)?

    Without BTF the 6.10+ layouts documented in ``kmem_sites.bpf.c`` are assumed.
    """
    vm = btf.vmlinux()
    args = vm.raw_tracepoint_args(tracepoint) if vm is not None else None
    if args is None:
        return vm is None
    return all(i < len(args) and args[i] == t for i, t in expect.items())


def _classic_offsets(event: str, prefix: str) -> Defines:
    f = tracepoint_field_offsets("kmem", event)
    try:
        return {
            f"{prefix}_CALL_SITE_OFF": f["call_site"],
            f"{prefix}_PTR_OFF": f["ptr"],
            f"{prefix}_BYTES_OFF": f["bytes_alloc"],
        }
    except KeyError as e:
        raise CapabilityError(f"kmem:{event} has no field {e} here") from None


def _preload(probe: Probe, defines: Defines, frees: bool) -> None:
    """Load (verify) every program before attaching any: BCC loads lazily at attach, and
    the verifier's own kmallocs would otherwise land in the maps of hooks already attached."""
    bpf = probe.bpf
    for backend, _target, fn in _hooks(defines, frees):
        kind = bpf.RAW_TRACEPOINT if backend == "raw_tracepoint" else bpf.TRACEPOINT
        bpf.load_func(fn.encode(), kind)


def _drain_hash(table: Any, limit: int) -> None:
    """Delete the keys present now. Never BCC's ``clear()``: it deletes while iterating, and
    with the probe inserting concurrently the iteration restarts forever."""
    keys = []
    for i, k in enumerate(table.keys()):
        if i >= limit:
            break
        keys.append(k)
    for k in keys:
        try:
            del table[k]
        except KeyError:
            pass


def reset_maps(probe: Probe) -> None:
    """Empty the maps after the attach phase, so the window starts from zero."""
    for name in ("counters", "page_orders", "stack_tick"):
        try:
            table = probe[name]
        except KeyError:
            continue
        for i in range(len(table)):
            table[table.Key(i)] = table.Leaf()  # all CPUs zero
    for name in ("sites", "live", "page_stacks"):
        try:
            table = probe[name]
        except KeyError:
            continue
        _drain_hash(table, 4 * DEFAULT_LIVE_MAX)


def _hooks(defines: Defines, frees: bool) -> list[tuple[str, str, str]]:
    """(backend, target, program) for every hook these defines compile."""
    hooks = []
    if "TP_KMALLOC_BYTES_OFF" in defines:
        hooks.append(("tracepoint", "kmem:kmalloc", "on_kmalloc_tp"))
    else:
        hooks.append(("raw_tracepoint", "kmalloc", "on_kmalloc"))
    if "KMEM_CACHE_SIZE_OFF" in defines:
        hooks.append(("raw_tracepoint", "kmem_cache_alloc", "on_cache_alloc"))
    else:
        hooks.append(("tracepoint", "kmem:kmem_cache_alloc", "on_cache_alloc_tp"))
    pages = bool(defines.get("TRACK_PAGES", True))
    if pages:
        hooks.append(("raw_tracepoint", "mm_page_alloc", "on_page_alloc"))
    if frees:
        hooks.append(("raw_tracepoint", "kfree", "on_kfree"))
        hooks.append(("raw_tracepoint", "kmem_cache_free", "on_cache_free"))
        if pages:
            hooks.append(("raw_tracepoint", "mm_page_free", "on_page_free"))
    return hooks


def attach_all(probe: Probe, defines: Defines, frees: bool) -> str:
    """Attach every hook and zero the maps; returns the backend name for the result
    (``raw_tracepoint``, or ``raw_tracepoint+tracepoint`` when a classic one stood in)."""
    _preload(probe, defines, frees)
    backends = []
    for backend, target, fn in _hooks(defines, frees):
        if backend == "raw_tracepoint":
            probe.attach_raw_tracepoint(target, fn)
        else:
            probe.attach_tracepoint(target, fn)
        if backend not in backends:
            backends.append(backend)
    reset_maps(probe)
    return "+".join(backends)


def detach_all(probe: Probe) -> None:
    """Stop every hook but keep the maps, so the window ends before the maps are read."""
    bpf = probe.bpf
    for a in probe.attachments:
        if a.backend == "raw_tracepoint":
            bpf.detach_raw_tracepoint(tp=a.target.encode())
        elif a.backend == "tracepoint":
            bpf.detach_tracepoint(tp=a.target.encode())


# --- reading and symbolising ---------------------------------------------------------------


@dataclass
class _Agg:
    calls: int = 0
    bytes: int = 0
    freed_calls: int = 0
    freed_bytes: int = 0
    addresses: int = 0
    by_source: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class SiteCounts:
    """One ``sites`` entry summed over CPUs."""

    calls: int
    bytes: int
    freed_calls: int
    freed_bytes: int


def _sum_cpus(per_cpu: Any) -> SiteCounts:
    """Sum a per-CPU ``struct site_val`` array (a single struct is accepted as well)."""
    cpus = per_cpu if hasattr(per_cpu, "__len__") else [per_cpu]
    return SiteCounts(
        sum(int(c.calls) for c in cpus),
        sum(int(c.bytes) for c in cpus),
        sum(int(c.freed_calls) for c in cpus),
        sum(int(c.freed_bytes) for c in cpus),
    )


def _percpu_sum(table: Any, n: int) -> list[int]:
    return [int(table.sum(table.Key(i)).value) for i in range(n)]


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


def _page_extras(probe: Probe, ksyms: Kallsyms, orders: list[int]) -> dict[str, str]:
    extras = {"orders": " ".join(f"{o}:{n}" for o, n in enumerate(orders) if n)}
    try:
        stacks = probe["page_stacks"]
    except KeyError:
        return extras
    callers: Counter[str] = Counter()
    for k, v in stacks.items():
        frames = [_frame_name(ksyms, ip) for ip in k.ip if ip]
        callers[page_caller(frames)] += int(v.value)
    total = sum(callers.values())
    if total:
        extras["stack_samples"] = str(total)
        extras["sampled_callers"] = ", ".join(
            f"{name} {100 * n / total:.0f}%" for name, n in callers.most_common(5)
        )
    return extras


def read_records(probe: Probe, ksyms: Kallsyms, *, frees: bool) -> list[AllocRecord]:
    """Sites map -> one record per (function, module), biggest first."""
    aggs: dict[tuple[str, str], _Agg] = defaultdict(_Agg)
    for k, per_cpu in probe["sites"].items():
        v = _sum_cpus(per_cpu)
        source = SOURCES[k.source] if k.source < len(SOURCES) else "?"
        if k.source == SRC_PAGE:
            key = (PAGE_SITE, "")
        else:
            r = ksyms.resolve(int(k.call_site))
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
        a.by_source[source] += v.calls
    orders = _percpu_sum(probe["page_orders"], 16)
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
            extras.update(_page_extras(probe, ksyms, orders))
        nbytes = a.bytes - a.freed_bytes if frees else a.bytes
        records.append(AllocRecord(Site("", 0, function, module), nbytes, a.calls, extras))
    records.sort(key=lambda r: (-r.bytes, -r.calls, r.site.function))
    return records


# --- the capture ---------------------------------------------------------------------------


def capture_live_sites(
    duration: float | None,
    *,
    frees: bool = True,
    pid: int | None = None,
    workload: str | None = None,
    on_start: Callable[[], object] | None = None,
) -> LiveCapture:
    """Capture per-function allocation bytes/calls for ``duration`` seconds (None = until
    Ctrl-C). Ctrl-C or SIGTERM ends the window early; what was captured is returned with
    ``interrupted=True``. ``workload`` (a :data:`WORKLOADS` name) runs in a child process
    during the window; ``pid`` keeps only allocations made by that process. ``on_start`` is
    called once the hooks are attached, when the window starts (tests use it to run a known
    number of operations inside the window; a BCC compile takes ~10 s in a VM)."""
    cap = Capture("top-live", duration=duration, workload=workload, pid=pid, verb="top --live")
    ksyms = Kallsyms.load()  # before the window: loading takes ~0.5 s
    defines = probe_defines(frees=frees, pid=pid)
    with cap:
        probe = cap.hold(Probe(PROGRAM, defines))
        backend = attach_all(probe, defines, frees)
        with cap.window(on_start=on_start) as w:
            cap.wait(w)
        detach_all(probe)
        records = read_records(probe, ksyms, frees=frees)
        counts: dict[str, int] = dict(
            zip(COUNTERS, _percpu_sum(probe["counters"], len(COUNTERS)), strict=True)
        )
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
            "page_stack_sample": DEFAULT_PAGE_STACK_SAMPLE,
            "pages": bool(defines.get("TRACK_PAGES", True)),
            "compile_seconds": round(compile_s, 3),
            "headers": header_note,
        },
        counters=counts,
    )
