"""``allocscope query``: named fleet queries or raw SQL over the store, on DuckDB or Spark."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from allocscope.cli.common import add_verb
from allocscope.collector.query import ENGINES, named_queries, open_engine, run_named, run_sql
from allocscope.collector.store_read import open_store
from allocscope.errors import AllocscopeError
from allocscope.reports.query import render_csv, render_json, render_table

EXAMPLES = """\
  allocscope query --list
  allocscope query --store ./store top-sites --param limit=10
  allocscope query --store ./store subsystem-trend --param host=db7 --param bucket=day
  allocscope query --store ./store pilot-vs-control --csv > pilot.csv
  allocscope query --store ./store post-boot-growth --param min_bytes=10M --json
  allocscope query --store ./store site-change --param from=2026-11-29T00:00 --param to=2026-11-30
  allocscope query --store ./store --engine spark outlier-hosts      # same SQL on Spark
  allocscope query --store ./store --sql "SELECT subsystem, SUM(bytes) FROM {allocinfo} GROUP BY 1"
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "query",
        help="run a named fleet query or raw SQL over a store (DuckDB or Spark)",
        description="Run one of the named queries (--list) or raw SQL over the store's "
        "Parquet files. In SQL, {allocinfo}, {hosts}, {callers} and {overhead} name the "
        "datasets; the same text runs on DuckDB (default, embedded) and Spark SQL "
        "(--engine spark, needs pip install 'allocscope[spark]' and a JDK). Raw --sql is "
        "read-only unless --unrestricted-sql says otherwise: it runs as root.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("name", nargs="?", metavar="QUERY", help="named query (see --list)")
    p.add_argument("--store", metavar="DIR", help="store root")
    p.add_argument("--list", action="store_true", help="list the named queries and parameters")
    p.add_argument(
        "--sql",
        metavar="SQL",
        help="run this SQL instead of a named query; read-only: SELECT/EXPLAIN statements "
        "only, files only under --store, no extension installs or loads",
    )
    p.add_argument(
        "--unrestricted-sql",
        action="store_true",
        help="lift the --sql limits: the SQL can then COPY ... TO, read_text or ATTACH any "
        "path this user (often root) can reach, write into the store, and install or load "
        "extensions; needed for --sql on Spark, which cannot be confined",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="query parameter (repeatable); label=KEY=VALUE filters by host label",
    )
    p.add_argument("--engine", choices=ENGINES, default="duckdb", help="query engine")
    p.add_argument(
        "--show-sql", action="store_true", help="print the SQL as sent to the engine (to stderr)"
    )
    p.add_argument("--raw", action="store_true", help="exact numbers in the table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def list_queries() -> str:
    lines = []
    for q in named_queries().values():
        lines.append(f"{q.name}\n    {q.description}")
        for p in q.params.values():
            default = "required" if p.default is None else f"default {p.default or repr('')}"
            lines.append(f"    --param {p.name}=<{p.type}>  {p.help} ({default})")
    return "\n".join(lines) + "\n"


def parse_params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise AllocscopeError(f"--param {item!r}: want NAME=VALUE")
        out[k.strip()] = v
    return out


def run(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(list_queries())
        return 0
    if not args.store:
        raise AllocscopeError("--store DIR is required (or --list)")
    if bool(args.sql) == bool(args.name):
        raise AllocscopeError("give a query name (see --list) or --sql, not both")
    params = parse_params(args.param)
    if args.sql and params:
        raise AllocscopeError("--param applies to named queries; write values into --sql")
    if args.unrestricted_sql and not args.sql:
        raise AllocscopeError("--unrestricted-sql applies to --sql only")
    engine = open_engine(args.engine, open_store(args.store), unrestricted=args.unrestricted_sql)
    try:
        res = run_sql(engine, args.sql) if args.sql else run_named(engine, args.name, params)
    finally:
        engine.close()
    if args.show_sql:
        print(res.sql, file=sys.stderr)
    if args.json:
        sys.stdout.write(
            render_json(
                res.columns,
                res.rows,
                {
                    "query": args.name or "sql",
                    "engine": res.engine,
                    "params": params,
                    "seconds": round(res.seconds, 6),
                },
            )
        )
    elif args.csv:
        sys.stdout.write(render_csv(res.columns, res.rows))
    else:
        sys.stdout.write(render_table(res.columns, res.rows, human=not args.raw))
    return 0
