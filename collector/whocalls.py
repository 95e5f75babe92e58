"""``who-calls``: capture who calls an allocation site, live, and join it with allocinfo.

The pipeline (probes -> collector): resolve the site(s) to code ranges from kallsyms; pick a
backend by what the running kernel allows (fentry -> kprobe on the site function where it is
traceable, else the kmem tracepoints with an in-kernel ``call_site`` range filter -- the main
road, because ``lib/`` is ``notrace``); count every matching event and walk the stack of a 1-in-N
Bernoulli sample (``probes/who_calls.bpf.c``); then symbolize, attribute each stack to a caller
(:mod:`allocscope.collector.attribution`), compute shares with sampling-aware intervals
(:mod:`allocscope.collector.shares`) and join the tag's allocinfo line read before and after.

The result is a :class:`~allocscope.collector.result.Result` of kind ``who-calls``; its payload
keys are a contract read by the HTML report and fleet ingest (see the README notes).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector import attribution, shares
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot, read_allocinfo
from allocscope.collector.host import collect_host_metadata
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.result import Result
from allocscope.collector.site import Site, SiteQuery, canonical_function
from allocscope.errors import AllocscopeError, CapabilityError

TRACEFS = "/sys/kernel/tracing"
BACKEND_ORDER = ("fentry", "kprobe", "raw_tracepoint", "tracepoint")
TRACEPOINT_FAMILY = frozenset({"raw_tracepoint", "tracepoint"})
MAX_SITES = 8
# Cost of one sampled event's stack walk + hash update, measured on the development VM
# (1.5-2 us); the automatic sampling mode divides the overhead budget by it.
STACK_WALK_SECONDS = 2.0e-6
CALIBRATION_SECONDS = 1.0


@dataclass(slots=True)
class SiteTarget:
    """One site as the probe sees it: a 1-based index and the code ranges that belong to it."""

    index: int
    label: str  # as the user typed it
    function: str  # clone-free function name
    ranges: list[tuple[int, int]]
    symbols: list[str]  # kallsyms names (clones included), for kprobe attachment
    tag_site: Site | None = None  # the allocinfo tag, when an allocinfo line names it


@dataclass(slots=True)
class Options:
    """Everything the CLI (or a test, or the benchmark) can ask of a capture."""

    sites: list[str]
    duration: float | None = None
    sample: int | None = None  # None = auto
    budget: float = 0.01  # fraction of one CPU for stack walks in auto mode
    backend: str = "auto"
    skip: list[str] = field(default_factory=list)
    depth: int = 1
    min_share: float = 0.01
    pid: int | None = None
    comm: str | None = None
    per_process: bool = False
    allocinfo_file: str | None = None
    lenient: bool = False  # skip (and count) malformed --allocinfo lines instead of failing
    addresses: bool = False
    workload: str | None = None
    confidence: float = 0.95
    # Tests and benchmarks: run this in a thread once the probe is attached; without a
    # duration the capture ends when it returns.
    during: Callable[[], object] | None = None


# --- site resolution -------------------------------------------------------------------------


def _allocinfo_for_resolution(
    opts: Options, log: Callable[[str], None] = lambda s: None
) -> AllocinfoSnapshot | None:
    """Strict like ``top``: a malformed line is an error naming file:line, unless --lenient,
    which skips such lines and says how many."""
    path = opts.allocinfo_file
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return None
    snap = read_allocinfo(path, lenient=opts.lenient)
    if snap.skipped:
        s = "s" if snap.skipped != 1 else ""
        log(
            f"allocscope: warning: {snap.source}: skipped {snap.skipped} malformed "
            f"line{s} (--lenient)"
        )
    return snap


def resolve_sites(
    texts: Sequence[str], ksyms: Kallsyms, allocinfo: AllocinfoSnapshot | None
) -> list[SiteTarget]:
    """Turn ``xas_alloc`` / ``lib/xarray.c:376`` / ``a,b`` into code ranges.

    A ``file:line`` needs allocinfo (live or ``--allocinfo``) to learn the function; a function
    name needs only kallsyms. Errors are one line and name what was not found.
    """
    labels = [t for text in texts for t in text.split(",") if t.strip()]
    if not labels:
        raise AllocscopeError("who-calls: name at least one SITE (a function or file:line)")
    if len(labels) > MAX_SITES:
        raise AllocscopeError(f"who-calls: at most {MAX_SITES} sites at once")
    targets: list[SiteTarget] = []
    for label in labels:
        try:
            q = SiteQuery.parse(label)
        except ValueError as e:
            raise AllocscopeError(f"who-calls: bad SITE {label!r}: {e}") from None
        tag_site: Site | None = None
        function = q.function
        if allocinfo is not None:
            matches = [r.site for r in allocinfo.records if q.matches(r.site)]
            if q.file is not None and not matches:
                raise AllocscopeError(
                    f"who-calls: no allocinfo line matches {label!r} in {allocinfo.source}"
                )
            if len(matches) == 1:
                tag_site = matches[0]
            if function is None:
                funcs = {canonical_function(s.function) for s in matches}
                if len(funcs) > 1:
                    raise AllocscopeError(
                        f"who-calls: {label!r} names several functions "
                        f"({', '.join(sorted(funcs))}); add :LINE"
                    )
                function = funcs.pop()
        if function is None:
            raise AllocscopeError(
                f"who-calls: {label!r} is a file:line but no allocinfo is "
                "available to map it to a function; name the function, or "
                "pass --allocinfo FILE"
            )
        ranges = ksyms.ranges(function)
        if not ranges:
            raise AllocscopeError(
                f"who-calls: no function {function!r} in /proc/kallsyms "
                "(inlined into its callers? name the caller instead)"
            )
        symbols = sorted({r.name for s, _ in ranges if (r := ksyms.resolve(s)) is not None})
        targets.append(SiteTarget(len(targets) + 1, label, function, ranges, symbols, tag_site))
    return targets


def site_of_macro(targets: Sequence[SiteTarget]) -> str:
    """``SITE_OF(a)``: a compiled-in chain of range compares -> site index, 0 for no match.

    Compile-time constants make the filter two compares for a non-matching event (the common
    case on a hot tracepoint); a handful of ranges (clones, several sites) stays cheap.
    """
    expr = "0"
    for t in reversed(targets):
        for start, end in reversed(t.ranges):
            expr = f"(((a)>=0x{start:x}ULL&&(a)<0x{end:x}ULL)?{t.index}:{expr})"
    return expr


# --- backends --------------------------------------------------------------------------------


def _traceable(function: str) -> bool | None:
    """Is ``function`` in ftrace's list (not ``notrace``)? None when the list is unreadable."""
    try:
        with open(os.path.join(TRACEFS, "available_filter_functions")) as f:
            for line in f:
                if line.split(" ", 1)[0].strip() == function:
                    return True
        return False
    except OSError:
        return None


