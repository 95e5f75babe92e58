"""The fleet store: Hive-partitioned Parquet files that DuckDB (or Spark) query in place.

Layout (``STORE_SCHEMA_VERSION`` 1, documented in docs/design/store.md)::

    <store>/allocinfo/dt=YYYY-MM-DD/part-<host>-<timestamp ns>[-<pid>].parquet
    <store>/hosts/dt=YYYY-MM-DD/part-...      one row per snapshot: metadata, labels, totals
    <store>/callers/dt=YYYY-MM-DD/part-...    one row per caller of a who-calls result
    <store>/overhead/dt=YYYY-MM-DD/part-...   one row per function of an overhead result
    <store>/context/dt=YYYY-MM-DD/part-...    per tag and caller of a context interval/result
    <store>/lifespan/dt=YYYY-MM-DD/part-...   per site/tag and caller of a lifespan interval/result

Why files and not a database: files are the one thing every engine (DuckDB here, Spark or
Trino on a cluster) reads without an import, many agents can append to a shared path without a
server, and an atomic rename is a transaction. Every file is written to a hidden temp name,
fsynced and renamed, so a crash leaves whole files only; the name carries host, timestamp and
(for batches) pid, so concurrent writers never collide.

The ``hosts`` row is the commit record of a snapshot: it is written *after* the snapshot's
allocinfo rows, and queries find snapshots through it. A crash between the two writes leaves
allocinfo rows no query sees (and that ``ingest``/the agent rewrite under the same name).

Such an uncommitted part is removed (:meth:`Store.clean_orphans`) only when its writer is
provably gone: the writer holds an exclusive ``flock`` on the part from before its rename until
its commit record is published, and the part is removed only if that lock can be taken.
A pid is no proof on its own: a cron ``collect --once`` next to the systemd agent is the same
host, and cloned machines share a hostname; both used to see a running writer's in-flight part
as an orphan and delete it, leaving a commit record with no rows.
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from allocscope.collector.atomic import (
    OutputError,
    atomic_file,
    pid_alive,
    temp_name,
    write_atomic,
    writer_gone,
)
from allocscope.collector.atomic import clean_stale_temps as atomic_clean_stale_temps
from allocscope.collector.host import HostMetadata
from allocscope.collector.mounts import unmounted_home
from allocscope.collector.snapshot import SNAPSHOT_SCHEMA
from allocscope.collector.store_fleet_schemas import CONTEXT_SCHEMA, LIFESPAN_SCHEMA
from allocscope.errors import AllocscopeError

STORE_SCHEMA_VERSION = 1
DATASETS = ("allocinfo", "hosts", "callers", "overhead", "context", "lifespan")
# Datasets an agent interval writes beside its snapshot, before the commit record.
INTERVAL_DATASETS = ("context", "lifespan")
ROW_GROUP_ROWS = 128 * 1024  # small enough that a one-host query skips most of a batch file

TS = pa.timestamp("us", tz="UTC")
LABELS = pa.map_(pa.string(), pa.string())

ALLOCINFO_SCHEMA = SNAPSHOT_SCHEMA

HOSTS_SCHEMA = pa.schema(
    [
        ("hostname", pa.string()),
        ("boot_id", pa.string()),
        ("kernel_release", pa.string()),
        ("taken_at", TS),
        ("boot_time", TS),
        ("uptime_s", pa.float64()),
        ("cpus", pa.int32()),
        ("cpu_model", pa.string()),
        ("memory_bytes", pa.int64()),
        ("mem_profiling", pa.string()),
        ("mem_profiling_writable", pa.bool_()),
        ("mem_profiling_compressed", pa.bool_()),
        ("labels", LABELS),
        ("allocinfo_version", pa.string()),
        ("source", pa.string()),
        ("sites", pa.int64()),
        ("total_bytes", pa.int64()),
        ("total_calls", pa.int64()),
        ("agent_cpu_s", pa.float64()),  # the agent's own CPU for this snapshot (null if ingested)
        ("agent_rss_bytes", pa.int64()),
        ("stored_at", TS),
    ]
)

_RESULT_COMMON: list[tuple[str, pa.DataType]] = [
    ("hostname", pa.string()),
    ("boot_id", pa.string()),
    ("kernel_release", pa.string()),
    ("taken_at", TS),  # the result's start
    ("duration_s", pa.float64()),
    ("mem_profiling", pa.string()),
    ("labels", LABELS),
]

CALLERS_SCHEMA = pa.schema(
    _RESULT_COMMON
    + [
        ("site", pa.string()),  # what the user asked for (function or file:line)
        ("site_function", pa.string()),  # clone-suffix-free function, the join key to allocinfo
        ("site_key", pa.string()),  # file:line when the result names one
        ("backend", pa.string()),
        ("total_calls", pa.int64()),
        ("lost", pa.int64()),
        ("caller", pa.string()),  # null for a result with no callers (kept so it is not lost)
        ("calls", pa.int64()),
        ("share", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("bytes", pa.int64()),
        ("payload_json", pa.string()),  # the whole payload (folded stacks, allocinfo join)
    ]
)

OVERHEAD_SCHEMA = pa.schema(
    _RESULT_COMMON
    + [
        ("function", pa.string()),  # null when the payload has no functions table
        ("kind", pa.string()),
        ("present", pa.bool_()),
        ("inclusive_samples", pa.int64()),
        ("self_samples", pa.int64()),
        ("inclusive_share", pa.float64()),
        ("self_share", pa.float64()),
        ("calls", pa.int64()),
        ("calls_per_second", pa.float64()),
        ("ns_per_call", pa.float64()),
        ("row_json", pa.string()),  # the function row as the overhead verb wrote it
        ("settings_json", pa.string()),
        ("payload_json", pa.string()),  # the whole payload: nothing an unknown field held is lost
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "allocinfo": ALLOCINFO_SCHEMA,
    "hosts": HOSTS_SCHEMA,
    "callers": CALLERS_SCHEMA,
    "overhead": OVERHEAD_SCHEMA,
    "context": CONTEXT_SCHEMA,
    "lifespan": LIFESPAN_SCHEMA,
}


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every part is written: zstd, and dictionary encoding for the string columns only.

    Numbers such as ``bytes`` have nearly one value per row: trying a dictionary first and
    falling back to plain costs writing time and made the files larger (7.8 instead of
    9.5 MB per million allocinfo rows).
    """
    strings = [f.name for f in schema if f.type == pa.string()]
    return {"compression": "zstd", "use_dictionary": strings}


