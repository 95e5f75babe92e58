"""``who-calls --pages``: the callers of a page-allocator site, from the context engine.

A function that allocates pages directly (``shmem_alloc_folio``, ``do_anonymous_page``,
``pte_alloc_one``) is never a slab ``call_site``, and ``mm_page_alloc`` carries no call site
at all, so who-calls' own probe (``probes/who_calls.bpf.c``, filtered in kernel on
``call_site``) counts 0 events for it. The context engine (``probes/context.bpf.c``) finds a
page allocation's site as the first frame past the page allocator in its sampled stack
(:func:`allocscope.collector.context.page_site`); this module runs that engine with only the
page hook attached (``slabs=False``: no slab event pays the probe) and keeps the points whose
page site is one of the named functions. Calls, bytes and shares are byte-sampler estimates
(:mod:`allocscope.collector.byte_sampling`): Garwood intervals on Kish's effective points for
bytes, Kish-Wilson intervals for call shares. The payload is the ordinary
:class:`~allocscope.collector.payloads.WhoCallsPayload`, so reports, diff and the store read it
as any who-calls result.

The cost is the context engine's: every page allocation passes the exact counters (there is
no in-kernel site filter: the site is known only after the stack is symbolised), and the
sampled part keeps within ``--budget`` of one CPU.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allocscope.collector import attribution, context_payload
from allocscope.collector import context as ctx
from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.byte_sampling import WeightSums, bytes_estimate, calls_estimate, share
from allocscope.collector.kallsyms import EarlySymbols, Kallsyms
from allocscope.collector.payloads import (
    CallerRow,
    OtherRow,
    SampleEpoch,
    SiteBlock,
    WhoCallsPayload,
)
from allocscope.collector.result import Result
from allocscope.collector.site import Site, canonical_function
from allocscope.collector.who_calls import Options, SiteTarget, resolve_sites
from allocscope.errors import AllocscopeError
from allocscope.probes.context import SRC_PAGE

ENGINE = "context"


@dataclass(slots=True)
class _SiteTally:
    sums: WeightSums = field(default_factory=WeightSums)
    callers: dict[str, WeightSums] = field(default_factory=lambda: defaultdict(WeightSums))


def _tally(
    raw: ctx.RawCapture, targets: Sequence[SiteTarget], ksyms: Kallsyms, opts: Options
) -> tuple[dict[int, _SiteTally], dict[str, int], dict[str, int]]:
    """Page points whose site (first frame past the page allocator) is a named function."""
    index = {canonical_function(t.function): t.index for t in targets}
    tallies: dict[int, _SiteTally] = {t.index: _SiteTally() for t in targets}
    folded: dict[str, int] = defaultdict(int)
    counters: dict[str, int] = defaultdict(int)
    skip = tuple(opts.skip)
    for s in raw.samples:
        if s.source != SRC_PAGE:
            continue
        frames = [ksyms.function_at(a) for a in s.stack]
        if not frames:
            counters["points_without_stack"] += s.sums.hits
            continue
        fn, idx = context_payload.page_site(frames)
        if not fn or fn not in index:
            continue
        where = context_payload.Where(Site("", 0, fn), fn, "page-stack")
        caller = context_payload.caller_of(frames, where, idx, opts.depth, skip)
        if caller == attribution.NO_CALLER:
            counters["no_caller"] += s.sums.hits
        t = tallies[index[fn]]
        t.sums.add(s.sums)
        t.callers[caller].add(s.sums)
        folded[attribution.folded(frames)] += s.sums.hits
    return tallies, dict(folded), dict(counters)


def build_payload(
    raw: ctx.RawCapture,
    targets: Sequence[SiteTarget],
    ksyms: Kallsyms,
    opts: Options,
    *,
    epochs: Sequence[ctx.Epoch],
    duration: float,
    backend: str,
    before: AllocinfoSnapshot | None,
    after: AllocinfoSnapshot | None,
    notes: Sequence[str] = (),
) -> WhoCallsPayload:
    """The who-calls payload of a page site from the context engine's raw maps (pure)."""
    from allocscope.collector.who_calls_payload import allocinfo_join

    rate = epochs[-1].rate if epochs else 1
    conf = opts.confidence
    tallies, folded, counters = _tally(raw, targets, ksyms, opts)
    blocks: list[SiteBlock] = []
    callers: list[CallerRow] = []
    others: list[OtherRow] = []
    lost = raw.stack_err + raw.hash_full
    for t in targets:
        tl = tallies[t.index]
        total_c = calls_estimate(tl.sums, rate, conf, min_size=ctx_page_size())
        total_b = bytes_estimate(tl.sums, rate, conf)
        join = allocinfo_join(before, after, t.tag_site, t.function)
        rows: list[CallerRow] = []
        for name, sums in tl.callers.items():
            c = calls_estimate(sums, rate, conf, min_size=ctx_page_size())
            b = bytes_estimate(sums, rate, conf)
            sh = share(sums, tl.sums, "calls", conf)
            rows.append(
                CallerRow(
                    site=t.label,
                    caller=name,
                    calls=round(c.value),
                    samples=sums.hits,
                    share=sh.share,
                    ci_low=sh.ci_low,
                    ci_high=sh.ci_high,
                    bytes=round(b.value),
                    bytes_low=round(b.low),
                    bytes_high=round(b.high),
                )
            )
        rows.sort(key=lambda r: (-r.share, -(r.samples or 0), r.caller))
        small = [r for r in rows if r.share < opts.min_share]
        if small:
            part = WeightSums()
            for r in small:
                part.add(tl.callers[r.caller])
            sh = share(part, tl.sums, "calls", conf)
            others.append(
                OtherRow(
                    site=t.label,
                    caller="other",
                    callers=len(small),
                    calls=sum(r.calls for r in small),
                    samples=sum(r.samples or 0 for r in small),
                    share=sh.share,
                    ci_low=sh.ci_low,
                    ci_high=sh.ci_high,
                    bytes=sum(r.bytes or 0 for r in small),
                )
            )
        callers.extend(rows)
        blocks.append(
            SiteBlock(
                site=t.label,
                function=t.function,
                tag=t.tag_site.tag if t.tag_site else None,
                ranges=len(t.ranges),
                symbols=tuple(t.symbols),
                total_calls=round(total_c.value),
                total_bytes=round(total_b.value),
                bytes_low=round(total_b.low),
                bytes_high=round(total_b.high),
                sampled=tl.sums.hits,
                stacks=tl.sums.hits,
                lost=lost,
                stack_errors=raw.stack_err,
                hash_full=raw.hash_full,
                allocinfo=join,
            )
        )
    hits = sum(b.sampled or 0 for b in blocks)
    total_calls = sum(b.total_calls for b in blocks)
    page_events = raw.events[SRC_PAGE] if len(raw.events) > SRC_PAGE else 0
    all_notes = [
        *notes,
        f"engine: context (page sites): {', '.join(t.label for t in targets)} allocate pages, "
        "which no slab call_site names; each page allocation's site is the first frame past "
        "the page allocator in its sampled stack",
        f"sampling by bytes (mean gap R = {rate} bytes, {page_events} page allocations on "
        "every site counted exactly): events, bytes and calls are estimates with "
        f"{conf:.0%} intervals",
    ]
    if opts.per_process:
        all_notes.append("--per-process is not split for page sites (the engine keys by stack)")
    if not hits:
        all_notes.append(
            f"no sampled page allocation had {', '.join(t.function for t in targets)} as its "
            "first frame past the page allocator"
        )
    return WhoCallsPayload(
        site=",".join(t.label for t in targets),
        sites=tuple(blocks),
        backend=backend,
        tag_mode="function-name",
        total_calls=total_calls,
        total_bytes=sum(b.total_bytes or 0 for b in blocks),
        lost=lost + raw.missing_stacks,
        sampled=hits,
        sample_rate=rate,
        sample_mode="bytes",
        effective_sample_rate=round(total_calls / hits, 2) if hits else None,
        sample_epochs=tuple(
            SampleEpoch(n=e.rate, seconds=round(e.seconds, 3), events=e.events) for e in epochs
        ),
        duration=duration,
        confidence=conf,
        depth=opts.depth,
        min_share=opts.min_share,
        callers=tuple(callers),
        other=tuple(others),
        allocinfo=blocks[0].allocinfo if blocks else None,
        folded=dict(sorted(folded.items(), key=lambda kv: -kv[1])),
        counters={
            "stack_errors": raw.stack_err,
            "hash_full": raw.hash_full,
            "missing_stacks": raw.missing_stacks,
            "page_events": page_events,
            **counters,
        },
        skip_rules=tuple(attribution.build_skip_rules([], opts.skip).descriptions),
        notes=tuple(all_notes),
    )


