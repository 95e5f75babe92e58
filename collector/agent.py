"""The collection agent: allocinfo snapshots with host metadata into the store, every interval.

Fleet constraints drive the design:

* **Jittered start, fixed-rate ticks.** A thousand agents started by the same deploy must not
  read allocinfo and write to the shared store in the same second; after a random start delay
  the agent ticks at ``start + k * interval`` (no drift, missed ticks skipped, not bunched).
* **The store may be away** (NFS hiccup, full disk). Snapshots then go to a local spool, which
  is bounded: when full, the newest spooled snapshot is dropped to make room, so the oldest
  (the boot baseline that post-boot growth is measured from) is dropped last; every drop is
  counted (``<spool>/dropped``). The spool is flushed, oldest first, once the store is back.
  Store file names are deterministic per (host, snapshot time), so a flush interrupted after
  its write but before the spool file's removal just rewrites the same file. Two agents of one
  host (a cron ``--once`` next to the systemd agent) share the default spool, so adding to it
  and flushing it take a lock on the spool directory: one at a time.
* **Cheap and measured.** Each snapshot's own CPU time and the RSS are stored in its ``hosts``
  row (``agent_cpu_s``, ``agent_rss_bytes``) and summarized by ``--self-stats``.
* **Crash-safe.** Every file is written atomically (collector/atomic.py); on start the agent
  removes temp files a killed predecessor on this host left behind.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot, read_allocinfo
from allocscope.collector.allocinfo_live import read_live
from allocscope.collector.atomic import write_atomic
from allocscope.collector.containers import slab_objects_bytes
from allocscope.collector.host import HostMetadata, collect_host_metadata
from allocscope.collector.snapshot import snapshot_table
from allocscope.collector.snapshot_check import read_snapshot_file
from allocscope.collector.stopflag import StopFlag
from allocscope.collector.store import Store, StoreUnavailable, safe_name
from allocscope.collector.store_rows import AgentStats
from allocscope.collector.store_schemas import INTERVAL_DATASETS
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.collector.units import human_bytes
from allocscope.errors import AllocscopeError, InputError


@dataclass(slots=True)
class AgentConfig:
    store: str
    interval: float = 300.0
    labels: dict[str, str] = field(default_factory=dict)
    file: str | None = None  # None: /proc/allocinfo
    spool: str = "/var/spool/allocscope"
    spool_max: int = 1000
    jitter: float = 0.0
    once: bool = False
    count: int | None = None  # stop after this many snapshots (tests, measurements)
    lenient: bool = False
    context: bool = False  # collect --context: a continuous context capture beside snapshots
    lifespan: bool = False  # collect --lifespan: a continuous lifespan probe beside snapshots
    budget: float | None = None  # --context's CPU budget (None: the verb's default)


@dataclass(slots=True)
class SelfStats:
    """The agent's own cost, per snapshot."""

    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    rss_bytes: int = 0
    peak_rss_bytes: int = 0

    def summary(self, interval: float) -> dict[str, float]:
        n = len(self.cpu_s)
        mean = sum(self.cpu_s) / n if n else 0.0
        return {
            "snapshots": float(n),
            "cpu_s_per_snapshot_mean": mean,
            "cpu_s_per_snapshot_max": max(self.cpu_s) if n else 0.0,
            "wall_s_per_snapshot_mean": sum(self.wall_s) / n if n else 0.0,
            "rss_bytes": float(self.rss_bytes),
            "peak_rss_bytes": float(self.peak_rss_bytes),
            "cpu_percent_at_interval": 100.0 * mean / interval if interval > 0 else 0.0,
            "cpu_percent_at_1min": 100.0 * mean / 60.0,
        }


