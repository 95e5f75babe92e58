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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes import btf, maps, tracefs
from allocscope.probes.capabilities import BTFFacts, CheckResult, btf_facts
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
    # The kernel's BTF facts (cached per boot by the collector); None = parse BTF now (~1 s)
    btf: BTFFacts | None = None

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
            offs = (self.btf if self.btf is not None else btf_facts()).kmem_cache
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
#
# The backend is chosen from facts that cost no compile (a BCC compile is 0.3-1.5 s here and
# ~10 s under emulation): BTF present, the site function traceable (ftrace's
# available_filter_functions), kprobes configured, and the verdicts of earlier attempts on
# this boot (cached by the collector, keyed by boot id and release). Only then is the first
# candidate compiled; a failure falls through to the next and becomes a verdict.


@dataclass(frozen=True, slots=True)
class BackendFacts:
    """What the backend choice rests on. ``traceable``: site function -> in
    available_filter_functions (None = that list is unreadable: unknown, not no).
    ``verdicts``: earlier attempts this boot, keyed ``backend`` (kernel-wide) or
    ``backend:function`` (see :func:`verdict_keys`)."""

    btf: bool
    kprobes: bool
    traceable: Mapping[str, bool | None]
    verdicts: Mapping[str, CheckResult] = field(default_factory=dict)


def gather_facts(
    sites: Sequence[SiteRanges], verdicts: Mapping[str, CheckResult] | None = None
) -> BackendFacts:
    """The cheap facts (a few file reads, ~30 ms for the ftrace list)."""
    return BackendFacts(
        btf=os.path.exists(VMLINUX_BTF),
        kprobes=tracefs.kprobes_configured(),
        traceable=tracefs.traceable_all([t.function for t in sites]),
        verdicts=dict(verdicts or {}),
    )


def refused(verdicts: Mapping[str, CheckResult], backend: str, function: str) -> CheckResult | None:
    """The cached failure that rules ``backend`` out for ``function``, if any."""
    for key in (backend, f"{backend}:{function}"):
        v = verdicts.get(key)
        if v is not None and not v.ok:
            return v
    return None


