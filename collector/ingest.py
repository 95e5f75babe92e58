"""Importing files produced elsewhere into the store: snapshots, who-calls and overhead results.

Every file is validated completely *before* any of it is written, and a file's rows are written
in one atomic part together with its commit record, so a bad file is reported and skipped and a
good one is never half-imported. Snapshots already in the store (same host, same time) are
skipped as duplicates, which makes re-running an ingest over the same directory harmless.

Snapshots are batched (many files -> one part file per day) because per-file overhead, not
bytes, is what limits ingest speed. The pipeline, for ~2M rows/s on two cores:

1. footers of every file (host, time, row count, exact schema?), sorted by (host, time), so
   the rows reach each part already in the store's order and nothing is sorted again;
2. chunks of ~128K rows decoded together by DuckDB's Parquet reader (both cores) and checked
   with a few vectorized compares per chunk instead of a dozen calls per file; a file failing
   any check is read again alone, the careful way, which names the reason;
3. a writer thread streams each checked chunk into the batch's hidden temp part
   (store.BatchWriter) while the next chunk is decoded; the batch is published (fsync, rename,
   then the ``hosts`` commit records) once all its files are in.
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import bisect
import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allocscope.collector.host import HostMetadata
from allocscope.collector.payloads import FunctionRow, OverheadPayload, WhoCallsPayload
from allocscope.collector.result import Result, read_result
from allocscope.collector.site import SiteQuery, canonical_function
from allocscope.collector.snapshot import SNAPSHOT_SCHEMA, SNAPSHOT_SCHEMA_VERSION, is_parquet
from allocscope.collector.store import (
    CALLERS_SCHEMA,
    OVERHEAD_SCHEMA,
    BatchWriter,
    Store,
    day_of_us,
    dumps,
    hosts_rows,
    result_common,
    safe_name,
    to_us,
)
from allocscope.errors import InputError

BATCH_ROWS = 2_000_000  # rows per allocinfo part file (per day)
CHUNK_ROWS = 128 * 1024  # rows decoded and checked together while the previous chunk is written
BULK_FILES = 400  # at most this many snapshot files decoded together
MAX_IN_FLIGHT = 2  # decoded chunks waiting for the writer thread
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
class Snapshot:
    """A validated snapshot file, ready to store."""

    path: str
    host: HostMetadata
    taken_at: float
    version: str | None
    source: str
    table: pa.Table


@dataclass(slots=True)
class IngestReport:
    imported: list[tuple[str, str, int]] = field(default_factory=list)  # (path, kind, rows)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, "path[:line]: why")
    duplicates: list[str] = field(default_factory=list)
    rows: int = 0
    files_written: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": [{"path": p, "kind": k, "rows": r} for p, k, r in self.imported],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "duplicates": self.duplicates,
            "rows": self.rows,
            "files_written": self.files_written,
        }


# -- snapshots -------------------------------------------------------------------------------
def read_snapshot_file(path: str) -> Snapshot:
    """Read and fully validate one snapshot Parquet file (collector/snapshot.py schema)."""
    host, taken_at, ver, src, _n, _exact = _read_header(path)
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
    return Snapshot(path, host, taken_at, ver, src, _check_rows(path, host, taken_at, table))


def _read_header(path: str) -> tuple[HostMetadata, float, str | None, str, int, bool]:
    """Validate a snapshot file's footer only: (host, taken_at, version, source, rows, exact)
    where ``exact`` says its columns already have the snapshot schema's types."""
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
    return host, taken_at, ver, src, pf.metadata.num_rows, exact


def _check_rows(path: str, host: HostMetadata, taken_at: float, table: pa.Table) -> pa.Table:
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
        if table.num_rows > 1 and not pc.all(pc.less_equal(keys[:-1], keys[1:])).as_py():
            table = table.take(pc.sort_indices(keys))  # the store keeps rows in site order
    return table


