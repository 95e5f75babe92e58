"""Queries over the store, on DuckDB (embedded, the default) or Spark SQL (a cluster's engine).

A named query is one ``.sql`` file in :mod:`allocscope.collector.queries`. The *same text*
runs on both engines: only two things are substituted per engine —

* table references ``{allocinfo}``, ``{hosts}``, ``{callers}``, ``{overhead}``: a
  ``read_parquet(...)`` call on DuckDB, a temporary view over the same files on Spark;
* parameters ``${name}``: rendered as typed SQL literals by the engine (string quoting differs:
  Spark treats backslash as an escape), never pasted as text.

The SQL itself sticks to constructs both engines define identically (explicit ``CAST ... AS
DOUBLE``, ``NULLS LAST``, exact medians from ``ROW_NUMBER`` windows instead of the engines'
differing percentile functions, ``NULLIF`` before every division because Spark's ANSI mode
raises on division by zero).

User SQL (``query --sql``) runs as root on a production host, so by default it is read-only on
both engines. DuckDB: every statement must be a SELECT or EXPLAIN (checked on DuckDB's own parse
of the text, so ``COPY ... TO``, ``ATTACH``, ``INSTALL``, ``SET`` and ``CREATE`` are refused even
inside the store), files are reachable only under the store root (``enable_external_access =
false`` plus ``allowed_directories``; ``read_text('/etc/shadow')`` fails), extensions are never
installed or autoloaded, and ``lock_configuration`` stops the SQL from undoing any of it. Spark
SQL has no such switches, so raw SQL on Spark needs the explicit ``unrestricted`` opt-in.

Header of a query file::

    -- name: top-sites
    -- description: one line
    -- param: limit int 20 how many sites
"""

from __future__ import annotations

import datetime as _dt
import decimal
import importlib.resources
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from allocscope.collector.store import Store
from allocscope.collector.store_read import damaged_part, empty_file, relation_sql
from allocscope.collector.store_schemas import ADDED_COLUMNS, DATASETS
from allocscope.collector.units import parse_size
from allocscope.errors import AllocscopeError, CapabilityError

ENGINES = ("duckdb", "spark")
PARAM_TYPES = ("int", "float", "size", "str", "timestamp")
_PARAM = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")
_TABLE = re.compile(r"\{(" + "|".join(DATASETS) + r")\}")
_HEADER = re.compile(r"^--\s*(name|description|param):\s*(.*)$")


class QueryError(AllocscopeError):
    """A query failed in the engine, or its parameters are wrong."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    default: str | None  # None: required
    help: str


@dataclass(slots=True)
class NamedQuery:
    name: str
    description: str
    params: dict[str, Param]
    sql: str
    datasets: tuple[str, ...] = ()


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    engine: str = ""
    seconds: float = 0.0
    sql: str = field(default="", repr=False)


def parse_query_file(text: str, source: str) -> NamedQuery:
    name = description = ""
    params: dict[str, Param] = {}
    for line in text.splitlines():
        m = _HEADER.match(line.strip())
        if not m:
            continue
        key, value = m[1], m[2].strip()
        if key == "name":
            name = value
        elif key == "description":
            description = (description + " " + value).strip()
        else:
            parts = value.split(None, 3)
            if len(parts) < 3 or parts[1] not in PARAM_TYPES:
                raise ValueError(f"{source}: bad param line {value!r}")
            default = None if parts[2] == "REQUIRED" else parts[2]
            if default == "''":
                default = ""
            params[parts[0]] = Param(
                parts[0], parts[1], default, parts[3] if len(parts) > 3 else ""
            )
    if not name:
        raise ValueError(f"{source}: no '-- name:' header")
    used = set(_PARAM.findall(text))
    for p in used - params.keys() - {"label_key", "label_value"}:
        raise ValueError(f"{source}: ${{{p}}} is used but not declared")
    return NamedQuery(name, description, params, text, tuple(sorted(set(_TABLE.findall(text)))))


def named_queries() -> dict[str, NamedQuery]:
    """Every named query shipped in the package, by name."""
    out: dict[str, NamedQuery] = {}
    root = importlib.resources.files("allocscope.collector.queries")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            q = parse_query_file(entry.read_text(), entry.name)
            out[q.name] = q
    return out


# -- parameters ------------------------------------------------------------------------------
def parse_timestamp(text: str) -> _dt.datetime:
    """ISO date/time (UTC unless it says otherwise) or unix seconds."""
    t = text.strip()
    try:
        return _dt.datetime.fromtimestamp(float(t), _dt.UTC)
    except ValueError:
        pass
    try:
        d = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO like 2026-11-29T05:00, or unix seconds)"
        ) from None
    return d.replace(tzinfo=_dt.UTC) if d.tzinfo is None else d.astimezone(_dt.UTC)


def bind(query: NamedQuery, given: dict[str, str]) -> dict[str, Any]:
    """Typed parameter values: defaults filled, unknown names and bad values refused.

    ``label=KEY=VALUE`` becomes ``label_key``/``label_value`` (empty when not given)."""
    unknown = set(given) - set(query.params)
    if unknown:
        known = ", ".join(query.params) or "none"
        raise QueryError(
            f"query {query.name!r} has no parameter {sorted(unknown)[0]!r} (parameters: {known})"
        )
    values: dict[str, Any] = {}
    for p in query.params.values():
        raw = given.get(p.name, p.default)
        if raw is None:
            raise QueryError(f"query {query.name!r} needs --param {p.name}=... ({p.help})")
        try:
            if p.type == "int":
                values[p.name] = int(raw)
            elif p.type == "float":
                values[p.name] = float(raw)
            elif p.type == "size":
                values[p.name] = parse_size(raw)
            elif p.type == "timestamp":
                values[p.name] = parse_timestamp(raw)
            else:
                values[p.name] = raw
        except ValueError as e:
            raise QueryError(f"--param {p.name}: {e}") from None
    if "label" in query.params:
        label = values.pop("label")
        key, sep, value = label.partition("=")
        if label and not sep:
            raise QueryError(f"--param label={label}: want KEY=VALUE, e.g. group=pilot")
        values["label_key"], values["label_value"] = key, value
    return values


# -- engines ---------------------------------------------------------------------------------
class Engine(Protocol):
    name: str

    def table_ref(self, dataset: str) -> str: ...

    def literal(self, value: Any) -> str: ...

    def execute(self, sql: str) -> QueryResult: ...

    def check_read_only(self, sql: str) -> None: ...

    def close(self) -> None: ...


def _sql_time(v: _dt.datetime) -> str:
    return "TIMESTAMP '" + v.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "'"


def sql_literal(value: Any, quote: Callable[[str], str]) -> str:
    """A parameter value as SQL text; only string quoting differs between the engines
    (DuckDB doubles quotes, Spark SQL backslash-escapes), so each passes its ``quote``."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, _dt.datetime):
        return _sql_time(value)
    return quote(str(value))


