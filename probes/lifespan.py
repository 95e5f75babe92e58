"""The Python half of ``lifespan.bpf.c``: settings -> ``-D``, hooks, attach/detach, readers.

The C program tracks a sample of allocations (address hash AND byte sample point, see
``probes/sampler.bpf.h``) until their free, so the per-event cost of the untracked majority
is one hash of the pointer; this module decides how the kernel is hooked (raw tracepoints
where BTF shows the 6.10+ layouts, classic tracepoints otherwise, like ``kmem_sites``), which
free paths are traced here, and reads the maps into dataclasses. Estimating is
:mod:`allocscope.collector.lifespan`'s job.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes import btf, maps, tracefs
from allocscope.probes.kmem_sites import Hook, classic_offsets, raw_args_match
from allocscope.probes.loader import Probe

PROGRAM = "lifespan"

# Mirrored from lifespan.bpf.c (tests/unit/test_bpf_constants.py fails on drift).
SOURCES = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")  # index = SRC_*
SRC_PAGE = 2
COUNTERS: tuple[str, ...] = (  # index = CNT_*
    "alloc_events",
    "alloc_kept",
    "tracked",
    "free_events",
    "free_kept",
    "free_matched",
    "missed_free",
    "track_full",
    "lives_full",
    "stack_fail",
    "addr_sums_full",
)
NR_SLOTS = 48
LIFE_SHIFT = 6
DEFAULT_SAMPLE_RATE = 4096
# pages: a point per 4 pages on average (lifespan.bpf.c: a point on nearly every kept page
# made on_page_alloc 4x the floor's cost)
DEFAULT_PAGE_RATE = 16384
DEFAULT_ADDR_SHIFT = 5
DEFAULT_TRACK_MAX = 65536
DEFAULT_LIVES_MAX = 8192
DEFAULT_ADDR_SUMS_MAX = 65536
DEFAULT_STACK_ENTRIES = 32768
STACK_DEPTH = 32

# Free paths of Linux 6.x that release slab objects or pages without the kmem free
# tracepoints (mm/slub.c, mm/page_alloc.c, mm/slab_common.c as of 6.18). Objects freed there
# stay tracked (outstanding, aging) until their address is allocated again, then are counted
# as missed frees (docs/design/lifespan.md).
UNTRACED_FREES: tuple[str, ...] = (
    "kmem_cache_free_bulk / kfree_bulk (slab bulk frees: no per-object kfree/kmem_cache_free)",
    "kvfree_rcu / kfree_rcu batches freed through kmem_cache_free_bulk",
    "free_pages_exact / split pages freed past the traced head (pages of a split block)",
)

Defines = dict[str, int | str | bool]
SAMPLER_RATE_MAX = 1 << 24  # sampler.bpf.h (collector/byte_sampling.py mirrors it too)


@dataclass(frozen=True, slots=True)
class LifespanSettings:
    """Everything ``lifespan.bpf.c`` is compiled with; :meth:`defines` gives the ``-D``s.

    ``sample_rate`` is the byte sampler's mean gap R for slab objects and ``page_rate`` its
    gap for page allocations (their own stream); ``addr_shift`` keeps 1 in ``2**addr_shift``
    addresses. ``census()`` (R = 1 for both, shift 0) tracks every object.
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    page_rate: int = DEFAULT_PAGE_RATE
    addr_shift: int = DEFAULT_ADDR_SHIFT
    pid: int | None = None
    pages: bool = True
    read_tag: bool = False
    track_max: int = DEFAULT_TRACK_MAX
    lives_max: int = DEFAULT_LIVES_MAX
    stack_entries: int = DEFAULT_STACK_ENTRIES
    salt: int = 0  # XORed into addresses before the hash; capture() draws a random one

    @classmethod
    def census(cls, **kw: object) -> LifespanSettings:
        return cls(sample_rate=1, page_rate=1, addr_shift=0, **kw)  # type: ignore[arg-type]

    def check(self) -> None:
        if self.sample_rate < 1:
            raise AllocscopeError("lifespan: --rate must be 1 byte or more")
        if self.page_rate < 1:
            raise AllocscopeError("lifespan: --page-rate must be 1 byte or more")
        if not 0 <= self.addr_shift <= 16:
            raise AllocscopeError("lifespan: --addr-shift must be in 0..16")
        for what, rate in (("rate", self.sample_rate), ("page-rate", self.page_rate)):
            if rate << self.addr_shift > SAMPLER_RATE_MAX:
                raise AllocscopeError(
                    f"lifespan: {what} x 2^addr-shift = {rate << self.addr_shift} bytes "
                    f"per point is past {SAMPLER_RATE_MAX} (the weights would overflow)"
                )

    def defines(self) -> Defines:
        """The ``-D`` settings on this kernel (reads BTF and tracefs)."""
        self.check()
        d: Defines = {
            "SAMPLE_RATE": self.sample_rate,
            "PAGE_SAMPLE_RATE": self.page_rate,
            "ADDR_SHIFT": self.addr_shift,
            "ADDR_SALT": f"0x{self.salt & 0xFFFFFFFFFFFFFFFF:x}ULL",
            "TRACK_MAX": self.track_max,
            "LIVES_MAX": self.lives_max,
            "STACK_ENTRIES": self.stack_entries,
            "STACK_DEPTH": STACK_DEPTH,
            "FILTER_TGID": self.pid or 0,
            "PAGE_SIZE_BYTES": resource.getpagesize(),
        }
        offs = btf.kmem_cache_offsets()
        if offs is not None and raw_args_match("kmem_cache_alloc", {2: "struct kmem_cache *"}):
            d["KMEM_CACHE_SIZE_OFF"] = offs["size"]
        else:
            d.update(classic_offsets("kmem_cache_alloc", "TP_CACHE"))
        if not raw_args_match("kmalloc", {1: "const void *", 3: "size_t"}):
            d.update(classic_offsets("kmalloc", "TP_KMALLOC"))
        page_layout = {0: "struct page *", 1: "unsigned int"}
        pages = (
            self.pages
            and raw_args_match("mm_page_alloc", page_layout)
            and raw_args_match("mm_page_free", page_layout)
        )
        d["TRACK_PAGES"] = pages
        d["PAGE_FREE_BATCHED"] = pages and batched_free_traceable()
        if not (
            raw_args_match("kfree", {1: "const void *"})
            and raw_args_match("kmem_cache_free", {1: "const void *"})
        ):
            raise CapabilityError(
                "lifespan: kfree/kmem_cache_free have an unexpected argument layout on this "
                "kernel: frees cannot be matched"
            )
        if self.read_tag:
            d["READ_ALLOC_TAG"] = 1
        return d