@dataclass(slots=True)
class _Header:
    """A snapshot file whose footer checked out (:func:`_read_header`)."""

    path: str
    host: HostMetadata
    taken_at: float
    version: str | None
    source: str
    rows: int
    exact: bool  # columns already have the snapshot schema's types: eligible for bulk decoding


def _header(path: str) -> _Header:
    return _Header(path, *_read_header(path))


@dataclass(slots=True)
class _Got:
    """A validated snapshot of a chunk."""

    snap: Snapshot
    stamp: int  # the rows' taken_at in µs: the duplicate key and the hosts row's join key
    bulk: pa.Table | None = None  # the chunk's bulk table its rows are a slice of, if any
    offset: int = -1  # where in ``bulk`` its rows start


_HAS_FILE_INDEX = True  # read_parquet has a file_index column (DuckDB >= 1.3); see _connect


def _duckdb_has_file_index(version: str) -> bool:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (1, 3)


_DB: Any = None
_DB_PID = 0
_DB_LOCK = threading.Lock()


def _connect(duckdb: Any) -> Any:
    """A connection to this process's in-memory DuckDB database (no tables, only a reader).

    The database is created once and kept: a fresh one starts with no memory of its own and
    page-faults its way through every buffer it allocates, which cost ingest a quarter of its
    CPU time when each call opened its own. Each call gets its own connection (cursor), so
    concurrent ingests do not share one.
    """
    global _DB, _DB_PID, _HAS_FILE_INDEX
    with _DB_LOCK:
        if _DB is None or _DB_PID != os.getpid():  # a forked child cannot use its parent's
            _DB, _DB_PID = duckdb.connect(), os.getpid()
            _HAS_FILE_INDEX = _duckdb_has_file_index(duckdb.__version__)
        con = _DB.cursor()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _read_chunk(con: Any, heads: list[_Header]) -> list[_Got | InputError]:
    """Validate and decode the snapshot files of one chunk: one answer per header, in order.

    Per-file overhead dominates ingest (a snapshot is ~5,000 rows), so files whose columns
    already have the exact schema are decoded together by DuckDB's multi-threaded Parquet
    reader, and every check of :func:`read_snapshot_file` runs vectorized over the whole chunk
    (:func:`_bulk_suspects`), not per file. A file that fails any of them, and anything
    unusual (other column types, a corrupt data page failing the bulk read), is then read
    alone the careful way, which gives the exact reason, so a bad file can never pass.
    """
    out: list[_Got | InputError | None] = [None] * len(heads)
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
                snap = Snapshot(h.path, h.host, h.taken_at, h.version, h.source, rows)
                out[i] = _Got(snap, stamp)
            else:
                snap = Snapshot(h.path, h.host, h.taken_at, h.version, h.source, rows)
                out[i] = _Got(snap, stamp, table, starts[j])
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
            out[i] = _Got(snap, int(first) if first is not None else to_us(snap.taken_at))
    return [x for x in out if x is not None]


def _offsets(counts: list[int]) -> list[int]:
    out, n = [], 0
    for c in counts:
        out.append(n)
        n += c
    return out


def _bulk_rows(con: Any, heads: list[_Header]) -> pa.Table | None:
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
    table: pa.Table, heads: list[_Header], starts: list[int]
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


# -- results ---------------------------------------------------------------------------------
def _site_fields(site: Any) -> tuple[str, str | None, str | None]:
    """(as asked, function, file:line) from a who-calls payload's ``site``."""
    if isinstance(site, dict):
        func = site.get("function")
        key = site.get("key") or (
            f"{site['file']}:{site['line']}" if site.get("file") and site.get("line") else None
        )
        text = str(site.get("query") or key or func or "")
        return text, canonical_function(func) if func else None, key
    text = str(site)
    try:
        q = SiteQuery.parse(text)
    except ValueError:
        return text, None, None
    key = f"{q.file}:{q.line}" if q.file and q.line is not None else None
    return text, q.function, key


