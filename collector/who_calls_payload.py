"""Building the ``who-calls`` payload from what the probe read: symbolize, attribute, share, join.

Pure given its inputs (the raw map contents, the site targets, kallsyms and the allocinfo
snapshots), so every figure is unit-tested without BPF. It returns the typed
:class:`~allocscope.collector.payloads.WhoCallsPayload`; the probe side stays in
:mod:`allocscope.collector.who_calls`.

Each sample is weighted by the 1-in-N of the epoch it was drawn in (see shares.py): with auto
sampling N changes every second or so, and an unweighted count would over-count the quiet
seconds sampled at 1-in-1 against the busy ones at 1-in-1000. With a fixed ``--sample N`` all
weights are equal and shares are plain proportions; with ``--sample 1`` (a census) calls and
bytes are the exact counts, not estimates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from allocscope.collector import attribution, shares
from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.exact_tags import PROFILING_OFF_NOTE, profiling_off_note
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.payloads import (
    AllocCounts,
    AllocinfoJoin,
    CallerRow,
    OtherRow,
    SampleEpoch,
    SiteBlock,
    WhoCallsPayload,
)
from allocscope.collector.site import Site, canonical_function
from allocscope.collector.who_calls import Epoch, Options, RawCapture, SiteTarget
from allocscope.probes.who_calls import TRACEPOINT_FAMILY, SiteCounts

# (site index, tag address, caller, tgid, comm): the finest grouping of samples
GroupKey = tuple[int, int, str, int, str]


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
) -> AllocinfoJoin | None:
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
        return AllocinfoJoin(
            source=snap.source, match="none", tags=(), after=None, before=None, delta=None
        )
    if after is None:
        sites_a, bytes_a, calls_a = [], 0, 0
    counts_b = None
    delta = None
    if before is not None:
        _, bytes_b, calls_b = _tag_records(before, site, function)
        counts_b = AllocCounts(bytes=bytes_b, calls=calls_b)
        if after is not None:
            delta = AllocCounts(bytes=bytes_a - bytes_b, calls=calls_a - calls_b)
    return AllocinfoJoin(
        source=snap.source,
        match=match or ("allocinfo-line" if site is not None else "function-name"),
        tags=tuple(s.tag for s in (sites_a or _tag_records(snap, site, function)[0])),
        after=AllocCounts(bytes=bytes_a, calls=calls_a) if after is not None else None,
        before=counts_b,
        delta=delta,
    )


@dataclass(slots=True)
class _Tally:
    """Every sample symbolized, attributed and summed by group, site and tag."""

    groups: dict[GroupKey, shares.Weighted] = field(default_factory=dict)
    group_bytes: dict[GroupKey, float] = field(default_factory=lambda: defaultdict(float))
    group_raw_bytes: dict[GroupKey, int] = field(default_factory=lambda: defaultdict(int))
    group_addr: dict[GroupKey, int] = field(default_factory=dict)
    site_w: dict[int, shares.Weighted] = field(default_factory=lambda: defaultdict(shares.Weighted))
    site_wbytes: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    tag_w: dict[tuple[int, int], shares.Weighted] = field(
        default_factory=lambda: defaultdict(shares.Weighted)
    )
    folded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unresolved: int = 0
    no_caller: int = 0


def _tally(
    raw: RawCapture,
    ksyms: Kallsyms,
    rules: attribution.SkipRules,
    opts: Options,
    rates: Sequence[int],
) -> _Tally:
    t = _Tally()
    for s in raw.samples:
        weight = float(rates[s.epoch]) if 0 <= s.epoch < len(rates) and rates[s.epoch] else 1.0
        names = []
        for addr in s.stack:
            r = ksyms.resolve(addr)
            if r is None:
                t.unresolved += s.count
                names.append(attribution.UNKNOWN)
            else:
                names.append(r.function)
        att = attribution.attribute(names, rules, opts.depth)
        if att.caller == attribution.NO_CALLER:
            t.no_caller += s.count
        if opts.addresses:
            cut = attribution.probe_frames(names)
            fold = ";".join(str(ksyms.resolve(a) or hex(a)) for a in reversed(s.stack[cut:]))
        else:
            fold = attribution.folded(names)
        t.folded[fold] += s.count
        key = (s.site, s.tag, att.caller, s.tgid, s.comm)
        t.groups.setdefault(key, shares.Weighted()).add(s.count, weight)
        t.group_bytes[key] += s.bytes * weight
        t.group_raw_bytes[key] += s.bytes
        if key not in t.group_addr and att.chain:
            t.group_addr[key] = s.stack[names.index(att.chain[0])]
        t.site_w[s.site].add(s.count, weight)
        t.site_wbytes[s.site] += s.bytes * weight
        t.tag_w[(s.site, s.tag)].add(s.count, weight)
    return t


def _caller_rows(
    t: SiteTarget,
    c: SiteCounts,
    tally: _Tally,
    raw: RawCapture,
    join: AllocinfoJoin | None,
    opts: Options,
) -> list[CallerRow]:
    """The site's callers, biggest share first."""
    census = opts.sample == 1  # every matching event had its stack walked
    total = tally.site_w[t.index]
    wb = tally.site_wbytes[t.index]
    rows: list[CallerRow] = []
    for key, g in tally.groups.items():
        si, tag, caller, tgid, comm = key
        if si != t.index:
            continue
        sh = shares.weighted_share(g, total, opts.confidence, c.calls or None)
        joined_bytes = joined_calls = None
        if join is not None and join.after is not None:
            tw = tally.tag_w[(si, tag)].w or total.w
            frac = g.w / tw if tw else 0.0
            joined_bytes = round(join.after.bytes * frac)
            joined_calls = round(join.after.calls * frac)
        rows.append(
            CallerRow(
                site=t.label,
                caller=caller,
                calls=g.k if census else round(sh.share * c.calls),
                samples=g.k,
                share=sh.share,
                ci_low=sh.ci_low,
                ci_high=sh.ci_high,
                bytes=tally.group_raw_bytes[key]
                if census
                else (round(c.bytes * tally.group_bytes[key] / wb) if wb else 0),
                tag=raw.tags[tag].tag if tag and tag in raw.tags else None,
                pid=tgid if opts.per_process else None,
                comm=comm if opts.per_process else None,
                caller_address=f"0x{tally.group_addr[key]:x}"
                if opts.addresses and key in tally.group_addr
                else None,
                joined_bytes=joined_bytes,
                joined_calls=joined_calls,
            )
        )
    rows.sort(key=lambda r: (-r.share, -(r.samples or 0), r.caller))
    return rows


