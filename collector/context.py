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
* **Attribution.** The exact tag where the probe read ``current->alloc_tag``; otherwise a slab
  allocation's site is its ``call_site`` function, and a page allocation's is the first frame
  past the page allocator in its sampled stack (``mm_page_alloc`` has no call_site). Callers
  follow :mod:`allocscope.collector.attribution`.
* **Estimates** (:mod:`allocscope.collector.byte_sampling`): calls and bytes with Garwood
  intervals on Kish's effective points, shares and charged share with Kish-Wilson intervals.

:func:`build_payload` is pure given the raw map contents, so every figure is unit-tested
without BPF; :func:`capture` is the live part.
"""

from __future__ import annotations

import os
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from allocscope.collector import attribution
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot
from allocscope.collector.byte_sampling import (
    SAMPLER_RATE_MAX,
    WeightSums,
    bytes_estimate,
    calls_estimate,
    share,
)
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import (
    ContextCaller,
    ContextPayload,
    ContextTag,
    ContextTotals,
    RateEpoch,
    SampleSums,
)
from allocscope.collector.result import Result
from allocscope.collector.rollup import GROUP_BY, Filters, classify, group_key
from allocscope.collector.site import Site, canonical_function
from allocscope.collector.subsystem import SubsystemMap
from allocscope.errors import AllocscopeError
from allocscope.probes.context import CHARGED_UNKNOWN, CHARGED_YES, SOURCES, SRC_PAGE

# Cost of one sample point's slow path: the stack walk (~1.5-2 us on a quiet development VM)
# plus the hash update's atomics; bench-context measured ~5.8 us per point all in on the busy
# 2-CPU VM (docs/benchmarks.md). The budget is divided by it: erring high keeps it a bound.
HIT_SECONDS = 5.0e-6
DEFAULT_BUDGET = 0.002  # 0.2% of one CPU for the sampled part
START_RATE = 256 * 1024  # R before the first measurement: ~1 point per 256 KiB
ADJUST_SECONDS = 0.5
FIRST_ADJUST_SECONDS = 0.1  # the first measurement replaces START_RATE quickly
MEM_PROFILING = "/proc/sys/vm/mem_profiling"

# Frames that are the page allocator (or the probe): a page allocation's site is the first
# frame past them. kmalloc's large path allocates pages too; those pages are already counted
# by the kmalloc event, so such samples are set aside (KMALLOC_LARGE).
PAGE_ALLOCATOR = re.compile(
    r"_*alloc_pages.*|_*alloc_frozen_pages.*|_*folio_alloc.*|_*get_free_pages.*"
    r"|get_zeroed_page.*|get_page_from_freelist|rmqueue.*|prep_new_page|post_alloc_hook"
    r"|alloc_pages_mpol.*|vma_alloc_folio.*|folio_alloc_mpol.*|alloc_frozen_pages.*"
    r"|__alloc_pages_slowpath.*|_*alloc_pages_bulk.*|alloc_pages_exact.*|.*_noprof"
)
KMALLOC_LARGE = re.compile(r"_*kmalloc_large.*|_*kmalloc_node_large.*|___kmalloc_large.*")


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


def raw_sums(s: WeightSums) -> SampleSums:
    """The additive sums a fleet store combines (estimates and variances, not intervals)."""
    return SampleSums(
        hits=s.hits, calls=s.calls, calls_var=s.calls_var, bytes=s.bytes, bytes_var=s.bytes_var
    )


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


@dataclass(frozen=True, slots=True)
class Where:
    """A sample's site: the tag (or site function) and how it was found."""

    site: Site
    label: str
    match: str  # exact-tag | call-site | page-stack


def page_site(frames: Sequence[str]) -> tuple[str | None, int]:
    """The first frame past the page allocator (and the probe), and its index; (None, -1)
    when the stack is empty; ``("", -1)`` for kmalloc's large path (counted by kmalloc)."""
    names = [canonical_function(f) for f in frames]
    start = attribution.probe_frames(names)
    for i in range(start, len(names)):
        n = names[i]
        if KMALLOC_LARGE.fullmatch(n):
            return "", -1
        if not PAGE_ALLOCATOR.fullmatch(n):
            return n, i
    return None, -1


@lru_cache(maxsize=4096)
def _rules(function: str, extra: tuple[str, ...]) -> attribution.SkipRules:
    return attribution.build_skip_rules([function], extra)


