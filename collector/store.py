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

This module is the store itself: paths, atomic parts, commits, reading back, crash cleanup.
What it writes is defined beside it, each with one job: the schemas (collector/store_schemas.py,
store_fleet_schemas.py), the rows (store_rows.py for ``hosts``, store_tables.py and
store_fleet.py for results), and ingest's streamed batches (store_batch.py).
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from allocscope.collector.atomic import (
    OutputError,
    pid_alive,
    temp_name,
    write_atomic,
    writer_gone,
)
from allocscope.collector.atomic import clean_stale_temps as atomic_clean_stale_temps
from allocscope.collector.host import HostMetadata
from allocscope.collector.mounts import unmounted_home
from allocscope.collector.store_rows import AgentStats, dt_of, hosts_rows
from allocscope.collector.store_schemas import (
    DATASETS,
    INTERVAL_DATASETS,
    ROW_GROUP_ROWS,
    SCHEMAS,
    SORT_KEYS,
    parquet_options,
    part_metadata,
)
from allocscope.errors import AllocscopeError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_BATCH_PART = re.compile(r"-\d+-(?P<pid>\d+)@(?P<writer>[A-Za-z0-9_.-]+)\.parquet$")


class StoreUnavailable(AllocscopeError):
    """The store path cannot be written now (unmounted, read-only, full): the agent spools."""


def safe_name(text: str) -> str:
    """A host name as a file-name fragment (no '/', no spaces; '-' kept)."""
    return _SAFE.sub("_", text) or "unknown"


class Store:
    """One store root; every file is written by :meth:`write_part` or, streamed, by
    collector/store_batch.py :class:`BatchWriter` (same options, same atomic temp-fsync-rename)."""

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
        table = table.replace_schema_metadata(part_metadata(dataset))

        def write(f: BinaryIO) -> None:
            if held is not None:
                held.append(os.dup(f.fileno()))
            pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS, **parquet_options(schema))

        try:
            write_atomic(path, write, make_parents=True)
        except OSError as e:
            release_locks(held or [])
            raise store_unavailable(path, e) from e
        except BaseException:
            release_locks(held or [])
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
        slab_objects: int | None = None,
    ) -> tuple[str, str]:
        """Store one snapshot: allocinfo rows first, then the interval's ``extra`` parts
        (``context``/``lifespan`` rows of the agent), then its ``hosts`` row (the commit).

        ``agent`` may be a callable so the agent's own cost includes the allocinfo write;
        ``slab_objects`` is /proc/slabinfo's object bytes of a live read (the hosts row's
        counted-once total is then exact).
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
            hrow = hosts_rows(
                [(host, taken_at, allocinfo_version, source, rows, agent)],
                slab_objects=[slab_objects],
            )
            h = self.write_part("hosts", hrow, self.part_path("hosts", day, host.hostname, ts_ns))
        finally:
            release_locks(held)
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


def store_unavailable(path: str, e: OSError) -> StoreUnavailable:
    """``PATH: reason``, the path named once (the safe writer's errors already name it)."""
    if isinstance(e, OutputError):
        return StoreUnavailable(str(e))
    return StoreUnavailable(f"{path}: {e.strerror or e}")


def release_locks(held: list[int]) -> None:
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
