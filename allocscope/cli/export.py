"""``allocscope export --prometheus``: allocinfo as node_exporter textfile metrics."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from allocscope.cli.common import add_row_limit, add_verb, output_arg, size_arg
from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.atomic import write_text_atomic
from allocscope.collector.host import parse_labels
from allocscope.collector.store_read import connect, open_store, reading, relation_sql
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import AllocscopeError
from allocscope.reports.prometheus import SiteSample, check_extra_labels, render
from allocscope.reports.prometheus_context import TagRate, render_context

EXAMPLES = """\
  allocscope export --prometheus -o /var/lib/node_exporter/textfile/allocinfo.prom --top 200
  allocscope export --prometheus --min-bytes 1M             # to stdout, sites >= 1 MiB
  allocscope export --prometheus --file saved-allocinfo.txt --top 50
  allocscope export --prometheus --store ./store --host db7 --top 100   # latest stored snapshot
  allocscope export --prometheus --result context.json --top 20  # per-tag rates, charged share
  allocscope export --prometheus --store ./store --context --top 20   # latest context interval
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "export",
        help="export allocinfo as Prometheus node_exporter textfile metrics",
        description="Write allocinfo_bytes and allocinfo_calls gauges (labels file, line, "
        "function, module, subsystem) in the node_exporter textfile-collector format, plus "
        "totals and what the cut omitted. Bound cardinality with --top and/or --min-bytes. "
        "With -o the file is replaced atomically, as the textfile collector requires.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument(
        "--prometheus",
        action="store_true",
        required=True,
        help="Prometheus text format (the one format for now)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "-f", "--file", metavar="ALLOCINFO", help="a saved allocinfo instead of /proc/allocinfo"
    )
    src.add_argument("--store", metavar="DIR", help="export a stored snapshot instead")
    src.add_argument(
        "--result",
        metavar="CONTEXT.json",
        help="export a context result: per-tag calls/s, bytes/s and charged share",
    )
    p.add_argument(
        "--context",
        action="store_true",
        help="with --store: the host's latest context interval instead of its snapshot",
    )
    p.add_argument(
        "--host", metavar="NAME", help="with --store: the host (default: this host's name)"
    )
    p.add_argument(
        "-o", "--output", type=output_arg, metavar="FILE.prom", help="write here (atomically)"
    )
    add_row_limit(p, help="only the N largest sites")
    p.add_argument("--min-bytes", type=size_arg, metavar="SIZE", help="only sites >= SIZE")
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="extra label on every series (repeatable)",
    )
    p.add_argument("--subsystems", metavar="FILE.toml", help="extra subsystem rules")


def from_allocinfo(path: str | None, sub: SubsystemMap) -> list[SiteSample]:
    snap = read_allocinfo(path)
    return [
        SiteSample(
            r.site.file,
            r.site.line,
            r.site.function,
            r.site.module,
            sub.classify(r.site.file, r.site.function),
            r.bytes,
            r.calls,
        )
        for r in snap.records
    ]


def from_store(root: str, host: str) -> list[SiteSample]:
    """The host's latest committed snapshot (its ``hosts`` row is the commit record)."""
    store = open_store(root)
    con = connect()
    try:
        with reading(store):
            (latest,) = con.execute(
                f"SELECT max(taken_at) FROM {relation_sql(store, 'hosts')} WHERE hostname = ?",
                [host],
            ).fetchone()
            if latest is None:
                raise AllocscopeError(f"{root}: no snapshot of host {host!r} in the store")
            rows = con.execute(
                "SELECT file, line, function, module, subsystem, bytes, calls "
                f"FROM {relation_sql(store, 'allocinfo')} WHERE hostname = ? AND taken_at = ? "
                "ORDER BY site_key",
                [host, latest],
            ).fetchall()
    finally:
        con.close()
    return [
        SiteSample(file, line, function, module or "", subsystem or "", nbytes, calls)
        for file, line, function, module, subsystem, nbytes, calls in rows
    ]


CONTEXT_TOP = 20  # --result/--context without --top: bounded cardinality all the same


def context_from_result(path: str) -> tuple[list[TagRate], float]:
    from allocscope.collector.payloads import ContextPayload
    from allocscope.collector.result import read_result

    res = read_result(path)
    p = res.typed(ContextPayload, path)
    rows = [
        TagRate(
            t.tag,
            t.subsystem,
            t.calls_per_s,
            t.bytes_per_s,
            None if t.charged_share is None else t.charged_share * t.bytes_per_s,
        )
        for t in p.tags
    ]
    return rows, p.duration


def context_from_store(root: str, host: str) -> tuple[list[TagRate], float]:
    """The host's latest committed context interval."""
    store = open_store(root)
    con = connect()
    ctx, hosts = relation_sql(store, "context"), relation_sql(store, "hosts")
    try:
        with reading(store):
            got = con.execute(
                f"SELECT max(c.taken_at) FROM {ctx} c WHERE c.hostname = ? AND (c.source <> "
                f"'agent' OR EXISTS (SELECT 1 FROM {hosts} h WHERE h.hostname = c.hostname "
                "AND h.taken_at = c.taken_at))",
                [host],
            ).fetchone()
            latest = got[0] if got else None
            if latest is None:
                raise AllocscopeError(f"{root}: no context interval of host {host!r} in the store")
            rows = con.execute(
                "SELECT tag, subsystem, calls / interval_s, bytes / interval_s, "
                f"charged_bytes / interval_s, interval_s FROM {ctx} "
                "WHERE hostname = ? AND taken_at = ? AND row_kind = 'tag' ORDER BY tag",
                [host, latest],
            ).fetchall()
    finally:
        con.close()
    window = float(rows[0][5]) if rows else 0.0
    return [TagRate(t, s or "", c, b, ch) for t, s, c, b, ch, _ in rows], window


def run(args: argparse.Namespace) -> int:
    try:
        extra = parse_labels(args.label)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    check_extra_labels(extra)
    if args.top is not None and args.top < 0:
        raise AllocscopeError("--top must be >= 0")
    if args.host and not args.store:
        raise AllocscopeError("--host needs --store")
    if args.context and not args.store:
        raise AllocscopeError("--context needs --store (a context result file: --result)")
    if args.result or args.context:
        if args.min_bytes is not None:
            raise AllocscopeError("--min-bytes applies to allocinfo; context rows are cut by --top")
        if args.result:
            rows, window = context_from_result(args.result)
        else:
            rows, window = context_from_store(args.store, args.host or socket.gethostname())
        top = CONTEXT_TOP if args.top is None else args.top
        text = render_context(rows, window_s=window, top=top, extra_labels=extra)
        if args.output:
            write_text_atomic(args.output, text)
        else:
            sys.stdout.write(text)
        return 0
    if args.store:
        samples = from_store(args.store, args.host or socket.gethostname())
    else:
        sub = SubsystemMap.load(args.subsystems) if args.subsystems else default_map()
        samples = from_allocinfo(args.file, sub)
    text = render(samples, top=args.top, min_bytes=args.min_bytes, extra_labels=extra)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