def _lookup_allocinfo(snap: AllocinfoSnapshot | None) -> dict[str, list[Site]]:
    """function (clone-free) -> allocinfo sites, for call-site rows on a profiling kernel."""
    out: dict[str, list[Site]] = defaultdict(list)
    if snap is not None:
        for r in snap.records:
            out[canonical_function(r.site.function)].append(r.site)
    return out


@dataclass(slots=True)
class _Group:
    where: Where
    sums: WeightSums = field(default_factory=WeightSums)
    charged: WeightSums = field(default_factory=WeightSums)
    charge_known: bool = False
    sources: set[str] = field(default_factory=set)
    callers: dict[str, WeightSums] = field(default_factory=lambda: defaultdict(WeightSums))
    caller_charged: dict[str, WeightSums] = field(default_factory=lambda: defaultdict(WeightSums))
    folded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    keys: set[str] = field(default_factory=set)  # allocinfo join keys of its members


def _where(
    s: RawSample,
    frames: Sequence[str],
    tags: dict[int, Site],
    ksyms: Kallsyms,
    by_function: dict[str, list[Site]],
) -> tuple[Where | None, int]:
    """Where a sample belongs, and the index of its site frame in ``frames`` (-1: unknown)."""
    if s.is_tag and s.site in tags:
        t = tags[s.site]
        return Where(t, t.tag, "exact-tag"), -1
    if s.source == SRC_PAGE:
        fn, idx = page_site(frames)
        if fn == "":
            return None, -1
        if fn is None:
            fn = "[page: stack lost]"
    else:
        fn = canonical_function(ksyms.function_at(s.site)) if s.site else "[unknown]"
        idx = -1
    match = "page-stack" if s.source == SRC_PAGE else "call-site"
    known = by_function.get(fn, [])
    file = known[0].file if len({k.file for k in known}) == 1 else ""
    module = known[0].module if len({k.module for k in known}) == 1 else ""
    return Where(Site(file, 0, fn, module), fn, match), idx


def _caller(
    frames: Sequence[str], where: Where, site_idx: int, depth: int, skip: tuple[str, ...]
) -> str:
    if not frames:
        return "[stack lost]"
    rules = _rules(where.site.function, skip)
    if site_idx >= 0:
        # page-stack: the site frame is known; the caller is the next non-machinery frame
        names = [canonical_function(f) for f in frames[site_idx + 1 :]]
        for i, n in enumerate(names):
            if not rules.is_machinery(n):
                chain = names[i : i + max(1, depth)]
                return ";".join(reversed(chain))
        return attribution.NO_CALLER
    return attribution.attribute(frames, rules, depth).caller


def group(
    raw: RawCapture,
    ksyms: Kallsyms,
    opts: Options,
    allocinfo: AllocinfoSnapshot | None,
) -> tuple[dict[str, _Group], WeightSums, dict[str, int]]:
    """Samples -> groups (tag, or roll-up key), the sums over every sample, and counters."""
    by_function = _lookup_allocinfo(allocinfo)
    subsystems = opts.subsystems
    groups: dict[str, _Group] = {}
    everything = WeightSums()
    counters: dict[str, int] = defaultdict(int)
    skip = tuple(opts.skip)
    for s in raw.samples:
        everything.add(s.sums)
        frames = [ksyms.function_at(a) for a in s.stack]
        where, site_idx = _where(s, frames, raw.tags, ksyms, by_function)
        if where is None:
            counters["kmalloc_large_page_points"] += s.sums.hits
            continue
        if opts.filters and not opts.filters.match(where.site):
            continue
        sub = classify(where.site, subsystems) if where.site.file else "unknown"
        key = where.label if opts.by == "site" else group_key(where.site, opts.by, sub)
        g = groups.get(key)
        if g is None:
            w = where if opts.by == "site" else Where(Site("", 0, key), key, where.match)
            g = groups[key] = _Group(w)
        g.keys.add(where.site.key if where.match == "exact-tag" else where.site.function)
        g.sums.add(s.sums)
        g.sources.add(SOURCES[s.source] if 0 <= s.source < len(SOURCES) else "?")
        if s.charged != CHARGED_UNKNOWN:
            g.charge_known = True
        caller = _caller(frames, where, site_idx, opts.depth, skip)
        g.callers[caller].add(s.sums)
        if s.charged == CHARGED_YES:
            g.charged.add(s.sums)
            g.caller_charged[caller].add(s.sums)
        if opts.folded and frames:
            g.folded[attribution.folded(frames)] += s.sums.hits
        elif not frames:
            counters["points_without_stack"] += s.sums.hits
    return groups, everything, dict(counters)


