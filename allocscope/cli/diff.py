"""``allocscope diff``: what changed between two allocinfo reads (text or snapshots)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from allocscope.cli.common import (
    add_output_format,
    add_row_limit,
    add_verb,
    print_json,
    size_arg,
)
from allocscope.cli.top import (
    add_common_filters,
    load_source,
    load_subsystems,
    print_warnings,
)
from allocscope.collector.diff import DIFF_SORT_KEYS, diff_snapshots, rollup_changes, select_changes
from allocscope.errors import AllocscopeError

EXAMPLES = """\
  allocscope diff before.txt after.txt               # per-site change, largest first
  allocscope diff before.parquet after.parquet -n 20 --min-change 1M
  allocscope diff boot.txt.gz now.parquet --by subsystem   # change per subsystem
  allocscope diff allocinfo-6.12.txt allocinfo-7.3.txt --json   # across kernels: moved lines
"""

BY = ("site", "subsystem", "function", "file", "module")


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "diff",
        help="per-site change between two allocinfo reads or snapshots",
        description="Compare two allocinfo reads (text, .gz, '-' for stdin, or snapshot "
        ".parquet, auto-detected): change in bytes and calls per site, new and gone sites, "
        "sorted by absolute change. Sites are matched on file:line and function; what is "
        "left is matched on file+function and marked 'moved' (kernels move lines).",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("a", metavar="A", help="the before read")
    p.add_argument("b", metavar="B", help="the after read")
    add_row_limit(p)
    p.add_argument(
        "--min-change",
        type=size_arg,
        default=None,
        metavar="SIZE",
        help="hide rows whose absolute byte change is below SIZE (64K, 1M)",
    )
    p.add_argument(
        "-s",
        "--sort",
        choices=DIFF_SORT_KEYS,
        default="bytes",
        help="sort by absolute change in bytes or calls, or by name",
    )
    p.add_argument("--by", choices=BY, default="site", help="roll changes up by this key")
    p.add_argument(
        "--all",
        dest="include_same",
        action="store_true",
        help="also list sites that did not change",
    )
    add_common_filters(p)
    add_output_format(p, csv=True)


def run(args: argparse.Namespace) -> int:
    subsystems = load_subsystems(args.subsystems)
    a = load_source(args.a, lenient=args.lenient)
    b = load_source(args.b, lenient=args.lenient)
    for snap in (a, b):
        print_warnings(snap)
    d = diff_snapshots(a, b, subsystems)
    for note in d.notes:
        print(f"allocscope: note: {note}", file=sys.stderr)
    limit = args.top
    if limit is None and not (args.json or args.csv):
        limit = 30
    changes = groups = None
    try:
        if args.by == "site":
            changes = select_changes(
                d.changes,
                min_change=args.min_change,
                sort=args.sort,
                include_same=args.include_same,
            )
            total_rows = len(changes)
            changes = changes[:limit] if limit is not None else changes
            shown = len(changes)
        else:
            groups = rollup_changes(d.changes, args.by)
            if args.min_change is not None:
                groups = [g for g in groups if abs(g.delta_bytes) >= args.min_change]
            if not args.include_same:
                groups = [
                    g for g in groups if g.delta_bytes or g.delta_calls or set(g.counts) - {"same"}
                ]
            total_rows = len(groups)
            groups = groups[:limit] if limit is not None else groups
            shown = len(groups)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    from allocscope.reports import allocinfo as rep

    if args.json:
        print_json(rep.diff_json(d, changes, groups, by=args.by))
    elif args.csv:
        sys.stdout.write(rep.diff_csv(changes, groups, by=args.by))
    else:
        sys.stdout.write(
            rep.diff_table(
                d, changes, groups, by=args.by, human=args.human, hidden=total_rows - shown
            )
        )
    return 0