SORT_KEYS: dict[str, list[str]] = {
    "allocinfo": ["hostname", "taken_at", "site_key"],
    "hosts": ["hostname", "taken_at"],
    "callers": ["hostname", "taken_at", "site", "caller"],
    "overhead": ["hostname", "taken_at", "function"],
    "context": ["hostname", "taken_at", "tag", "row_kind", "caller"],
    "lifespan": ["hostname", "taken_at", "site", "caller", "row_kind", "slot"],
}

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_BATCH_PART = re.compile(r"-\d+-(?P<pid>\d+)@(?P<writer>[A-Za-z0-9_.-]+)\.parquet$")


class StoreUnavailable(AllocscopeError):
    """The store path cannot be written now (unmounted, read-only, full): the agent spools."""


def safe_name(text: str) -> str:
    """A host name as a file-name fragment (no '/', no spaces; '-' kept)."""
    return _SAFE.sub("_", text) or "unknown"


def to_us(t: float) -> int:
    """Unix seconds -> µs exactly as collector/snapshot.py stamps rows (truncation), so a
    snapshot's ``hosts`` row and its ``allocinfo`` rows always join on ``taken_at``."""
    return int(t * 1_000_000)


def dt_of(t: float) -> str:
    """The ``dt=`` partition (UTC day) of a unix time."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class AgentStats:
    """The agent's own cost for one snapshot, stored next to it so the fleet can watch it."""

    cpu_s: float
    rss_bytes: int