def _kprobes_configured() -> bool:
    return os.path.exists(os.path.join(TRACEFS, "kprobe_events")) or os.path.exists(
        "/sys/kernel/debug/kprobes"
    )


def backend_candidates(targets: Sequence[SiteTarget], requested: str) -> list[tuple[str, str]]:
    """Backends to try in order, each with why it is (or was not) a candidate.

    Returns (backend, note) pairs; only those whose cheap preconditions hold are included,
    so a kernel without kprobes costs no failed compile. The survivors are then *tried*.
    """
    if requested != "auto":
        if requested not in BACKEND_ORDER:
            raise AllocscopeError(
                f"who-calls: unknown backend {requested!r} (have: auto, {', '.join(BACKEND_ORDER)})"
            )
        if requested == "fentry" and len(targets) != 1:
            raise AllocscopeError("who-calls: --backend fentry takes exactly one site")
        return [(requested, "requested")]
    out: list[tuple[str, str]] = []
    traceable = [_traceable(s) for t in targets for s in [t.function]]
    if all(v is not False for v in traceable):
        if len(targets) == 1 and os.path.exists("/sys/kernel/btf/vmlinux"):
            out.append(("fentry", "site function is traceable"))
        if _kprobes_configured():
            out.append(("kprobe", "site function is traceable"))
    out.append(("raw_tracepoint", "kmem tracepoints, call_site filter"))
    out.append(("tracepoint", "kmem tracepoints, call_site filter"))
    return out