def callers_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``callers`` dataset for one who-calls result (its typed payload)."""
    p = res.typed(WhoCallsPayload, path)
    site, func, key = _site_fields(p.site)
    if func is None and p.allocinfo is not None:
        f = p.allocinfo.extra.get("function")  # some writers name the joined function here
        func = canonical_function(f) if isinstance(f, str) else None
    rows: list[dict[str, Any]] = [
        {
            "caller": c.caller,
            "calls": c.calls,
            "share": float(c.share),
            "ci_low": None if c.ci_low is None else float(c.ci_low),
            "ci_high": None if c.ci_high is None else float(c.ci_high),
            "bytes": c.bytes,
        }
        for c in p.callers
    ]
    if not rows:
        rows.append(dict.fromkeys(("caller", "calls", "share", "ci_low", "ci_high", "bytes")))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    cols.update(
        {
            "site": [site] * n,
            "site_function": [func] * n,
            "site_key": [key] * n,
            "backend": [p.backend] * n,
            "total_calls": [p.total_calls] * n,
            "lost": [p.lost] * n,
            "payload_json": [dumps(res.payload)] * n,  # as written: nothing unknown is lost
        }
    )
    for k in ("caller", "calls", "share", "ci_low", "ci_high", "bytes"):
        cols[k] = [r[k] for r in rows]
    return pa.table(cols).select(CALLERS_SCHEMA.names).cast(CALLERS_SCHEMA)


_OVERHEAD_FIELDS: tuple[str, ...] = (
    "inclusive_samples",
    "self_samples",
    "inclusive_share",
    "self_share",
    "calls",
    "calls_per_second",
    "ns_per_call",
)


def _function_values(f: FunctionRow) -> dict[str, Any]:
    return {
        "inclusive_samples": f.inclusive_samples,
        "self_samples": f.self_samples,
        "inclusive_share": f.inclusive_share,
        "self_share": f.self_share,
        "calls": f.calls,
        "calls_per_second": f.calls_per_second,
        "ns_per_call": f.ns_per_call,
    }


def overhead_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``overhead`` dataset: the payload's ``functions`` table flattened, with the
    raw row and payload kept as written so fields this version does not know are not lost."""
    p = res.typed(OverheadPayload, path)
    raw_rows = res.payload["functions"]  # the same rows, as written (validated above)
    rows: list[dict[str, Any]] = []
    for f, raw in zip(p.functions, raw_rows, strict=True):
        rows.append(
            {
                "function": f.function,
                "kind": f.kind,
                "present": f.present,
                "row_json": dumps(raw),
                **_function_values(f),
            }
        )
    if not rows:
        rows.append(dict.fromkeys(["function", "kind", "present", "row_json", *_OVERHEAD_FIELDS]))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    for k in ["function", "kind", "present", "row_json", *_OVERHEAD_FIELDS]:
        cols[k] = [r[k] for r in rows]
    cols["settings_json"] = [dumps(res.settings)] * n
    cols["payload_json"] = [dumps(res.payload)] * n
    return pa.table(cols).select(OVERHEAD_SCHEMA.names).cast(OVERHEAD_SCHEMA)


RESULT_DATASETS: dict[str, tuple[str, Callable[[Result, str], pa.Table]]] = {
    "who-calls": ("callers", callers_table),
    "overhead": ("overhead", overhead_table),
}