def batched_free_traceable() -> bool:
    """``mm_page_free_batched`` exists here with ``struct page *`` as its first argument."""
    root = tracefs.mount_point()
    if root is None or not os.path.isdir(os.path.join(root, "events/kmem/mm_page_free_batched")):
        return False
    return raw_args_match("mm_page_free_batched", {0: "struct page *"})


def hooks(defines: Defines) -> list[Hook]:
    """Every hook these defines compile, in attach order (allocations first)."""
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
    out.append(Hook("raw_tracepoint", "kfree", "on_kfree"))
    out.append(Hook("raw_tracepoint", "kmem_cache_free", "on_cache_free"))
    if pages:
        out.append(Hook("raw_tracepoint", "mm_page_free", "on_page_free"))
        if defines.get("PAGE_FREE_BATCHED"):
            out.append(Hook("raw_tracepoint", "mm_page_free_batched", "on_page_free_batched"))
    return out


def traced_frees(defines: Defines) -> tuple[str, ...]:
    """The free tracepoints these defines hook."""
    return tuple(h.target for h in hooks(defines) if "free" in h.program)


def untraced_frees(defines: Defines) -> tuple[str, ...]:
    """Free paths this build cannot see (documented kernel paths plus disabled hooks)."""
    out: list[str] = list(UNTRACED_FREES)
    if not defines.get("TRACK_PAGES", True):
        out.append("mm_page_free (page tracking off on this kernel)")
    elif not defines.get("PAGE_FREE_BATCHED"):
        out.append("mm_page_free_batched (no such tracepoint, or another argument layout)")
    return tuple(out)


def reset_maps(probe: Probe) -> None:
    """Empty the maps after the attach phase, so the window starts from zero."""
    maps.zero_array(probe["counters"])
    for name in ("tracked", "lifespans", "addr_sums"):
        maps.drain_hash(probe[name], 4 * DEFAULT_TRACK_MAX)


def attach_all(probe: Probe) -> str:
    """Load every program, attach every hook, zero the maps; returns the backend name."""
    planned = hooks(probe.defines)
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


# --- readers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weights:
    """``struct sample_weight`` as read (collector/byte_sampling.Weights estimates from it)."""

    hits: int = 0
    bytes_w: int = 0
    bytes_w2: int = 0
    calls_w: int = 0
    calls_w2: int = 0


