"""Is this file a snapshot allocscope can use? The checks, for one file and for many at once.

ingest must never store a bad file, and ``top``, ``diff`` and ``report`` must not show one:
both read snapshot files through this module (collector/snapshot.py's reader calls
:func:`read_snapshot_file`), so a file is refused for the same reasons wherever it is read
(a bad ``allocscope.schema`` value, wrong column types, null keys, two hosts or two times in
one file, rows that contradict the footer), always as one line naming the file.

Two ways in, one verdict:

* :func:`read_snapshot_file`: one file, every check, the exact reason;
* :func:`read_chunk`: many files for ingest, where per-file overhead (not bytes) limits speed
  (a snapshot is ~5,000 rows). Files whose columns already have the exact schema are decoded
  together by DuckDB's multi-threaded Parquet reader (collector/store_read.py's database) and
  checked with a few vectorized compares per chunk; a file failing any check, and anything
  unusual, is read again alone by :func:`read_snapshot_file`, so a bad file can never pass.
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allocscope.collector.host import HostMetadata
from allocscope.collector.snapshot import (
    SNAPSHOT_SCHEMA,
    SNAPSHOT_SCHEMA_VERSION,
    recorded_counted_slab_objects,
)
from allocscope.collector.store_read import connect
from allocscope.collector.store_rows import to_us
from allocscope.errors import InputError

_KEY_COLUMNS = (
    "hostname",
    "taken_at",
    "file",
    "line",
    "function",
    "site_key",
    "loose_key",
    "bytes",
    "calls",
)


@dataclass(slots=True)
class SnapshotFile:
    """A validated snapshot file, ready to store."""

    path: str
    host: HostMetadata
    taken_at: float
    version: str | None
    source: str
    table: pa.Table
    slab_objects: int | None = None  # /proc/slabinfo's object bytes a live read recorded


def read_snapshot_file(path: str, *, keep_order: bool = False) -> SnapshotFile:
    """Read and fully validate one snapshot Parquet file (collector/snapshot.py schema).

    Rows come in site_key order (the store's), or in the file's with ``keep_order``."""
    (host, taken_at, ver, src, _n, _exact), slab = _read_header(path)
    try:
        table = pq.ParquetFile(path).read(use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    missing = set(SNAPSHOT_SCHEMA.names) - set(table.schema.names)
    if missing:
        raise InputError(path, None, f"snapshot lacks columns: {', '.join(sorted(missing))}")
    try:
        table = table.select(SNAPSHOT_SCHEMA.names)
        if not table.schema.equals(SNAPSHOT_SCHEMA):
            table = table.cast(SNAPSHOT_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise InputError(path, None, f"columns have the wrong types: {e}") from None
    rows = _check_rows(path, host, taken_at, table, sort=not keep_order)
    return SnapshotFile(path, host, taken_at, ver, src, rows, slab)


_HeaderFields = tuple[HostMetadata, float, str | None, str, int, bool]


def read_header(path: str) -> _HeaderFields:
    """Validate a snapshot file's footer only: (host, taken_at, version, source, rows, exact)
    where ``exact`` says its columns already have the snapshot schema's types."""
    return _read_header(path)[0]


def _read_header(path: str) -> tuple[_HeaderFields, int | None]:
    """:func:`read_header`, and the slab object bytes the snapshot recorded (or None)."""
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    schema = pf.schema_arrow
    meta = schema.metadata or {}
    if meta.get(b"allocscope.kind") != b"allocinfo-snapshot":
        raise InputError(path, None, "not an allocscope snapshot (no allocscope.kind metadata)")
    try:
        version = int(meta.get(b"allocscope.schema", b"0"))
        host = HostMetadata.from_dict(json.loads(meta[b"allocscope.host"]))
        taken_at = float(meta.get(b"allocscope.taken_at", b"nan"))
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(path, None, f"bad snapshot metadata: {e}") from None
    if version > SNAPSHOT_SCHEMA_VERSION or version < 1:
        raise InputError(
            path,
            None,
            f"snapshot schema {version} is not one this allocscope "
            f"reads (1..{SNAPSHOT_SCHEMA_VERSION})",
        )
    if not math.isfinite(taken_at) or taken_at <= 0:
        raise InputError(path, None, "bad or missing allocscope.taken_at metadata")
    exact = schema.names == SNAPSHOT_SCHEMA.names and all(
        f.type == g.type for f, g in zip(schema, SNAPSHOT_SCHEMA, strict=True)
    )
    src = meta.get(b"allocscope.source", b"").decode(errors="replace")
    ver = meta.get(b"allocscope.allocinfo_version", b"").decode(errors="replace") or None
    slab = recorded_counted_slab_objects(meta)
    return (host, taken_at, ver, src, pf.metadata.num_rows, exact), slab


def _check_rows(
    path: str, host: HostMetadata, taken_at: float, table: pa.Table, *, sort: bool = True
) -> pa.Table:
    """The row-level checks of :func:`read_snapshot_file`; returns rows in site_key order."""
    for col in _KEY_COLUMNS:
        if table[col].null_count:
            raise InputError(path, None, f"column {col!r} has {table[col].null_count} nulls")
    if table.num_rows:
        for col, want in (("hostname", host.hostname), ("taken_at", None)):
            mm = pc.min_max(table[col]).as_py()
            if mm["min"] != mm["max"]:
                raise InputError(
                    path,
                    None,
                    f"column {col!r} is not one value: a snapshot file holds one host at one time",
                )
            if want is not None and mm["min"] != want:
                raise InputError(path, None, f"rows say host {mm['min']!r}, metadata says {want!r}")
        ts = pc.cast(table["taken_at"], pa.int64())[0].as_py()
        if abs(ts - to_us(taken_at)) > 1:
            raise InputError(path, None, "rows' taken_at differs from the metadata's")
        keys = table["site_key"]
        if sort and table.num_rows > 1 and not pc.all(pc.less_equal(keys[:-1], keys[1:])).as_py():
            table = table.take(pc.sort_indices(keys))  # the store keeps rows in site order
    return table


@dataclass(slots=True)
class Header:
    """A snapshot file whose footer checked out (:func:`read_header`)."""

    path: str
    host: HostMetadata
    taken_at: float
    version: str | None
    source: str
    rows: int
    exact: bool  # columns already have the snapshot schema's types: eligible for bulk decoding
    slab_objects: int | None = None  # recorded /proc/slabinfo object bytes (live reads)


def header(path: str) -> Header:
    fields, slab = _read_header(path)
    return Header(path, *fields, slab_objects=slab)


@dataclass(slots=True)
class Checked:
    """A validated snapshot of a chunk."""

    snap: SnapshotFile
    stamp: int  # the rows' taken_at in µs: the duplicate key and the hosts row's join key
    bulk: pa.Table | None = None  # the chunk's bulk table its rows are a slice of, if any
    offset: int = -1  # where in ``bulk`` its rows start


_HAS_FILE_INDEX = True  # read_parquet has a file_index column (DuckDB >= 1.3); see open_reader


def _duckdb_has_file_index(version: str) -> bool:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (1, 3)


def open_reader() -> Any:
    """The process's DuckDB database (collector/store_read.py), which decodes snapshot files;
    notes whether its ``read_parquet`` has the ``file_index`` column."""
    import duckdb

    global _HAS_FILE_INDEX
    _HAS_FILE_INDEX = _duckdb_has_file_index(duckdb.__version__)
    return connect()


def read_chunk(con: Any, heads: list[Header]) -> list[Checked | InputError]:
    """Validate and decode the snapshot files of one chunk: one answer per header, in order.

    Per-file overhead dominates ingest (a snapshot is ~5,000 rows), so files whose columns
    already have the exact schema are decoded together by DuckDB's multi-threaded Parquet
    reader, and every check of :func:`read_snapshot_file` runs vectorized over the whole chunk
    (:func:`_bulk_suspects`), not per file. A file that fails any of them, and anything
    unusual (other column types, a corrupt data page failing the bulk read), is then read
    alone the careful way, which gives the exact reason, so a bad file can never pass.
    """
    out: list[Checked | InputError | None] = [None] * len(heads)
    bulk = [i for i, h in enumerate(heads) if h.exact]
    table = _bulk_rows(con, [heads[i] for i in bulk]) if bulk else None
    if table is not None:
        starts = _offsets([heads[i].rows for i in bulk])
        bad, unsorted, stamps = _bulk_suspects(table, [heads[i] for i in bulk], starts)
        for j, i in enumerate(bulk):
            if j in bad:
                continue
            h = heads[i]
            rows = table.slice(starts[j], h.rows)
            found = stamps[j]
            stamp = found if found is not None else to_us(h.taken_at)
            if j in unsorted:  # the store keeps rows in site order
                rows = rows.take(pc.sort_indices(rows["site_key"]))
                snap = SnapshotFile(
                    h.path, h.host, h.taken_at, h.version, h.source, rows, h.slab_objects
                )
                out[i] = Checked(snap, stamp)
            else:
                snap = SnapshotFile(
                    h.path, h.host, h.taken_at, h.version, h.source, rows, h.slab_objects
                )
                out[i] = Checked(snap, stamp, table, starts[j])
    for i, h in enumerate(heads):
        if out[i] is None:
            try:
                snap = read_snapshot_file(h.path)
            except InputError as e:
                out[i] = e
                continue
            t = snap.table.replace_schema_metadata(None)
            snap.table = t
            first = pc.cast(t["taken_at"][0], pa.int64()).as_py() if t.num_rows else None
            out[i] = Checked(snap, int(first) if first is not None else to_us(snap.taken_at))
    return [x for x in out if x is not None]


def _offsets(counts: list[int]) -> list[int]:
    out, n = [], 0
    for c in counts:
        out.append(n)
        n += c
    return out


def _bulk_rows(con: Any, heads: list[Header]) -> pa.Table | None:
    """The rows of ``heads`` decoded together, in file order, or None if that failed."""
    files = [h.path for h in heads]
    try:
        if _HAS_FILE_INDEX:
            sql = "SELECT *, file_index AS _fi FROM read_parquet($files)"
        else:  # DuckDB < 1.3: the file's name, mapped to its index below
            sql = "SELECT *, filename AS _fi FROM read_parquet($files, filename = true)"
        table = con.sql(sql, params={"files": files}).to_arrow_table()
    except Exception:  # a corrupt page anywhere fails the whole read: go file by file
        return None
    if table.num_rows != sum(h.rows for h in heads):
        return None
    # Every row of file j must carry file index j: first and last rows, and no step back.
    fi = table["_fi"]
    if not _HAS_FILE_INDEX:
        fi = pc.index_in(fi, value_set=pa.array(files))
    nonempty = [j for j, h in enumerate(heads) if h.rows]
    starts = _offsets([h.rows for h in heads])
    if nonempty and (
        pc.take(fi, [starts[j] for j in nonempty]).to_pylist() != nonempty
        or pc.take(fi, [starts[j] + heads[j].rows - 1 for j in nonempty]).to_pylist() != nonempty
        or not pc.all(pc.less_equal(fi[:-1], fi[1:])).as_py()
    ):
        return None
    table = table.select(SNAPSHOT_SCHEMA.names)
    if not table.schema.equals(SNAPSHOT_SCHEMA):
        try:
            table = table.cast(SNAPSHOT_SCHEMA)
        except (pa.ArrowException, ValueError):
            return None
    return table.replace_schema_metadata(None)


def _bulk_suspects(
    table: pa.Table, heads: list[Header], starts: list[int]
) -> tuple[set[int], set[int], list[int | None]]:
    """The row checks of :func:`_check_rows` for many files at once.

    Returns (files failing a check, files whose rows are not in site order, each file's row
    stamp). A column holds one value per file exactly when it changes value only where a
    file starts and each file's first row has that value, so one vectorized compare of
    neighbours covers every file.
    """
    bad: set[int] = set()
    unsorted: set[int] = set()
    nonempty = [j for j, h in enumerate(heads) if h.rows]
    firsts = [starts[j] for j in nonempty]
    first_set = set(firsts)

    def file_of(row: int) -> int:
        return nonempty[bisect.bisect_right(firsts, row) - 1]

    def breaks(col: Any, strict: bool) -> list[int]:
        """Rows (not first of a file) that differ from (strict) or sort before their
        predecessor."""
        if table.num_rows < 2:
            return []
        prev, cur = col[:-1], col[1:]
        step = pc.not_equal(prev, cur) if strict else pc.greater(prev, cur)
        return [r + 1 for r in pc.indices_nonzero(step).to_pylist() if r + 1 not in first_set]

    for name in _KEY_COLUMNS:
        col = table[name]
        if col.null_count:
            nulls = pc.indices_nonzero(pc.is_null(col)).to_pylist()
            bad.update(file_of(r) for r in nulls)
    ts = pc.cast(table["taken_at"], pa.int64())
    stamps: list[int | None] = [None] * len(heads)
    if not nonempty:
        return bad, unsorted, stamps
    for name in ("hostname", "taken_at"):
        col = ts if name == "taken_at" else table[name]
        bad.update(file_of(r) for r in breaks(col, strict=True))
    hosts = pc.take(table["hostname"], firsts).to_pylist()
    for j, host, stamp in zip(nonempty, hosts, pc.take(ts, firsts).to_pylist(), strict=True):
        h = heads[j]
        stamps[j] = stamp
        if host != h.host.hostname or stamp is None or abs(stamp - to_us(h.taken_at)) > 1:
            bad.add(j)
    unsorted.update(file_of(r) for r in breaks(table["site_key"], strict=False))
    return bad, unsorted, stamps
