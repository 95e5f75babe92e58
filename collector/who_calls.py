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

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allocscope.collector import attribution, boot_cache
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot, read_allocinfo
from allocscope.collector.allocinfo_live import LiveFilter, read_live
from allocscope.collector.kallsyms import EarlySymbols, SymbolTable
from allocscope.collector.result import Result
from allocscope.collector.site import Site, SiteQuery, canonical_function
from allocscope.errors import AllocscopeError
from allocscope.probes import who_calls
from allocscope.probes.loader import Probe
from allocscope.probes.who_calls import (
    MAX_SITES,
    Sample,
    SiteCounts,
    SiteRanges,
    read_counts,
    set_sampling,
)

# Cost of one sampled event's stack walk + hash update, measured on the development VM
# (1.5-2 us); the automatic sampling mode divides the overhead budget by it.
STACK_WALK_SECONDS = 2.0e-6
CALIBRATION_SECONDS = 1.0


@dataclass(slots=True)
class SiteTarget(SiteRanges):
    """A resolved site: what the probe needs (:class:`SiteRanges`) plus the user's spelling
    and the allocinfo tag, when one allocinfo line names it."""

    label: str = ""  # as the user typed it
    tag_site: Site | None = None


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
    # a page site (allocates pages directly): the context engine, not the slab call_site
    # filter (collector/who_calls_pages.py)
    pages: bool = False
    # Tests and benchmarks: run this in a thread once the probe is attached; without a
    # duration the capture ends when it returns.
    during: Callable[[], object] | None = None


# --- site resolution -------------------------------------------------------------------------


def allocinfo_for_resolution(
    opts: Options, log: Callable[[str], None] = lambda s: None
) -> AllocinfoSnapshot | None:
    """Strict like ``top``: a malformed line is an error naming file:line, unless --lenient,
    which skips such lines and says how many."""
    path = opts.allocinfo_file
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return None
    if path is None:
        snap = read_live(resolution_filter(opts.sites), lenient=opts.lenient)
    else:
        snap = read_allocinfo(path, lenient=opts.lenient)
    if snap.skipped:
        s = "s" if snap.skipped != 1 else ""
        log(
            f"allocscope: warning: {snap.source}: skipped {snap.skipped} malformed "
            f"line{s} (--lenient)"
        )
    return snap


def resolution_filter(texts: Sequence[str]) -> LiveFilter | None:
    """The allocinfo lines site resolution can use, as a 7.3+ ioctl filter: the functions
    when every SITE names one, the files when every SITE is a file (or file:line) without
    one; None (the whole text) for a mix, whose filter would be a product of both."""
    queries: list[SiteQuery] = []
    for text in texts:
        for label in text.split(","):
            if label.strip():
                try:
                    queries.append(SiteQuery.parse(label))
                except ValueError:
                    return None  # resolve_sites reports it
    if not queries:
        return None
    functions = [q.function for q in queries if q.function is not None]
    if len(functions) == len(queries):
        return LiveFilter(functions=tuple(dict.fromkeys(functions)))
    files = [q.file for q in queries if q.file is not None and q.function is None]
    if len(files) == len(queries):
        return LiveFilter(files=tuple(dict.fromkeys(files)))
    return None


