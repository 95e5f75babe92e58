"""``allocscope context``: every allocation tag at once -- rates, memcg-charged share and the
callers behind each -- from one byte-sampled capture, joined with allocinfo."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from allocscope.cli.common import (
    add_output_format,
    add_result_file,
    add_row_limit,
    add_verb,
    emit_result,
    pid_arg,
    size_arg,
    window_arg,
)
from allocscope.errors import AllocscopeError

DESCRIPTION = """\
What every allocation tag is doing, live: allocinfo's live bytes and calls (or "-" on kernels
without it), plus what a sampled capture saw during the window: calls/s and bytes/s, the share
charged to a memory cgroup, and the top callers with their call and byte shares.

Every slab and page allocation is counted in kernel; sample points fall on the allocated
bytes, one per R bytes on average (big allocations are never missed, small ones not
over-sampled), and only they walk the stack. R follows a CPU budget (default 0.2% of one CPU
for the sampled part). Estimates carry confidence intervals (docs/design/context.md). Sites
are exact allocinfo tags where the kernel sets current->alloc_tag (allocation profiling,
matching headers, vm.mem_profiling=1); otherwise call sites, and the output says so.
"""

EXAMPLES = """\
  allocscope context -d 10                        # every tag, 10 s, default budget
  allocscope context -d 10 --workload open-close -n 5 --callers 3
  allocscope context -d 30 --by subsystem         # rates and charged share per subsystem
  allocscope context -d 10 --function 'getname*' --path 'fs/**'
  allocscope context -d 10 -m 1M                  # tags that allocated >= 1 MiB in the window
  allocscope context -d 10 --rate 64K             # fixed R: one point per 64 KiB
  allocscope context -d 10 --budget 0.5%          # more points, more CPU
  allocscope context -d 10 --folded > ctx.folded  # flame-graph input, one block per tag
  allocscope context -d 60 -o ctx.json            # the result file (kind context)
"""


def _budget_arg(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--budget wants e.g. 0.2% or 0.002, not {text!r}"
        ) from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError("--budget must be in (0, 100%]")
    return v


def _rate_arg(text: str) -> int | None:
    if text == "auto":
        return None
    v = size_arg(text)
    if v < 1:
        raise argparse.ArgumentTypeError("--rate must be >= 1 byte")
    return int(v)


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "context",
        "every allocation tag: rates, memcg charge, callers (live, byte-sampled)",
        DESCRIPTION,
        EXAMPLES,
        run,
    )
    p.add_argument(
        "-d",
        "--duration",
        type=window_arg,
        default=None,
        help="capture for this long (10, 30s, 2m); default: until Ctrl-C",
    )
    p.add_argument(
        "--rate",
        type=_rate_arg,
        default=None,
        metavar="BYTES|auto",
        help="mean bytes between sample points, R (64K, 1M; 1 = census); default: auto",
    )
    p.add_argument(
        "--budget",
        type=_budget_arg,
        default=0.002,
        help="CPU budget of the sampled part in auto mode, share of one CPU (default: 0.2%%)",
    )
    add_row_limit(p, help="show the first N tags (default: 20 in a table, all with --json)")
    p.add_argument(
        "-m",
        "--min-bytes",
        type=size_arg,
        default=None,
        metavar="SIZE",
        help="hide tags that allocated less than SIZE (estimated) during the window",
    )
    p.add_argument(
        "--callers", type=int, default=3, metavar="N", help="callers shown per tag (default: 3)"
    )
    p.add_argument(
        "--depth", type=int, default=1, metavar="N", help="show N caller frames (outer;...;caller)"
    )
    from allocscope.collector.rollup import GROUP_BY

    p.add_argument("--by", choices=GROUP_BY, default="site", help="roll tags up by this key")
    p.add_argument(
        "--function",
        action="append",
        metavar="GLOB",
        help="only functions matching GLOB (repeatable; clone suffixes ignored)",
    )
    p.add_argument(
        "--path",
        action="append",
        metavar="GLOB",
        help="only source files matching GLOB ('fs/**'; needs exact tags or allocinfo)",
    )
    p.add_argument("--module", action="append", metavar="GLOB", help="only modules matching GLOB")
    p.add_argument(
        "--subsystems",
        metavar="FILE.toml",
        help="subsystem rules tried before the defaults (docs/design/allocinfo.md)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="REGEX",
        help="also treat frames matching REGEX (full match) as machinery; repeatable",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the intervals (default: 0.95)",
    )
    p.add_argument("-p", "--pid", type=pid_arg, default=None, help="only this process (tgid)")
    p.add_argument("--comm", default=None, help="only tasks with this comm")
    p.add_argument(
        "--no-pages", dest="pages", action="store_false", help="do not hook page allocations"
    )
    p.add_argument(
        "--workload",
        default=None,
        metavar="NAME",
        help="run a built-in workload (open-close, tmpfs-write) during the capture",
    )
    add_result_file(p, "context")
    add_output_format(p, folded=True)


def run(args: argparse.Namespace) -> int:
    from allocscope.collector.context import Options, capture
    from allocscope.collector.payloads import ContextPayload
    from allocscope.collector.rollup import Filters
    from allocscope.collector.subsystem import SubsystemMap
    from allocscope.reports import context as report

    # first: a bad rules file is named before anything else is checked or compiled
    subsystems = SubsystemMap.load(args.subsystems) if args.subsystems else None
    if not 0.0 < args.confidence < 1.0:
        raise AllocscopeError("context: --confidence must be in (0, 1)")
    if args.callers < 0:
        raise AllocscopeError("context: --callers must be >= 0")
    if args.workload is not None:
        from allocscope.collector.workloads import check_name

        check_name(args.workload)
    table_mode = not (args.json or args.folded)
    opts = Options(
        duration=args.duration,
        rate=args.rate,
        budget=args.budget,
        pid=args.pid,
        comm=args.comm,
        workload=args.workload,
        depth=args.depth,
        callers=args.callers,
        confidence=args.confidence,
        filters=Filters.of(args.function, args.path, args.module),
        by=args.by,
        limit=args.top if args.top is not None else (20 if table_mode else None),
        min_bytes=args.min_bytes,
        subsystems=subsystems,
        pages=args.pages,
        skip=args.skip,
    )
    result = capture(opts, log=lambda m: print(m, file=sys.stderr))
    payload = result.typed(ContextPayload)
    if args.folded:
        sys.stdout.write(report.folded(payload))
        args.json = False
        return emit_result(result, args, lambda: "")
    return emit_result(result, args, lambda: report.text(payload, result.settings))
