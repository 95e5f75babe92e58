"""Building the ``context`` payload from what the probe read: symbolise, attribute, estimate,
join allocinfo.

* **Attribution.** The exact tag where the probe read ``current->alloc_tag``; otherwise a slab
  allocation's site is its ``call_site`` function, and a page allocation's is the first frame
  past the page allocator in its sampled stack (``mm_page_alloc`` has no call_site). Callers
  follow :mod:`allocscope.collector.attribution`.
* **Estimates** (:mod:`allocscope.collector.byte_sampling`): calls and bytes with Garwood
  intervals on Kish's effective points, shares and charged share with Kish-Wilson intervals.

Separate from :mod:`allocscope.collector.context` (probe settings, rate keeper, the capture
loop) because :func:`build_payload` is pure given the raw map contents: the agent's interval
capture, the synthetic fleet results and the unit tests call it without BPF, as
collector/who_calls_payload.py is for who-calls.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from allocscope.collector import attribution
from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.byte_sampling import (
    WeightSums,
    bytes_estimate,
    calls_estimate,
    mean_rate,
    share,
)
from allocscope.collector.context import Epoch, Options, RawCapture, RawSample
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import (
    ContextCaller,
    ContextPayload,
    ContextTag,
    ContextTotals,
    RateEpoch,
    SampleSums,
)
from allocscope.collector.rollup import classify, group_key
from allocscope.collector.site import Site, canonical_function
from allocscope.probes.context import CHARGED_UNKNOWN, CHARGED_YES, SOURCES, SRC_PAGE

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


def raw_sums(s: WeightSums) -> SampleSums:
    """The additive sums a fleet store combines (estimates and variances, not intervals)."""
    return SampleSums(
        hits=s.hits, calls=s.calls, calls_var=s.calls_var, bytes=s.bytes, bytes_var=s.bytes_var
    )


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


def caller_of(
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
        caller = caller_of(frames, where, site_idx, opts.depth, skip)
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


def _callers(
    g: _Group, rate: int, opts: Options, wrate: float | None = None
) -> tuple[ContextCaller, ...]:
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
        c = calls_estimate(sums, rate, conf, window_rate=wrate)
        b = bytes_estimate(sums, rate, conf, window_rate=wrate)
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
    # the window's byte-weighted mean R: variance floor of keys seen in few rate epochs
    wrate = mean_rate((e.rate, e.bytes) for e in epochs)
    groups, everything, counters = group(raw, ksyms, opts, after or before)
    secs = max(duration, 1e-9)
    after_idx = _index(after)
    before_idx = _index(before) if before is not None else ({}, {})
    rows: list[ContextTag] = []
    for key, g in groups.items():
        c = calls_estimate(g.sums, rate, conf, window_rate=wrate)
        b = bytes_estimate(g.sums, rate, conf, window_rate=wrate)
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
                callers=_callers(g, rate, opts, wrate),
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
    ce = calls_estimate(everything, rate, conf, window_rate=wrate)
    be = bytes_estimate(everything, rate, conf, window_rate=wrate)
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