class Spool:
    """Snapshots waiting for the store: snapshot files in a local directory."""

    def __init__(self, directory: str, max_files: int) -> None:
        self.dir = directory
        self.max = max(1, max_files)

    def pending(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        # snap-<ns>.parquet: name order is time order. An interval's context/lifespan rows
        # sit beside it as snap-<ns>.<dataset>.parquet, written before it (it commits them).
        return sorted(os.path.join(self.dir, n) for n in names if _SPOOLED.fullmatch(n))

    def dropped(self) -> int:
        try:
            with open(os.path.join(self.dir, "dropped")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _count_drop(self) -> None:
        path = os.path.join(self.dir, "dropped")
        n = self.dropped() + 1

        write_atomic(path, lambda f: f.write(f"{n}\n".encode()))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One agent at a time adds, prunes or flushes (see the module docstring): two flushing
        at once would each store a snapshot and then fail to remove the other's file."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # a filesystem without locks: one agent per spool, as before
            yield
        finally:
            os.close(fd)

    def add(
        self, table: pa.Table, taken_at: float, extra: Sequence[tuple[str, pa.Table]] = ()
    ) -> str | None:
        """Spool one snapshot table (and its interval's rows); returns the path of a snapshot
        dropped to make room."""
        with self._locked():
            return self._add(table, taken_at, extra)

    def _add(
        self, table: pa.Table, taken_at: float, extra: Sequence[tuple[str, pa.Table]]
    ) -> str | None:
        dropped = None
        pending = self.pending()
        while len(pending) >= self.max:
            victim = pending.pop()  # the newest: the oldest are dropped last
            _unlink_spooled(victim)
            self._count_drop()
            dropped = victim
        path = os.path.join(self.dir, f"snap-{int(round(taken_at * 1e9)):020d}.parquet")
        for dataset, t in extra:
            _write_parquet(_extra_path(path, dataset), t)
        _write_parquet(path, table)
        return dropped

    def flush(self, store: Store, log: Callable[[str], None]) -> int:
        """Move spooled snapshots into the store, oldest first; stops at the first store error."""
        with self._locked():
            return self._flush(store, log)

    def _flush(self, store: Store, log: Callable[[str], None]) -> int:
        done = 0
        for path in self.pending():
            try:
                snap = read_snapshot_file(path)
            except InputError as e:
                log(f"spool: dropping unreadable {path}: {e}")
                _unlink_spooled(path)
                self._count_drop()
                continue
            extra = [
                (d, pq.read_table(_extra_path(path, d)))
                for d in INTERVAL_DATASETS
                if os.path.exists(_extra_path(path, d))
            ]
            store.commit_snapshot(
                snap.table,
                snap.host,
                snap.taken_at,
                allocinfo_version=snap.version,
                source=snap.source,
                extra=extra,
                slab_objects=snap.slab_objects,
            )
            _unlink_spooled(path)
            done += 1
        return done


def _write_parquet(path: str, table: pa.Table) -> None:
    write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))


_SPOOLED = re.compile(r"snap-\d+\.parquet")


def _extra_path(snap_path: str, dataset: str) -> str:
    return snap_path[: -len(".parquet")] + f".{dataset}.parquet"