def _normalize(v: Any) -> Any:
    """One Python value per SQL value whatever the engine: UTC-aware datetimes, floats for
    decimals."""
    if isinstance(v, _dt.datetime):
        return v.replace(tzinfo=_dt.UTC) if v.tzinfo is None else v.astimezone(_dt.UTC)
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


# What read-only user SQL may be: statements that only read (DuckDB's parser decides).
_READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


class DuckDBEngine:
    name = "duckdb"

    def __init__(
        self,
        store: Store,
        *,
        threads: int | None = None,
        memory_limit: str | None = None,
        unrestricted: bool = False,
    ) -> None:
        import duckdb

        self.store = store
        self.unrestricted = unrestricted
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {self.literal(memory_limit)}")
        if not unrestricted:
            self._lock_down()

    def _lock_down(self) -> None:
        """Files only under the store (and the empty stand-ins :meth:`table_ref` may use), no
        extension installs or loads, and no way back (locked configuration)."""
        root = self.store.root.rstrip(os.sep) or os.sep
        dirs = sorted({root + os.sep, os.path.realpath(root).rstrip(os.sep) + os.sep})
        empties = [empty_file(d) for d in DATASETS if not self.store.files(d)]
        for setting, value in (
            ("allowed_directories", dirs),
            ("allowed_paths", empties),
            ("enable_external_access", False),
            ("autoinstall_known_extensions", False),
            ("autoload_known_extensions", False),
            ("allow_community_extensions", False),
            ("lock_configuration", True),
        ):
            if isinstance(value, list):
                text = "[" + ", ".join(self.literal(v) for v in value) + "]"
            else:
                text = self.literal(value)
            self.con.execute(f"SET {setting} = {text}")

    def check_read_only(self, sql: str) -> None:
        """Refuse SQL that is anything but reads (unless the engine is unrestricted)."""
        if self.unrestricted:
            return
        import duckdb

        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryError(f"duckdb: {str(e).splitlines()[0]}") from None
        for st in statements:
            kind = st.type.name
            if kind not in _READ_ONLY_STATEMENTS:
                raise QueryError(
                    f"--sql: {kind} statements are refused: user SQL is read-only "
                    "(SELECT/EXPLAIN over the store); --unrestricted-sql lifts this"
                )

    def table_ref(self, dataset: str) -> str:
        return relation_sql(self.store, dataset)

    def literal(self, value: Any) -> str:
        return sql_literal(value, lambda s: "'" + s.replace("'", "''") + "'")

    def execute(self, sql: str) -> QueryResult:
        import duckdb

        t0 = time.perf_counter()
        try:
            cur = self.con.execute(sql)
            rows = cur.fetchall()
        except duckdb.Error as e:
            hit = damaged_part(self.store, e)
            if hit is not None:
                raise hit from None
            raise QueryError(f"duckdb: {str(e).splitlines()[0]}") from None
        cols = [d[0] for d in cur.description or []]
        return QueryResult(
            cols,
            [tuple(_normalize(v) for v in r) for r in rows],
            self.name,
            time.perf_counter() - t0,
            sql,
        )

    def close(self) -> None:
        self.con.close()


