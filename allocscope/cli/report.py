"""``allocscope report``: one self-contained, offline HTML report from files, a store, results."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from allocscope.cli.common import add_row_limit, add_verb, output_arg
from allocscope.errors import AllocscopeError

EXAMPLES = """\
  allocscope report --store /srv/allocscope -o fleet.html         # fleet dashboards
  allocscope report --file /proc/allocinfo -o host.html            # this host, now
  allocscope report --file before.txt --file after.txt -o d.html   # one host, two snapshots
  allocscope report --result xas.json -o xas.html                  # who-calls as a flame graph
  allocscope report --result p1.json p2.json c1.json -o cost.html  # overhead results
  allocscope report --diff before.json after.json -o change.html   # who-calls of one site, twice
  allocscope report --diff ctx-a.json ctx-b.json -n 5 -o ctx.html  # two context results, top 5 tags
  allocscope report --diff ctx-a.json ctx-b.json --tag getname_flags -o getname.html
  allocscope report --store DIR --result xas.json -n 50 --title "pilot week 3" -o r.html
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "report",
        "one self-contained HTML report (charts, tables, flame graphs)",
        "Write one HTML file that works offline (no CDN, no plotting library: static SVG plus a "
        "small inlined script for flame-graph zoom/search and table sorting): bytes per "
        "subsystem per host or snapshot, trends over time, top sites and top changes, pilot "
        "vs control (hosts labelled group=pilot / group=control), who-calls results as flame "
        "graphs with their caller tables, and overhead results. Inputs combine freely.",
        EXAMPLES,
        run,
    )
    p.add_argument(
        "--store",
        metavar="DIR",
        help="fleet store written by `collect`/`ingest` (<DIR>/allocinfo/dt=*/)",
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="ALLOCINFO",
        help="saved allocinfo (text, .gz, or a `snapshot` Parquet file); repeat for "
        "successive snapshots of one host",
    )
    p.add_argument(
        "--result",
        nargs="+",
        action="extend",
        default=[],
        metavar="RESULT.json",
        help="result files from who-calls, overhead, ab (any number)",
    )
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="two who-calls results of the same site, or two context results: a differential "
        "flame graph (B vs A, growth red, shrinkage blue) and caller share changes with "
        "intervals (context: per tag, the -n biggest tags both hold; tags only in B listed as "
        "new, only in A as gone)",
    )
    p.add_argument(
        "--tag",
        metavar="TAG_OR_FUNCTION",
        help="with --diff of two context results: compare only this tag (as the result names "
        "it, e.g. 'mm/slub.c:3347 func:alloc_slab_page' or a call site), or every tag of "
        "this function",
    )
    p.add_argument(
        "-o",
        "--output",
        type=output_arg,
        required=True,
        metavar="FILE.html",
        help="where to write the report ('-' = stdout)",
    )
    add_row_limit(p, 20, "rows in the top-sites and top-changes tables (default 20)")
    p.add_argument(
        "--max-bars",
        type=int,
        default=40,
        metavar="N",
        help="at most N bars (hosts or snapshots) in the stacked chart (default 40)",
    )
    p.add_argument("--title", default=None, help="page title (default: from the inputs)")
    p.add_argument(
        "--subsystems",
        metavar="TOML",
        help="subsystem mapping override for --file inputs (docs/design/allocinfo.md)",
    )


def _default_title(args: argparse.Namespace) -> str:
    if args.store:
        return f"allocscope fleet report: {os.path.basename(os.path.abspath(args.store))}"
    if args.file:
        return f"allocscope report: {', '.join(os.path.basename(f) for f in args.file[:3])}"
    if args.diff:
        return f"allocscope report: {' vs '.join(os.path.basename(f) for f in args.diff[::-1])}"
    return "allocscope report"


def run(args: argparse.Namespace) -> int:
    from allocscope.collector.atomic import write_text_atomic
    from allocscope.collector.report_data import gather
    from allocscope.collector.subsystem import SubsystemMap
    from allocscope.reports.html import render_report

    if not (args.store or args.file or args.result or args.diff):
        raise AllocscopeError(
            "nothing to report: give --store DIR, --file ALLOCINFO, --result RESULT.json "
            "and/or --diff A.json B.json"
        )
    if args.tag is not None and not args.diff:
        raise AllocscopeError("--tag selects a tag of a --diff of two context results")
    if args.top < 1 or args.max_bars < 1:
        raise AllocscopeError("-n/--top and --max-bars must be at least 1")
    subsystems = SubsystemMap.load(args.subsystems) if args.subsystems else None
    data = gather(
        title=args.title or _default_title(args),
        files=args.file,
        store=args.store,
        results=args.result,
        diff=args.diff,
        diff_tag=args.tag,
        top_n=args.top,
        max_bars=args.max_bars,
        subsystems=subsystems,
    )
    page = render_report(data)
    if args.output == "-":
        sys.stdout.write(page)
        return 0
    write_text_atomic(args.output, page)
    what = []
    if data.hosts:
        what.append(
            f"{len(data.hosts)} host(s), {sum(h.snapshots for h in data.hosts)} snapshot(s)"
        )
    if data.results:
        what.append(f"{len(data.results)} result(s)")
    if data.diffs:
        what.append(f"{len(data.diffs)} comparison(s)")
    print(
        f"wrote {args.output} ({len(page.encode()) / 1024:.0f} KiB; {'; '.join(what)})",
        file=sys.stderr,
    )
    return 0
