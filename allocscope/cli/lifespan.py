"""``allocscope lifespan``: how long allocations live, per site (or tag) and caller, sampled.

``allocscope leaks`` (allocscope/cli/leaks.py) shares the capture and options; it shows the
outstanding allocations older than ``--older`` instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from allocscope.cli.common import (
    add_output_format,
    add_result_file,
    add_row_limit,
    add_verb,
    duration_arg,
    emit_result,
    pid_arg,
    window_arg,
)
from allocscope.errors import AllocscopeError

DESCRIPTION = """\
Follow a sample of kernel allocations (kmalloc, kmem_cache_alloc, pages) to their free and
show, per allocation site (or exact allocinfo tag, where the kernel has them) and caller: how
long the freed ones lived (mean, p50, p90, p99, with intervals), how many are still live at
the end of the window, and their age. An allocation is tracked when its address passes a hash
(1 in 2^--addr-shift) and the byte sampler puts a point on it (mean gap --rate bytes; pages
on their own sampler, --page-rate), so the vast majority of frees are dismissed from the
address alone. Estimates are weighted by the
inverse of that probability, with 95% intervals. Runs until Ctrl-C without -d.
"""

EXAMPLES = """\
  allocscope lifespan -d 10                          # every site, 10 s
  allocscope lifespan -d 10 --workload open-close    # with a built-in workload
  allocscope lifespan -d 30 -p 1234 -n 20            # only allocations by process 1234
  allocscope lifespan -d 10 --rate 512 --addr-shift 2   # denser sample (costs more)
  allocscope lifespan -d 10 --json > life.json
  allocscope lifespan -d 60 -o life.json             # also write the result file
  allocscope leaks -d 30                             # outstanding allocations older than 1 s
"""


def add_capture_options(p: argparse.ArgumentParser, rows: int = 30) -> None:
    """The options ``lifespan`` and ``leaks`` share (``rows``: the table's default -n)."""
    p.add_argument(
        "-d",
        "--duration",
        type=window_arg,
        default=None,
        help="capture for this long (10, 30s, 2m); default: until Ctrl-C",
    )
    p.add_argument(
        "--rate",
        type=int,
        default=None,
        metavar="BYTES",
        help="mean gap between byte sample points on slab objects (default: 4096)",
    )
    p.add_argument(
        "--page-rate",
        type=int,
        default=None,
        metavar="BYTES",
        help="mean gap between byte sample points on page allocations (default: 16384: about "
        "one kept page in four holds a point; at 4096 nearly each does, and pays a stack walk)",
    )
    p.add_argument(
        "--addr-shift",
        type=int,
        default=None,
        metavar="S",
        help="track 1 in 2^S addresses (default: 5; 0 with --rate 1 tracks every object)",
    )
    p.add_argument(
        "--census", action="store_true", help="track every object (--rate 1 --addr-shift 0)"
    )
    p.add_argument(
        "-p", "--pid", type=pid_arg, default=None, help="only allocations by this process"
    )
    p.add_argument(
        "--no-pages", action="store_true", help="slab objects only (no page allocations)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="interval confidence level (default: 0.95)"
    )
    p.add_argument(
        "--workload",
        default=None,
        metavar="NAME",
        help="run a built-in workload (open-close, tmpfs-write, leak-pipes) during the capture",
    )
    add_result_file(p, "lifespan")
    add_row_limit(p, help=f"show the first N rows (default: {rows} in a table, all with --json)")
    add_output_format(p)


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "lifespan",
        "how long allocations live, per site and caller (live, sampled)",
        DESCRIPTION,
        EXAMPLES,
        run,
    )
    add_capture_options(p)
    p.add_argument(
        "--older",
        type=duration_arg,
        default=None,
        metavar="T",
        help="count live objects older than T as old (default: 1s, or half the window)",
    )


def run_view(args: argparse.Namespace, view: str) -> int:
    from allocscope.collector.lifespan import Options, capture
    from allocscope.collector.payloads import LifespanPayload
    from allocscope.probes.lifespan import (
        DEFAULT_ADDR_SHIFT,
        DEFAULT_PAGE_RATE,
        DEFAULT_SAMPLE_RATE,
    )
    from allocscope.reports import lifespan as report

    if not 0.0 < args.confidence < 1.0:
        raise AllocscopeError(f"{view}: --confidence must be in (0, 1)")
    if args.census:
        if args.rate is not None or args.addr_shift is not None or args.page_rate is not None:
            raise AllocscopeError(
                f"{view}: --census is --rate 1 --page-rate 1 --addr-shift 0; give one or the other"
            )
        rate, page_rate, shift = 1, 1, 0
    else:
        rate = DEFAULT_SAMPLE_RATE if args.rate is None else args.rate
        page_rate = DEFAULT_PAGE_RATE if args.page_rate is None else args.page_rate
        shift = DEFAULT_ADDR_SHIFT if args.addr_shift is None else args.addr_shift
    older = None if args.older is None else int(args.older * 1e9)
    if older is not None and older <= 0:
        raise AllocscopeError(f"{view}: --older must be positive")
    opts = Options(
        duration=args.duration,
        sample_rate=rate,
        page_rate=page_rate,
        addr_shift=shift,
        pid=args.pid,
        workload=args.workload,
        older_ns=older,
        view=view,
        confidence=args.confidence,
        pages=not args.no_pages,
    )
    print(f"{view}: compiling and attaching (a few seconds)...", file=sys.stderr)
    result = capture(opts)
    payload = result.typed(LifespanPayload)
    top = args.top if args.top is not None else (10 if view == "leaks" else 30)
    return emit_result(result, args, lambda: report.text(payload, top))


def run(args: argparse.Namespace) -> int:
    return run_view(args, "lifespan")