class Store:
    """One store root; every file is written by :meth:`write_part` or, streamed, by
    :class:`BatchWriter` (same options, same atomic temp-fsync-rename)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    # -- paths ---------------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> str:
        if dataset not in SCHEMAS:
            raise ValueError(f"unknown dataset {dataset!r}")
        return os.path.join(self.root, dataset)

    def part_path(
        self, dataset: str, day: str, host: str, ts_ns: int, *, batch: bool = False
    ) -> str:
        """Deterministic for one host's snapshot (re-writing it is idempotent). Batches add
        ``-<pid>@<writer host>``: two ingests started in the same nanosecond still differ, and
        :meth:`clean_orphans` can tell a dead writer's part from a running one's."""
        name = f"part-{safe_name(host)}-{ts_ns}"
        if batch:
            name += f"-{os.getpid()}@{safe_name(socket.gethostname())}"
        return os.path.join(self.dataset_dir(dataset), f"dt={day}", name + ".parquet")

    def files(self, dataset: str) -> list[str]:
        """Published part files of a dataset (temp files are hidden and never listed)."""
        out: list[str] = []
        base = self.dataset_dir(dataset)
        if not os.path.isdir(base):
            return out
        for part in sorted(os.listdir(base)):
            pdir = os.path.join(base, part)
            if not part.startswith("dt=") or not os.path.isdir(pdir):
                continue
            out.extend(
                os.path.join(pdir, f)
                for f in sorted(os.listdir(pdir))
                if f.endswith(".parquet") and not f.startswith((".", "_"))
            )
        return out

    # -- writing -------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise :class:`StoreUnavailable` unless a file can be created in the store now, on
        the filesystem meant to hold it (an fstab mount point found unmounted is refused:
        writing would land on the directory underneath, see collector/mounts.py)."""
        home = unmounted_home(self.root)
        if home is not None:
            raise StoreUnavailable(
                f"{self.root}: the store belongs on {home} (listed in /etc/fstab), which is not "
                "mounted: not writing to the directory underneath"
            )
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise StoreUnavailable(f"{self.root}: not a directory (a store is a directory)")
        try:
            os.makedirs(self.root, exist_ok=True)
            # Named like a temp file so clean_stale_temps removes it if we are killed here.
            probe = temp_name(os.path.join(self.root, "writable"))
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise StoreUnavailable(f"{self.root}: store not writable ({e.strerror or e})") from e

    def write_part(
        self, dataset: str, table: pa.Table, path: str, *, presorted: bool = False
    ) -> str:
        """Sort, cast to the dataset schema, and publish ``table`` atomically at ``path``."""
        return self._write_part(dataset, table, path, presorted=presorted, held=None)

    def _write_part(
        self, dataset: str, table: pa.Table, path: str, *, presorted: bool, held: list[int] | None
    ) -> str:
        """:meth:`write_part`; with ``held``, a descriptor of the part is appended to it, which
        keeps the writer's lock (collector/atomic.py ``hold_lock``) past the rename: close it
        once the commit record is published."""
        schema = SCHEMAS[dataset]
        table = table.select(schema.names)
        if not table.schema.equals(schema):
            table = table.cast(schema)
        if not presorted:
            table = table.sort_by([(k, "ascending") for k in SORT_KEYS[dataset]])
        table = table.replace_schema_metadata(_part_meta(dataset))

        def write(f: BinaryIO) -> None:
            if held is not None:
                held.append(os.dup(f.fileno()))
            pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS, **parquet_options(schema))

        try:
            write_atomic(path, write, make_parents=True)
        except OSError as e:
            _release(held or [])
            raise _unavailable(path, e) from e
        except BaseException:
            _release(held or [])
            raise
        return path

    def commit_snapshot(
        self,
        rows: pa.Table,
        host: HostMetadata,
        taken_at: float,
        *,
        allocinfo_version: str | None = None,
        source: str = "",
        agent: AgentStats | Callable[[], AgentStats] | None = None,
        extra: Iterable[tuple[str, pa.Table]] = (),
    ) -> tuple[str, str]:
        """Store one snapshot: allocinfo rows first, then the interval's ``extra`` parts
        (``context``/``lifespan`` rows of the agent), then its ``hosts`` row (the commit).

        ``agent`` may be a callable so the agent's own cost includes the allocinfo write.
        """
        ts_ns = int(round(taken_at * 1e9))
        day = dt_of(taken_at)
        held: list[int] = []
        a = self._write_part(
            "allocinfo",
            rows,
            self.part_path("allocinfo", day, host.hostname, ts_ns),
            presorted=False,
            held=held,
        )
        try:  # the part stays locked (not an orphan to anyone) until its commit is published
            for dataset, table in extra:
                if dataset not in INTERVAL_DATASETS:
                    raise ValueError(f"not an interval dataset: {dataset!r}")
                self._write_part(
                    dataset,
                    table,
                    self.part_path(dataset, day, host.hostname, ts_ns),
                    presorted=False,
                    held=held,
                )
            if callable(agent):
                agent = agent()
            hrow = hosts_rows([(host, taken_at, allocinfo_version, source, rows, agent)])
            h = self.write_part("hosts", hrow, self.part_path("hosts", day, host.hostname, ts_ns))
        finally:
            _release(held)
        return a, h

    def commit_result(self, dataset: str, table: pa.Table, hostname: str, taken_at: float) -> str:
        """One ingested result file as one part (the part is its own commit). In the interval
        datasets it is named like a batch, so it is never taken for an agent interval part
        waiting for its ``hosts`` record (:meth:`clean_orphans`)."""
        ts_ns = int(round(taken_at * 1e9))
        batch = dataset in INTERVAL_DATASETS
        return self.write_part(
            dataset, table, self.part_path(dataset, dt_of(taken_at), hostname, ts_ns, batch=batch)
        )

    # -- reading -------------------------------------------------------------------------
    def read(self, dataset: str, columns: list[str] | None = None, where: Any = None) -> pa.Table:
        """The dataset (or the rows matching ``where``, a ``pyarrow.dataset`` expression pushed
        down to row-group statistics) as one Arrow table; empty, with the schema, when the
        dataset has no file yet. Code reading the store through SQL uses
        collector/store_read.py's relation instead."""
        # collector/store_read.py builds on this module: imported here, not at the top.
        from allocscope.collector.store_read import reading

        files = self.files(dataset)
        schema = SCHEMAS[dataset]
        if not files:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        with reading(self):  # a damaged part is named, with how to move it aside
            d = ds.dataset(files, schema=schema, format="parquet")
            return d.to_table(columns=columns, filter=where)

    def known_snapshots(self) -> set[tuple[str, int]]:
        """(hostname, taken_at µs) of every committed snapshot."""
        t = self.read("hosts", ["hostname", "taken_at"])
        us = pc.cast(t["taken_at"], pa.int64()).to_pylist()
        return set(zip(t["hostname"].to_pylist(), us, strict=True))

    def known_results(self, dataset: str) -> set[tuple[str, int]]:
        t = self.read(dataset, ["hostname", "taken_at"])
        us = pc.cast(t["taken_at"], pa.int64()).to_pylist()
        return set(zip(t["hostname"].to_pylist(), us, strict=True))

    def clean_orphans(self, hostname: str | None = None) -> int:
        """Remove allocinfo parts whose ``hosts`` commit record was never written: a writer
        was killed between the two renames. Left in place, the snapshots they hold would be
        imported again (nothing commits them) and counted twice.

        A part and its commit record share a file name, so the check is a lookup. Candidates:
        the agent parts of ``hostname`` and ingest batch parts written by a process of *this*
        host that is no longer alive; another host's parts on a shared path are left to that
        host. A candidate is removed only if its writer's lock can be taken (the writer is
        gone, see the module docstring): another agent of the same host, or a cloned machine
        with the same hostname, may be between the part's rename and its commit right now.
        """
        me = safe_name(socket.gethostname())
        agent_prefix = f"part-{safe_name(hostname)}-" if hostname else None
        removed = 0
        candidates = [(path, False) for path in self.files("allocinfo")]
        # an agent interval's context/lifespan parts share the snapshot's name and commit
        candidates += [(path, True) for d in INTERVAL_DATASETS for path in self.files(d)]
        for path, interval in candidates:
            name = os.path.basename(path)
            batch = None if interval else _BATCH_PART.search(name)
            if batch:
                if batch["writer"] != me or pid_alive(int(batch["pid"])):
                    continue
            elif not agent_prefix or not name.startswith(agent_prefix):
                continue
            elif not name[len(agent_prefix) : -len(".parquet")].isdigit():
                continue  # another host's agent part whose name starts like this one's
            day = os.path.basename(os.path.dirname(path))
            commit = os.path.join(self.dataset_dir("hosts"), day, name)
            if not os.path.exists(commit) and _remove_abandoned(path, commit):
                removed += 1
        return removed

    def clean_stale_temps(self) -> int:
        """Remove temp files a killed writer of *this* host left behind (pid no longer alive).

        The names and the rule are the safe writer's (collector/atomic.py): other hosts' temps
        on a shared path are left alone, since only their writer knows whether it still runs.
        """
        dirs = [self.root] if os.path.isdir(self.root) else []  # the writability probe's
        for dataset in DATASETS:
            base = self.dataset_dir(dataset)
            if os.path.isdir(base):
                dirs.extend(d for d, _dirs, _names in os.walk(base))
        return sum(atomic_clean_stale_temps(d) for d in dirs)