def _format_offsets(event: str) -> dict[str, int]:
    """Field offsets of a classic tracepoint record, from its tracefs format file."""
    path = os.path.join(TRACEFS, "events", event, "format")
    offs: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("field:"):
                    continue
                decl = line.split(";")[0][len("field:") :]
                name = decl.split()[-1].split("[")[0]
                off = int(line.split("offset:")[1].split(";")[0])
                offs[name] = off
    except OSError as e:
        raise CapabilityError(f"{path}: {e.strerror}; is tracefs mounted?") from None
    return offs


def _comm_defines(comm: str) -> dict[str, int | str | bool]:
    raw = comm.encode()[:15].ljust(16, b"\0")
    return {
        "FILTER_COMM0": f"0x{int.from_bytes(raw[:8], 'little'):x}ULL",
        "FILTER_COMM1": f"0x{int.from_bytes(raw[8:], 'little'):x}ULL",
    }


def _defines_for(
    backend: str, targets: Sequence[SiteTarget], opts: Options, read_tag: bool
) -> dict[str, int | str | bool]:
    d: dict[str, int | str | bool] = {"SITE_OF(a)": site_of_macro(targets), "MAX_SITES": MAX_SITES}
    if opts.pid is not None:
        d["FILTER_TGID"] = opts.pid
    if opts.comm:
        d.update(_comm_defines(opts.comm))
    if opts.per_process:
        d["PER_PROCESS"] = 1
    if backend == "raw_tracepoint":
        d["BACKEND_RAW_TP"] = 1
        from allocscope.probes.btf import kmem_cache_offsets

        offs = kmem_cache_offsets()
        if offs is not None:
            d["KMEM_CACHE_SIZE_OFF"] = offs["size"]
    elif backend == "tracepoint":
        d["BACKEND_TP"] = 1
        kca = _format_offsets("kmem/kmem_cache_alloc")
        km = _format_offsets("kmem/kmalloc")
        d.update(
            TP_KCA_CALL_SITE=kca["call_site"],
            TP_KCA_BYTES=kca["bytes_alloc"],
            TP_KM_CALL_SITE=km["call_site"],
            TP_KM_BYTES=km["bytes_alloc"],
        )
    elif backend == "kprobe":
        d["BACKEND_KPROBE"] = 1
    elif backend == "fentry":
        d["BACKEND_FENTRY"] = 1
        d["FENTRY_TARGET"] = targets[0].function
    if read_tag and backend in TRACEPOINT_FAMILY:
        d["READ_ALLOC_TAG"] = 1
    return d


def _attach(probe: Any, backend: str, targets: Sequence[SiteTarget]) -> None:
    if backend in TRACEPOINT_FAMILY:
        for ev in ("kmem_cache_alloc", "kmalloc"):
            if backend == "raw_tracepoint":
                probe.attach_raw_tracepoint(ev, f"on_{ev}")
            else:
                probe.attach_tracepoint(f"kmem:{ev}", f"on_{ev}")
    elif backend == "kprobe":
        for t in targets:
            for sym in t.symbols:
                probe.attach_kprobe(sym, "on_site_entry")
    # fentry: BCC attaches kfunc__ programs while loading; the loader records them.


def open_probe(
    targets: Sequence[SiteTarget], opts: Options, log: Callable[[str], None]
) -> tuple[Any, str, bool, list[str]]:
    """Compile and attach the first backend that works; returns (probe, backend, tag?, notes)."""
    from allocscope.probes.headers import resolve_headers
    from allocscope.probes.loader import Probe

    headers = resolve_headers()
    read_tag = headers.matches and os.path.exists(PROC_ALLOCINFO)
    notes: list[str] = []
    failures: list[str] = []
    for backend, _why in backend_candidates(targets, opts.backend):
        probe = None
        try:
            probe = Probe(
                "who_calls", _defines_for(backend, targets, opts, read_tag), headers=headers
            )
            set_sampling(probe, 0 if opts.sample is None else opts.sample, 0)
            _attach(probe, backend, targets)
        except (CapabilityError, Exception) as e:  # noqa: BLE001 - BCC raises bare Exception
            if probe is not None:
                probe.close()
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "super-user" in msg:  # BCC's wording for EPERM from the kernel
                msg = "the kernel refused the program (EPERM)"
            failures.append(f"{backend}: {msg[:160]}")
            log(f"who-calls: backend {backend} unavailable ({msg[:120]}); trying the next")
            continue
        if failures:
            notes.append("backends tried first: " + "; ".join(failures))
        if backend == "raw_tracepoint" and "KMEM_CACHE_SIZE_OFF" not in probe.defines:
            notes.append(
                "no BTF: bytes of kmem_cache_alloc events are not known (kmalloc's are); "
                "--backend tracepoint reads them from the record"
            )
        if not headers.matches:
            notes.append(
                "kernel headers do not match the running kernel: the probe reads no "
                "kernel struct through them (kmem_cache size offset comes from BTF)"
            )
        return probe, backend, read_tag and backend in TRACEPOINT_FAMILY, notes
    raise CapabilityError("who-calls: no backend could attach: " + "; ".join(failures))


