"""``who-calls``: capture who calls an allocation site, live, and join it with allocinfo.

The pipeline (probes -> collector): resolve the site(s) to code ranges from kallsyms; pick a
backend by what the running kernel allows (fentry -> kprobe on the site function where it is
traceable, else the kmem tracepoints with an in-kernel ``call_site`` range filter -- the main
road, because ``lib/`` is ``notrace``); count every matching event and walk the stack of a 1-in-N
Bernoulli sample (``probes/who_calls.bpf.c``); then symbolize, attribute each stack to a caller
(:mod:`allocscope.collector.attribution`), compute shares with sampling-aware intervals
(:mod:`allocscope.collector.shares`) and join the tag's allocinfo line read before and after.

The result is a :class:`~allocscope.collector.result.Result` of kind ``who-calls``; its payload
(:class:`~allocscope.collector.payloads.WhoCallsPayload`) is built in
:mod:`allocscope.collector.who_calls_payload`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector import attribution
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot, read_allocinfo
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
    addresses: bool = False
    workload: str | None = None
    confidence: float = 0.95
    # Tests and benchmarks: run this in a thread once the probe is attached; without a
    # duration the capture ends when it returns.
    during: Callable[[], object] | None = None


# --- site resolution -------------------------------------------------------------------------


def _allocinfo_for_resolution(opts: Options) -> AllocinfoSnapshot | None:
    path = opts.allocinfo_file
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return None
    return read_allocinfo(path, lenient=True)


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


class _RateKeeper:
    """The auto sampler's side of the window: every tick, past the first calibration period,
    re-derive N from the event rate and start a new epoch when it changes."""

    def __init__(
        self,
        probe: Any,
        targets: Sequence[SiteTarget],
        opts: Options,
        epochs: list[Epoch],
        log: Callable[[str], None],
    ) -> None:
        self.probe, self.targets, self.opts, self.epochs, self.log = (
            probe,
            targets,
            opts,
            epochs,
            log,
        )
        self.sampler = AutoSampler(opts.budget) if opts.sample is None else None
        self.period = FIRST_CALIBRATION_SECONDS
        self.last_t = 0.0
        self.last_calls = 0
        self.epoch_start = 0.0

    def tick(self, now: float) -> None:
        if self.sampler is None or now - self.last_t < self.period:
            return
        epochs = self.epochs
        calls = sum(c.calls for c in read_counts(self.probe, self.targets).values())
        cur = epochs[-1].n
        new = self.sampler.next_rate(cur, calls - self.last_calls, now - self.last_t)
        if new != cur:
            epochs[-1].seconds = now - self.epoch_start
            epochs[-1].events = calls - sum(e.events for e in epochs[:-1])
            epochs.append(Epoch(new))
            self.epoch_start = now
            set_sampling(self.probe, new, len(epochs) - 1)
            rate = (calls - self.last_calls) / (now - self.last_t)
            self.log(
                f"who-calls: sampling 1 in {new} ({rate:.0f} events/s, "
                f"budget {self.opts.budget:.1%} of a CPU)"
            )
        self.last_t, self.last_calls, self.period = now, calls, ADJUST_SECONDS

    def close(self, end: float) -> None:
        self.epochs[-1].seconds = end - self.epoch_start


def capture(opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    """Run a who-calls capture; returns the Result (also on Ctrl-C/SIGTERM, marked)."""
    from allocscope.collector.capture import Capture

    if opts.depth < 1:
        raise AllocscopeError("who-calls: --depth must be >= 1")
    if opts.sample is not None and opts.sample < 1:
        raise AllocscopeError("who-calls: --sample must be >= 1 (or auto)")
    try:
        rules = attribution.build_skip_rules([], opts.skip)  # validate --skip early
    except ValueError as e:
        raise AllocscopeError(f"who-calls: {e}") from None
    duration = opts.duration
    if duration is None and opts.workload:
        duration = 10.0  # a built-in workload without -d runs for 10 s
    cap = Capture("who-calls", duration=duration, workload=opts.workload, pid=opts.pid)
    ksyms = Kallsyms.load()
    resolution_info = _allocinfo_for_resolution(opts)
    targets = resolve_sites(opts.sites, ksyms, resolution_info)
    rules = attribution.build_skip_rules([t.function for t in targets], opts.skip)

    epochs = [Epoch(0 if opts.sample is None else opts.sample)]
    with cap:
        probe, backend, read_tag, notes = open_probe(targets, opts, log)
        cap.hold(probe)
        # after the compile (which allocates too), so the delta is the capture window's
        before = _allocinfo_now(opts)
        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
        if opts.during is not None and duration is None:
            until = "while the workload runs"
        log(f"who-calls: tracing {', '.join(t.label for t in targets)} via {backend} {until}")
        keeper = _RateKeeper(probe, targets, opts, epochs, log)
        threads: list[threading.Thread] = []

        def start_during() -> None:
            if opts.during is not None:
                th = threading.Thread(target=opts.during, name="who-calls-during", daemon=True)
                th.start()
                threads.append(th)

        def during_done() -> bool:
            return duration is None and bool(threads) and not threads[0].is_alive()

        with cap.window(on_start=start_during) as w:
            cap.wait(w, tick=keeper.tick, done=during_done)
        keeper.close(w.seconds)
        raw = read_maps(probe, targets, read_tag)
    after = (
        read_allocinfo(opts.allocinfo_file, lenient=True)
        if opts.allocinfo_file
        else _allocinfo_now(opts)
    )
    from allocscope.collector.who_calls_payload import build_payload  # it imports this module

    payload = build_payload(
        raw,
        targets,
        ksyms,
        rules,
        opts,
        backend=backend,
        read_tag=read_tag,
        epochs=epochs,
        duration=w.seconds,
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
    }
    return cap.result(settings, payload.to_dict())
