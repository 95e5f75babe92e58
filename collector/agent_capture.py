"""The agent's captures beside its snapshots: ``collect --context`` and ``collect --lifespan``.

Each interval's rows go into the store beside that interval's snapshot, before its ``hosts``
commit record (collector/store.py ``commit_snapshot(extra=...)``), as rows of the ``context``
and ``lifespan`` datasets (collector/store_fleet.py).

* **context is continuous.** One probe is compiled and attached once and stays attached for
  the agent's life; its rate keeper (collector/context.py :class:`RateKeeper`) runs in a
  thread and keeps the sampled part inside the CPU budget as the allocation rate changes. The
  probe's maps are cumulative: at each interval the agent reads them (while attached) and
  subtracts the previous read, key by key. The weight sums are additive counters, so the
  differences are exactly the interval's sums and nothing falls between two intervals (a
  point counted while a read is in progress lands in the next interval, never in none or two).
  The maps are never drained: the samples map's keys are (tag, stack, hook, charged), a set
  that stops growing once the workload's stacks have been seen; if it fills, the drops are
  counted (``hash_full``) and said in the payload's notes.
* **lifespan is continuous too.** One probe (one address salt) attached for the agent's life,
  compiled once (~1.6 s CPU at start, then ~26.5 ms per interval: 0.009% of a CPU at 5
  minutes, RSS 290 MB; docs/benchmarks.md 2026-12-07; one compile per interval was 0.9%). Each
  interval reads it while attached (:func:`diff_lifespan`): the freed objects' histograms
  are cumulative and diffed like context's; the per-address sums are emptied as read; the
  tracked objects are read as they are, so an object allocated intervals ago and still live
  is outstanding (and old) in every interval until its free: a leak is followed across
  intervals, not lost at the next one.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

import pyarrow as pa

from allocscope.collector import context, context_payload, lifespan
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot
from allocscope.collector.byte_sampling import WeightSums
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.result import Result
from allocscope.collector.store_fleet import context_table, lifespan_table
from allocscope.probes.lifespan import LifeEntry, Weights

AGENT_CALLERS = 10  # callers kept per tag and interval before 'other' (fleet combination)
KEEPER_TICK_S = 0.1

SampleKey = tuple[int, bool, tuple[int, ...], int, int]


def _key(s: context.RawSample) -> SampleKey:
    return (s.site, s.is_tag, s.stack, s.source, s.charged)


def _minus(a: WeightSums, b: WeightSums | None) -> WeightSums:
    if b is None:
        return WeightSums(a.hits, a.bytes_w, a.bytes_w2, a.calls_w, a.calls_w2)
    return WeightSums(
        max(0, a.hits - b.hits),
        max(0, a.bytes_w - b.bytes_w),
        max(0, a.bytes_w2 - b.bytes_w2),
        max(0, a.calls_w - b.calls_w),
        max(0, a.calls_w2 - b.calls_w2),
    )


def _by_key(raw: context.RawCapture) -> dict[SampleKey, WeightSums]:
    out: dict[SampleKey, WeightSums] = {}
    for s in raw.samples:
        got = out.setdefault(_key(s), WeightSums())
        got.add(s.sums)
    return out


def diff_raw(now: context.RawCapture, prev: context.RawCapture | None) -> context.RawCapture:
    """The interval between two cumulative reads of one probe: per key, the sums' growth."""
    if prev is None:
        return now
    before = _by_key(prev)
    samples = []
    for k, sums in _by_key(now).items():
        d = _minus(sums, before.get(k))
        if d.hits or d.bytes_w or d.calls_w:
            samples.append(context.RawSample(k[0], k[1], k[2], k[3], k[4], d))
    return context.RawCapture(
        samples,
        now.tags,
        [max(0, a - b) for a, b in zip(now.events, prev.events, strict=True)],
        [max(0, a - b) for a, b in zip(now.bytes, prev.bytes, strict=True)],
        max(0, now.hits - prev.hits),
        max(0, now.stack_err - prev.stack_err),
        max(0, now.hash_full - prev.hash_full),
        max(0, now.missing_stacks - prev.missing_stacks),
    )