class _PartStream:
    """One part file written row group by row group into its hidden temp name.

    Rows arrive in pieces (ingest decodes a few hundred thousand rows at a time); they are
    buffered up to whole ``ROW_GROUP_ROWS`` row groups so the published file has exactly the
    layout a one-shot :meth:`Store.write_part` would give it. Nothing is visible until
    :meth:`publish` (close, fsync, rename); :meth:`abort` removes the temp file.
    """

    def __init__(self, dataset: str, path: str) -> None:
        self.path = path
        self.schema = SCHEMAS[dataset]
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self.held: list[int] = []  # keeps the writer's lock past publication (Store._write_part)
        try:
            tmp = self._stack.enter_context(atomic_file(path, make_parents=True))
            self.held.append(os.dup(tmp.fileno()))
            self._writer = pq.ParquetWriter(
                tmp, self.schema.with_metadata(_part_meta(dataset)), **parquet_options(self.schema)
            )
        except OSError as e:
            self._stack.__exit__(_Aborted, _Aborted(), None)
            _release(self.held)
            raise _unavailable(path, e) from e

    def write(self, table: pa.Table) -> None:
        """Append rows (already in the dataset's schema and sort order)."""
        self._buf.append(table)
        self._buffered += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush(whole_groups_only=True)

    def _flush(self, *, whole_groups_only: bool) -> None:
        assert self._writer is not None
        t = self._buf[0] if len(self._buf) == 1 else pa.concat_tables(self._buf)
        n = (t.num_rows // ROW_GROUP_ROWS) * ROW_GROUP_ROWS if whole_groups_only else t.num_rows
        try:
            if n:
                self._writer.write_table(t.slice(0, n), row_group_size=ROW_GROUP_ROWS)
        except OSError as e:
            raise _unavailable(self.path, e) from e
        rest = t.slice(n)
        self._buf = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows

    def publish(self) -> str:
        assert self._writer is not None
        try:
            if self._buffered:
                self._flush(whole_groups_only=False)
            self._writer.close()
            self._writer = None
            self._stack.close()  # fsync, rename, fsync the directory
        except OSError as e:
            self.abort()
            raise _unavailable(self.path, e) from e
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, pa.ArrowException):
                pass
            self._writer = None
        # Leaving atomic_file with an exception skips the rename and removes the temp file.
        self._stack.__exit__(_Aborted, _Aborted(), None)
        _release(self.held)


