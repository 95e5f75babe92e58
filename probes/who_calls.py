"""The Python half of ``who_calls.bpf.c``: settings -> ``-D``, backends, attach, map readers.

The C program counts every allocation whose call site (or probed IP) falls in a site's code
ranges and walks the stack of a 1-in-N sample; this module is everything user space does with
the kernel for it: which backends this kernel can run (fentry and kprobe only where the site
function is traceable -- ``lib/`` is ``notrace``, so the kmem tracepoints with an in-kernel
``call_site`` range filter are the main road), the ``-D`` settings each backend compiles with,
the hooks, and readers that turn the maps into dataclasses. Site resolution, the automatic
sampling policy and the capture window live in :mod:`allocscope.collector.who_calls`.

Costs (see the C file): a non-matching event is the hook plus two compares per range, a
matching one adds a per-CPU counter update, a sampled one a stack walk (~1.5-2 us, measured on
the development VM) and a hash update.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes import btf, maps, tracefs
from allocscope.probes.headers import resolve_headers
from allocscope.probes.loader import Probe, error_line

PROGRAM = "who_calls"
BACKEND_ORDER = ("fentry", "kprobe", "raw_tracepoint", "tracepoint")
TRACEPOINT_FAMILY = frozenset({"raw_tracepoint", "tracepoint"})
# Mirrored from who_calls.bpf.c (tests/unit/test_bpf_constants.py fails on drift).
MAX_SITES = 8
VMLINUX_BTF = btf.VMLINUX_BTF
EVENTS = ("kmem_cache_alloc", "kmalloc")  # the kmem tracepoints the tracepoint backends hook

Defines = dict[str, int | str | bool]


@dataclass(slots=True)
class SiteRanges:
    """One site as the probe sees it: its 1-based index, the clone-free function name, the
    ``[start, end)`` code ranges that belong to it, and the kallsyms names (clones included)
    a kprobe attaches to."""

    index: int
    function: str
    ranges: list[tuple[int, int]]
    symbols: list[str]


def site_of_macro(sites: Sequence[SiteRanges]) -> str:
    """``SITE_OF(a)``: a compiled-in chain of range compares -> site index, 0 for no match.

    Compile-time constants make the filter two compares for a non-matching event (the common
    case on a hot tracepoint); a handful of ranges (clones, several sites) stays cheap.
    """
    expr = "0"
    for t in reversed(sites):
        for start, end in reversed(t.ranges):
            expr = f"(((a)>=0x{start:x}ULL&&(a)<0x{end:x}ULL)?{t.index}:{expr})"
    return expr


def comm_defines(comm: str) -> Defines:
    """``FILTER_COMM0/1``: the 16-byte ``task->comm`` (15 characters + NUL) as two u64,
    little-endian, so the filter is two compares."""
    raw = comm.encode()[:15].ljust(16, b"\0")
    return {
        "FILTER_COMM0": f"0x{int.from_bytes(raw[:8], 'little'):x}ULL",
        "FILTER_COMM1": f"0x{int.from_bytes(raw[8:], 'little'):x}ULL",
    }


@dataclass(frozen=True, slots=True)
class WhoCallsSettings:
    """Everything ``who_calls.bpf.c`` is compiled with; :meth:`defines` gives the ``-D``s."""

    backend: str
    sites: Sequence[SiteRanges]
    pid: int | None = None
    comm: str | None = None
    per_process: bool = False
    read_tag: bool = False  # READ_ALLOC_TAG; only the tracepoint backends read it

    def defines(self) -> Defines:
        """The ``-D`` settings. The tracepoint backend reads record offsets from tracefs and
        the raw one ``kmem_cache.size``'s offset from BTF, so this touches the running kernel."""
        d: Defines = {"SITE_OF(a)": site_of_macro(self.sites), "MAX_SITES": MAX_SITES}
        if self.pid is not None:
            d["FILTER_TGID"] = self.pid
        if self.comm:
            d.update(comm_defines(self.comm))
        if self.per_process:
            d["PER_PROCESS"] = 1
        if self.backend == "raw_tracepoint":
            d["BACKEND_RAW_TP"] = 1
            offs = btf.kmem_cache_offsets()
            if offs is not None:
                d["KMEM_CACHE_SIZE_OFF"] = offs["size"]
        elif self.backend == "tracepoint":
            d["BACKEND_TP"] = 1
            kca = tracefs.offsets_of("kmem", "kmem_cache_alloc", ("call_site", "bytes_alloc"))
            km = tracefs.offsets_of("kmem", "kmalloc", ("call_site", "bytes_alloc"))
            d.update(
                TP_KCA_CALL_SITE=kca["call_site"],
                TP_KCA_BYTES=kca["bytes_alloc"],
                TP_KM_CALL_SITE=km["call_site"],
                TP_KM_BYTES=km["bytes_alloc"],
            )
        elif self.backend == "kprobe":
            d["BACKEND_KPROBE"] = 1
        elif self.backend == "fentry":
            d["BACKEND_FENTRY"] = 1
            d["FENTRY_TARGET"] = self.sites[0].function
        if self.read_tag and self.backend in TRACEPOINT_FAMILY:
            d["READ_ALLOC_TAG"] = 1
        return d