# --- reading the maps ------------------------------------------------------------------------


@dataclass(slots=True)
class SiteCounts:
    calls: int = 0
    bytes: int = 0
    sampled: int = 0
    stack_err: int = 0
    hash_full: int = 0


@dataclass(slots=True)
class Sample:
    site: int
    stack: list[int]  # addresses, innermost first
    tgid: int
    comm: str
    tag: int
    count: int
    bytes: int
    epoch: int = 0


@dataclass(slots=True)
class RawCapture:
    counts: dict[int, SiteCounts]
    samples: list[Sample]
    tags: dict[int, Site]
    missing_stacks: int = 0


def read_maps(probe: Any, targets: Sequence[SiteTarget], read_tag: bool) -> RawCapture:
    """Read samples first, then counts: events landing in between make counts >= samples."""
    samples, missing = _read_samples(probe)
    counts = read_counts(probe, targets)
    tags: dict[int, Site] = {}
    if read_tag:
        for k, v in probe["tags"].items():
            tags[int(k.value)] = Site(
                v.file.decode(errors="replace"),
                int(v.line),
                v.function.decode(errors="replace"),
            )
    return RawCapture(counts, samples, tags, missing)


def read_counts(probe: Any, targets: Sequence[SiteTarget]) -> dict[int, SiteCounts]:
    """Every matching event per site, summed over CPUs."""
    counts: dict[int, SiteCounts] = {}
    table = probe["counts"]
    for t in targets:
        sc = SiteCounts()
        for v in table[table.Key(t.index)]:
            sc.calls += v.calls
            sc.bytes += v.bytes
            sc.sampled += v.sampled
            sc.stack_err += v.stack_err
            sc.hash_full += v.hash_full
        counts[t.index] = sc
    return counts


def _read_samples(probe: Any) -> tuple[list[Sample], int]:
    stacks = probe["stacks"]
    samples: list[Sample] = []
    missing = 0
    cache: dict[int, list[int]] = {}
    for k, v in probe["samples"].items():
        sid = int(k.stackid)
        if sid not in cache:
            try:
                cache[sid] = [int(a) for a in stacks.walk(sid)]
            except KeyError:
                cache[sid] = []
        if not cache[sid]:
            missing += int(v.count)
            continue
        samples.append(
            Sample(
                int(k.site),
                cache[sid],
                int(k.tgid),
                bytes(k.comm).split(b"\0")[0].decode(errors="replace"),
                int(k.tag),
                int(v.count),
                int(v.bytes),
                int(k.epoch),
            )
        )
    return samples, missing


def set_sampling(probe: Any, n: int, epoch: int) -> None:
    """Switch the probe to 1-in-``n`` stack sampling (0 = count only), tagged ``epoch``."""
    cfg = probe["config"]
    leaf = cfg.Leaf()
    leaf.n = n
    leaf.epoch = epoch
    cfg[cfg.Key(0)] = leaf


# --- capture ---------------------------------------------------------------------------------


def auto_sample_rate(events: int, seconds: float, budget: float) -> int:
    """1-in-N so that stack walks cost at most ``budget`` of one CPU at the observed rate."""
    if seconds <= 0 or events <= 0:
        return 1
    rate = events / seconds
    return max(1, math.ceil(rate * STACK_WALK_SECONDS / max(budget, 1e-6)))


@dataclass(slots=True)
class Epoch:
    """A stretch of the capture sampled 1-in-``n`` (0 = counting only, the first calibration)."""

    n: int
    seconds: float = 0.0
    events: int = 0


