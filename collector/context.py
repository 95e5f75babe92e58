"""``context``: every allocation tag at once -- who calls it, how fast it allocates, how much
of it is charged to a memory cgroup -- from one byte-sampled capture, joined with allocinfo.

The pipeline (probes -> collector): ``probes/context.bpf.c`` counts every slab and page
allocation exactly and, on the points of a byte sampler with mean gap R
(``probes/sampler.bpf.h``), walks the stack and sums the points' weights per (tag or call
site, stack, hook, charged). Here:

* **R follows a CPU budget** (:class:`RateKeeper`): every :data:`ADJUST_SECONDS` the exact
  counters give the bytes/s allocated; the sampled part costs :data:`HIT_SECONDS` per point,
  so ``R = bytes/s * HIT_SECONDS / budget`` keeps it at ``budget`` of one CPU. R rises at once
  and falls by at most half per period (a quiet second must not leave a census running when
  the burst resumes). Points carry the R they were drawn with, so estimates stay unbiased.
* **Attribution and estimates** (which tag or call site, which callers, calls and bytes with
  intervals, shares, the allocinfo join) are :mod:`allocscope.collector.context_payload`'s
  ``build_payload``: pure given the raw map contents, so every figure is unit-tested without
  BPF and the agent's intervals reuse it.

This module is the live part: options, the rate keeper, reading the maps back
(:class:`RawCapture`), the mode notes, and :func:`capture`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from allocscope.collector import attribution
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot
from allocscope.collector.byte_sampling import SAMPLER_RATE_MAX, WeightSums
from allocscope.collector.kallsyms import Kallsyms, hidden_addresses_message
from allocscope.collector.result import Result
from allocscope.collector.rollup import GROUP_BY, Filters
from allocscope.collector.site import Site
from allocscope.collector.subsystem import SubsystemMap
from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes.capabilities import kallsyms_state

# Cost of one sample point's slow path: the stack walk (~1.5-2 us on a quiet development VM)
# plus the hash update's atomics; bench-context measured ~5.8 us per point all in on the busy
# 2-CPU VM (docs/benchmarks.md). The budget is divided by it: erring high keeps it a bound.
HIT_SECONDS = 5.0e-6
DEFAULT_BUDGET = 0.002  # 0.2% of one CPU for the sampled part
START_RATE = 256 * 1024  # R before the first measurement: ~1 point per 256 KiB
ADJUST_SECONDS = 0.5
FIRST_ADJUST_SECONDS = 0.1  # the first measurement replaces START_RATE quickly
MEM_PROFILING = "/proc/sys/vm/mem_profiling"


@dataclass(slots=True)
class Options:
    """Everything the CLI (or a test, or the benchmark) can ask of a capture."""

    duration: float | None = None
    rate: int | None = None  # fixed mean gap R in bytes; None = auto (budget)
    budget: float = DEFAULT_BUDGET
    pid: int | None = None
    comm: str | None = None
    workload: str | None = None
    depth: int = 1
    callers: int = 3  # callers shown per tag before "other"
    confidence: float = 0.95
    filters: Filters = field(default_factory=Filters)
    by: str = "site"
    limit: int | None = None  # -n
    min_bytes: float | None = None  # -m: estimated bytes allocated in the window
    subsystems: SubsystemMap | None = None
    folded: bool = True
    pages: bool = True
    skip: list[str] = field(default_factory=list)
    # Tests and benchmarks: run this in a thread once the probe is attached; without a
    # duration the capture ends when it returns.
    during: Callable[[], object] | None = None


# --- the rate keeper -------------------------------------------------------------------------


def rate_for(bytes_per_s: float, budget: float, hit_seconds: float = HIT_SECONDS) -> int:
    """The mean gap R that keeps the sampled part at ``budget`` of one CPU."""
    if bytes_per_s <= 0:
        return 1
    r = int(bytes_per_s * hit_seconds / max(budget, 1e-9))
    return max(1, min(SAMPLER_RATE_MAX, r))


def next_rate(current: int, want: int) -> int:
    """R rises at once, falls at most by half per period; changes under 25% are ignored."""
    if want < current:
        want = max(want, current // 2)
    if abs(want - current) <= 0.25 * current:
        return current
    return want


@dataclass(slots=True)
class Epoch:
    rate: int
    seconds: float = 0.0
    events: int = 0
    bytes: int = 0
    hits: int = 0


class RateKeeper:
    """Keeps the sampled part within the CPU budget as the allocation rate changes."""

    def __init__(
        self,
        read: Callable[[], tuple[int, int, int]],  # (events, bytes, hits) so far
        write: Callable[[int], None],
        opts: Options,
        log: Callable[[str], None],
    ) -> None:
        self.read, self.write, self.opts, self.log = read, write, opts, log
        first = opts.rate if opts.rate is not None else START_RATE
        self.epochs = [Epoch(first)]
        self.last_t = 0.0
        self.last = (0, 0, 0)
        self.epoch_start_t = 0.0
        self.epoch_start = (0, 0, 0)
        self.period = FIRST_ADJUST_SECONDS

    def tick(self, now: float) -> None:
        if self.opts.rate is not None or now - self.last_t < self.period:
            return
        self.period = ADJUST_SECONDS
        cur_vals = self.read()
        dt = now - self.last_t
        bytes_rate = (cur_vals[1] - self.last[1]) / dt
        cur = self.epochs[-1].rate
        want = rate_for(bytes_rate, self.opts.budget)
        # the first measurement may lower START_RATE freely (it was a guess)
        new = want if len(self.epochs) == 1 and self.last_t == 0 else next_rate(cur, want)
        if new != cur:
            self._close_epoch(now, cur_vals)
            self.epochs.append(Epoch(new))
            self.write(new)
            self.log(
                f"context: R = {new} bytes ({bytes_rate / 1e6:.1f} MB/s allocated, "
                f"budget {self.opts.budget:.2%} of a CPU)"
            )
        self.last_t, self.last = now, cur_vals

    def _close_epoch(self, now: float, vals: tuple[int, int, int]) -> None:
        e = self.epochs[-1]
        e.seconds = now - self.epoch_start_t
        e.events = vals[0] - self.epoch_start[0]
        e.bytes = vals[1] - self.epoch_start[1]
        e.hits = vals[2] - self.epoch_start[2]
        self.epoch_start_t, self.epoch_start = now, vals

    def close(self, end: float, vals: tuple[int, int, int]) -> None:
        self._close_epoch(end, vals)


# --- the raw capture, and what it means ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawSample:
    """One sample entry: its key (site = tag address or call site), stack, and weights."""

    site: int
    is_tag: bool
    stack: tuple[int, ...]  # return addresses, innermost first; () when the walk failed
    source: int
    charged: int
    sums: WeightSums


@dataclass(slots=True)
class RawCapture:
    """Everything read back from the probe at the end of the window."""

    samples: list[RawSample]
    tags: dict[int, Site]  # alloc_tag address -> site (READ_ALLOC_TAG only)
    events: list[int]  # per source, exact
    bytes: list[int]
    hits: int = 0
    stack_err: int = 0
    hash_full: int = 0
    missing_stacks: int = 0  # sample entries whose stack id was gone from the map


# --- the live capture ------------------------------------------------------------------------


def read_mem_profiling(path: str = MEM_PROFILING) -> int | None:
    """``vm.mem_profiling`` now (0/1; 2 = never, as some kernels print), None without it."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text.isdigit():
        return int(text)
    return {"never": 2}.get(text)