# --- backends ------------------------------------------------------------------------------


def backend_candidates(sites: Sequence[SiteRanges], requested: str) -> list[tuple[str, str]]:
    """Backends to try in order, each with why it is (or was not) a candidate.

    Returns (backend, note) pairs; only those whose cheap preconditions hold are included,
    so a kernel without kprobes costs no failed compile. The survivors are then *tried*.
    """
    if requested != "auto":
        if requested not in BACKEND_ORDER:
            raise AllocscopeError(
                f"who-calls: unknown backend {requested!r} (have: auto, {', '.join(BACKEND_ORDER)})"
            )
        if requested == "fentry" and len(sites) != 1:
            raise AllocscopeError("who-calls: --backend fentry takes exactly one site")
        return [(requested, "requested")]
    out: list[tuple[str, str]] = []
    traceable = [tracefs.traceable(t.function) for t in sites]
    if all(v is not False for v in traceable):
        if len(sites) == 1 and os.path.exists(VMLINUX_BTF):
            out.append(("fentry", "site function is traceable"))
        if tracefs.kprobes_configured():
            out.append(("kprobe", "site function is traceable"))
    out.append(("raw_tracepoint", "kmem tracepoints, call_site filter"))
    out.append(("tracepoint", "kmem tracepoints, call_site filter"))
    return out


def attach(probe: Probe, backend: str, sites: Sequence[SiteRanges]) -> None:
    """Attach the hooks ``backend`` compiled (fentry: BCC attached them while loading)."""
    if backend in TRACEPOINT_FAMILY:
        for ev in EVENTS:
            if backend == "raw_tracepoint":
                probe.attach_raw_tracepoint(ev, f"on_{ev}")
            else:
                probe.attach_tracepoint(f"kmem:{ev}", f"on_{ev}")
    elif backend == "kprobe":
        for t in sites:
            for sym in t.symbols:
                probe.attach_kprobe(sym, "on_site_entry")


def set_sampling(probe: Probe, n: int, epoch: int) -> None:
    """Switch the probe to 1-in-``n`` stack sampling (0 = count only), tagged ``epoch``."""
    cfg = probe["config"]
    leaf = cfg.Leaf()
    leaf.n = n
    leaf.epoch = epoch
    cfg[cfg.Key(0)] = leaf


@dataclass(slots=True)
class OpenProbe:
    """A compiled, attached who-calls probe and what it took to get there."""

    probe: Probe
    backend: str
    read_tag: bool  # the probe reads current->alloc_tag (exact allocinfo tags)
    notes: list[str] = field(default_factory=list)


