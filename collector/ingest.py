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
   any check is read again alone, the careful way, which names the reason (the checks are
   collector/snapshot_check.py's, the same ``top``/``diff``/``report`` apply);
3. a writer thread streams each checked chunk into the batch's hidden temp part
   (store_batch.BatchWriter) while the next chunk is decoded; the batch is published (fsync,
   rename, then the ``hosts`` commit records) once all its files are in.

Result files become rows of the ``callers``/``overhead`` datasets by collector/store_tables.py.
"""
# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from allocscope.collector.result import read_result
from allocscope.collector.snapshot import is_parquet
from allocscope.collector.snapshot_check import (
    Checked,
    Header,
    SnapshotFile,
    header,
    open_reader,
    read_chunk,
    read_snapshot_file,
)
from allocscope.collector.store import Store, safe_name
from allocscope.collector.store_batch import BatchWriter
from allocscope.collector.store_rows import day_of_us, hosts_rows, to_us
from allocscope.collector.store_tables import RESULT_DATASETS
from allocscope.errors import InputError

__all__ = ["IngestReport", "SnapshotFile", "expand", "ingest", "read_snapshot_file"]

BATCH_ROWS = 2_000_000  # rows per allocinfo part file (per day)
CHUNK_ROWS = 128 * 1024  # rows decoded and checked together while the previous chunk is written
BULK_FILES = 400  # at most this many snapshot files decoded together
MAX_IN_FLIGHT = 2  # decoded chunks waiting for the writer thread


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
    store.check_writable()  # before anything: an unmounted store filesystem is refused
    report = IngestReport()
    # What a killed ingest of this host left: hidden temp files, and batch parts published
    # without their commit records (re-importing their snapshots would count them twice).
    store.clean_stale_temps()
    store.clean_orphans()
    seen = store.known_snapshots()
    seen_results = {d: store.known_results(d) for d, _ in RESULT_DATASETS.values()}

    def skip(path: str, e: InputError) -> None:
        report.skipped.append((path, str(e)))
        if progress:
            progress(f"skipped {e}")

    files = expand(paths)
    heads: list[Header] = []
    other: list[str] = []
    for path in files:
        if not is_parquet(path):
            other.append(path)
            continue
        try:
            heads.append(header(path))
        except InputError as e:
            skip(path, e)
    heads.sort(key=lambda h: (h.host.hostname, h.taken_at, h.path))

    writer = _Writer(report)
    con = open_reader() if heads else None
    try:
        for batch_heads in _split(heads, batch_rows, len(heads)):
            names = {h.host.hostname for h in batch_heads}
            batch = BatchWriter(store, safe_name(names.pop()) if len(names) == 1 else "batch")
            writer.begin(batch)
            done: list[tuple[str, str, int]] = []
            for chunk in _split(batch_heads, chunk_rows, BULK_FILES):
                accepted: list[Checked] = []
                for h, got in zip(chunk, read_chunk(con, chunk), strict=True):
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
                        f"takes snapshots, who-calls, overhead, context and lifespan results)",
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


def _split(heads: list[Header], rows: int, files: int) -> Iterator[list[Header]]:
    """Consecutive runs of ``heads`` holding about ``rows`` rows and at most ``files`` files."""
    run: list[Header] = []
    n = 0
    for h in heads:
        run.append(h)
        n += h.rows
        if n >= rows or len(run) >= files:
            yield run
            run, n = [], 0
    if run:
        yield run


def _pieces(accepted: list[Checked]) -> list[tuple[str, pa.Table | None, pa.Table]]:
    """A chunk's accepted snapshots as (day, allocinfo rows, hosts rows) in order.

    Snapshots whose rows lie next to each other in the chunk's bulk table (the usual case:
    every file of the chunk) stay one zero-copy slice, not one piece per file.
    """
    by_day: dict[str, tuple[list[pa.Table], list[Checked]]] = {}
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
            slab_objects=[g.snap.slab_objects for g in snaps],
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
