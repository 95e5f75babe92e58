"""The Python half of ``kmem_sites.bpf.c``: settings -> ``-D``, hooks, attach/detach, readers.

The C program aggregates every ``kmalloc``/``kmem_cache_alloc``/``mm_page_alloc`` (and, with
frees tracked, their frees) per call site in a per-CPU hash, so an event costs a hash update
(~100-150 ns per handler measured with kernel.bpf_stats_enabled on the 2-CPU development VM),
not a message to user space. This module decides how this kernel is hooked -- raw tracepoints
where BTF shows the 6.10+ argument layouts, else the classic tracepoints with record offsets
from tracefs (~3x slower per event) -- and reads the maps into dataclasses. Symbolising and
grouping per function is :mod:`allocscope.collector.top_live`'s job.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import NamedTuple

from allocscope.errors import CapabilityError
from allocscope.probes import btf, maps, tracefs
from allocscope.probes.capabilities import BTFFacts, btf_facts
from allocscope.probes.loader import Probe

PROGRAM = "kmem_sites"

# Mirrored from kmem_sites.bpf.c (tests/unit/test_bpf_constants.py fails on drift).
SOURCES = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")  # index = SRC_*
SRC_PAGE = 2
COUNTERS = (  # index = CNT_*
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
NR_ORDERS = 16
DEFAULT_SITES_MAX = 16384
DEFAULT_LIVE_MAX = 262144
DEFAULT_PAGE_STACK_SAMPLE = 64
DEFAULT_ADDR_SHIFT = 5  # live: 1 in 32 addresses tracked (0 = every object, exact)
PAGE_STACK_DEPTH = 10

Defines = dict[str, int | str | bool]


@dataclass(frozen=True, slots=True)
class KmemSitesSettings:
    """Everything ``kmem_sites.bpf.c`` is compiled with; :meth:`defines` gives the ``-D``s."""

    frees: bool = True  # hook the frees: live bytes instead of bytes allocated
    pid: int | None = None  # only allocations made while this process runs
    sites_max: int = DEFAULT_SITES_MAX
    live_max: int = DEFAULT_LIVE_MAX
    page_stack_sample: int = DEFAULT_PAGE_STACK_SAMPLE  # 1-in-N page events walk a stack
    addr_shift: int = DEFAULT_ADDR_SHIFT  # live: 1 in 2^addr_shift addresses; 0 = exact
    salt: int = 0  # XORed into addresses before the hash (capture draws one per run)
    # The kernel's BTF facts (cached per boot by the collector); None = parse BTF now (~1 s)
    btf: BTFFacts | None = None

    def defines(self) -> Defines:
        """The ``-D`` settings on this kernel.

        ``KMEM_CACHE_SIZE_OFF`` comes from the running kernel's BTF; without it the classic
        ``kmem:kmem_cache_alloc`` tracepoint is used, located by its tracefs format. Raises a
        one-line :class:`CapabilityError` when frees cannot be tracked here.
        """
        defines: Defines = {
            "SITES_MAX": self.sites_max,
            "LIVE_MAX": self.live_max,
            "TRACK_FREES": self.frees,
            "FILTER_TGID": self.pid or 0,
            "PAGE_SIZE_BYTES": resource.getpagesize(),
            "PAGE_STACK_SAMPLE": self.page_stack_sample,
            "PAGE_STACK_DEPTH": PAGE_STACK_DEPTH,
            "ADDR_SHIFT": self.addr_shift,
            "ADDR_SALT": f"0x{self.salt & 0xFFFFFFFFFFFFFFFF:x}ULL",
        }
        facts = self.btf if self.btf is not None else btf_facts()
        raw_args_match = facts.raw_args_match
        offs = facts.kmem_cache
        if offs is not None and raw_args_match("kmem_cache_alloc", {2: "struct kmem_cache *"}):
            defines["KMEM_CACHE_SIZE_OFF"] = offs["size"]
        else:
            defines.update(classic_offsets("kmem_cache_alloc", "TP_CACHE"))
        if not raw_args_match("kmalloc", {1: "const void *", 3: "size_t"}):
            defines.update(classic_offsets("kmalloc", "TP_KMALLOC"))
        page_layout = {0: "struct page *", 1: "unsigned int"}
        pages = raw_args_match("mm_page_alloc", page_layout) and (
            not self.frees or raw_args_match("mm_page_free", page_layout)
        )
        defines["TRACK_PAGES"] = pages
        if self.frees and not (
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


def classic_offsets(event: str, prefix: str) -> Defines:
    """``<prefix>_{CALL_SITE,PTR,BYTES}_OFF`` for the classic ``kmem:<event>`` record."""
    f = tracefs.offsets_of("kmem", event, ("call_site", "ptr", "bytes_alloc"))
    return {
        f"{prefix}_CALL_SITE_OFF": f["call_site"],
        f"{prefix}_PTR_OFF": f["ptr"],
        f"{prefix}_BYTES_OFF": f["bytes_alloc"],
    }


class Hook(NamedTuple):
    backend: str  # raw_tracepoint | tracepoint
    target: str  # the tracepoint (``kmem:kmalloc`` for a classic one)
    program: str  # the function in kmem_sites.bpf.c


def hooks(defines: Defines, frees: bool) -> list[Hook]:
    """Every hook these defines compile, in attach order."""
    out: list[Hook] = []
    if "TP_KMALLOC_BYTES_OFF" in defines:
        out.append(Hook("tracepoint", "kmem:kmalloc", "on_kmalloc_tp"))
    else:
        out.append(Hook("raw_tracepoint", "kmalloc", "on_kmalloc"))
    if "KMEM_CACHE_SIZE_OFF" in defines:
        out.append(Hook("raw_tracepoint", "kmem_cache_alloc", "on_cache_alloc"))
    else:
        out.append(Hook("tracepoint", "kmem:kmem_cache_alloc", "on_cache_alloc_tp"))
    pages = bool(defines.get("TRACK_PAGES", True))
    if pages:
        out.append(Hook("raw_tracepoint", "mm_page_alloc", "on_page_alloc"))
    if frees:
        out.append(Hook("raw_tracepoint", "kfree", "on_kfree"))
        out.append(Hook("raw_tracepoint", "kmem_cache_free", "on_cache_free"))
        if pages:
            out.append(Hook("raw_tracepoint", "mm_page_free", "on_page_free"))
    return out


def reset_maps(probe: Probe) -> None:
    """Empty the maps after the attach phase, so the window starts from zero."""
    for name in ("counters", "page_orders", "stack_tick"):
        try:
            table = probe[name]
        except KeyError:
            continue
        maps.zero_array(table)
    for name in ("sites", "live", "page_stacks"):
        try:
            table = probe[name]
        except KeyError:
            continue
        maps.drain_hash(table, 4 * DEFAULT_LIVE_MAX)


def attach_all(probe: Probe, frees: bool) -> str:
    """Load every program, then attach every hook, then zero the maps; returns the backend
    name for the result (``raw_tracepoint``, or ``raw_tracepoint+tracepoint`` when a classic
    one stood in). Loading first keeps the verifier's own kmallocs out of the maps."""
    planned = hooks(probe.defines, frees)
    for h in planned:
        probe.preload(h.program, h.backend)
    backends: list[str] = []
    for h in planned:
        if h.backend == "raw_tracepoint":
            probe.attach_raw_tracepoint(h.target, h.program)
        else:
            probe.attach_tracepoint(h.target, h.program)
        if h.backend not in backends:
            backends.append(h.backend)
    reset_maps(probe)
    return "+".join(backends)