class AutoSampler:
    """Keeps stack walks within a CPU budget as the event rate changes.

    Every :data:`ADJUST_SECONDS` it measures the matching-event rate of the last period and
    derives N. N rises at once (a burst must not blow the budget for long) but falls at most
    by half per period (an idle second must not leave N=1 when the burst resumes). A change
    of less than 25% is ignored so epochs stay few. Each change starts a new *epoch*; samples
    carry it, and shares weight each sample by its epoch's N (see shares.py).
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def next_rate(self, current: int, events: int, seconds: float) -> int:
        want = auto_sample_rate(events, seconds, self.budget)
        if current == 0:
            return want
        if want < current:
            want = max(want, current // 2)
        if abs(want - current) <= 0.25 * current:
            return current
        return want


ADJUST_SECONDS = 1.0
FIRST_CALIBRATION_SECONDS = 0.5


def _allocinfo_now(opts: Options) -> AllocinfoSnapshot | None:
    if opts.allocinfo_file is not None:
        return None  # a file is a fixed snapshot: read once, used as "after"
    if not os.path.exists(PROC_ALLOCINFO):
        return None
    try:
        return read_allocinfo(None, lenient=True)
    except AllocscopeError:
        return None


def _wait(
    probe: Any,
    targets: Sequence[SiteTarget],
    opts: Options,
    duration: float | None,
    th: threading.Thread | None,
    t0: float,
    epochs: list[Epoch],
    log: Callable[[str], None],
) -> bool:
    """Wait for the end of the capture, re-deriving N in auto mode; True if interrupted."""
    deadline = math.inf if duration is None else t0 + duration
    sampler = AutoSampler(opts.budget) if opts.sample is None else None
    period = FIRST_CALIBRATION_SECONDS
    last_t, last_calls = t0, 0
    epoch_start = t0
    try:
        while True:
            now = time.monotonic()
            if now >= deadline or (th is not None and duration is None and not th.is_alive()):
                break
            if sampler is not None and now - last_t >= period:
                calls = sum(c.calls for c in read_counts(probe, targets).values())
                cur = epochs[-1].n
                new = sampler.next_rate(cur, calls - last_calls, now - last_t)
                if new != cur:
                    epochs[-1].seconds = now - epoch_start
                    epochs[-1].events = calls - sum(e.events for e in epochs[:-1])
                    epochs.append(Epoch(new))
                    epoch_start = now
                    set_sampling(probe, new, len(epochs) - 1)
                    rate = (calls - last_calls) / (now - last_t)
                    log(
                        f"who-calls: sampling 1 in {new} ({rate:.0f} events/s, "
                        f"budget {opts.budget:.1%} of a CPU)"
                    )
                last_t, last_calls, period = now, calls, ADJUST_SECONDS
            time.sleep(max(0.0, min(0.1, deadline - now)))
        return False
    except KeyboardInterrupt:
        return True
    finally:
        epochs[-1].seconds = time.monotonic() - epoch_start


def capture(opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    """Run a who-calls capture; returns the Result (also on Ctrl-C/SIGTERM, marked)."""
    from allocscope.collector import workloads
    from allocscope.probes.loader import interruptible

    if opts.depth < 1:
        raise AllocscopeError("who-calls: --depth must be >= 1")
    if opts.sample is not None and opts.sample < 1:
        raise AllocscopeError("who-calls: --sample must be >= 1 (or auto)")
    try:
        rules = attribution.build_skip_rules([], opts.skip)  # validate --skip early
    except ValueError as e:
        raise AllocscopeError(f"who-calls: {e}") from None
    ksyms = Kallsyms.load()
    resolution_info = _allocinfo_for_resolution(opts, log)
    targets = resolve_sites(opts.sites, ksyms, resolution_info)
    rules = attribution.build_skip_rules([t.function for t in targets], opts.skip)
    duration = opts.duration
    if duration is None and opts.workload:
        duration = 10.0

    interrupted = False
    epochs = [Epoch(0 if opts.sample is None else opts.sample)]
    proc = None
    with interruptible():
        probe, backend, read_tag, notes = open_probe(targets, opts, log)
        try:
            # after the compile (which allocates too), so the delta is the capture window's
            before = _allocinfo_now(opts)
            until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
            if opts.during is not None and duration is None:
                until = "while the workload runs"
            log(f"who-calls: tracing {', '.join(t.label for t in targets)} via {backend} {until}")
            start = time.time()
            t0 = time.monotonic()
            if opts.workload:
                proc = workloads.start(opts.workload, duration or 10.0)
            th = None
            if opts.during is not None:
                th = threading.Thread(target=opts.during, name="who-calls-during", daemon=True)
                th.start()
            interrupted = _wait(probe, targets, opts, duration, th, t0, epochs, log)
            elapsed = time.monotonic() - t0
            raw = read_maps(probe, targets, read_tag)
        finally:
            probe.close()
            if proc is not None:
                workloads.stop(proc)
    after = (
        read_allocinfo(opts.allocinfo_file, lenient=opts.lenient)
        if opts.allocinfo_file
        else _allocinfo_now(opts)
    )
    payload = build_payload(
        raw,
        targets,
        ksyms,
        rules,
        opts,
        backend=backend,
        read_tag=read_tag,
        epochs=epochs,
        duration=elapsed,
        before=before,
        after=after,
        notes=notes,
    )
    settings = {
        "sites": opts.sites,
        "duration": opts.duration,
        "sample": opts.sample or "auto",
        "budget": opts.budget,
        "backend": opts.backend,
        "skip": opts.skip,
        "depth": opts.depth,
        "min_share": opts.min_share,
        "pid": opts.pid,
        "comm": opts.comm,
        "per_process": opts.per_process,
        "allocinfo": opts.allocinfo_file,
        "addresses": opts.addresses,
        "workload": opts.workload,
        "confidence": opts.confidence,
        "interrupted": interrupted,
    }
    return Result("who-calls", collect_host_metadata({}), start, elapsed, settings, payload)


# --- result building -------------------------------------------------------------------------


def _tag_records(
    snap: AllocinfoSnapshot | None, site: Site | None, function: str
) -> tuple[list[Site], int, int]:
    """(matched sites, bytes, calls) of the allocinfo line(s) for a site."""
    if snap is None:
        return [], 0, 0
    if site is not None:
        recs = [
            r
            for r in snap.records
            if r.site.key == site.key
            and canonical_function(r.site.function) == canonical_function(site.function)
        ]
    else:
        recs = [r for r in snap.records if canonical_function(r.site.function) == function]
    return [r.site for r in recs], sum(r.bytes for r in recs), sum(r.calls for r in recs)


def allocinfo_join(
    before: AllocinfoSnapshot | None,
    after: AllocinfoSnapshot | None,
    site: Site | None,
    function: str,
    match: str = "",
) -> dict[str, Any] | None:
    """The tag's allocinfo totals before/after the window and the delta during it.

    ``match`` says how the line was found: ``exact-tag`` (the probe read the tag),
    ``allocinfo-line`` (the one line naming the site), ``function-name`` (every line whose
    function is the site's). No matching line gives a block with ``tags: []`` and no totals.
    """
    snap = after or before
    if snap is None:
        return None
    sites_a, bytes_a, calls_a = _tag_records(snap, site, function)
    if not sites_a:
        return {
            "source": snap.source,
            "match": "none",
            "tags": [],
            "after": None,
            "before": None,
            "delta": None,
        }
    if after is None:
        sites_a, bytes_a, calls_a = [], 0, 0
    block: dict[str, Any] = {
        "source": snap.source,
        "match": match or ("allocinfo-line" if site is not None else "function-name"),
        "tags": [s.tag for s in (sites_a or _tag_records(snap, site, function)[0])],
        "after": {"bytes": bytes_a, "calls": calls_a} if after is not None else None,
        "before": None,
        "delta": None,
    }
    if before is not None:
        _, bytes_b, calls_b = _tag_records(before, site, function)
        block["before"] = {"bytes": bytes_b, "calls": calls_b}
        if after is not None:
            block["delta"] = {"bytes": bytes_a - bytes_b, "calls": calls_a - calls_b}
    return block


def build_payload(
    raw: RawCapture,
    targets: Sequence[SiteTarget],
    ksyms: Kallsyms,
    rules: attribution.SkipRules,
    opts: Options,
    *,
    backend: str,
    read_tag: bool,
    epochs: Sequence[Epoch],
    duration: float,
    before: AllocinfoSnapshot | None,
    after: AllocinfoSnapshot | None,
    notes: list[str],
) -> dict[str, Any]:
    """Symbolize, attribute, share, join. Pure given its inputs (unit-testable).

    Each sample is weighted by the N of the epoch it was drawn in (see shares.py); with a
    fixed ``--sample N`` all weights are equal and shares are plain proportions.
    """
    rates = [e.n for e in epochs]
    census = opts.sample == 1  # every matching event had its stack walked
    unresolved = 0
    no_caller = 0
    folded: dict[str, int] = defaultdict(int)
    # (site index, tag addr, caller, tgid, comm) -> samples, weighted bytes, caller address
    groups: dict[tuple[int, int, str, int, str], shares.Weighted] = {}
    group_bytes: dict[tuple[int, int, str, int, str], float] = defaultdict(float)
    group_raw_bytes: dict[tuple[int, int, str, int, str], int] = defaultdict(int)
    group_addr: dict[tuple[int, int, str, int, str], int] = {}
    site_w: dict[int, shares.Weighted] = defaultdict(shares.Weighted)
    site_wbytes: dict[int, float] = defaultdict(float)
    tag_w: dict[tuple[int, int], shares.Weighted] = defaultdict(shares.Weighted)
    tag_mode = "exact-tag" if read_tag else "function-name"
    for s in raw.samples:
        weight = float(rates[s.epoch]) if 0 <= s.epoch < len(rates) and rates[s.epoch] else 1.0
        names = []
        for addr in s.stack:
            r = ksyms.resolve(addr)
            if r is None:
                unresolved += s.count
                names.append(attribution.UNKNOWN)
            else:
                names.append(r.function)
        att = attribution.attribute(names, rules, opts.depth)
        if att.caller == attribution.NO_CALLER:
            no_caller += s.count
        if opts.addresses:
            cut = attribution.probe_frames(names)
            fold = ";".join(str(ksyms.resolve(a) or hex(a)) for a in reversed(s.stack[cut:]))
        else:
            fold = attribution.folded(names)
        folded[fold] += s.count
        key = (s.site, s.tag, att.caller, s.tgid, s.comm)
        groups.setdefault(key, shares.Weighted()).add(s.count, weight)
        group_bytes[key] += s.bytes * weight
        group_raw_bytes[key] += s.bytes
        if key not in group_addr and att.chain:
            group_addr[key] = s.stack[names.index(att.chain[0])]
        site_w[s.site].add(s.count, weight)
        site_wbytes[s.site] += s.bytes * weight
        tag_w[(s.site, s.tag)].add(s.count, weight)

    site_blocks: list[dict[str, Any]] = []
    callers: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for t in targets:
        c = raw.counts.get(t.index, SiteCounts())
        total = site_w[t.index]
        n = total.k
        site_tags = sorted({tag for (si, tag) in tag_w if si == t.index and tag})
        exact: Site | None = None
        if len(site_tags) == 1 and site_tags[0] in raw.tags:
            exact = raw.tags[site_tags[0]]
        join_site = exact or t.tag_site
        join = allocinfo_join(
            before, after, join_site, t.function, "exact-tag" if exact is not None else ""
        )
        rows = []
        for key, g in groups.items():
            si, tag, caller, tgid, comm = key
            if si != t.index:
                continue
            k = g.k
            sh = shares.weighted_share(g, total, opts.confidence, c.calls or None)
            wb = site_wbytes[t.index]
            row: dict[str, Any] = {
                "site": t.label,
                "caller": caller,
                "calls": k if census else round(sh.share * c.calls),
                "samples": k,
                "share": sh.share,
                "ci_low": sh.ci_low,
                "ci_high": sh.ci_high,
                "bytes": group_raw_bytes[key]
                if census
                else (round(c.bytes * group_bytes[key] / wb) if wb else 0),
            }
            if tag and tag in raw.tags:
                row["tag"] = raw.tags[tag].tag
            if opts.per_process:
                row["pid"] = tgid
                row["comm"] = comm
            if opts.addresses and key in group_addr:
                row["caller_address"] = f"0x{group_addr[key]:x}"
            if join is not None and join.get("after"):
                tw = tag_w[(si, tag)].w or total.w
                frac = g.w / tw if tw else 0.0
                row["joined_bytes"] = round(join["after"]["bytes"] * frac)
                row["joined_calls"] = round(join["after"]["calls"] * frac)
            rows.append(row)
        rows.sort(key=lambda r: (-r["share"], -r["samples"], r["caller"]))
        small = [r for r in rows if r["share"] < opts.min_share]
        if small:
            k_small = sum(r["samples"] for r in small)
            g_small = shares.Weighted()
            for key, g in groups.items():
                if key[0] == t.index and g.w / (total.w or 1) < opts.min_share:
                    g_small.k += g.k
                    g_small.w += g.w
                    g_small.w2 += g.w2
            sh = shares.weighted_share(g_small, total, opts.confidence, c.calls or None)
            others.append(
                {
                    "site": t.label,
                    "caller": "other",
                    "callers": len(small),
                    "calls": sum(r["calls"] for r in small),
                    "samples": k_small,
                    "share": sh.share,
                    "ci_low": sh.ci_low,
                    "ci_high": sh.ci_high,
                    "bytes": sum(r["bytes"] for r in small),
                    **(
                        {"joined_bytes": sum(r.get("joined_bytes", 0) for r in small)}
                        if join is not None and join.get("after")
                        else {}
                    ),
                }
            )
        callers.extend(rows)
        site_blocks.append(
            {
                "site": t.label,
                "function": t.function,
                "tag": join_site.tag if join_site else None,
                "tags_seen": [raw.tags[x].tag for x in site_tags if x in raw.tags],
                "ranges": len(t.ranges),
                "symbols": t.symbols,
                "total_calls": c.calls,
                "total_bytes": c.bytes,
                "sampled": c.sampled,
                "stacks": n,
                "lost": c.stack_err + c.hash_full,
                "stack_errors": c.stack_err,
                "hash_full": c.hash_full,
                "allocinfo": join,
            }
        )
        if c.calls == 0 and backend in TRACEPOINT_FAMILY:
            notes.append(
                f"{t.label}: no kmem_cache_alloc/kmalloc had its call_site in "
                f"{t.function}; if it allocates pages, or only calls another "
                "allocating function, name that function (or use a kernel with "
                "kprobes for a function-entry count)"
            )
    if not read_tag and backend in TRACEPOINT_FAMILY:
        notes.append(
            "exact allocinfo tag not read (needs matching kernel headers and "
            "CONFIG_MEM_ALLOC_PROFILING): sites matched by function name"
        )
    if backend in ("kprobe", "fentry"):
        notes.append(
            "function-entry backend: calls are entries of the site function, bytes are not known"
        )
    lost = sum(b["lost"] for b in site_blocks) + raw.missing_stacks
    total_calls = sum(b["total_calls"] for b in site_blocks)
    epoch_list = [{"n": e.n, "seconds": round(e.seconds, 3), "events": e.events} for e in epochs]
    if epoch_list:
        epoch_list[-1]["events"] = total_calls - sum(e.events for e in epochs[:-1])
    sampled = sum(w.k for w in site_w.values())
    return {
        "site": ",".join(t.label for t in targets),
        "sites": site_blocks,
        "backend": backend,
        "tag_mode": tag_mode,
        "total_calls": total_calls,
        "total_bytes": sum(b["total_bytes"] for b in site_blocks),
        "lost": lost,
        "sampled": sampled,
        "sample_rate": rates[-1] if rates else 1,
        "sample_mode": "auto" if opts.sample is None else "fixed",
        "effective_sample_rate": round(total_calls / sampled, 2) if sampled else None,
        "sample_epochs": epoch_list,
        "duration": duration,
        "confidence": opts.confidence,
        "depth": opts.depth,
        "min_share": opts.min_share,
        "callers": callers,
        "other": others,
        "allocinfo": site_blocks[0]["allocinfo"] if site_blocks else None,
        "folded": dict(sorted(folded.items(), key=lambda kv: -kv[1])),
        "counters": {
            "stack_errors": sum(b["stack_errors"] for b in site_blocks),
            "hash_full": sum(b["hash_full"] for b in site_blocks),
            "missing_stacks": raw.missing_stacks,
            "unresolved_frames": unresolved,
            "no_caller": no_caller,
        },
        "skip_rules": list(rules.descriptions),
        "notes": notes,
    }