def open_probe(
    sites: Sequence[SiteRanges],
    *,
    backend: str = "auto",
    sample: int = 0,
    pid: int | None = None,
    comm: str | None = None,
    per_process: bool = False,
    allocinfo: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> OpenProbe:
    """Compile and attach the first backend that works (each failure costs one compile and is
    logged, then named in the notes). ``allocinfo``: the kernel has /proc/allocinfo, so the
    exact tag can be read when the headers match. Raises :class:`CapabilityError` when none
    attaches."""
    headers = resolve_headers()
    read_tag = headers.matches and allocinfo
    notes: list[str] = []
    failures: list[str] = []
    for candidate, _why in backend_candidates(sites, backend):
        settings = WhoCallsSettings(candidate, sites, pid, comm, per_process, read_tag)
        probe = None
        try:
            probe = Probe(PROGRAM, settings.defines(), headers=headers)
            set_sampling(probe, sample, 0)
            attach(probe, candidate, sites)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception; CapabilityError too
            if probe is not None:
                probe.close()
            msg = error_line(e)
            failures.append(f"{candidate}: {msg[:160]}")
            log(f"who-calls: backend {candidate} unavailable ({msg[:120]}); trying the next")
            continue
        if failures:
            notes.append("backends tried first: " + "; ".join(failures))
        if candidate == "raw_tracepoint" and "KMEM_CACHE_SIZE_OFF" not in probe.defines:
            notes.append(
                "no BTF: bytes of kmem_cache_alloc events are not known (kmalloc's are); "
                "--backend tracepoint reads them from the record"
            )
        if not headers.matches:
            notes.append(
                "kernel headers do not match the running kernel: the probe reads no "
                "kernel struct through them (kmem_cache size offset comes from BTF)"
            )
        return OpenProbe(probe, candidate, read_tag and candidate in TRACEPOINT_FAMILY, notes)
    raise CapabilityError("who-calls: no backend could attach: " + "; ".join(failures))


# --- reading the maps ------------------------------------------------------------------------


@dataclass(slots=True)
class SiteCounts:
    """``counts[site]`` (``struct site_count``) summed over CPUs."""

    calls: int = 0
    bytes: int = 0
    sampled: int = 0
    stack_err: int = 0
    hash_full: int = 0


@dataclass(slots=True)
class Sample:
    """One ``samples`` entry with its stack: sampled events of one (site, stack, epoch,
    [tgid, comm], [tag])."""

    site: int
    stack: tuple[int, ...]  # return addresses, innermost first
    tgid: int
    comm: str
    tag: int  # alloc_tag address, 0 when not read
    count: int
    bytes: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class AllocTag:
    """One ``tags`` entry: the ``struct codetag`` an alloc_tag address points to."""

    file: str
    line: int
    function: str


@dataclass(slots=True)
class MapContents:
    """Everything the maps hold at the end of a window."""

    counts: dict[int, SiteCounts]
    samples: list[Sample]
    tags: dict[int, AllocTag]
    missing_stacks: int = 0  # sampled events whose stack was gone from ``stacks``


def read_counts(probe: Probe, sites: Sequence[SiteRanges]) -> dict[int, SiteCounts]:
    """Every matching event per site index, summed over CPUs (one lookup per site)."""
    return maps.array_structs(probe["counts"], [t.index for t in sites], SiteCounts)


def read_samples(probe: Probe) -> tuple[list[Sample], int]:
    """The sampled stacks, and how many sampled events lost theirs (stack id evicted)."""
    stack_of = maps.cached_stacks(probe["stacks"])
    samples: list[Sample] = []
    missing = 0
    for k, v in maps.items(probe["samples"]):
        stack = stack_of(int(k.stackid))
        if not stack:
            missing += int(v.count)
            continue
        samples.append(
            Sample(
                int(k.site),
                stack,
                int(k.tgid),
                bytes(k.comm).split(b"\0")[0].decode(errors="replace"),
                int(k.tag),
                int(v.count),
                int(v.bytes),
                int(k.epoch),
            )
        )
    return samples, missing


def read_tags(probe: Probe) -> dict[int, AllocTag]:
    """The alloc tags the probe saw (READ_ALLOC_TAG builds only)."""
    return {
        maps.as_int(k): AllocTag(
            v.file.decode(errors="replace"), int(v.line), v.function.decode(errors="replace")
        )
        for k, v in maps.items(probe["tags"])
    }


def read_maps(probe: Probe, sites: Sequence[SiteRanges], read_tag: bool) -> MapContents:
    """Read samples first, then counts: events landing in between make counts >= samples."""
    samples, missing = read_samples(probe)
    counts = read_counts(probe, sites)
    tags = read_tags(probe) if read_tag else {}
    return MapContents(counts, samples, tags, missing)