def _other_row(
    t: SiteTarget,
    c: SiteCounts,
    rows: Sequence[CallerRow],
    tally: _Tally,
    join: AllocinfoJoin | None,
    opts: Options,
) -> OtherRow | None:
    """The site's callers under ``--min-share`` summed in one row (None when there are none)."""
    small = [r for r in rows if r.share < opts.min_share]
    if not small:
        return None
    total = tally.site_w[t.index]
    g_small = shares.Weighted()
    for key, g in tally.groups.items():
        if key[0] == t.index and g.w / (total.w or 1) < opts.min_share:
            g_small.k += g.k
            g_small.w += g.w
            g_small.w2 += g.w2
    sh = shares.weighted_share(g_small, total, opts.confidence, c.calls or None)
    joined = join is not None and join.after is not None
    return OtherRow(
        site=t.label,
        caller="other",
        callers=len(small),
        calls=sum(r.calls for r in small),
        samples=sum(r.samples or 0 for r in small),
        share=sh.share,
        ci_low=sh.ci_low,
        ci_high=sh.ci_high,
        bytes=sum(r.bytes or 0 for r in small),
        joined_bytes=sum(r.joined_bytes or 0 for r in small) if joined else None,
    )


def _site_block(
    t: SiteTarget,
    c: SiteCounts,
    tally: _Tally,
    raw: RawCapture,
    site_tags: Sequence[int],
    join_site: Site | None,
    join: AllocinfoJoin | None,
) -> SiteBlock:
    """The site's totals as the kernel counted them, and its allocinfo join."""
    return SiteBlock(
        site=t.label,
        function=t.function,
        tag=join_site.tag if join_site else None,
        tags_seen=tuple(raw.tags[x].tag for x in site_tags if x in raw.tags),
        ranges=len(t.ranges),
        symbols=tuple(t.symbols),
        total_calls=c.calls,
        total_bytes=c.bytes,
        sampled=c.sampled,
        stacks=tally.site_w[t.index].k,
        lost=c.stack_err + c.hash_full,
        stack_errors=c.stack_err,
        hash_full=c.hash_full,
        allocinfo=join,
    )


def _untagged(blocks: Sequence[SiteBlock]) -> bool:
    """Profiling off and no event carried a tag: the kernel left current->alloc_tag unset."""
    return profiling_off_note(tags_seen=any(b.tags_seen for b in blocks)) == PROFILING_OFF_NOTE


