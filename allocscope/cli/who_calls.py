"""``allocscope who-calls``: who calls an allocation site, live, sampled in kernel."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from allocscope.cli.common import (
    add_output_format,
    add_result_file,
    add_verb,
    emit_result,
    pid_arg,
    window_arg,
)
from allocscope.errors import AllocscopeError

DESCRIPTION = """\
Split one allocation site (an allocinfo line, or a function) by the callers behind it, live.

Events are filtered in kernel by the site's code range (kmem tracepoints' call_site, or fentry/
kprobe on the site function where the kernel allows), every matching event is counted, and a
1-in-N random sample has its kernel stack walked. The caller is the first frame above the site
that is not allocator or site-library machinery (e.g. xas_* for xas_alloc). Shares come with a
confidence interval that accounts for the sampling. With /proc/allocinfo, the tag's bytes and
calls (before/after the capture) are joined to the callers. Runs until Ctrl-C without -d;
Ctrl-C and SIGTERM still print and write what was captured.

A function that allocates pages directly (shmem_alloc_folio, do_anonymous_page, pte_alloc_one)
is no slab call_site and mm_page_alloc carries none, so the slab filter counts 0 events for it:
name it with --pages, and the context engine's page sampler finds its callers instead (the site
is the first frame past the page allocator in each sampled stack; estimates by bytes).
"""

EXAMPLES = """\
  allocscope who-calls xas_alloc -d 30              # who is behind lib/xarray.c func:xas_alloc
  allocscope who-calls lib/xarray.c:376 -d 30       # the same, named by its allocinfo tag
  allocscope who-calls xas_alloc -d 10 --workload tmpfs-write -o out/who.json
  allocscope who-calls getname_flags --depth 3 -d 10   # caller chains 3 frames deep
  allocscope who-calls alloc_empty_file,getname_flags -d 10   # two sites at once
  allocscope who-calls xas_alloc --sample 100       # walk 1 in 100 stacks (cheaper)
  allocscope who-calls xas_alloc --sample auto --budget 0.5%   # pick N for <=0.5% of a CPU
  allocscope who-calls xas_alloc --skip 'shmem_add_.*' -d 10   # look one level further up
  allocscope who-calls xas_alloc --folded -d 10 > xas.folded   # flame-graph input
  allocscope who-calls alloc_empty_file --per-process -p 1234 -d 10
  allocscope who-calls shmem_alloc_folio --pages -d 10 --workload tmpfs-write   # a page site
"""


def _sample_arg(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sample wants a number or 'auto', not {text!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError("--sample must be >= 1")
    return n


def _budget_arg(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget wants e.g. 1% or 0.01, not {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError("--budget must be in (0, 100%]")
    return v


def _share_arg(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("a share must be in [0, 1)")
    return v


def register(sub: Any) -> None:
    p = add_verb(
        sub, "who-calls", "who calls an allocation site (live, sampled)", DESCRIPTION, EXAMPLES, run
    )
    p.add_argument(
        "sites",
        nargs="+",
        metavar="SITE",
        help="function (xas_alloc), allocinfo tag (lib/xarray.c:376), or a,b",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=window_arg,
        default=None,
        help="capture for this long (10, 30s, 2m); default: until Ctrl-C",
    )
    p.add_argument(
        "--sample",
        type=_sample_arg,
        default=None,
        metavar="N|auto",
        help="walk the stack of 1 in N matching events (default: auto)",
    )
    p.add_argument(
        "--budget",
        type=_budget_arg,
        default=0.01,
        help="CPU budget for stack walks in auto mode, share of one CPU (default: 1%%)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "fentry", "kprobe", "raw_tracepoint", "tracepoint"],
        help="force a hook (default: the first that works: fentry, kprobe, "
        "raw_tracepoint, tracepoint)",
    )
    p.add_argument(
        "--pages",
        action="store_true",
        help="SITE allocates pages directly (no slab call_site names it): find its callers "
        "with the context engine's page sampler",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="REGEX",
        help="also treat frames matching REGEX (full match) as machinery; repeatable",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=1,
        metavar="N",
        help="show N caller frames (outermost;...;caller)",
    )
    p.add_argument(
        "--min-share",
        type=_share_arg,
        default=0.01,
        metavar="SHARE",
        help="fold callers under this share into an 'other' row (default: 1%%)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the share intervals (default: 0.95)",
    )
    p.add_argument("-p", "--pid", type=pid_arg, default=None, help="only this process (tgid)")
    p.add_argument("--comm", default=None, help="only tasks with this comm")
    p.add_argument("--per-process", action="store_true", help="split callers by process")
    p.add_argument(
        "--allocinfo",
        dest="allocinfo_file",
        default=None,
        metavar="FILE",
        help="join with this saved allocinfo instead of /proc/allocinfo",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip malformed allocinfo lines (counted in a warning) instead of failing",
    )
    p.add_argument(
        "--addresses",
        action="store_true",
        help="show raw kernel addresses (hidden by default: KASLR)",
    )
    p.add_argument(
        "--workload",
        default=None,
        metavar="NAME",
        help="run a built-in workload (open-close, tmpfs-write) during the capture",
    )
    add_result_file(p, "who-calls")
    add_output_format(p, folded=True)


def run(args: argparse.Namespace) -> int:
    from allocscope.collector.payloads import WhoCallsPayload
    from allocscope.collector.who_calls import Options, capture
    from allocscope.reports import who_calls as report

    if not 0.0 < args.confidence < 1.0:
        raise AllocscopeError("who-calls: --confidence must be in (0, 1)")
    if args.workload is not None:
        from allocscope.collector.workloads import check_name

        check_name(args.workload)
    opts = Options(
        sites=args.sites,
        duration=args.duration,
        sample=args.sample,
        budget=args.budget,
        backend=args.backend,
        skip=args.skip,
        depth=args.depth,
        min_share=args.min_share,
        pid=args.pid,
        comm=args.comm,
        per_process=args.per_process,
        allocinfo_file=args.allocinfo_file,
        lenient=args.lenient,
        addresses=args.addresses,
        workload=args.workload,
        confidence=args.confidence,
        pages=args.pages,
    )
    result = capture(opts, log=lambda m: print(m, file=sys.stderr))
    payload = result.typed(WhoCallsPayload)
    if args.folded:
        sys.stdout.write(report.folded(payload))
        args.json = False
        table: Callable[[], str] = lambda: ""  # noqa: E731
    else:
        table = lambda: report.text(payload, result.settings) + "\n"  # noqa: E731
    return emit_result(result, args, table)