def resolve_sites(
    texts: Sequence[str], ksyms: SymbolTable, allocinfo: AllocinfoSnapshot | None
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
        targets.append(
            SiteTarget(len(targets) + 1, function, ranges, symbols, label=label, tag_site=tag_site)
        )
    return targets


# --- reading the maps ------------------------------------------------------------------------


@dataclass(slots=True)
class RawCapture:
    """The probe's map contents with each alloc tag as an allocinfo :class:`Site`."""

    counts: dict[int, SiteCounts]
    samples: list[Sample]
    tags: dict[int, Site]
    missing_stacks: int = 0


def read_maps(probe: Probe, targets: Sequence[SiteTarget], read_tag: bool) -> RawCapture:
    """The maps at the end of the window (see :func:`allocscope.probes.who_calls.read_maps`)."""
    m = who_calls.read_maps(probe, targets, read_tag)
    tags = {addr: Site(t.file, t.line, t.function) for addr, t in m.tags.items()}
    return RawCapture(m.counts, m.samples, tags, m.missing_stacks)


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
    carry it, and shares weight each sample by its epoch's N (see shares.py), so a run of
    epochs with different N stays an unbiased estimate.

    The first sampled epoch (after the count-only calibration) is drawn for a quarter of the
    budget (:data:`START_BUDGET_SHARE`), and halving brings N to the budget's in two periods.
    A fresh probe's samples cost more than settled ones -- every stack and every sample key
    is new, so each walk also inserts into the stack map and the hash -- and the rate seen in
    half a second of calibration is a rough one; the first second must stay within the
    budget, not overshoot it (issue 13 measured 1.7 us/op in the first second of an
    open/close loop against 0.5 us/op settled when the first epoch used the whole budget).
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def next_rate(self, current: int, events: int, seconds: float) -> int:
        if current == 0:
            return auto_sample_rate(events, seconds, self.budget * START_BUDGET_SHARE)
        want = auto_sample_rate(events, seconds, self.budget)
        if want < current:
            want = max(want, current // 2)
        if abs(want - current) <= 0.25 * current:
            return current
        return want


START_BUDGET_SHARE = 0.25
ADJUST_SECONDS = 1.0
FIRST_CALIBRATION_SECONDS = 0.5


def join_filter(targets: Sequence[SiteTarget], read_tag: bool) -> LiveFilter | None:
    """The allocinfo lines the join can use: the targets' functions (allocinfo_join matches
    a tag by its function, or by a line of it). With exact tags read by the probe the tag can
    belong to any caller's alloc_hooks, so the whole text is read (None)."""
    if read_tag or not targets:
        return None
    return LiveFilter(functions=tuple(dict.fromkeys(t.function for t in targets)))


def _allocinfo_now(opts: Options, flt: LiveFilter | None = None) -> AllocinfoSnapshot | None:
    """This host's allocinfo now, through the 7.3+ ioctl for ``flt`` and bracketed by
    CONTENT_ID (collector/allocinfo_live.py); the text on older kernels."""
    if opts.allocinfo_file is not None:
        return None  # a file is a fixed snapshot: read once, used as "after"
    if not os.path.exists(PROC_ALLOCINFO):
        return None
    try:
        return read_live(flt, lenient=True)
    except AllocscopeError:
        return None


class _RateKeeper:
    """The auto sampler's side of the window: every tick, past the first calibration period,
    re-derive N from the event rate and start a new epoch when it changes."""

    def __init__(
        self,
        probe: Probe,
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

    def begin(self) -> None:
        """At the window's start: the calibration counts from here. Events between the attach
        and the window (a workload child's set-up takes seconds under one emulated vCPU) used
        to be divided by the first 0.5 s, overstating the rate."""
        if self.sampler is not None:
            self.last_calls = sum(c.calls for c in read_counts(self.probe, self.targets).values())

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


def _backend_facts(
    opts: Options, targets: Sequence[SiteTarget], boot: boot_cache.BootCache
) -> who_calls.BackendFacts | None:
    """The facts the backend choice rests on; when fentry would be compiled first and this
    boot has no word on it yet, the kernel is asked with bpf(2) first (no compile)."""
    if opts.backend != "auto":
        return None
    facts = who_calls.gather_facts(targets, boot.verdicts)
    first = who_calls.choose_backends(targets, "auto", facts)[0][0][0]
    if first == "fentry":
        boot_cache.settle_fentry(boot, targets[0].function)
        facts = dataclasses.replace(facts, verdicts=dict(boot.verdicts))
    return facts


def capture(opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    """Run a who-calls capture; returns the Result (also on Ctrl-C/SIGTERM, marked)."""
    from allocscope.collector.capture import Capture

    if opts.pages:
        from allocscope.collector import who_calls_pages  # it imports this module

        return who_calls_pages.capture(opts, log)
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
    symbols = EarlySymbols.load()
    resolution_info = allocinfo_for_resolution(opts, log)
    targets = resolve_sites(opts.sites, symbols, resolution_info)
    rules = attribution.build_skip_rules([t.function for t in targets], opts.skip)

    first_n = 0 if opts.sample is None else opts.sample
    epochs = [Epoch(first_n)]
    boot = boot_cache.load()
    functions = [t.function for t in targets]
    with cap:
        try:
            opened = who_calls.open_probe(
                targets,
                backend=opts.backend,
                sample=first_n,
                pid=opts.pid,
                comm=opts.comm,
                per_process=opts.per_process,
                allocinfo=os.path.exists(PROC_ALLOCINFO),
                facts=_backend_facts(opts, targets, boot),
                btf_info=boot.btf_facts(),
                log=log,
                on_attempt=lambda b, r: boot_cache.record_attempt(boot, b, functions, r),
            )
        finally:
            boot.save()
        probe, backend, read_tag, notes = (
            opened.probe,
            opened.backend,
            opened.read_tag,
            opened.notes,
        )
        cap.hold(probe)
        # after the compile (which allocates too), so the delta is the capture window's
        joined = join_filter(targets, read_tag)
        before = _allocinfo_now(opts, joined)
        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
        if opts.during is not None and duration is None:
            until = "while the workload runs"
        log(f"who-calls: tracing {', '.join(t.label for t in targets)} via {backend} {until}")
        keeper = _RateKeeper(probe, targets, opts, epochs, log)
        threads: list[threading.Thread] = []

        def start_during() -> None:
            keeper.begin()
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
        read_allocinfo(opts.allocinfo_file, lenient=opts.lenient)
        if opts.allocinfo_file
        else _allocinfo_now(opts, joined)
    )
    from allocscope.collector.who_calls_payload import build_payload  # it imports this module

    payload = build_payload(
        raw,
        targets,
        symbols.full(),
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
