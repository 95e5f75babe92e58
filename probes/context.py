"""The Python half of ``context.bpf.c``: settings -> ``-D``, hooks, attach, map readers.

The C program counts every slab and page allocation per hook (exact), drops byte-sampling
points on them (``sampler.bpf.h``) and, on a point only, walks the stack and adds the
point's weights under (tag or call site, stack, source, charged). This module decides how
the running kernel is hooked -- raw tracepoints where BTF shows the 6.10+ argument layouts,
else the classic tracepoint of that event with record offsets from tracefs -- takes the memcg
charge bits and ``kmem_cache`` offsets from BTF (:func:`allocscope.probes.btf.charge_layout`),
and reads the maps into dataclasses. Symbolising, attributing and estimating live in
:mod:`allocscope.collector.context`.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from allocscope.errors import CapabilityError
from allocscope.probes import btf, maps, tracefs
from allocscope.probes.headers import resolve_headers
from allocscope.probes.loader import Probe

PROGRAM = "context"
# Mirrored from context.bpf.c (tests/unit/test_bpf_constants.py fails on drift).
SOURCES = ("kmalloc", "kmem_cache_alloc", "page")  # index = SRC_*
SRC_KMALLOC, SRC_CACHE, SRC_PAGE = 0, 1, 2
CHARGED_NO, CHARGED_YES, CHARGED_UNKNOWN = 0, 1, 2
DEFAULT_STACK_ENTRIES = 8192
DEFAULT_STACK_DEPTH = 32
DEFAULT_SAMPLE_ENTRIES = 16384
DEFAULT_TAGS_MAX = 4096
SAMPLE_VALUE_BYTES = 5 * 8  # struct sample_weight
SAMPLE_KEY_BYTES = 16  # struct sample_key
TAG_INFO_BYTES = 96 + 64 + 4 + 4

Defines = dict[str, int | str | bool]

# The raw tracepoint argument types each handler reads (ctx->args[i]), per BTF.
RAW_LAYOUTS: dict[str, dict[int, str]] = {
    "kmem_cache_alloc": {0: "long unsigned int", 2: "struct kmem_cache *", 3: "gfp_t"},
    "kmalloc": {0: "long unsigned int", 3: "size_t", 4: "gfp_t"},
    "mm_page_alloc": {0: "struct page *", 1: "unsigned int", 2: "gfp_t"},
}


def raw_args_match(tracepoint: str) -> bool:
    """Do the raw tracepoint's ``ctx->args[]`` have the types the handler reads (per BTF)?
    Without BTF the 6.10+ layouts are assumed only where nothing says otherwise: False, so
    the classic tracepoint (described by tracefs) is used."""
    vm = btf.vmlinux()
    args = vm.raw_tracepoint_args(tracepoint) if vm is not None else None
    if args is None:
        return False
    expect = RAW_LAYOUTS[tracepoint]
    return all(i < len(args) and args[i] == t for i, t in expect.items())


class Hook(NamedTuple):
    backend: str  # raw_tracepoint | tracepoint
    target: str  # kmem_cache_alloc, or kmem:kmem_cache_alloc for a classic one
    program: str  # the function in context.bpf.c


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """Everything ``context.bpf.c`` is compiled with; :meth:`defines` gives the ``-D``s."""

    pid: int | None = None
    comm: str | None = None
    read_tag: bool = False
    site_of: str | None = None  # SITE_OF(a) expression: only these slab call sites
    pages: bool = True
    slabs: bool = True  # False: page events only (who-calls of a page site)
    stack_entries: int = DEFAULT_STACK_ENTRIES
    stack_depth: int = DEFAULT_STACK_DEPTH
    sample_entries: int = DEFAULT_SAMPLE_ENTRIES

    def defines(self) -> tuple[Defines, list[Hook], str]:
        """The ``-D`` settings, the hooks they compile, and where the charge bit comes from
        (``btf`` | ``tracepoint-field`` | ``none``). Reads BTF and tracefs."""
        d: Defines = {
            "PAGE_SIZE_BYTES": resource.getpagesize(),
            "STACK_ENTRIES": self.stack_entries,
            "STACK_DEPTH": self.stack_depth,
            "SAMPLE_ENTRIES": self.sample_entries,
            "TAGS_MAX": DEFAULT_TAGS_MAX,
        }
        if self.pid is not None:
            d["FILTER_TGID"] = self.pid
        if self.comm:
            raw = self.comm.encode()[:15].ljust(16, b"\0")
            d["FILTER_COMM0"] = f"0x{int.from_bytes(raw[:8], 'little'):x}ULL"
            d["FILTER_COMM1"] = f"0x{int.from_bytes(raw[8:], 'little'):x}ULL"
        if self.site_of is not None:
            d["SITE_FILTER"] = 1
            d["SITE_OF(a)"] = self.site_of
        if self.read_tag:
            d["READ_ALLOC_TAG"] = 1
        charge = btf.charge_layout()
        if charge.gfp_account is not None:
            d["GFP_ACCOUNT_MASK"] = f"0x{charge.gfp_account:x}ULL"
        if charge.slab_account is not None and charge.cache_flags_off is not None:
            d["SLAB_ACCOUNT_MASK"] = f"0x{charge.slab_account:x}ULL"
            d["CACHE_FLAGS_OFF"] = charge.cache_flags_off
            d["CACHE_FLAGS_SIZE"] = min(8, charge.cache_flags_size or 4)
        hooks: list[Hook] = []
        offs = btf.kmem_cache_offsets()
        cache_source = "btf" if charge.gfp_account is not None else "none"
        if not self.slabs:
            pass  # page events only: no slab hook is compiled in or attached
        elif offs is not None and raw_args_match("kmem_cache_alloc"):
            d["KMEM_CACHE_SIZE_OFF"] = offs["size"]
            hooks.append(Hook("raw_tracepoint", "kmem_cache_alloc", "on_kmem_cache_alloc"))
            if "SLAB_ACCOUNT_MASK" not in d:
                cache_source = "none"
        else:
            f = tracefs.offsets_of("kmem", "kmem_cache_alloc", ("call_site", "bytes_alloc"))
            d["TP_KCA_CALL_SITE"] = f["call_site"]
            d["TP_KCA_BYTES"] = f["bytes_alloc"]
            d["TP_KCA_GFP"] = _optional_offset("kmem_cache_alloc", "gfp_flags")
            acc = _optional_offset("kmem_cache_alloc", "accounted")
            if acc >= 0:
                d["TP_KCA_ACCOUNTED"] = acc
                cache_source = "tracepoint-field"
            hooks.append(Hook("tracepoint", "kmem:kmem_cache_alloc", "on_kmem_cache_alloc_tp"))
        if not self.slabs:
            pass
        elif raw_args_match("kmalloc"):
            hooks.append(Hook("raw_tracepoint", "kmalloc", "on_kmalloc"))
        else:
            f = tracefs.offsets_of("kmem", "kmalloc", ("call_site", "bytes_alloc", "gfp_flags"))
            d["TP_KM_CALL_SITE"] = f["call_site"]
            d["TP_KM_BYTES"] = f["bytes_alloc"]
            d["TP_KM_GFP"] = f["gfp_flags"]
            hooks.append(Hook("tracepoint", "kmem:kmalloc", "on_kmalloc_tp"))
        if self.pages and self.site_of is None:
            if raw_args_match("mm_page_alloc"):
                hooks.append(Hook("raw_tracepoint", "mm_page_alloc", "on_mm_page_alloc"))
            else:
                f = tracefs.offsets_of("kmem", "mm_page_alloc", ("order", "gfp_flags"))
                d["TP_PA_ORDER"] = f["order"]
                d["TP_PA_GFP"] = f["gfp_flags"]
                hooks.append(Hook("tracepoint", "kmem:mm_page_alloc", "on_mm_page_alloc_tp"))
        return d, hooks, cache_source


def _optional_offset(event: str, fld: str) -> int:
    try:
        return tracefs.offsets_of("kmem", event, (fld,))[fld]
    except CapabilityError:  # a field this kernel's record lacks
        return -1


def map_bytes(settings: ContextSettings, ncpus: int) -> int:
    """Approximate memory of the maps (preallocated): what ``context`` costs to leave on."""
    stacks = settings.stack_entries * (settings.stack_depth * 8 + 16)
    samples = settings.sample_entries * (SAMPLE_KEY_BYTES + SAMPLE_VALUE_BYTES + 32)
    cpu = ncpus * (16 + 3 * 8 * 2 + 3 * 8)
    tags = DEFAULT_TAGS_MAX * (8 + TAG_INFO_BYTES + 32) if settings.read_tag else 0
    return stacks + samples + cpu + tags + 8


def set_rate(probe: Probe, rate: int) -> None:
    """The mean gap R (bytes) the sampler draws new gaps with from now on."""
    cfg = probe["config"]
    leaf = cfg.Leaf()
    leaf.rate = rate
    cfg[cfg.Key(0)] = leaf


@dataclass(slots=True)
class OpenProbe:
    probe: Probe
    hooks: list[Hook]
    backend: str
    read_tag: bool
    charge_source: str
    settings: ContextSettings
    notes: list[str] = field(default_factory=list)


def open_probe(
    settings: ContextSettings, rate: int, log: Callable[[str], None] = lambda s: None
) -> OpenProbe:
    """Compile, load every program, attach every hook, set R, then empty the maps (the
    verifier's own allocations must not count). Raises CapabilityError when it cannot load."""
    headers = resolve_headers()
    read_tag = settings.read_tag and headers.matches
    if read_tag != settings.read_tag:
        settings = dataclasses.replace(settings, read_tag=read_tag)
    defines, hooks, charge_source = settings.defines()
    probe = Probe(PROGRAM, defines, headers=headers)
    try:
        for h in hooks:
            probe.preload(h.program, h.backend)
        set_rate(probe, rate)
        for h in hooks:
            if h.backend == "raw_tracepoint":
                probe.attach_raw_tracepoint(h.target, h.program)
            else:
                probe.attach_tracepoint(h.target, h.program)
        reset(probe)
    except BaseException:
        probe.close()
        raise
    backend = "+".join(dict.fromkeys(h.backend for h in hooks))
    log(f"context: hooks {', '.join(h.target for h in hooks)} ({backend})")
    return OpenProbe(probe, hooks, backend, read_tag, charge_source, settings)


def reset(probe: Probe) -> None:
    """Zero the per-CPU state and drop samples: the window starts from nothing."""
    maps.zero_array(probe["cpu"])
    maps.drain_hash(probe["samples"], 4 * DEFAULT_SAMPLE_ENTRIES)


# --- readers ---------------------------------------------------------------------------------


@dataclass(slots=True)
class CpuTotals:
    """``cpu`` summed over CPUs: the window's exact counts and the losses."""

    events: list[int]
    bytes: list[int]
    hits: int
    stack_err: int
    hash_full: int


def read_totals(probe: Probe) -> CpuTotals:
    out = CpuTotals([0] * len(SOURCES), [0] * len(SOURCES), 0, 0, 0)
    table = probe["cpu"]
    for v in table[table.Key(0)]:
        for i in range(len(SOURCES)):
            out.events[i] += int(v.events[i])
            out.bytes[i] += int(v.bytes[i])
        out.hits += int(v.hits)
        out.stack_err += int(v.stack_err)
        out.hash_full += int(v.hash_full)
    return out


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One ``samples`` entry: its key and the weight sums (``struct sample_weight``)."""

    site: int
    is_tag: bool
    stackid: int
    source: int
    charged: int
    hits: int
    bytes_w: int
    bytes_w2: int
    calls_w: int
    calls_w2: int


def read_samples(probe: Probe) -> list[SampleRow]:
    return [
        SampleRow(
            int(k.site),
            bool(k.is_tag),
            int(k.stackid),
            int(k.source),
            int(k.charged),
            int(v.hits),
            int(v.bytes_w),
            int(v.bytes_w2),
            int(v.calls_w),
            int(v.calls_w2),
        )
        for k, v in maps.items(probe["samples"])
    ]


def read_stacks(probe: Probe, ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Return addresses per stack id, innermost first (ids gone from the map are omitted)."""
    table = probe["stacks"]
    out: dict[int, tuple[int, ...]] = {}
    for sid in set(ids):
        if sid < 0:
            continue
        try:
            leaf = table[table.Key(sid)]
        except KeyError:
            continue
        ips: list[int] = []
        for a in leaf.ip:
            if not a:
                break
            ips.append(int(a))
        out[sid] = tuple(ips)
    return out


@dataclass(frozen=True, slots=True)
class TagInfo:
    file: str
    line: int
    function: str


def read_tags(probe: Probe) -> dict[int, TagInfo]:
    try:
        table = probe["tags"]
    except KeyError:
        return {}
    return {
        maps.as_int(k): TagInfo(
            v.file.decode(errors="replace"), int(v.line), v.function.decode(errors="replace")
        )
        for k, v in maps.items(table)
    }