def tag_mode_notes(
    read_tag: bool,
    allocinfo: bool,
    mem_profiling: int | None,
    headers_match: bool,
    tags_seen: bool | None = None,
) -> tuple[str, list[str]]:
    """Which sites the capture could name, and the notes that say why it fell back.

    ``tags_seen``: whether any sample carried an alloc tag (None: unknown, judge by the
    sysctl). Kernels since ~6.14 set ``current->alloc_tag`` only while ``vm.mem_profiling``
    is 1 (``alloc_hooks_tag`` tests ``mem_alloc_profiling_enabled()``); 6.12 sets it always,
    so there exact tags are read even at 0 -- but allocinfo's counters stand still.
    """
    if read_tag and mem_profiling == 0:
        if tags_seen:
            return "exact-tag", [
                "vm.mem_profiling is 0: this kernel still sets current->alloc_tag, so sites "
                "are exact tags, but allocinfo does not count: its live numbers and deltas "
                "are stale"
            ]
        return "call-site", [
            "vm.mem_profiling is 0: current->alloc_tag is not set, so sites are call sites "
            "(slab: call_site function; pages: first frame past the page allocator), not "
            "exact allocinfo tags; set vm.mem_profiling=1 for exact tags"
        ]
    if read_tag and (tags_seen or tags_seen is None):
        return "exact-tag", []
    if read_tag:
        return "call-site", [
            "no sample carried an alloc tag: sites are call sites (is allocation profiling "
            "on? vm.mem_profiling)"
        ]
    if not allocinfo:
        return "call-site", [
            "no /proc/allocinfo on this kernel (CONFIG_MEM_ALLOC_PROFILING): sites are call "
            "sites (slab: call_site function; pages: first frame past the page allocator); "
            "live bytes and calls show as -"
        ]
    if not headers_match:
        return "call-site", [
            "kernel headers do not match the running kernel: current->alloc_tag is not read, "
            "so sites are call sites, joined to allocinfo by function name"
        ]
    return "call-site", ["exact allocinfo tags not read: sites are call sites"]