class _Aborted(Exception):
    pass


class BatchWriter:
    """Many snapshots into one allocinfo part and one hosts part per day (ingest).

    One file per batch instead of one per snapshot is what makes ingest run at millions of
    rows per second, and streaming the rows in (:meth:`add`, as they are decoded and checked)
    lets writing overlap reading. Rows must arrive in (hostname, taken_at, site_key) order:
    each day's part is then sorted without a sort. :meth:`publish` makes each day's allocinfo
    part visible and then its ``hosts`` part (the commit records), day by day; until then, or
    after :meth:`abort`, nothing is visible and a crash leaves only hidden temp files.
    """

    def __init__(self, store: Store, tag: str) -> None:
        self.store = store
        self.tag = tag
        self.stamp_ns = time.time_ns()
        self._parts: dict[str, _PartStream] = {}
        self._hosts: dict[str, list[pa.Table]] = {}

    def add(self, day: str, rows: pa.Table | None, hosts: pa.Table | None) -> None:
        """Append one day's allocinfo rows and/or their ``hosts`` rows."""
        if rows is not None and rows.num_rows:
            part = self._parts.get(day)
            if part is None:
                path = self.store.part_path("allocinfo", day, self.tag, self.stamp_ns, batch=True)
                part = self._parts[day] = _PartStream("allocinfo", path)
            part.write(rows)
        if hosts is not None and hosts.num_rows:
            self._hosts.setdefault(day, []).append(hosts)

    def publish(self) -> list[str]:
        written: list[str] = []
        try:
            for day in sorted(set(self._parts) | set(self._hosts)):
                part = self._parts.pop(day, None)
                try:
                    if part is not None:
                        written.append(part.publish())
                    hosts = self._hosts.pop(day, None)
                    if hosts:
                        path = self.store.part_path(
                            "hosts", day, self.tag, self.stamp_ns, batch=True
                        )
                        written.append(
                            self.store.write_part("hosts", pa.concat_tables(hosts), path)
                        )
                finally:  # the part is committed (or abandoned): its writer's lock goes
                    if part is not None:
                        _release(part.held)
        except BaseException:
            self.abort()
            raise
        return written

    def abort(self) -> None:
        """Drop every part not yet published (their temp files are removed)."""
        for part in self._parts.values():
            part.abort()
        self._parts.clear()
        self._hosts.clear()


