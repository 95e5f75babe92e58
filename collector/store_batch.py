"""Streaming many snapshots into one part per day: the ingest path's :class:`BatchWriter`.

Separate from collector/store.py because only ``ingest`` streams: a part is written row group
by row group as rows are decoded, under the same atomic temp-fsync-rename and writer lock as
:meth:`Store.write_part <allocscope.collector.store.Store.write_part>`.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import pyarrow as pa
import pyarrow.parquet as pq

from allocscope.collector.atomic import atomic_file
from allocscope.collector.store import Store, release_locks, store_unavailable
from allocscope.collector.store_schemas import (
    ROW_GROUP_ROWS,
    SCHEMAS,
    parquet_options,
    part_metadata,
)


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
                tmp,
                self.schema.with_metadata(part_metadata(dataset)),
                **parquet_options(self.schema),
            )
        except OSError as e:
            self._stack.__exit__(_Aborted, _Aborted(), None)
            release_locks(self.held)
            raise store_unavailable(path, e) from e

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
            raise store_unavailable(self.path, e) from e
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
            raise store_unavailable(self.path, e) from e
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
        release_locks(self.held)


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
                        release_locks(part.held)
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