def choose_backends(
    sites: Sequence[SiteRanges], requested: str, facts: BackendFacts
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(candidates in the order to try, each with why; backends ruled out, each with why).

    Pure: every input is in ``facts``. Never returns an empty candidate list: when cached
    verdicts rule out everything, the tracepoint backend is tried anyway.
    """
    if requested != "auto":
        if requested not in BACKEND_ORDER:
            raise AllocscopeError(
                f"who-calls: unknown backend {requested!r} (have: auto, {', '.join(BACKEND_ORDER)})"
            )
        if requested == "fentry" and len(sites) != 1:
            raise AllocscopeError("who-calls: --backend fentry takes exactly one site")
        return [(requested, "requested")], []
    out: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    notrace = [t.function for t in sites if facts.traceable.get(t.function) is False]
    unknown = any(facts.traceable.get(t.function) is None for t in sites)
    hook_why = "site function traceable" + (" (unknown: ftrace list unreadable)" if unknown else "")

    def ruled_out(backend: str) -> CheckResult | None:
        return next((v for t in sites if (v := refused(facts.verdicts, backend, t.function))), None)

    for backend in BACKEND_ORDER:
        why_not: str | None = None
        if backend == "fentry" and len(sites) != 1:
            why_not = "takes exactly one site"
        elif backend == "fentry" and not facts.btf:
            why_not = "no BTF"
        elif backend == "kprobe" and not facts.kprobes:
            why_not = "no kprobe_events (CONFIG_KPROBE_EVENTS)"
        elif backend in ("fentry", "kprobe") and notrace:
            why_not = f"{', '.join(notrace)} not traceable (notrace)"
        elif (v := ruled_out(backend)) is not None:
            why_not = f"refused on this boot: {v.detail}"
        if why_not is not None:
            skipped.append((backend, why_not))
        elif backend in TRACEPOINT_FAMILY:
            out.append((backend, "kmem tracepoints, call_site filter"))
        else:
            out.append((backend, hook_why))
    if not out:
        out.append(("tracepoint", "last resort: every backend refused on this boot"))
    return out, skipped


def backend_candidates(sites: Sequence[SiteRanges], requested: str) -> list[tuple[str, str]]:
    """Backends to try in order, each with why (facts read now, no cached verdicts)."""
    facts = gather_facts(sites) if requested == "auto" else BackendFacts(False, False, {})
    return choose_backends(sites, requested, facts)[0]


# Failures that are a property of the kernel (the same for every site function) or of the
# function, with a stable cause: only these become verdicts. A transient failure (ENOMEM,
# EBUSY, a clang crash) is retried next time instead of ruling a backend out for the boot.
_KERNEL_WIDE = {"EPERM from the kernel", "no kprobe_events"}
_PER_FUNCTION = {"function not traceable"}


def verdict_keys(backend: str, function: str, result: CheckResult) -> list[str]:
    """The cache keys an attempt's outcome is stored under ([] = not worth remembering).
    The kmem tracepoints do not depend on the site, so their verdicts are kernel-wide."""
    cause = "" if result.ok else error_line(result.detail, short=True)
    stable = result.ok or cause in _KERNEL_WIDE or cause in _PER_FUNCTION
    if backend in TRACEPOINT_FAMILY:
        return [backend] if stable else []
    if result.ok or cause in _PER_FUNCTION:
        return [f"{backend}:{function}"]
    if cause in _KERNEL_WIDE:
        return [backend, f"{backend}:{function}"]
    return []


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
    # every compile this took, in order: (backend, outcome); one in the common case
    attempts: list[tuple[str, CheckResult]] = field(default_factory=list)


def open_probe(
    sites: Sequence[SiteRanges],
    *,
    backend: str = "auto",
    sample: int = 0,
    pid: int | None = None,
    comm: str | None = None,
    per_process: bool = False,
    allocinfo: bool = False,
    facts: BackendFacts | None = None,
    btf_info: BTFFacts | None = None,
    log: Callable[[str], None] = lambda s: None,
    on_attempt: Callable[[str, CheckResult], object] = lambda b, r: None,
) -> OpenProbe:
    """Compile and attach the first backend :func:`choose_backends` picks from ``facts``
    (read now when None); a failure costs one compile, is logged, named in the notes and
    passed to ``on_attempt`` (successes too) so the caller can remember it. ``allocinfo``:
    the kernel has /proc/allocinfo, so the exact tag can be read when the headers match.
    ``btf_info``: the BTF facts (parsed now when None). Raises :class:`CapabilityError`
    when none attaches."""
    headers = resolve_headers()
    read_tag = headers.matches and allocinfo
    if facts is None:
        facts = gather_facts(sites) if backend == "auto" else BackendFacts(False, False, {})
    candidates, skipped = choose_backends(sites, backend, facts)
    notes: list[str] = []
    failures: list[str] = []
    attempts: list[tuple[str, CheckResult]] = []
    prefix = "refused on this boot: "
    cached = [(b, why.removeprefix(prefix)) for b, why in skipped if why.startswith(prefix)]
    if cached:
        log(
            "who-calls: skipping "
            + ", ".join(f"{b} ({error_line(why, short=True)})" for b, why in cached)
            + ": refused on this boot (`allocscope doctor --refresh` tries again)"
        )
        notes.append(
            "backends skipped (refused on this boot): "
            + "; ".join(f"{b}: {why[:160]}" for b, why in cached)
        )
    for candidate, _why in candidates:
        settings = WhoCallsSettings(candidate, sites, pid, comm, per_process, read_tag, btf_info)
        probe = None
        t0 = time.monotonic()
        try:
            probe = Probe(PROGRAM, settings.defines(), headers=headers)
            set_sampling(probe, sample, 0)
            attach(probe, candidate, sites)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception; CapabilityError too
            if probe is not None:
                probe.close()
            msg = error_line(e)
            outcome = CheckResult(False, msg, time.monotonic() - t0)
            attempts.append((candidate, outcome))
            on_attempt(candidate, outcome)
            failures.append(f"{candidate}: {msg[:160]}")
            log(f"who-calls: backend {candidate} unavailable ({msg[:120]}); trying the next")
            continue
        outcome = CheckResult(True, "loaded and attached", time.monotonic() - t0)
        attempts.append((candidate, outcome))
        on_attempt(candidate, outcome)
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
        return OpenProbe(
            probe, candidate, read_tag and candidate in TRACEPOINT_FAMILY, notes, attempts
        )
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