def detach_all(probe: Probe) -> None:
    """Stop every hook but keep the maps, so the window ends before the maps are read."""
    probe.detach()


# --- readers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteVal:
    """``struct site_val`` summed over CPUs."""

    calls: int
    bytes: int
    freed_calls: int
    freed_bytes: int


@dataclass(frozen=True, slots=True)
class SiteEntry:
    """One ``sites`` entry: a call site (0 for pages) and source, with its totals."""

    call_site: int
    source: int  # index into SOURCES (SRC_*)
    totals: SiteVal

    @property
    def source_name(self) -> str:
        return SOURCES[self.source] if 0 <= self.source < len(SOURCES) else "?"


@dataclass(frozen=True, slots=True)
class PageStack:
    """One sampled page-allocation stack (PAGE_STACK_DEPTH return addresses, innermost
    first, zeros dropped) and how many samples had it."""

    ips: tuple[int, ...]
    samples: int


def read_sites(probe: Probe) -> list[SiteEntry]:
    """Every ``sites`` entry, each summed over CPUs."""
    return [
        SiteEntry(int(k.call_site), int(k.source), maps.sum_struct(v, SiteVal))
        for k, v in maps.items(probe["sites"])
    ]


@dataclass(frozen=True, slots=True)
class LiveObject:
    """One ``live`` entry left at the end of the window: an object still allocated."""

    call_site: int
    source: int
    bytes: int


def read_live(probe: Probe) -> list[LiveObject]:
    """Every object still in ``live`` (TRACK_FREES builds)."""
    return [
        LiveObject(int(v.call_site), int(v.source), int(v.bytes))
        for _k, v in maps.items(probe["live"])
    ]


def read_counters(probe: Probe) -> dict[str, int]:
    """The ``counters`` map by name (:data:`COUNTERS`), summed over CPUs."""
    return dict(zip(COUNTERS, maps.percpu_sums(probe["counters"], len(COUNTERS)), strict=True))


def read_page_orders(probe: Probe) -> list[int]:
    """Page allocations per order (0..NR_ORDERS-1)."""
    return maps.percpu_sums(probe["page_orders"], NR_ORDERS)


def read_page_stacks(probe: Probe) -> list[PageStack] | None:
    """The sampled page stacks; None when the probe was built without them."""
    try:
        table = probe["page_stacks"]
    except KeyError:
        return None
    return [
        PageStack(tuple(int(ip) for ip in k.ip if ip), maps.as_int(v)) for k, v in maps.items(table)
    ]