def _unavailable(path: str, e: OSError) -> StoreUnavailable:
    """``PATH: reason``, the path named once (the safe writer's errors already name it)."""
    if isinstance(e, OutputError):
        return StoreUnavailable(str(e))
    return StoreUnavailable(f"{path}: {e.strerror or e}")


def _release(held: list[int]) -> None:
    """Close the descriptors that kept a writer's lock on its parts."""
    while held:
        os.close(held.pop())


def _remove_abandoned(path: str, commit: str) -> bool:
    """Remove the uncommitted part ``path`` if its writer is provably gone.

    Its lock is taken and kept while we look. The commit record is looked up again under it
    (the writer may have committed and let go since the caller looked), and the part is moved
    aside before removal: if a writer re-published the same (deterministic) name meanwhile,
    what moved is not the file we hold, and it is put back.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not writer_gone(fd) or os.path.exists(commit):
            return False
        aside = temp_name(path)
        try:
            os.rename(path, aside)
        except OSError:
            return False
        if not os.path.samestat(os.lstat(aside), os.fstat(fd)):
            os.rename(aside, path)  # a live writer's new file: put it back
            return False
        os.unlink(aside)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def day_of_us(us: int) -> str:
    """The ``dt=`` partition of a µs stamp (the UTC day its second falls in)."""
    return dt_of(float(us // 1_000_000))


def _part_meta(dataset: str) -> dict[bytes, bytes]:
    return {
        b"allocscope.store_schema": str(STORE_SCHEMA_VERSION).encode(),
        b"allocscope.dataset": dataset.encode(),
    }


def hosts_rows(
    items: Iterable[
        tuple[HostMetadata, float, str | None, str, pa.Table | None, AgentStats | None]
    ],
    totals: list[tuple[int, int, int]] | None = None,
) -> pa.Table:
    """``hosts`` rows: one per (host metadata, taken_at, allocinfo version, source, rows, stats).

    ``totals`` (sites, bytes, calls) may be given instead of the rows, for batch ingest.
    """
    cols: dict[str, list[Any]] = {name: [] for name in HOSTS_SCHEMA.names}
    stored = to_us(time.time())
    for i, (host, taken_at, version, source, rows, agent) in enumerate(items):
        if totals is not None:
            sites, tbytes, tcalls = totals[i]
        else:
            assert rows is not None
            sites = rows.num_rows
            tbytes = int(pc.sum(rows["bytes"]).as_py() or 0)
            tcalls = int(pc.sum(rows["calls"]).as_py() or 0)
        cols["hostname"].append(host.hostname)
        cols["boot_id"].append(host.boot_id)
        cols["kernel_release"].append(host.kernel_release)
        if rows is not None and rows.num_rows:
            # the rows' own stamp: the join key must be bit-identical whatever made the rows
            cols["taken_at"].append(pc.cast(rows["taken_at"][0], pa.int64()).as_py())
        else:
            cols["taken_at"].append(to_us(taken_at))
        cols["boot_time"].append(to_us(host.boot_time) if host.boot_time else None)
        cols["uptime_s"].append(max(0.0, taken_at - host.boot_time) if host.boot_time else None)
        cols["cpus"].append(host.cpus)
        cols["cpu_model"].append(host.cpu_model)
        cols["memory_bytes"].append(host.memory_bytes)
        cols["mem_profiling"].append(host.mem_profiling)
        cols["mem_profiling_writable"].append(host.mem_profiling_writable)
        cols["mem_profiling_compressed"].append(host.mem_profiling_compressed)
        cols["labels"].append(sorted(host.labels.items()))
        cols["allocinfo_version"].append(version)
        cols["source"].append(source)
        cols["sites"].append(sites)
        cols["total_bytes"].append(tbytes)
        cols["total_calls"].append(tcalls)
        cols["agent_cpu_s"].append(agent.cpu_s if agent else None)
        cols["agent_rss_bytes"].append(agent.rss_bytes if agent else None)
        cols["stored_at"].append(stored)
    arrays = []
    for field in HOSTS_SCHEMA:
        if field.type == TS:
            arrays.append(pa.array(cols[field.name], pa.int64()).cast(TS))
        else:
            arrays.append(pa.array(cols[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=HOSTS_SCHEMA)


def result_common(host: HostMetadata, start: float, duration: float, n: int) -> dict[str, Any]:
    """The result columns every row of a callers/overhead result repeats."""
    return {
        "hostname": [host.hostname] * n,
        "boot_id": [host.boot_id] * n,
        "kernel_release": [host.kernel_release] * n,
        "taken_at": pa.array([to_us(start)] * n, pa.int64()).cast(TS),
        "duration_s": [float(duration)] * n,
        "mem_profiling": [host.mem_profiling] * n,
        "labels": pa.array([sorted(host.labels.items())] * n, LABELS),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