class ContextStream:
    """One context probe attached for the agent's life, read once per interval."""

    dataset = "context"

    def __init__(self, budget: float, log: Callable[[str], None]) -> None:
        self.opts = context.Options(budget=budget, callers=AGENT_CALLERS)
        context.check_options(self.opts)
        self.log = log
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the keeper thread and the interval read
        self.prev: context.RawCapture | None = None
        self.prev_allocinfo: AllocinfoSnapshot | None = None

    def __enter__(self) -> ContextStream:
        from allocscope.probes import context as pc
        from allocscope.probes.headers import resolve_headers

        try:
            self.ksyms = Kallsyms.load()
            has_allocinfo = os.path.exists(PROC_ALLOCINFO)
            settings = pc.ContextSettings(read_tag=has_allocinfo)
            self.opened = pc.open_probe(settings, context.START_RATE, self.log)
            probe = self._stack.enter_context(self.opened.probe)
            self.tag_mode, self.notes = context.tag_mode_notes(
                self.opened.read_tag,
                has_allocinfo,
                context.read_mem_profiling(),
                resolve_headers().matches,
            )
            if self.opened.charge_source == "none":
                self.notes.append("memcg charge unknown: this kernel's BTF lacks __GFP_ACCOUNT")
            self.map_bytes = pc.map_bytes(self.opened.settings, os.cpu_count() or 1)

            def counts() -> tuple[int, int, int]:
                t = pc.read_totals(probe)
                return sum(t.events), sum(t.bytes), t.hits

            # R changes twice a second under a changing load: not the agent's log's business
            self.keeper = context.RateKeeper(
                counts, lambda r: pc.set_rate(probe, r), self.opts, lambda _s: None
            )
            self.t0 = time.monotonic()
            self.prev_t, self.prev_wall = self.t0, time.time()
            thread = threading.Thread(target=self._keep, name="context-keeper", daemon=True)
            thread.start()
            self._stack.callback(thread.join, 5.0)
            self._stack.callback(self._stop.set)
        except BaseException:
            self._stack.close()
            raise
        self.log(
            f"context: sampling every allocation by bytes via {self.opened.backend}, "
            f"budget {self.opts.budget:.2%} of a CPU"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _keep(self) -> None:
        while not self._stop.wait(KEEPER_TICK_S):
            with self._lock:
                self.keeper.tick(time.monotonic() - self.t0)

    def collect(
        self, host: HostMetadata, taken_at: float, allocinfo: AllocinfoSnapshot | None
    ) -> pa.Table:
        """The rows of the interval since the last call (or since the probe was attached)."""
        with self._lock:
            now_t, now_wall = time.monotonic(), time.time()
            raw_now = context.read_raw(self.opened.probe, self.opened.read_tag)
            rate = self.keeper.epochs[-1].rate
        interval = diff_raw(raw_now, self.prev)
        seconds = max(1e-9, now_t - self.prev_t)
        epoch = context.Epoch(
            rate, seconds, sum(interval.events), sum(interval.bytes), interval.hits
        )
        payload = context_payload.build_payload(
            interval,
            self.ksyms,
            self.opts,
            epochs=[epoch],
            duration=seconds,
            backend=self.opened.backend,
            tag_mode=self.tag_mode,
            charge_source=self.opened.charge_source,
            before=self.prev_allocinfo,
            after=allocinfo,
            mem_profiling=context.read_mem_profiling(),
            map_bytes=self.map_bytes,
            notes=self.notes,
        )
        res = Result(
            kind="context",
            host=host,
            start=self.prev_wall,
            duration=seconds,
            settings={"agent": True, "budget": self.opts.budget, "callers": AGENT_CALLERS},
            payload=payload.to_dict(),
        )
        self.prev, self.prev_t, self.prev_wall = raw_now, now_t, now_wall
        self.prev_allocinfo = allocinfo
        return context_table(res, "<agent context interval>", taken_at=taken_at, source="agent")


def _less(a: Weights, b: Weights | None) -> Weights:
    if b is None:
        return a
    return Weights(
        *(
            max(0, x - y)
            for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)
        )
    )