@dataclass(frozen=True, slots=True)
class LifeKey:
    """What an object is grouped by: call site (0 for pages), alloc tag, stack, source."""

    site: int
    tag: int
    stackid: int
    source: int

    @property
    def source_name(self) -> str:
        return SOURCES[self.source] if 0 <= self.source < len(SOURCES) else "?"


@dataclass(frozen=True, slots=True)
class TrackedObject:
    """One object still tracked (live) at the end of the window."""

    addr: int
    key: LifeKey
    t_alloc: int  # bpf_ktime_get_ns() at allocation
    bytes: int
    weight: Weights


@dataclass(frozen=True, slots=True)
class LifeEntry:
    """One ``lifespans`` entry: the freed (and missed) objects of one key."""

    key: LifeKey
    freed: Weights
    freed_n: int
    missed_n: int
    missed_calls_w: int
    missed_bytes_w: int
    life_w_sum: int  # sum calls_w * (lifespan_ns >> LIFE_SHIFT)
    hist_n: tuple[int, ...]
    hist_w: tuple[int, ...]
    hist_w2: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllocTag:
    file: str
    line: int
    function: str


def _key(k: object) -> LifeKey:
    return LifeKey(int(k.site), int(k.tag), int(k.stackid), int(k.source))  # type: ignore[attr-defined]


def _weights(w: object) -> Weights:
    return Weights(
        int(w.hits),  # type: ignore[attr-defined]
        int(w.bytes_w),  # type: ignore[attr-defined]
        int(w.bytes_w2),  # type: ignore[attr-defined]
        int(w.calls_w),  # type: ignore[attr-defined]
        int(w.calls_w2),  # type: ignore[attr-defined]
    )


def read_tracked(probe: Probe) -> list[TrackedObject]:
    """Every object still tracked."""
    return [
        TrackedObject(maps.as_int(k), _key(v.key), int(v.t_alloc), int(v.bytes), _weights(v.w))
        for k, v in maps.items(probe["tracked"])
    ]


def read_lifespans(probe: Probe) -> list[LifeEntry]:
    return [
        LifeEntry(
            _key(k),
            _weights(v.freed),
            int(v.freed_n),
            int(v.missed_n),
            int(v.missed_calls_w),
            int(v.missed_bytes_w),
            int(v.life_w_sum),
            tuple(int(x) for x in v.hist_n),
            tuple(int(x) for x in v.hist_w),
            tuple(int(x) for x in v.hist_w2),
        )
        for k, v in maps.items(probe["lifespans"])
    ]


@dataclass(frozen=True, slots=True)
class AddrSum:
    """The weights of every tracked allocation of one key at one address (one cluster)."""

    key: LifeKey
    addr: int
    weight: Weights


def read_addr_sums(probe: Probe, *, take: bool = False) -> list[AddrSum]:
    """The per-address sums; ``take`` empties the map as it reads (the fleet agent's
    continuous probe: each read is one interval's sums, and the map never fills)."""
    table = probe["addr_sums"]
    got = maps.take(table) if take else maps.items(table)
    return [AddrSum(_key(k.key), int(k.addr), _weights(v)) for k, v in got]


def read_counters(probe: Probe) -> dict[str, int]:
    """The counters by name, plus ``free_filtered``: frees dismissed by the address alone
    (not counted in kernel, to keep that path at one counter)."""
    c: dict[str, int] = dict(
        zip(COUNTERS, maps.percpu_sums(probe["counters"], len(COUNTERS)), strict=True)
    )
    c["free_filtered"] = max(0, c["free_events"] - c["free_kept"])
    return c


def read_stacks(probe: Probe, stackids: set[int]) -> dict[int, tuple[int, ...]]:
    """Return addresses (innermost first) of the given stack ids; missing ones are absent."""
    get = maps.cached_stacks(probe["stacks"])
    out = {}
    for sid in stackids:
        if sid >= 0:
            st = get(sid)
            if st:
                out[sid] = st
    return out


def read_tags(probe: Probe) -> dict[int, AllocTag]:
    try:
        table = probe["tags"]
    except KeyError:
        return {}
    return {
        maps.as_int(k): AllocTag(
            v.file.decode(errors="replace"), int(v.line), v.function.decode(errors="replace")
        )
        for k, v in maps.items(table)
    }


def now_ns() -> int:
    """The probe's clock (bpf_ktime_get_ns is CLOCK_MONOTONIC)."""
    import time

    return time.monotonic_ns()
