"""Reading the store: the one place that turns a store root into what an engine reads.

``query``, ``report`` and ``export`` read the store through DuckDB; ingest reads snapshot files
through the same process-wide DuckDB database (:func:`connect`). Three copies of this used to
exist (a literal-safe one in query, one pasting hand-escaped paths into f-string SQL in
report, and ingest's cached connection), and each failed differently on a damaged part. Here:

* :func:`open_store` refuses a root that is missing, not a directory, or holds no part at all
  (``query`` used to answer ``(no rows)`` and exit 0 for a typo);
* :func:`relation_sql` is the table expression of one dataset (``read_parquet`` over
  ``<root>/<dataset>/dt=*/*.parquet``, the layout collector/store.py writes; an empty file with
  the dataset's schema when there is no part yet), with every path a quoted SQL literal;
* :func:`reading` turns an engine's error about a part (zero bytes, truncated, not Parquet)
  into one line naming the file and how to move it aside. Nothing is skipped: a fleet answer
  without one host's snapshot is silently wrong (a median, a "latest" that is not), and
  ingest relies on the commit records to skip duplicates, so a damaged part stops the command
  (exit 2) until it is moved aside (or restored from backup).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from allocscope.collector.atomic import write_atomic
from allocscope.collector.store import Store
from allocscope.collector.store_schemas import ADDED_COLUMNS, DATASETS, SCHEMAS
from allocscope.errors import AllocscopeError, InputError

NO_SNAPSHOTS = (
    "no allocinfo snapshots or results in this store "
    "(expected <store>/allocinfo/dt=*/*.parquet, written by collect or ingest)"
)


class DamagedPart(InputError):
    """A store part no engine can read: named, with the command that moves it aside."""

    def __init__(self, path: str, reason: str) -> None:
        q = shlex.quote(path)
        super().__init__(
            path, None, f"{reason} (a damaged store part; move it aside: mv {q} {q}.damaged)"
        )


def open_store(root: str) -> Store:
    """The store at ``root``, for reading; refused unless it is a directory holding parts."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise InputError(root, None, "no such store directory") from None
    except OSError as e:
        raise InputError(root, None, f"cannot open the store: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(root, None, "not a directory (a store is a directory: collect/ingest)")
    store = Store(root)
    if not any(store.files(d) for d in DATASETS):
        raise InputError(root, None, NO_SNAPSHOTS)
    return store


def fetch(con: Any, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """All rows of ``sql`` (with ``?`` parameters) on a DuckDB connection, as tuples."""
    return list(con.execute(sql, params or []).fetchall())


def quote(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def pattern(store: Store, dataset: str) -> str:
    """The glob of a dataset's published parts (hidden temp files never match)."""
    return os.path.join(store.dataset_dir(dataset), "dt=*", "*.parquet")


def relation_sql(store: Store, dataset: str) -> str:
    """The DuckDB table expression of ``dataset`` (its ``dt`` partition column included)."""
    if not store.files(dataset):
        return f"read_parquet({quote(empty_file(dataset))})"
    union = ", union_by_name = true" if dataset in ADDED_COLUMNS else ""
    # union by name: a part written before a column was added reads it as null (without
    # it DuckDB takes the first file's columns and drops the newer ones)
    return f"read_parquet({quote(pattern(store, dataset))}, hive_partitioning = true{union})"


def store_relation(con: Any, store: Store, dataset: str) -> Any:
    """``dataset`` as a DuckDB relation on ``con`` (see :func:`relation_sql`)."""
    with reading(store):
        return con.sql(f"SELECT * FROM {relation_sql(store, dataset)}")


# A quoted absolute path in an engine's message (DuckDB: File '...' too small...; pyarrow:
# Could not open Parquet input source '...').
_QUOTED = re.compile(r"'(/[^']+)'")


def damaged_part(store: Store, error: BaseException) -> DamagedPart | None:
    """The part ``error`` is about, if it names one of ``store``'s parts."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    for path in _QUOTED.findall(text):
        real = os.path.abspath(path)
        if real.startswith(store.root + os.sep) and real.endswith(".parquet"):
            said = re.sub(r"^[A-Za-z ]*Error: ", "", first.replace(f"'{path}'", ""))
            said = " ".join(said.replace(" :", ":").split())
            return DamagedPart(real, f"not a whole Parquet file{_size_note(real)} ({said})")
    return None


def _size_note(path: str) -> str:
    try:
        size = os.stat(path).st_size
    except OSError:
        return ""
    return ", zero bytes" if size == 0 else f", {size} bytes: truncated?"


@contextmanager
def reading(store: Store, what: str = "reading the store") -> Iterator[None]:
    """Engine errors while reading ``store`` -> :class:`DamagedPart` naming the part, or one
    line saying what failed."""
    import duckdb

    try:
        yield
    except AllocscopeError:
        raise
    except (duckdb.Error, pa.ArrowException, OSError) as e:
        hit = damaged_part(store, e)
        if hit is not None:
            raise hit from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AllocscopeError(f"{what} {store.root} failed: {first}") from None


def empty_file(dataset: str) -> str:
    """A Parquet file with the dataset's schema and no rows: lets queries over a store that
    has no file of that dataset yet return empty results on any engine.

    Kept in a per-uid directory under the temp dir; a directory of that name that is a link,
    or is not ours with mode 700, was planted by someone else and is not used.
    """
    d = os.path.join(tempfile.gettempdir(), f"allocscope-empty-{os.getuid()}")
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        d = _private_empty_dir()
    path = os.path.join(d, f"{dataset}.parquet")
    if not os.path.exists(path):
        write_atomic(path, lambda f: pq.write_table(SCHEMAS[dataset].empty_table(), f))
    return path


@functools.cache
def _private_empty_dir() -> str:
    return tempfile.mkdtemp(prefix="allocscope-empty-")


_DB: Any = None
_DB_PID = 0
_DB_LOCK = threading.Lock()


def connect() -> Any:
    """A connection to this process's in-memory DuckDB database (no tables, only a reader).

    The database is created once and kept: a fresh one starts with no memory of its own and
    page-faults its way through every buffer it allocates, which cost ingest a quarter of its
    CPU time when each call opened its own. Each call gets its own connection (cursor), so
    concurrent users do not share one; it is set to UTC like every engine here.
    """
    import duckdb

    global _DB, _DB_PID
    with _DB_LOCK:
        if _DB is None or _DB_PID != os.getpid():  # a forked child cannot use its parent's
            _DB, _DB_PID = duckdb.connect(), os.getpid()
        con = _DB.cursor()
    con.execute("SET TimeZone = 'UTC'")
    return con