def _allocinfo_now(opts: Options) -> AllocinfoSnapshot | None:
    if not os.path.exists(PROC_ALLOCINFO):
        return None
    from allocscope.collector.allocinfo_live import LiveFilter, read_live

    f = opts.filters
    try:
        return read_live(LiveFilter(f.functions, f.files, f.modules), lenient=True)
    except AllocscopeError:
        return None


def check_options(opts: Options) -> None:
    if opts.rate is not None and not 1 <= opts.rate <= SAMPLER_RATE_MAX:
        raise AllocscopeError(f"context: --rate must be 1..{SAMPLER_RATE_MAX} bytes")
    if not 0 < opts.budget <= 1:
        raise AllocscopeError("context: --budget must be in (0, 1] of one CPU")
    if opts.depth < 1:
        raise AllocscopeError("context: --depth must be >= 1")
    if opts.by not in GROUP_BY:
        raise AllocscopeError(f"context: --by must be one of {', '.join(GROUP_BY)}")
    if not 0 < opts.confidence < 1:
        raise AllocscopeError("context: --confidence must be between 0 and 1")
    try:
        attribution.build_skip_rules([], opts.skip)
    except ValueError as e:
        raise AllocscopeError(f"context: {e}") from None


def read_raw(probe: object, read_tag: bool) -> RawCapture:
    """The maps at the end of the window (samples first, then the counters)."""
    from allocscope.probes import context as pc
    from allocscope.probes.loader import Probe

    assert isinstance(probe, Probe)
    rows = pc.read_samples(probe)
    stacks = pc.read_stacks(probe, [r.stackid for r in rows])
    totals = pc.read_totals(probe)
    tags = (
        {a: Site(t.file, t.line, t.function) for a, t in pc.read_tags(probe).items()}
        if read_tag
        else {}
    )
    samples: list[RawSample] = []
    missing = 0
    for r in rows:
        stack = stacks.get(r.stackid, ())
        if r.stackid >= 0 and not stack:
            missing += r.hits
        samples.append(
            RawSample(
                r.site,
                r.is_tag,
                stack,
                r.source,
                r.charged,
                WeightSums(r.hits, r.bytes_w, r.bytes_w2, r.calls_w, r.calls_w2),
            )
        )
    return RawCapture(
        samples,
        tags,
        totals.events,
        totals.bytes,
        totals.hits,
        totals.stack_err,
        totals.hash_full,
        missing,
    )


@dataclass(slots=True)
class LiveRun:
    """What one live window of the context probe left: the raw maps, the rate epochs, the
    allocinfo snapshots around it, and the capture (for its result)."""

    cap: object  # collector.capture.Capture (imported lazily)
    opened: object  # probes.context.OpenProbe
    raw: RawCapture
    epochs: list[Epoch]
    seconds: float
    before: AllocinfoSnapshot | None
    after: AllocinfoSnapshot | None
    mem_profiling: int | None
    has_allocinfo: bool