# -- the ingest ------------------------------------------------------------------------------
def expand(paths: Iterable[str]) -> list[str]:
    """Files named, and the files inside directories named (sorted, hidden ones skipped)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(dirpath, n) for n in sorted(names) if not n.startswith("."))
        else:
            out.append(p)
    return out


def ingest(
    store: Store,
    paths: Iterable[str],
    *,
    batch_rows: int = BATCH_ROWS,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Validate and import ``paths`` (files or directories) into ``store``.

    Snapshots are imported in (host, time) order, in batches of about ``batch_rows`` rows
    (one allocinfo part per day and batch), each decoded and checked ``chunk_rows`` at a time
    while a writer thread streams the previous chunk into the batch's part: reading and
    writing overlap, and a written part is sorted by host, time and site without a sort.
    """
    import duckdb

    store.check_writable()  # before anything: an unmounted store filesystem is refused
    report = IngestReport()
    # What a killed ingest of this host left: hidden temp files, and batch parts published
    # without their commit records (re-importing their snapshots would count them twice).
    store.clean_stale_temps()
    store.clean_orphans()
    seen = store.known_snapshots()
    seen_results = {d: store.known_results(d) for d in ("callers", "overhead")}

    def skip(path: str, e: InputError) -> None:
        report.skipped.append((path, str(e)))
        if progress:
            progress(f"skipped {e}")

    files = expand(paths)
    heads: list[_Header] = []
    other: list[str] = []
    for path in files:
        if not is_parquet(path):
            other.append(path)
            continue
        try:
            heads.append(_header(path))
        except InputError as e:
            skip(path, e)
    heads.sort(key=lambda h: (h.host.hostname, h.taken_at, h.path))

    writer = _Writer(report)
    con = _connect(duckdb) if heads else None
    try:
        for batch_heads in _split(heads, batch_rows, len(heads)):
            names = {h.host.hostname for h in batch_heads}
            batch = BatchWriter(store, safe_name(names.pop()) if len(names) == 1 else "batch")
            writer.begin(batch)
            done: list[tuple[str, str, int]] = []
            for chunk in _split(batch_heads, chunk_rows, BULK_FILES):
                accepted: list[_Got] = []
                for h, got in zip(chunk, _read_chunk(con, chunk), strict=True):
                    if isinstance(got, InputError):
                        skip(h.path, got)
                        continue
                    key = (got.snap.host.hostname, got.stamp)
                    if key in seen:
                        report.duplicates.append(h.path)
                        continue
                    seen.add(key)
                    accepted.append(got)
                    done.append((h.path, "snapshot", got.snap.table.num_rows))
                for day, rows, hosts in _pieces(accepted):
                    writer.submit(batch.add, day, rows, hosts)
            writer.publish(batch, done)
        if con is not None:
            con.close()
            con = None

        for path in other:
            try:
                _not_a_result(path)
                res = read_result(path)
                if res.kind not in RESULT_DATASETS:
                    raise InputError(
                        path,
                        None,
                        f"{res.kind!r} results are not stored (the store "
                        f"takes snapshots, who-calls and overhead results)",
                    )
                dataset, convert = RESULT_DATASETS[res.kind]
                table = convert(res, path)
                key = (res.host.hostname, to_us(res.start))
                if key in seen_results[dataset]:
                    report.duplicates.append(path)
                    continue
                report.files_written.append(
                    store.commit_result(dataset, table, res.host.hostname, res.start)
                )
                seen_results[dataset].add(key)
                report.imported.append((path, res.kind, table.num_rows))
                report.rows += table.num_rows
            except InputError as e:
                skip(path, e)
        writer.wait()
    except BaseException:
        writer.abort()
        raise
    finally:
        if con is not None:
            con.close()
        writer.shutdown()
    return report