def _notes(
    targets: Sequence[SiteTarget], blocks: Sequence[SiteBlock], backend: str, read_tag: bool
) -> list[str]:
    """What the reader must know about how the sites were counted and joined."""
    notes = []
    for t, b in zip(targets, blocks, strict=True):
        if b.total_calls == 0 and backend in TRACEPOINT_FAMILY:
            notes.append(
                f"{t.label}: no kmem_cache_alloc/kmalloc had its call_site in "
                f"{t.function}; if it allocates pages, rerun with --pages (the "
                "context engine's page sampler); if it only calls another "
                "allocating function, name that function"
            )
    # compiled in, switched off: 6.14+ never sets current->alloc_tag then (exact_tags.py)
    off = profiling_off_note(tags_seen=any(b.tags_seen for b in blocks) if read_tag else None)
    if backend in TRACEPOINT_FAMILY and off is not None and read_tag:
        notes.append(off)
    elif not read_tag and backend in TRACEPOINT_FAMILY:
        notes.append(
            "exact allocinfo tag not read (needs matching kernel headers and "
            "CONFIG_MEM_ALLOC_PROFILING): sites matched by function name"
        )
    if backend in ("kprobe", "fentry"):
        notes.append(
            "function-entry backend: calls are entries of the site function, bytes are not known"
        )
    return notes


def _epochs(epochs: Sequence[Epoch], total_calls: int) -> tuple[SampleEpoch, ...]:
    """The rates used; the last epoch's events are what the kernel counted minus the others'."""
    out = [SampleEpoch(n=e.n, seconds=round(e.seconds, 3), events=e.events) for e in epochs]
    if out:
        last = total_calls - sum(e.events for e in epochs[:-1])
        out[-1] = SampleEpoch(n=out[-1].n, seconds=out[-1].seconds, events=last)
    return tuple(out)


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
    notes: Sequence[str],
) -> WhoCallsPayload:
    """Symbolize, attribute, share and join: the typed payload of a who-calls result."""
    rates = [e.n for e in epochs]
    tally = _tally(raw, ksyms, rules, opts, rates)
    blocks: list[SiteBlock] = []
    callers: list[CallerRow] = []
    others: list[OtherRow] = []
    for t in targets:
        c = raw.counts.get(t.index, SiteCounts())
        site_tags = sorted({tag for (si, tag) in tally.tag_w if si == t.index and tag})
        exact: Site | None = None
        if len(site_tags) == 1 and site_tags[0] in raw.tags:
            exact = raw.tags[site_tags[0]]
        join_site = exact or t.tag_site
        join = allocinfo_join(
            before, after, join_site, t.function, "exact-tag" if exact is not None else ""
        )
        rows = _caller_rows(t, c, tally, raw, join, opts)
        other = _other_row(t, c, rows, tally, join, opts)
        if other is not None:
            others.append(other)
        callers.extend(rows)
        blocks.append(_site_block(t, c, tally, raw, site_tags, join_site, join))
    total_calls = sum(b.total_calls for b in blocks)
    sampled = sum(w.k for w in tally.site_w.values())
    return WhoCallsPayload(
        site=",".join(t.label for t in targets),
        sites=tuple(blocks),
        backend=backend,
        tag_mode="exact-tag" if read_tag and not _untagged(blocks) else "function-name",
        total_calls=total_calls,
        total_bytes=sum(b.total_bytes or 0 for b in blocks),
        lost=sum(b.lost or 0 for b in blocks) + raw.missing_stacks,
        sampled=sampled,
        sample_rate=rates[-1] if rates else 1,
        sample_mode="auto" if opts.sample is None else "fixed",
        effective_sample_rate=round(total_calls / sampled, 2) if sampled else None,
        sample_epochs=_epochs(epochs, total_calls),
        duration=duration,
        confidence=opts.confidence,
        depth=opts.depth,
        min_share=opts.min_share,
        callers=tuple(callers),
        other=tuple(others),
        allocinfo=blocks[0].allocinfo if blocks else None,
        folded=dict(sorted(tally.folded.items(), key=lambda kv: -kv[1])),
        counters={
            "stack_errors": sum(b.stack_errors or 0 for b in blocks),
            "hash_full": sum(b.hash_full or 0 for b in blocks),
            "missing_stacks": raw.missing_stacks,
            "unresolved_frames": tally.unresolved,
            "no_caller": tally.no_caller,
        },
        skip_rules=tuple(rules.descriptions),
        notes=(*notes, *_notes(targets, blocks, backend, read_tag)),
    )