def spark_session(app: str = "allocscope") -> Any:
    """A local-mode SparkSession set up like the DuckDB side (UTC, small shuffles)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CapabilityError(
            "the Spark engine needs PySpark: pip install 'allocscope[spark]' "
            "(and a JDK 17+, e.g. apt-get install openjdk-17-jre-headless)"
        ) from None
    builder = (
        SparkSession.builder.master(os.environ.get("ALLOCSCOPE_SPARK_MASTER", "local[2]"))
        .appName(app)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", os.environ.get("ALLOCSCOPE_SPARK_MEMORY", "2g"))
        .config("spark.sql.parquet.enableVectorizedReader", "true")
    )
    try:
        session = builder.getOrCreate()
    except Exception as e:  # JVM missing or failing to start: say so in one line
        raise CapabilityError(
            f"cannot start Spark (is a JDK 17+ installed?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkEngine:
    name = "spark"

    def __init__(
        self, store: Store, session: Any | None = None, *, unrestricted: bool = False
    ) -> None:
        self.store = store
        self.unrestricted = unrestricted
        self.own_session = session is None
        self.spark = session if session is not None else spark_session()
        self._views: dict[str, str] = {}

    def table_ref(self, dataset: str) -> str:
        if dataset not in self._views:
            files = self.store.files(dataset)
            view = f"allocscope_{dataset}"
            if files:
                base = self.store.dataset_dir(dataset)
                reader = self.spark.read.option("basePath", base)
                if dataset in ADDED_COLUMNS:  # older parts lack columns added since
                    reader = reader.option("mergeSchema", "true")
                df = reader.parquet(base)
            else:
                df = self.spark.read.parquet(empty_file(dataset))
            df.createOrReplaceTempView(view)
            self._views[dataset] = view
        return self._views[dataset]

    def check_read_only(self, sql: str) -> None:
        """Spark SQL can read and write any path (``parquet.`/etc```, ``INSERT OVERWRITE
        DIRECTORY``) and has no switch to stop it: raw SQL needs the explicit opt-in."""
        if not self.unrestricted:
            raise QueryError(
                "--sql on Spark cannot be confined to the store (Spark SQL reads and writes any "
                "path); use the DuckDB engine, or --unrestricted-sql to accept that"
            )

    def refresh(self) -> None:
        """Forget the views (files were added since they were made)."""
        for view in self._views.values():
            self.spark.catalog.dropTempView(view)
        self._views.clear()

    def literal(self, value: Any) -> str:
        return sql_literal(value, lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'")

    def execute(self, sql: str) -> QueryResult:
        t0 = time.perf_counter()
        try:
            df = self.spark.sql(sql)
            rows = df.collect()
        except Exception as e:  # pyspark raises its own hierarchy; keep the first line
            hit = damaged_part(self.store, e)
            if hit is not None:
                raise hit from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QueryError(f"spark: {first}") from None
        return QueryResult(
            list(df.columns),
            [tuple(_normalize(v) for v in r) for r in rows],
            self.name,
            time.perf_counter() - t0,
            sql,
        )

    def close(self) -> None:
        if self.own_session:
            self.spark.stop()


def open_engine(name: str, store: Store, **kw: Any) -> Engine:
    if name == "duckdb":
        return DuckDBEngine(store, **kw)
    if name == "spark":
        return SparkEngine(store, **kw)
    raise QueryError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")


def render(sql: str, engine: Engine, values: dict[str, Any] | None = None) -> str:
    """Substitute table references and parameters for ``engine``."""
    values = values or {}

    def param(m: re.Match[str]) -> str:
        if m[1] not in values:
            raise QueryError(f"parameter ${{{m[1]}}} has no value")
        return engine.literal(values[m[1]])

    sql = _TABLE.sub(lambda m: engine.table_ref(m[1]), sql)
    return _PARAM.sub(param, sql)


def run_named(engine: Engine, name: str, params: dict[str, str] | None = None) -> QueryResult:
    queries = named_queries()
    if name not in queries:
        raise QueryError(f"no named query {name!r} (allocscope query --list)")
    q = queries[name]
    return engine.execute(render(q.sql, engine, bind(q, params or {})))


def run_sql(engine: Engine, sql: str) -> QueryResult:
    """Raw SQL; ``{allocinfo}`` etc. are substituted, so one text still runs on both engines.
    Read-only unless the engine was opened ``unrestricted`` (see the module docstring)."""
    text = render(sql, engine)
    engine.check_read_only(text)
    return engine.execute(text)