def _not_a_result(path: str) -> None:
    """Name the two usual mistakes before the JSON reader calls them "bad JSON": a file named
    like a snapshot that is not Parquet, and raw allocinfo text."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return  # read_result reports it
    if head.lstrip().startswith(b"allocinfo - version"):
        raise InputError(
            path,
            None,
            "allocinfo text, not a snapshot: make one with "
            "`allocscope snapshot --file FILE -o FILE.parquet`",
        )
    if path.endswith(".parquet"):
        raise InputError(path, None, "not a Parquet file (no PAR1 magic): truncated or renamed?")


def _split(heads: list[_Header], rows: int, files: int) -> Iterator[list[_Header]]:
    """Consecutive runs of ``heads`` holding about ``rows`` rows and at most ``files`` files."""
    run: list[_Header] = []
    n = 0
    for h in heads:
        run.append(h)
        n += h.rows
        if n >= rows or len(run) >= files:
            yield run
            run, n = [], 0
    if run:
        yield run


def _pieces(accepted: list[_Got]) -> list[tuple[str, pa.Table | None, pa.Table]]:
    """A chunk's accepted snapshots as (day, allocinfo rows, hosts rows) in order.

    Snapshots whose rows lie next to each other in the chunk's bulk table (the usual case:
    every file of the chunk) stay one zero-copy slice, not one piece per file.
    """
    by_day: dict[str, tuple[list[pa.Table], list[_Got]]] = {}
    run: tuple[pa.Table, int, int, str] | None = None  # (bulk table, start, end, day)

    def close_run() -> None:
        if run is not None:
            t, lo, hi, d = run
            by_day[d][0].append(t.slice(lo, hi - lo))

    for got in accepted:
        day = day_of_us(got.stamp)
        rows_l, snaps = by_day.setdefault(day, ([], []))
        snaps.append(got)
        t = got.snap.table
        if not t.num_rows:
            continue
        if got.bulk is None:
            close_run()
            run = None
            rows_l.append(t)
        elif run is not None and run[0] is got.bulk and run[2] == got.offset and run[3] == day:
            run = (run[0], run[1], got.offset + t.num_rows, day)
        else:
            close_run()
            run = (got.bulk, got.offset, got.offset + t.num_rows, day)
    close_run()
    out: list[tuple[str, pa.Table | None, pa.Table]] = []
    for day, (rows_l, snaps) in by_day.items():
        hosts = hosts_rows(
            [
                (g.snap.host, g.snap.taken_at, g.snap.version, g.snap.source, g.snap.table, None)
                for g in snaps
            ],
            totals=[
                (
                    g.snap.table.num_rows,
                    int(pc.sum(g.snap.table["bytes"]).as_py() or 0),
                    int(pc.sum(g.snap.table["calls"]).as_py() or 0),
                )
                for g in snaps
            ],
        )
        rows = None
        if rows_l:
            rows = rows_l[0] if len(rows_l) == 1 else pa.concat_tables(rows_l)
        out.append((day, rows, hosts))
    return out


class _Writer:
    """The write half of ingest, on its own thread.

    Chunks stream into the open batch (:meth:`BatchWriter.add`) while the main thread decodes
    and checks the next one; at most ``MAX_IN_FLIGHT`` chunks wait, so memory stays bounded
    whatever the input size. A batch's files count as imported once it is published.
    """

    def __init__(self, report: IngestReport) -> None:
        self.report = report
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allocscope-ingest")
        self._queued: deque[Future[Any]] = deque()
        self._done: dict[Future[Any], list[tuple[str, str, int]]] = {}
        self._unpublished: list[BatchWriter] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queued.append(self._pool.submit(fn, *args))
        self._collect(MAX_IN_FLIGHT)

    def begin(self, batch: BatchWriter) -> None:
        self._unpublished.append(batch)

    def publish(self, batch: BatchWriter, done: list[tuple[str, str, int]]) -> None:
        fut = self._pool.submit(batch.publish)
        self._done[fut] = done
        self._queued.append(fut)
        self._collect(MAX_IN_FLIGHT)

    def _collect(self, keep: int) -> None:
        while len(self._queued) > keep:
            fut = self._queued.popleft()
            result = fut.result()  # a write error surfaces here
            done = self._done.pop(fut, None)
            if done is not None:
                self._unpublished.pop(0)
                self.report.files_written += result
                self.report.imported.extend(done)
                self.report.rows += sum(r for _, _, r in done)

    def wait(self) -> None:
        self._collect(0)

    def abort(self) -> None:
        """After an error: let the thread go idle, then drop every unpublished part."""
        while self._queued:
            try:
                self._queued.popleft().result()
            except BaseException:  # the error being handled is the caller's to raise
                pass
        for batch in self._unpublished:
            batch.abort()
        self._unpublished.clear()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