def _live_join(
    g: _Group,
    by_key: dict[str, tuple[int, int]],
    by_fn: dict[str, tuple[int, int]],
    before_key: dict[str, tuple[int, int]],
    before_fn: dict[str, tuple[int, int]],
) -> tuple[int | None, int | None, int | None, int | None]:
    """allocinfo live bytes/calls after the window, and the delta, for a group's members."""
    a_b = a_c = b_b = b_c = 0
    found = False
    for k in g.keys:
        for table_a, table_b in ((by_key, before_key), (by_fn, before_fn)):
            if k in table_a:
                found = True
                a_b += table_a[k][0]
                a_c += table_a[k][1]
                if k in table_b:
                    b_b += table_b[k][0]
                    b_c += table_b[k][1]
                break
    if not found:
        return None, None, None, None
    if not before_key and not before_fn:
        return a_b, a_c, None, None
    return a_b, a_c, a_b - b_b, a_c - b_c


def _index(snap: AllocinfoSnapshot | None) -> tuple[dict[str, tuple[int, int]], ...]:
    by_key: dict[str, tuple[int, int]] = {}
    by_fn: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    if snap is not None:
        for r in snap.records:
            by_key[r.site.key] = (r.bytes, r.calls)
            b, c = by_fn[canonical_function(r.site.function)]
            by_fn[canonical_function(r.site.function)] = (b + r.bytes, c + r.calls)
    return by_key, dict(by_fn)


def _callers(g: _Group, rate: int, opts: Options) -> tuple[ContextCaller, ...]:
    conf = opts.confidence
    ranked = sorted(g.callers.items(), key=lambda kv: (-kv[1].calls, kv[0]))
    shown = ranked[: max(0, opts.callers)]
    rest = ranked[max(0, opts.callers) :]
    rows: list[tuple[str, WeightSums, int | None, WeightSums]] = [
        (name, sums, None, g.caller_charged.get(name, WeightSums())) for name, sums in shown
    ]
    if rest:
        other, other_charged = WeightSums(), WeightSums()
        for name, sums in rest:
            other.add(sums)
            other_charged.add(g.caller_charged.get(name, WeightSums()))
        rows.append(("other", other, len(rest), other_charged))
    out: list[ContextCaller] = []
    for name, sums, n, charged in rows:
        c = calls_estimate(sums, rate, conf)
        b = bytes_estimate(sums, rate, conf)
        cs = share(sums, g.sums, "calls", conf)
        bs = share(sums, g.sums, "bytes", conf)
        out.append(
            ContextCaller(
                caller=name,
                samples=sums.hits,
                calls=c.value,
                calls_low=c.low,
                calls_high=c.high,
                bytes=b.value,
                bytes_low=b.low,
                bytes_high=b.high,
                call_share=cs.share,
                call_share_low=cs.ci_low,
                call_share_high=cs.ci_high,
                byte_share=bs.share,
                byte_share_low=bs.ci_low,
                byte_share_high=bs.ci_high,
                charged_share=(charged.bytes / sums.bytes)
                if g.charge_known and sums.bytes > 0
                else None,
                callers=n,
                sums=raw_sums(sums),
            )
        )
    return tuple(out)


