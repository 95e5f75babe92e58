"""Lifespans and leaks per site (or exact allocinfo tag) and caller, from a sample.

The probe (``probes/lifespan.bpf.c``) tracks an allocation iff its address passes a hash
(1 in ``2**addr_shift``) and the shared byte sampler puts a point on it; each tracked object
carries the weights of its inclusion probability (``collector/byte_sampling.py`` scaled by
``2**addr_shift``). Freed objects leave calls-weighted log2 lifespan histograms; objects
still tracked at the end are the outstanding ones, with their age. Everything here is pure
given the maps' contents (:class:`RawLifespan`), so every figure is unit-tested without BPF;
:func:`capture` runs one window through the capture runner (:func:`capture_raw` is that
window, also used by the tests' census runs); the fleet agent keeps one probe attached
instead and reads it with :func:`read_raw` each interval (collector/agent_capture.py).

Method and its limits: docs/design/lifespan.md.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allocscope.collector import attribution, byte_sampling, lifespan_stats
from allocscope.collector.capture import Capture
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import (
    Estimate,
    HistSlot,
    LifespanPayload,
    LifespanRow,
    LifespanStats,
)
from allocscope.collector.result import Result
from allocscope.collector.site import canonical_function
from allocscope.probes import lifespan as probe_lifespan
from allocscope.probes.lifespan import (
    NR_SLOTS,
    AddrSum,
    AllocTag,
    LifeEntry,
    LifeKey,
    LifespanSettings,
    TrackedObject,
    Weights,
)
from allocscope.probes.loader import Probe

PAGE_SITE = "[page_alloc]"
UNKNOWN = "[unknown]"
MAX_FUNCTION_SIZE = 1 << 20
STACKS_PER_ROW = 5
DEFAULT_OLDER_NS = 1_000_000_000  # leaks: older than 1 s (see docs/design/lifespan.md)
_FRAC = float(1 << byte_sampling.SAMPLER_FRAC_BITS)
_BPF_FRAME = re.compile(r"^\[bpf\]$")


@dataclass
class RawLifespan:
    """Everything one probe's maps held at the end of a window."""

    settings: LifespanSettings
    defines: dict[str, int | str | bool]
    backend: str
    counters: dict[str, int]
    tracked: list[TrackedObject]
    lifespans: list[LifeEntry]
    stacks: dict[int, tuple[int, ...]]
    tags: dict[int, AllocTag]
    addr_sums: list[AddrSum]
    start_ns: int  # probe clock when the window began
    end_ns: int  # probe clock when the hooks were detached
    notes: list[str] = field(default_factory=list)
    # a continuous probe's interval (collect --lifespan): tracked objects allocated before
    # this are carried from earlier intervals. They are live (and old) now, but not among
    # this interval's allocations. 0: a one-shot window, every tracked object is its own.
    carried_before_ns: int = 0


@dataclass(frozen=True, slots=True)
class Options:
    duration: float | None = None
    sample_rate: int = probe_lifespan.DEFAULT_SAMPLE_RATE
    page_rate: int = probe_lifespan.DEFAULT_PAGE_RATE
    addr_shift: int = probe_lifespan.DEFAULT_ADDR_SHIFT
    pid: int | None = None
    workload: str | None = None
    older_ns: int | None = None  # None: DEFAULT_OLDER_NS, capped at half the window
    view: str = "lifespan"  # lifespan | leaks
    confidence: float = 0.95
    pages: bool = True
    addresses: bool = False

    def settings(self, read_tag: bool = False) -> LifespanSettings:
        return LifespanSettings(
            salt=random.getrandbits(64),
            sample_rate=self.sample_rate,
            page_rate=self.page_rate,
            addr_shift=self.addr_shift,
            pid=self.pid,
            pages=self.pages,
            read_tag=read_tag,
        )


def ws(w: Weights) -> byte_sampling.WeightSums:
    """The probe's weights as the estimators' sums."""
    return byte_sampling.WeightSums(w.hits, w.bytes_w, w.bytes_w2, w.calls_w, w.calls_w2)


