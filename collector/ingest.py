"""Importing files produced elsewhere into the store: snapshots, who-calls and overhead results.

Every file is validated completely *before* any of it is written, and a file's rows are written
in one atomic part together with its commit record, so a bad file is reported and skipped and a
good one is never half-imported. Snapshots already in the store (same host, same time) are
skipped as duplicates, which makes re-running an ingest over the same directory harmless.

Snapshots are batched (many files -> one part file per day) because per-file overhead, not
bytes, is what limits ingest speed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allocscope.collector.errors import InputError
from allocscope.collector.host import HostMetadata
from allocscope.collector.result import Result, read_result
from allocscope.collector.site import SiteQuery, canonical_function
from allocscope.collector.snapshot import SNAPSHOT_SCHEMA, SNAPSHOT_SCHEMA_VERSION, is_parquet
from allocscope.collector.store import (
    CALLERS_SCHEMA,
    OVERHEAD_SCHEMA,
    Store,
    dumps,
    hosts_rows,
    result_common,
    safe_name,
    to_us,
)

BATCH_ROWS = 2_000_000  # one batch writes while the next is read
BULK_FILES = 400  # snapshot files decoded together
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


def read_snapshots_bulk(paths: list[str]) -> list[Snapshot | InputError]:
    """Read and validate many snapshot files at once, one answer per path, in order.

    Per-file overhead dominates ingest (a snapshot is ~5,000 rows), so files whose footer
    checks out and whose columns already have the exact schema are decoded together by
    DuckDB's multi-threaded Parquet reader and sliced back per file (zero-copy); every check
    of :func:`read_snapshot_file` still runs per file. Anything unusual (other column types, a
    corrupt data page making the bulk read fail) goes through :func:`read_snapshot_file` alone.
    """
    out: list[Snapshot | InputError | None] = [None] * len(paths)
    bulk: list[tuple[int, HostMetadata, float, str | None, str, int]] = []
    for i, path in enumerate(paths):
        try:
            host, taken_at, ver, src, n, exact = _read_header(path)
        except InputError as e:
            out[i] = e
            continue
        if exact:
            bulk.append((i, host, taken_at, ver, src, n))
        else:
            out[i] = _read_one(path)
    if bulk:
        table = None
        try:
            import duckdb

            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            try:
                files = [paths[b[0]] for b in bulk]
                table = con.sql(
                    "SELECT *, filename AS _file FROM read_parquet($files, filename = true)",
                    params={"files": files},
                ).to_arrow_table()
            finally:
                con.close()
        except Exception:  # a corrupt page anywhere fails the whole read: go file by file
            table = None
        offset = 0
        for i, host, taken_at, ver, src, n in bulk:
            path = paths[i]
            part = table.slice(offset, n) if table is not None else None
            offset += n
            if (
                part is None
                or part.num_rows != n
                or (n and (part["_file"][0].as_py() != path or part["_file"][-1].as_py() != path))
            ):
                out[i] = _read_one(path)  # order not as expected: the careful way
                continue
            try:
                rows = part.select(SNAPSHOT_SCHEMA.names)
                if not rows.schema.equals(SNAPSHOT_SCHEMA):
                    rows = rows.cast(SNAPSHOT_SCHEMA)
                out[i] = Snapshot(
                    path, host, taken_at, ver, src, _check_rows(path, host, taken_at, rows)
                )
            except InputError as e:
                out[i] = e
    return [
        x if x is not None else InputError(p, None, "not read")
        for x, p in zip(out, paths, strict=True)
    ]


def _read_one(path: str) -> Snapshot | InputError:
    try:
        return read_snapshot_file(path)
    except InputError as e:
        return e


# -- results ---------------------------------------------------------------------------------
def _num(v: Any, what: str, path: str, integer: bool = False) -> Any:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(path, None, f"{what} is not a number: {v!r}")
    if integer:
        if isinstance(v, float) and not v.is_integer():
            raise InputError(path, None, f"{what} is not an integer: {v!r}")
        return int(v)
    return float(v)


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
    """Rows of the ``callers`` dataset for one who-calls result (validated)."""
    p = res.payload
    callers = p.get("callers")
    if not isinstance(callers, list):
        raise InputError(path, None, "who-calls payload has no 'callers' list")
    if "site" not in p:
        raise InputError(path, None, "who-calls payload has no 'site'")
    site, func, key = _site_fields(p["site"])
    if func is None:
        join = p.get("allocinfo") if isinstance(p.get("allocinfo"), dict) else {}
        f = join.get("function") if join else None
        func = canonical_function(f) if isinstance(f, str) else None
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(callers):
        what = f"callers[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("caller"), str):
            raise InputError(path, None, f"{what} has no caller name")
        rows.append(
            {
                "caller": c["caller"],
                "calls": _num(c.get("calls"), f"{what}.calls", path, True),
                "share": _num(c.get("share"), f"{what}.share", path),
                "ci_low": _num(c.get("ci_low"), f"{what}.ci_low", path),
                "ci_high": _num(c.get("ci_high"), f"{what}.ci_high", path),
                "bytes": _num(c.get("bytes"), f"{what}.bytes", path, True),
            }
        )
    if not rows:
        rows.append(dict.fromkeys(("caller", "calls", "share", "ci_low", "ci_high", "bytes")))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    cols.update(
        {
            "site": [site] * n,
            "site_function": [func] * n,
            "site_key": [key] * n,
            "backend": [str(p["backend"]) if p.get("backend") is not None else None] * n,
            "total_calls": [_num(p.get("total_calls"), "total_calls", path, True)] * n,
            "lost": [_num(p.get("lost"), "lost", path, True)] * n,
            "payload_json": [dumps(p)] * n,
        }
    )
    for k in ("caller", "calls", "share", "ci_low", "ci_high", "bytes"):
        cols[k] = [r[k] for r in rows]
    return pa.table(cols).select(CALLERS_SCHEMA.names).cast(CALLERS_SCHEMA)


_OVERHEAD_FIELDS: tuple[tuple[str, str], ...] = (
    ("inclusive_samples", "int"),
    ("self_samples", "int"),
    ("inclusive_share", "float"),
    ("self_share", "float"),
    ("calls", "int"),
    ("calls_per_second", "float"),
    ("ns_per_call", "float"),
)


def overhead_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``overhead`` dataset: the payload's ``functions`` table flattened, with the
    raw payload kept in every row so fields this version does not know are not lost."""
    p = res.payload
    funcs = p.get("functions")
    if funcs is not None and not isinstance(funcs, list):
        raise InputError(path, None, "overhead payload 'functions' is not a list")
    rows: list[dict[str, Any]] = []
    for i, f in enumerate(funcs or []):
        what = f"functions[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("function"), str):
            raise InputError(path, None, f"{what} has no function name")
        row: dict[str, Any] = {
            "function": f["function"],
            "kind": str(f["kind"]) if f.get("kind") is not None else None,
            "present": bool(f["present"]) if f.get("present") is not None else None,
            "row_json": dumps(f),
        }
        for k, t in _OVERHEAD_FIELDS:
            row[k] = _num(f.get(k), f"{what}.{k}", path, t == "int")
        rows.append(row)
    if not rows:
        rows.append(
            dict.fromkeys(
                ["function", "kind", "present", "row_json"] + [k for k, _ in _OVERHEAD_FIELDS]
            )
        )
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    for k in ["function", "kind", "present", "row_json"] + [k for k, _ in _OVERHEAD_FIELDS]:
        cols[k] = [r[k] for r in rows]
    cols["settings_json"] = [dumps(res.settings)] * n
    cols["payload_json"] = [dumps(p)] * n
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
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Validate and import ``paths`` (files or directories) into ``store``."""
    report = IngestReport()
    seen = store.known_snapshots()
    seen_results = {d: store.known_results(d) for d in ("callers", "overhead")}
    pending: list[Snapshot] = []
    pending_rows = 0
    writer = ThreadPoolExecutor(max_workers=1)
    writing: list[tuple[Future[list[str]], list[tuple[str, str, int]]]] = []

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending:
            return
        pending.sort(key=lambda s: (s.host.hostname, s.taken_at))
        rows = pa.concat_tables([s.table for s in pending])
        hosts = hosts_rows(
            [(s.host, s.taken_at, s.version, s.source, s.table, None) for s in pending],
            totals=[
                (
                    s.table.num_rows,
                    int(pc.sum(s.table["bytes"]).as_py() or 0),
                    int(pc.sum(s.table["calls"]).as_py() or 0),
                )
                for s in pending
            ],
        )
        tag = (
            safe_name(pending[0].host.hostname)
            if len({s.host.hostname for s in pending}) == 1
            else "batch"
        )
        done = [(s.path, "snapshot", s.table.num_rows) for s in pending]
        wait_writer()
        # The write of this batch overlaps the reading of the next (one batch in flight).
        writing.append((writer.submit(store.commit_batch, rows, hosts, tag), done))
        pending, pending_rows = [], 0

    def wait_writer() -> None:
        while writing:
            fut, done = writing.pop(0)
            report.files_written += fut.result()
            report.imported.extend(done)
            report.rows += sum(r for _, _, r in done)

    files = expand(paths)
    snap_files = [p for p in files if is_parquet(p)]
    other = [p for p in files if not is_parquet(p)]
    for start in range(0, len(snap_files), BULK_FILES):
        chunk = snap_files[start : start + BULK_FILES]
        for path, got in zip(chunk, read_snapshots_bulk(chunk), strict=True):
            if isinstance(got, InputError):
                report.skipped.append((path, str(got)))
                if progress:
                    progress(f"skipped {got}")
                continue
            stamp = (
                pc.cast(got.table["taken_at"][0], pa.int64()).as_py()
                if got.table.num_rows
                else to_us(got.taken_at)
            )
            key = (got.host.hostname, stamp)
            if key in seen:
                report.duplicates.append(path)
                continue
            seen.add(key)
            pending.append(got)
            pending_rows += got.table.num_rows
            if pending_rows >= batch_rows:
                flush()

    for path in other:
        try:
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
            report.skipped.append((path, str(e)))
            if progress:
                progress(f"skipped {e}")
    flush()
    wait_writer()
    writer.shutdown()
    return report