def build_payload(
    raw: RawCapture,
    ksyms: Kallsyms,
    opts: Options,
    *,
    epochs: Sequence[Epoch],
    duration: float,
    backend: str,
    tag_mode: str,
    charge_source: str,
    before: AllocinfoSnapshot | None = None,
    after: AllocinfoSnapshot | None = None,
    mem_profiling: int | None = None,
    map_bytes: int | None = None,
    notes: Iterable[str] = (),
) -> ContextPayload:
    """The payload from the raw map contents: pure, so it is unit-tested without BPF."""
    conf = opts.confidence
    rate = epochs[-1].rate if epochs else 1
    groups, everything, counters = group(raw, ksyms, opts, after or before)
    secs = max(duration, 1e-9)
    after_idx = _index(after)
    before_idx = _index(before) if before is not None else ({}, {})
    rows: list[ContextTag] = []
    for key, g in groups.items():
        c = calls_estimate(g.sums, rate, conf)
        b = bytes_estimate(g.sums, rate, conf)
        bs = share(g.sums, everything, "bytes", conf)
        charged: tuple[float | None, float | None, float | None, float | None] = (
            None,
            None,
            None,
            None,
        )
        if g.charge_known and g.sums.hits:
            ch = share(g.charged, g.sums, "bytes", conf)
            chc = share(g.charged, g.sums, "calls", conf)
            charged = (ch.share, ch.ci_low, ch.ci_high, chc.share)
        live = _live_join(g, *after_idx, *before_idx) if after is not None else (None,) * 4
        site = g.where.site
        subsystem = classify(site, opts.subsystems) if site.file else "unknown"
        if opts.by == "subsystem":
            subsystem = key
        rows.append(
            ContextTag(
                tag=key,
                function=canonical_function(site.function),
                file=site.file or None,
                line=site.line or None,
                module=site.module,
                subsystem=subsystem,
                sources=tuple(sorted(g.sources)),
                match=g.where.match,
                live_bytes=live[0],
                live_calls=live[1],
                live_bytes_delta=live[2],
                live_calls_delta=live[3],
                samples=g.sums.hits,
                calls=c.value,
                calls_low=c.low,
                calls_high=c.high,
                bytes=b.value,
                bytes_low=b.low,
                bytes_high=b.high,
                calls_per_s=c.value / secs,
                bytes_per_s=b.value / secs,
                byte_share=bs.share,
                byte_share_low=bs.ci_low,
                byte_share_high=bs.ci_high,
                charged_share=charged[0],
                charged_share_low=charged[1],
                charged_share_high=charged[2],
                charged_call_share=charged[3],
                callers=_callers(g, rate, opts),
                folded=dict(g.folded) if opts.folded else {},
                sums=raw_sums(g.sums),
                charged_sums=raw_sums(g.charged) if g.charge_known else None,
            )
        )
    rows.sort(key=lambda r: (-r.bytes, r.tag))
    total_rows = len(rows)
    if opts.min_bytes is not None:
        rows = [r for r in rows if r.bytes >= opts.min_bytes]
    if opts.limit is not None:
        rows = rows[: opts.limit]
    ce = calls_estimate(everything, rate, conf)
    be = bytes_estimate(everything, rate, conf)
    all_counters = {
        "stack_err": raw.stack_err,
        "hash_full": raw.hash_full,
        "missing_stacks": raw.missing_stacks,
        "hits": raw.hits,
        **counters,
    }
    note_list = list(notes)
    lost = raw.stack_err + raw.hash_full + raw.missing_stacks
    if raw.hash_full:
        note_list.append(
            f"{raw.hash_full} sample points dropped: the samples map was full "
            "(estimates are low by about that share)"
        )
    if lost and raw.hits:
        note_list.append(
            f"stack walks failed or were lost for {raw.stack_err + raw.missing_stacks} of "
            f"{raw.hits} sample points (their callers show as [stack lost])"
        )
    return ContextPayload(
        backend=backend,
        tag_mode=tag_mode,
        allocinfo_source=(after or before).via if (after or before) is not None else None,  # type: ignore[union-attr]
        mem_profiling=mem_profiling,
        charge_source=charge_source,
        duration=duration,
        confidence=conf,
        rate_mode="fixed" if opts.rate is not None else "auto",
        rate=rate,
        budget=None if opts.rate is not None else opts.budget,
        rate_epochs=tuple(
            RateEpoch(rate=e.rate, seconds=e.seconds, events=e.events, bytes=e.bytes, hits=e.hits)
            for e in epochs
        ),
        totals=ContextTotals(
            events=sum(raw.events),
            bytes=sum(raw.bytes),
            calls_est=ce.value,
            calls_est_low=ce.low,
            calls_est_high=ce.high,
            bytes_est=be.value,
            bytes_est_low=be.low,
            bytes_est_high=be.high,
            by_source=dict(zip(SOURCES, raw.events, strict=True)),
            bytes_by_source=dict(zip(SOURCES, raw.bytes, strict=True)),
            sums=raw_sums(everything),
        ),
        tags=tuple(rows),
        tags_total=total_rows,
        by=opts.by,
        counters=all_counters,
        map_bytes=map_bytes,
        skip_rules=tuple(opts.skip),
        notes=tuple(note_list),
    )


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
    cap = Capture(verb, duration=duration, workload=opts.workload, pid=opts.pid)
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
    from allocscope.probes import context as pc
    from allocscope.probes.headers import resolve_headers

    ksyms = Kallsyms.load()
    run = run_live(opts, log)
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