def run_live(
    opts: Options,
    log: Callable[[str], None] = lambda s: None,
    *,
    verb: str = "context",
    slabs: bool = True,
) -> LiveRun:
    """The live part of a context capture, shared with ``who-calls`` of a page site
    (``slabs=False``: only the page hook is attached)."""
    from allocscope.collector.capture import Capture
    from allocscope.probes import context as pc

    check_options(opts)
    duration = opts.duration
    if duration is None and opts.workload:
        duration = 10.0  # a built-in workload without -d runs for 10 s
    # the kind names the result; a literal per kind, so the lifecycle test finds every one
    if verb == "who-calls":  # a page site's callers: an ordinary who-calls result
        cap = Capture("who-calls", duration=duration, workload=opts.workload, pid=opts.pid)
    else:
        cap = Capture("context", duration=duration, workload=opts.workload, pid=opts.pid)
    has_allocinfo = os.path.exists(PROC_ALLOCINFO)
    settings = pc.ContextSettings(
        pid=opts.pid, comm=opts.comm, read_tag=has_allocinfo, pages=opts.pages, slabs=slabs
    )
    with cap:
        opened = pc.open_probe(settings, opts.rate or START_RATE, log)
        probe = cap.hold(opened.probe)
        mem_profiling = read_mem_profiling()
        before = _allocinfo_now(opts)  # after the compile, which allocates too

        def counts() -> tuple[int, int, int]:
            t = pc.read_totals(probe)
            return sum(t.events), sum(t.bytes), t.hits

        keeper = RateKeeper(counts, lambda r: pc.set_rate(probe, r), opts, log)
        threads: list[threading.Thread] = []

        def start_during() -> None:
            if opts.during is not None:
                th = threading.Thread(target=opts.during, name=f"{verb}-during", daemon=True)
                th.start()
                threads.append(th)

        def during_done() -> bool:
            return duration is None and bool(threads) and not threads[0].is_alive()

        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
        what = "every allocation" if slabs else "every page allocation"
        log(f"{verb}: sampling {what} by bytes via {opened.backend} {until}")
        with cap.window(on_start=start_during) as w:
            cap.wait(w, tick=keeper.tick, done=during_done)
        probe.detach()
        keeper.close(w.seconds, counts())
        raw = read_raw(probe, opened.read_tag)
        after = _allocinfo_now(opts)
    return LiveRun(
        cap, opened, raw, keeper.epochs, w.seconds, before, after, mem_profiling, has_allocinfo
    )


def capture(opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    """Run a context capture; returns the Result (also on Ctrl-C/SIGTERM, marked)."""
    from allocscope.collector.capture import Capture
    from allocscope.collector.context_payload import build_payload  # it imports this module
    from allocscope.probes import context as pc
    from allocscope.probes.headers import resolve_headers

    # Symbols only name what the window saw: the table (0.2-0.4 s) is loaded after it, as
    # who-calls and top --live do; a host that hides addresses fails before the window.
    if not kallsyms_state().readable:
        raise CapabilityError(hidden_addresses_message())
    run = run_live(opts, log)
    ksyms = Kallsyms.load()
    cap, opened, raw = run.cap, run.opened, run.raw
    assert isinstance(cap, Capture) and isinstance(opened, pc.OpenProbe)
    has_allocinfo, mem_profiling = run.has_allocinfo, run.mem_profiling
    before, after = run.before, run.after
    tag_mode, notes = tag_mode_notes(
        opened.read_tag,
        has_allocinfo,
        mem_profiling,
        resolve_headers().matches,
        tags_seen=any(s.is_tag for s in raw.samples),
    )
    if opened.charge_source == "none":
        notes.append("memcg charge unknown: this kernel's BTF lacks __GFP_ACCOUNT")
    notes.append(
        "pages: slab pages are counted under the slab's own frames (as allocinfo's "
        "alloc_slab_page); kmalloc's large pages only under kmalloc"
    )
    payload = build_payload(
        raw,
        ksyms,
        opts,
        epochs=run.epochs,
        duration=run.seconds,
        backend=opened.backend,
        tag_mode=tag_mode,
        charge_source=opened.charge_source,
        before=before,
        after=after,
        mem_profiling=mem_profiling,
        map_bytes=pc.map_bytes(opened.settings, os.cpu_count() or 1),
        notes=notes,
    )
    result_settings = {
        "duration": opts.duration,
        "rate": opts.rate or "auto",
        "budget": opts.budget,
        "pid": opts.pid,
        "comm": opts.comm,
        "workload": opts.workload,
        "depth": opts.depth,
        "callers": opts.callers,
        "confidence": opts.confidence,
        "by": opts.by,
        "functions": list(opts.filters.functions),
        "paths": list(opts.filters.files),
        "modules": list(opts.filters.modules),
        "limit": opts.limit,
        "min_bytes": opts.min_bytes,
    }
    return cap.result(result_settings, payload.to_dict())