def _unlink_spooled(path: str) -> None:
    """A spooled snapshot goes first (it commits), then its interval's rows."""
    for p in [path, *(_extra_path(path, d) for d in INTERVAL_DATASETS)]:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        out: TextIO | None = None,
        subsystems: SubsystemMap | None = None,
    ) -> None:
        self.cfg = config
        self.store = Store(config.store)
        self.spool = Spool(config.spool, config.spool_max)
        self.out = out or sys.stdout
        self.sub = subsystems or default_map()
        self.stats = SelfStats()
        self.proc = psutil.Process()
        self.stop = StopFlag()  # set by SIGTERM/SIGINT: see collector/stopflag.py
        self.stopped_by = 0  # the signal that stopped the loop (0: it ran its course)
        self.snapshots = 0
        self.streams: list[Any] = []  # ContextStream / LifespanStream (collector/agent_capture.py)
        self._said_no_allocinfo = False

    def log(self, msg: str) -> None:
        self.out.write(msg + "\n")
        self.out.flush()

    def _cpu(self) -> float:
        # CLOCK_PROCESS_CPUTIME_ID: ns resolution (psutil's cpu_times ticks at 10 ms).
        return time.process_time()

    def _read_snapshot(self) -> AllocinfoSnapshot:
        """allocinfo now; with --context/--lifespan on a kernel without it, an empty snapshot
        (its hosts row still commits the interval's rows: sites 0, source 'none')."""
        if self.streams and self.cfg.file is None and not os.path.exists(PROC_ALLOCINFO):
            if not self._said_no_allocinfo:
                self.log(
                    f"{PROC_ALLOCINFO} not present (no CONFIG_MEM_ALLOC_PROFILING): storing "
                    "the interval captures with empty snapshots"
                )
                self._said_no_allocinfo = True
            return AllocinfoSnapshot(None, [], "none", taken_at=time.time())
        if self.cfg.file is None:
            # this host's allocinfo: bracketed by the 7.3+ CONTENT_ID and read again when a
            # module load changed the tag set meanwhile (a read that never settles is kept,
            # marked); the plain text on older kernels (collector/allocinfo_live.py).
            # /proc/slabinfo's objects make the counted-once total exact.
            snap = read_live(None, lenient=self.cfg.lenient)
            if snap.consistent is False:
                self.log(f"warning: {snap.warnings[-1]}")
            snap.slab_objects_bytes = slab_objects_bytes()
            return snap
        return read_allocinfo(self.cfg.file, lenient=self.cfg.lenient)

    def take(self) -> None:
        """One snapshot: read, build rows, flush the spool if any, store (or spool) it."""
        wall0 = time.perf_counter()
        cpu0 = self._cpu()
        snap = self._read_snapshot()
        host: HostMetadata = collect_host_metadata(self.cfg.labels)
        snap.host = host
        table = snapshot_table(snap, host, self.sub)
        allocinfo = snap if snap.records else None
        extra: list[tuple[str, pa.Table]] = []
        for stream in self.streams:
            t = stream.collect(host, snap.taken_at, allocinfo)
            if t is not None and t.num_rows:
                extra.append((stream.dataset, t))
        rss = int(self.proc.memory_info().rss)

        def stats() -> AgentStats:
            return AgentStats(self._cpu() - cpu0, rss)

        stored = False
        try:
            if self.spool.pending():
                self.store.check_writable()
                n = self.spool.flush(self.store, self.log)
                if n:
                    self.log(f"flushed {n} spooled snapshot(s) into {self.store.root}")
            self.store.check_writable()
            self.store.commit_snapshot(
                table,
                host,
                snap.taken_at,
                allocinfo_version=snap.version,
                source=snap.source,
                agent=stats,
                extra=extra,
                slab_objects=snap.slab_objects_bytes,
            )
            stored = True
        except StoreUnavailable as e:
            dropped = self.spool.add(table, snap.taken_at, extra)
            self.log(
                f"spooled {host.hostname} taken_at={snap.taken_at!r} ({e}); "
                f"{len(self.spool.pending())} in spool, {self.spool.dropped()} dropped so far"
            )
            if dropped:
                self.log(f"spool full ({self.spool.max}): dropped {dropped}")
        cpu = self._cpu() - cpu0
        wall = time.perf_counter() - wall0
        rss = int(self.proc.memory_info().rss)
        self.stats.cpu_s.append(cpu)
        self.stats.wall_s.append(wall)
        self.stats.rss_bytes = rss
        self.stats.peak_rss_bytes = max(self.stats.peak_rss_bytes, rss)
        self.snapshots += 1
        if stored:
            more = "".join(f" {d}={t.num_rows}" for d, t in extra)
            self.log(
                f"stored {host.hostname} taken_at={snap.taken_at!r} rows={table.num_rows}{more} "
                f"cpu={cpu:.4f}s rss={human_bytes(rss)}"
            )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopped_by = self.stopped_by or signum
        self.stop.set()

    def run(self) -> int:
        """The loop (or one snapshot with ``once``); SIGTERM/SIGINT stop it between snapshots.

        Returns 0 when it ran its course, else 128 + the signal (143 after SIGTERM, 130 after
        SIGINT), as every verb exits after an interruption: what was taken is stored either way
        (the service file lists 143 as a successful exit, so systemd's stop stays clean)."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                old[s] = signal.signal(s, self._on_signal)
        try:
            if os.path.isdir(self.store.root):
                temps = self.store.clean_stale_temps()
                orphans = self.store.clean_orphans(socket.gethostname())
                if temps or orphans:
                    self.log(
                        f"removed {temps} temp file(s) and {orphans} uncommitted snapshot "
                        "part(s) left by a killed writer"
                    )
            if not (self.cfg.jitter > 0 and self.stop.wait(random.uniform(0, self.cfg.jitter))):
                with ExitStack() as streams:
                    self._open_streams(streams)
                    self._loop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.stop.close()
        return 128 + self.stopped_by if self.stopped_by else 0

    def _open_streams(self, stack: ExitStack) -> None:
        from allocscope.collector import agent_capture, context

        if self.cfg.context:
            budget = self.cfg.budget if self.cfg.budget is not None else context.DEFAULT_BUDGET
            self.streams.append(stack.enter_context(agent_capture.ContextStream(budget, self.log)))
        if self.cfg.lifespan:
            self.streams.append(stack.enter_context(agent_capture.LifespanStream(self.log)))

    def _wait(self, seconds: float) -> bool:
        """The time between snapshots (the streams' probes stay attached through it).
        True when the agent was asked to stop."""
        return seconds > 0 and self.stop.wait(seconds)

    def _loop(self) -> None:
        start = time.monotonic()
        tick = 0
        # With interval captures the first snapshot ends the first interval, and a stop
        # request still stores the interval cut short (its rows are a partial result).
        captures = bool(self.streams)
        if captures:
            tick = 1
            self._wait(start + self.cfg.interval - time.monotonic())
        while True:
            stopped = self.stop.is_set()
            if stopped and not captures:
                break
            try:
                self.take()
            except AllocscopeError:
                if self.cfg.once or self.snapshots == 0:
                    raise  # a bad allocinfo or config: say so now, not every interval
                self.log(f"snapshot failed: {sys.exc_info()[1]}")
            if stopped or self.cfg.once or (self.cfg.count and self.snapshots >= self.cfg.count):
                break
            tick += 1
            now = time.monotonic() - start
            if self.cfg.interval > 0:
                tick = max(tick, int(now // self.cfg.interval) + 1)  # skip missed ticks
            wait = start + tick * self.cfg.interval - time.monotonic()
            if self._wait(wait) and not captures:
                break


def spool_default() -> str:
    """Where the spool lives when --spool is not given: system spool as root, else ~/.cache."""
    if os.geteuid() == 0:
        return "/var/spool/allocscope"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "allocscope", "spool", safe_name(os.uname().nodename))