def _entry_less(a: LifeEntry, b: LifeEntry | None) -> LifeEntry:
    if b is None:
        return a

    def less(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(0, i - j) for i, j in zip(x, y, strict=True))

    return LifeEntry(
        a.key,
        _less(a.freed, b.freed),
        max(0, a.freed_n - b.freed_n),
        max(0, a.missed_n - b.missed_n),
        max(0, a.missed_calls_w - b.missed_calls_w),
        max(0, a.missed_bytes_w - b.missed_bytes_w),
        max(0, a.life_w_sum - b.life_w_sum),
        less(a.hist_n, b.hist_n),
        less(a.hist_w, b.hist_w),
        less(a.hist_w2, b.hist_w2),
    )


def diff_lifespan(
    now: lifespan.RawLifespan, prev: lifespan.RawLifespan | None
) -> lifespan.RawLifespan:
    """The interval between two reads of one attached lifespan probe.

    ``lifespans`` and the counters are cumulative: per key, their growth (keys are (site, tag,
    stack, source), a set that stops growing once the stacks have been seen). ``addr_sums`` was
    emptied by the previous read, so it is already the interval's. ``tracked`` is what is live
    now, whenever it was allocated: objects allocated before the interval began are carried
    (live and aging, not this interval's allocations), which is how a leak older than one
    interval stays in view.
    """
    if prev is None:
        return now
    before = {e.key: e for e in prev.lifespans}
    entries = [
        d
        for d in (_entry_less(e, before.get(e.key)) for e in now.lifespans)
        if d.freed_n or d.missed_n
    ]
    counters = {k: max(0, v - prev.counters.get(k, 0)) for k, v in now.counters.items()}
    counters["free_filtered"] = max(0, counters["free_events"] - counters["free_kept"])
    return dataclasses.replace(
        now,
        lifespans=entries,
        counters=counters,
        start_ns=prev.end_ns,
        carried_before_ns=prev.end_ns,
        notes=list(now.notes),
    )


class LifespanStream:
    """One lifespan probe attached for the agent's life, read once per interval."""

    dataset = "lifespan"

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.opts = lifespan.Options()
        self._stack = ExitStack()
        self.prev: lifespan.RawLifespan | None = None
        self.prev_wall = 0.0

    def __enter__(self) -> LifespanStream:
        from allocscope.probes import lifespan as pl
        from allocscope.probes.loader import Probe

        try:
            self.ksyms = Kallsyms.load()
            read_tag = lifespan._read_tag_possible()  # noqa: SLF001 - the verb's own rule
            self.settings = self.opts.settings(read_tag=read_tag)
            self.settings.check()
            self.probe = self._stack.enter_context(Probe(pl.PROGRAM, self.settings.defines()))
            self.backend = pl.attach_all(self.probe)
            self.notes = lifespan.header_notes(self.probe)
            self.start_ns, self.start_wall = pl.now_ns(), time.time()
        except BaseException:
            self._stack.close()
            raise
        self.log(
            f"lifespan: following 1 in 2^{self.settings.addr_shift} addresses x byte points "
            f"every {self.settings.sample_rate} B via {self.backend}, until the agent stops"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def collect(
        self, host: HostMetadata, taken_at: float, allocinfo: AllocinfoSnapshot | None
    ) -> pa.Table:
        """The rows of the interval since the last call (or since the probe was attached)."""
        from allocscope.probes import lifespan as pl

        start_ns = self.prev.end_ns if self.prev else self.start_ns
        start_wall = self.prev_wall if self.prev else self.start_wall
        now_ns, now_wall = pl.now_ns(), time.time()
        raw = lifespan.read_raw(
            self.probe, self.settings, self.backend, start_ns, now_ns, take_addr_sums=True
        )
        raw.notes.extend(self.notes)
        interval = diff_lifespan(raw, self.prev)
        payload = lifespan.build_payload(interval, self.ksyms, view="lifespan")
        res = Result(
            kind="lifespan",
            host=host,
            start=start_wall,
            duration=max(0.0, (now_ns - start_ns) / 1e9),
            settings={
                "agent": True,
                "sample_rate": self.settings.sample_rate,
                "addr_shift": self.settings.addr_shift,
            },
            payload=payload.to_dict(),
        )
        self.prev, self.prev_wall = raw, now_wall
        return lifespan_table(res, "<agent lifespan interval>", taken_at=taken_at, source="agent")