def ctx_page_size() -> int:
    """Pages are at least one page: the no-point upper bound on calls uses it."""
    return os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def capture(opts: Options, log: Callable[[str], None] = lambda s: None) -> Result:
    """Run who-calls of page sites through the context engine; returns the Result."""
    from allocscope.collector.capture import Capture
    from allocscope.collector.who_calls import allocinfo_for_resolution

    if opts.depth < 1:
        raise AllocscopeError("who-calls: --depth must be >= 1")
    if opts.sample is not None and opts.sample < 1:
        raise AllocscopeError("who-calls: --sample must be >= 1 (or auto)")
    if opts.backend != "auto":
        raise AllocscopeError(
            "who-calls: --pages runs the context engine's page hook; --backend does not apply"
        )
    try:
        attribution.build_skip_rules([], opts.skip)
    except ValueError as e:
        raise AllocscopeError(f"who-calls: {e}") from None
    symbols = EarlySymbols.load()
    targets = resolve_sites(opts.sites, symbols, allocinfo_for_resolution(opts, log))
    # --sample N on a page site: a mean gap of N pages (1 = every page, a census)
    rate = None if opts.sample is None else opts.sample * ctx_page_size()
    copts = ctx.Options(
        duration=opts.duration,
        rate=rate,
        budget=opts.budget,
        pid=opts.pid,
        comm=opts.comm,
        workload=opts.workload,
        depth=opts.depth,
        confidence=opts.confidence,
        skip=list(opts.skip),
        during=opts.during,
    )
    log(f"who-calls: {', '.join(t.label for t in targets)}: page site(s), context engine")
    run = ctx.run_live(copts, log, verb="who-calls", slabs=False)
    cap = run.cap
    assert isinstance(cap, Capture)
    backend = getattr(run.opened, "backend", "raw_tracepoint")
    payload = build_payload(
        run.raw,
        targets,
        symbols.full(),
        opts,
        epochs=run.epochs,
        duration=run.seconds,
        backend=f"{ENGINE}/{backend}",
        before=run.before,
        after=run.after,
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
        "pages": True,
    }
    return cap.result(settings, payload.to_dict())
