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
* **lifespan is one capture per interval** (collector/lifespan.py ``capture_raw``): a fresh
  probe (and address salt) every interval, compiled each time, so objects allocated before an
  interval are not followed into it: a leak older than one interval is seen only in the
  interval it was allocated in. Continuous tracking needs the probe's live-object map carried
  across reads; not done yet (docs/design/fleet.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

import pyarrow as pa

from allocscope.collector import context, context_payload, lifespan
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot
from allocscope.collector.byte_sampling import WeightSums
from allocscope.collector.capture import Capture
from allocscope.collector.host import HostMetadata
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.result import Result
from allocscope.collector.store_fleet import context_table, lifespan_table

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


class LifespanStream:
    """One lifespan capture per interval: the agent's wait between snapshots is its window."""

    dataset = "lifespan"

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.opts = lifespan.Options()
        self.last: Result | None = None

    def __enter__(self) -> LifespanStream:
        self.ksyms = Kallsyms.load()
        self.read_tag = lifespan._read_tag_possible()  # noqa: SLF001 - the verb's own rule
        self.opts.settings(read_tag=self.read_tag).check()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, seconds: float, stop: threading.Event) -> bool:
        """Capture until ``seconds`` from now (the compile comes out of them; less if
        ``stop`` is set); True when a signal ended it."""
        deadline = time.monotonic() + seconds

        def done() -> bool:
            return stop.is_set() or time.monotonic() >= deadline

        cap = Capture("lifespan", duration=max(seconds, 1e-3), verb="collect --lifespan")
        with cap:
            raw = lifespan.capture_raw(
                cap, [self.opts.settings(read_tag=self.read_tag)], done=done
            )[0]
        payload = lifespan.build_payload(raw, self.ksyms, view="lifespan")
        self.last = cap.result(
            {"agent": True, "sample_rate": self.opts.sample_rate}, payload.to_dict()
        )
        w = cap.last_window
        return bool(w is not None and w.interrupted)

    def collect(
        self, host: HostMetadata, taken_at: float, allocinfo: AllocinfoSnapshot | None
    ) -> pa.Table | None:
        res, self.last = self.last, None
        if res is None:
            return None
        res.host = host  # the agent's labels, as on its snapshot
        return lifespan_table(res, "<agent lifespan interval>", taken_at=taken_at, source="agent")