def default_older_ns(window_ns: int) -> int:
    """1 s, or half the window when that is shorter (nothing could be older)."""
    return min(DEFAULT_OLDER_NS, max(1, window_ns // 2))


# --- symbolising -----------------------------------------------------------------------------


def _frame(ksyms: Kallsyms, ip: int) -> str:
    r = ksyms.resolve(ip)
    if r is None or r.offset > MAX_FUNCTION_SIZE:
        return "[bpf]"
    return r.function


def site_name(ksyms: Kallsyms, key: LifeKey) -> str:
    if key.source == probe_lifespan.SRC_PAGE:
        return PAGE_SITE
    r = ksyms.resolve(key.site)
    if r is None or r.offset > MAX_FUNCTION_SIZE:
        return UNKNOWN
    return canonical_function(r.function)


def tag_name(tags: dict[int, AllocTag], addr: int) -> str | None:
    t = tags.get(addr)
    if t is None:
        return None
    return f"{t.file}:{t.line} func:{t.function}"


class _Symboliser:
    """Stack -> (caller, folded), cached per (site, stack id)."""

    def __init__(self, ksyms: Kallsyms, stacks: dict[int, tuple[int, ...]]) -> None:
        self.ksyms = ksyms
        self.stacks = stacks
        self._rules: dict[str, attribution.SkipRules] = {}
        self._cache: dict[tuple[str, int], tuple[str, str]] = {}

    def caller(self, site: str, stackid: int) -> tuple[str, str]:
        got = self._cache.get((site, stackid))
        if got is not None:
            return got
        ips = self.stacks.get(stackid, ())
        if not ips:
            got = (UNKNOWN, "")
        else:
            frames = [f for f in (_frame(self.ksyms, ip) for ip in ips) if not _BPF_FRAME.match(f)]
            rules = self._rules.get(site)
            if rules is None:
                if site in (PAGE_SITE, UNKNOWN):  # no site frame: skip the allocators only
                    rules = attribution.build_skip_rules(
                        [], attribution.ALLOCATOR_FRAMES, defaults=False
                    )
                else:
                    rules = attribution.build_skip_rules([site])
                self._rules[site] = rules
            got = (attribution.attribute(frames, rules).caller, attribution.folded(frames))
        self._cache[(site, stackid)] = got
        return got


# --- per row ---------------------------------------------------------------------------------

RowKey = tuple[str, str | None, str, str]  # site, tag, source, caller


@dataclass
class _Row:
    freed: byte_sampling.WeightSums = field(default_factory=byte_sampling.WeightSums)
    live: byte_sampling.WeightSums = field(default_factory=byte_sampling.WeightSums)
    live_new: byte_sampling.WeightSums = field(default_factory=byte_sampling.WeightSums)
    old: byte_sampling.WeightSums = field(default_factory=byte_sampling.WeightSums)
    freed_n: int = 0
    live_n: int = 0
    missed_n: int = 0
    missed_calls_w: int = 0
    missed_bytes_w: int = 0
    life_w_sum: int = 0
    hist_n: list[int] = field(default_factory=lambda: [0] * NR_SLOTS)
    hist_w: list[int] = field(default_factory=lambda: [0] * NR_SLOTS)
    hist_w2: list[int] = field(default_factory=lambda: [0] * NR_SLOTS)
    age_n: list[int] = field(default_factory=lambda: [0] * NR_SLOTS)
    age_calls: list[float] = field(default_factory=lambda: [0.0] * NR_SLOTS)
    age_bytes: list[float] = field(default_factory=lambda: [0.0] * NR_SLOTS)
    stacks_all: Counter[str] = field(default_factory=Counter)
    stacks_old: Counter[str] = field(default_factory=Counter)
    # per address: (allocated weights, byte-stage variance) and the live object's weights
    clusters: dict[int, byte_sampling.WeightSums] = field(default_factory=dict)
    live_at: dict[int, byte_sampling.WeightSums] = field(default_factory=dict)


def cluster_estimates(
    r: _Row,
    p_addr: float,
    point: float,
    confidence: float,
    *,
    freed: bool,
    min_size: int = 8,
) -> tuple[byte_sampling.Estimate, byte_sampling.Estimate]:
    """(calls, bytes) allocated -- or, with ``freed``, allocated and no longer live -- with
    the address sample's variance taken over addresses (clusters), not objects: slab objects
    reuse a few addresses, and every allocation at a kept address is in the sample together.

    Var = sum over addresses c of (byte-stage variance_c + (1 - p) * Y_c^2), Y_c the weighted
    total at c (Horvitz-Thompson variance for Poisson sampling of clusters).
    """
    q = 1.0 - p_addr
    calls = bytes_ = var_c = var_b = 0.0
    for addr, w in r.clusters.items():
        yb, yc = w.bytes, w.calls
        vb, vc = w.bytes_var, w.calls_var
        if freed:
            live = r.live_at.get(addr)
            if live is not None:
                keep = max(0.0, 1.0 - live.bytes / yb) if yb > 0 else 0.0
                yb, yc = max(0.0, yb - live.bytes), max(0.0, yc - live.calls)
                vb, vc = vb * keep, vc * keep
        calls += yc
        bytes_ += yb
        var_c += vc + q * yc * yc
        var_b += vb + q * yb * yb
    return (
        byte_sampling.total(calls, var_c, max(1.0, point / min_size), confidence),
        byte_sampling.total(bytes_, var_b, point, confidence),
    )


def _slot(ns: int) -> int:
    return min(max(ns, 1).bit_length() - 1, NR_SLOTS - 1)


def _est(e: byte_sampling.Estimate) -> Estimate:
    return Estimate(value=e.value, low=e.low, high=e.high, var=e.var)


def _iv(e: lifespan_stats.Interval) -> Estimate:
    return Estimate(value=e.value, low=e.low, high=e.high)


def _lifespan(
    r: _Row, confidence: float, *, clustered: bool, window_ns: int = 0
) -> LifespanStats | None:
    """Percentiles and mean; with ``clustered`` (the address stage sampled and addr_sums
    is complete) on the addresses' effective size when it is the smaller (lifespan_stats).
    An unbounded percentile runs to ``window_ns``: nothing freed in the window lived longer."""
    if r.freed_n == 0:
        return None
    w = [x / _FRAC for x in r.hist_w]
    w2 = [x / _FRAC for x in r.hist_w2]
    wsum = r.life_w_sum / _FRAC * (1 << probe_lifespan.LIFE_SHIFT)
    wsum += sum(w) * (1 << probe_lifespan.LIFE_SHIFT) / 2  # truncation: half a unit each
    n_obj = lifespan_stats.n_eff(w, w2)
    n = n_obj
    addr_calls = addr_calls_sq = None
    if clustered and r.clusters:
        addr_calls = sum(c.calls for c in r.clusters.values())
        addr_calls_sq = sum(c.calls * c.calls for c in r.clusters.values())
        n = min(n_obj, lifespan_stats.kish(c.calls for c in r.clusters.values()))
    deff = n_obj / n if n > 0 else 1.0
    cap = float(window_ns) if window_ns > 0 else None
    return LifespanStats(
        n_eff=n,
        addr_calls=addr_calls,
        addr_calls_sq=addr_calls_sq,
        mean_ns=_iv(lifespan_stats.mean(w, w2, wsum, confidence, design_effect=deff)),
        p50_ns=_iv(lifespan_stats.quantile(w, w2, 0.5, confidence, n, cap)),
        p90_ns=_iv(lifespan_stats.quantile(w, w2, 0.9, confidence, n, cap)),
        p99_ns=_iv(lifespan_stats.quantile(w, w2, 0.99, confidence, n, cap)),
    )


def _untraced_leaks_note(rows: Sequence[LifespanRow], filtered: bool) -> str:
    """What missed frees mean for the leaks view: an object freed through an untraced path
    stays tracked (live, aging) until its address is allocated again, so it can show here."""
    suspects = [r for r in rows if r.missed_frees and r.live_sampled]
    named = ", ".join(f"{r.tag or r.site} <- {r.caller}" for r in suspects[:3])
    more = f" and {len(suspects) - 3} more" if len(suspects) > 3 else ""
    return (
        "objects freed through an untraced path stay live here until their address is "
        "allocated again"
        + (" by the filtered task" if filtered else "")
        + ": some outstanding objects may be freed already (false leaks); "
        + (
            f"rows whose objects were seen freed that way (missed frees): {named}{more}"
            if suspects
            else "no row shown here had a missed free"
        )
    )


def build_payload(
    raw: RawLifespan,
    ksyms: Kallsyms,
    *,
    view: str = "lifespan",
    older_ns: int | None = None,
    confidence: float = 0.95,
) -> LifespanPayload:
    """The maps' contents -> the typed payload: rows per (site/tag, caller)."""
    window_ns = max(0, raw.end_ns - raw.start_ns)
    older = default_older_ns(window_ns) if older_ns is None else older_ns
    sym = _Symboliser(ksyms, raw.stacks)
    rows: dict[RowKey, _Row] = defaultdict(_Row)

    def key_of(k: LifeKey) -> tuple[RowKey, str]:
        site = site_name(ksyms, k)
        caller, folded = sym.caller(site, k.stackid)
        return (site, tag_name(raw.tags, k.tag), k.source_name, caller), folded

    for e in raw.lifespans:
        rk, folded = key_of(e.key)
        r = rows[rk]
        r.freed.add(ws(e.freed))
        r.freed_n += e.freed_n
        r.missed_n += e.missed_n
        r.missed_calls_w += e.missed_calls_w
        r.missed_bytes_w += e.missed_bytes_w
        r.life_w_sum += e.life_w_sum
        for i in range(min(NR_SLOTS, len(e.hist_n))):
            r.hist_n[i] += e.hist_n[i]
            r.hist_w[i] += e.hist_w[i]
            r.hist_w2[i] += e.hist_w2[i]
        if folded and e.freed_n:
            r.stacks_all[folded] += e.freed_n
    clustered = not raw.counters.get("addr_sums_full") and bool(raw.addr_sums)
    for a in raw.addr_sums:
        rk, _ = key_of(a.key)
        got = rows[rk].clusters.setdefault(a.addr, byte_sampling.WeightSums())
        got.add(ws(a.weight))
    for o in raw.tracked:
        rk, folded = key_of(o.key)
        r = rows[rk]
        w = ws(o.weight)
        if o.t_alloc >= raw.carried_before_ns:  # allocated in this window
            r.live_at.setdefault(o.addr, byte_sampling.WeightSums()).add(w)
            r.live_new.add(w)
        age = max(0, raw.end_ns - o.t_alloc)
        r.live.add(w)
        r.live_n += 1
        s = _slot(age)
        r.age_n[s] += 1
        r.age_calls[s] += w.calls
        r.age_bytes[s] += w.bytes
        if folded:
            r.stacks_all[folded] += 1
        if age >= older:
            r.old.add(w)
            if folded:
                r.stacks_old[folded] += 1

    shift = raw.settings.addr_shift
    page_size = int(raw.defines.get("PAGE_SIZE_BYTES", 4096))
    p_addr = 1.0 / (1 << raw.settings.addr_shift)
    out: list[LifespanRow] = []
    for (site, tag, source, caller), r in rows.items():
        alloc = byte_sampling.WeightSums()
        alloc.add(r.freed)
        alloc.add(r.live_new)
        alloc.add(
            byte_sampling.WeightSums(
                r.missed_n, r.missed_bytes_w, 0, r.missed_calls_w, 0
            )  # missed frees: allocated in the window, freed unseen
        )
        stacks = r.stacks_old if view == "leaks" else r.stacks_all
        # one point's weight, for the upper bound when a row saw none: pages have their own R
        # and are never smaller than a page
        is_page = source == probe_lifespan.SOURCES[probe_lifespan.SRC_PAGE]
        point = float((raw.settings.page_rate if is_page else raw.settings.sample_rate) << shift)
        small = page_size if is_page else 8

        calls_est = functools.partial(
            byte_sampling.calls_estimate, rate=point, confidence=confidence, min_size=small
        )

        if clustered and r.clusters:
            alloc_calls, alloc_bytes = cluster_estimates(
                r, p_addr, point, confidence, freed=False, min_size=small
            )
            freed_calls, _ = cluster_estimates(
                r, p_addr, point, confidence, freed=True, min_size=small
            )
        else:
            alloc_calls = calls_est(alloc)
            alloc_bytes = byte_sampling.bytes_estimate(alloc, point, confidence)
            freed_calls = calls_est(r.freed)
        out.append(
            LifespanRow(
                site=site,
                tag=tag,
                source=source,
                caller=caller,
                sampled=r.freed_n + r.live_n + r.missed_n,
                freed_sampled=r.freed_n,
                live_sampled=r.live_n,
                missed_frees=r.missed_n,
                allocated_calls=_est(alloc_calls),
                allocated_bytes=_est(alloc_bytes),
                freed_calls=_est(freed_calls),
                live_calls=_est(calls_est(r.live)),
                live_bytes=_est(byte_sampling.bytes_estimate(r.live, point, confidence)),
                old_calls=_est(calls_est(r.old)),
                old_bytes=_est(byte_sampling.bytes_estimate(r.old, point, confidence)),
                lifespan=_lifespan(
                    r, confidence, clustered=clustered and p_addr < 1, window_ns=window_ns
                ),
                lifespan_hist=tuple(
                    HistSlot(
                        low_ns=lifespan_stats.slot_bounds(i)[0],
                        high_ns=lifespan_stats.slot_bounds(i)[1],
                        sampled=n,
                        calls=r.hist_w[i] / _FRAC,
                        calls_var=r.hist_w2[i] / _FRAC,
                    )
                    for i, n in enumerate(r.hist_n)
                    if n
                ),
                age_hist=tuple(
                    HistSlot(
                        low_ns=lifespan_stats.slot_bounds(i)[0],
                        high_ns=lifespan_stats.slot_bounds(i)[1],
                        sampled=n,
                        calls=r.age_calls[i],
                        bytes=r.age_bytes[i],
                    )
                    for i, n in enumerate(r.age_n)
                    if n
                ),
                stacks=dict(stacks.most_common(STACKS_PER_ROW)),
            )
        )
    if view == "leaks":
        out = [r for r in out if r.live_sampled]
        out.sort(key=lambda r: (-r.old_bytes.value, -r.live_bytes.value, r.site, r.caller))
    else:
        out.sort(key=lambda r: (-r.allocated_bytes.value, r.site, r.caller))
    c = raw.counters
    notes = list(raw.notes)
    if c.get("track_full"):
        notes.append(
            f"{c['track_full']} sampled objects not tracked: the tracking map was full "
            "(estimates are low; raise --addr-shift or --rate)"
        )
    if c.get("lives_full"):
        notes.append(
            f"{c['lives_full']} freed (or missed-free) tracked objects not recorded: the "
            "lifespans map was full (freed calls, lifespans and missed frees are low for "
            "the keys that did not fit; fewer distinct stacks or --addr-shift up)"
        )
    if c.get("missed_free"):
        notes.append(
            f"{c['missed_free']} tracked objects were allocated again while tracked: their "
            "free went through a path with no tracepoint (see untraced_frees); they count as "
            "allocated, not as live"
        )
        if view == "leaks":
            notes.append(_untraced_leaks_note(out, raw.settings.pid is not None))
    if c.get("addr_sums_full"):
        notes.append(
            f"{c['addr_sums_full']} tracked allocations not summed per address (map full): "
            "intervals of allocated and freed totals and of lifespans assume independent "
            "objects (too narrow for slab caches that reuse a few addresses)"
        )
    if c.get("stack_fail"):
        notes.append(f"{c['stack_fail']} tracked objects have no stack (caller [unknown])")
    d = raw.defines
    return LifespanPayload(
        view=view,
        backend=raw.backend,
        tag_mode="exact-tag" if d.get("READ_ALLOC_TAG") and raw.tags else "call-site",
        sample_rate=raw.settings.sample_rate,
        page_sample_rate=raw.settings.page_rate,
        addr_shift=raw.settings.addr_shift,
        confidence=confidence,
        older_than_ns=older,
        window_ns=window_ns,
        sampled=c.get("tracked", 0),
        freed_sampled=sum(e.freed_n for e in raw.lifespans),
        live_sampled=len(raw.tracked),
        missed_frees=sum(e.missed_n for e in raw.lifespans),
        counters=dict(c),
        traced_frees=probe_lifespan.traced_frees(d),
        untraced_frees=probe_lifespan.untraced_frees(d),
        rows=tuple(out),
        notes=tuple(notes),
    )


# --- the capture -----------------------------------------------------------------------------


def read_raw(
    probe: Probe,
    settings: LifespanSettings,
    backend: str,
    start_ns: int,
    end_ns: int,
    *,
    take_addr_sums: bool = False,
) -> RawLifespan:
    """Read one probe's maps: after a window (hooks detached), or while attached for the
    fleet agent's continuous probe (``take_addr_sums``: the per-address sums are emptied as
    read, so each read holds one interval's; the other maps are cumulative and diffed).
    Freed objects are read before live ones: one freed in between is then counted live now
    and freed in the next interval, never in neither."""
    lifespans = probe_lifespan.read_lifespans(probe)
    tracked = probe_lifespan.read_tracked(probe)
    ids = {o.key.stackid for o in tracked} | {e.key.stackid for e in lifespans}
    return RawLifespan(
        settings=settings,
        defines=dict(probe.defines),
        backend=backend,
        counters=probe_lifespan.read_counters(probe),
        tracked=tracked,
        lifespans=lifespans,
        stacks=probe_lifespan.read_stacks(probe, ids),
        tags=probe_lifespan.read_tags(probe),
        addr_sums=probe_lifespan.read_addr_sums(probe, take=take_addr_sums),
        start_ns=start_ns,
        end_ns=end_ns,
    )


def _read_tag_possible() -> bool:
    """Exact tags need /proc/allocinfo and kernel headers matching the running kernel."""
    import os

    from allocscope.probes.headers import resolve_headers

    return os.path.exists("/proc/allocinfo") and resolve_headers().matches


def capture_raw(
    cap: Capture,
    settings: Sequence[LifespanSettings],
    *,
    on_start: Callable[[], object] | None = None,
    done: Callable[[], bool] | None = None,
) -> list[RawLifespan]:
    """One window inside an entered :class:`Capture`, one probe per settings (a census
    beside the default sample sees the same events); ``done`` ends the window early."""
    probes: list[tuple[Probe, LifespanSettings, str]] = []
    for s in settings:
        p = cap.hold(Probe(probe_lifespan.PROGRAM, s.defines()))
        probes.append((p, s, ""))
    attached = []
    for p, s, _ in probes:
        attached.append((p, s, probe_lifespan.attach_all(p)))
    start_ns = probe_lifespan.now_ns()
    with cap.window(on_start=on_start) as w:
        cap.wait(w, done=done)
    for p, _s, _b in attached:
        p.detach()
    end_ns = probe_lifespan.now_ns()
    out = [read_raw(p, s, b, start_ns, end_ns) for p, s, b in attached]
    for r in out:
        r.notes.extend(header_notes(attached[0][0]))
    return out


def header_notes(probe: Probe) -> list[str]:
    """What the reader must know about the headers the probe was built with."""
    if probe.headers is not None and not probe.headers.matches:
        return [
            "kernel headers do not match the running kernel: sites are call sites "
            "(functions), not exact allocinfo tags"
        ]
    return []


def capture(opts: Options, *, on_start: Callable[[], object] | None = None) -> Result:
    """One ``lifespan``/``leaks`` window: the Result (kind ``lifespan``)."""
    verb = "leaks" if opts.view == "leaks" else "lifespan"
    cap = Capture(
        "lifespan", duration=opts.duration, workload=opts.workload, pid=opts.pid, verb=verb
    )
    ksyms = Kallsyms.load()  # before the window: ~0.5 s
    settings = opts.settings(read_tag=_read_tag_possible())
    settings.check()
    with cap:
        raw = capture_raw(cap, [settings], on_start=on_start)[0]
    payload = build_payload(
        raw, ksyms, view=opts.view, older_ns=opts.older_ns, confidence=opts.confidence
    )
    w = cap.last_window
    payload = dataclasses.replace(payload, interrupted=bool(w and w.interrupted))
    return cap.result(
        {
            "duration": opts.duration,
            "sample_rate": opts.sample_rate,
            "page_rate": opts.page_rate,
            "addr_shift": opts.addr_shift,
            "pid": opts.pid,
            "workload": opts.workload,
            "older_ns": payload.older_than_ns,
            "view": opts.view,
            "taken_at": time.time(),
        },
        payload.to_dict(),
    )
