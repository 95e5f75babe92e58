"""``allocscope overhead``: CPU share and ns per call of the allocators on this host."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from allocscope.cli.common import (
    add_output_format,
    add_verb,
    emit_result,
    output_arg,
    pid_arg,
    window_arg,
)
from allocscope.errors import AllocscopeError
from allocscope.probes.oncpu import DEFAULT_FREQUENCY, DEFAULT_STACK_STORAGE

if TYPE_CHECKING:
    from allocscope.collector.overhead import AllocFunction
    from allocscope.collector.sampler import SamplerSettings

EXAMPLES = """\
  allocscope overhead -d 60 -o host.json            # 60 s, all CPUs, table + result file
  allocscope overhead -d 30 -F 999 -C 0-3           # finer sampling on CPUs 0-3
  allocscope overhead -d 20 -p 1234 --json          # only process 1234, JSON on stdout
  allocscope overhead -d 20 --workload tmpfs-write  # measure a built-in allocation workload
  allocscope overhead -d 30 --exact                 # also time each page allocation (fexit)
  allocscope overhead --function shmem_alloc_folio:page --label group=pilot -o p1.json
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "overhead",
        "CPU cost of the allocators (and of allocation profiling) on this host",
        "Sample on-CPU kernel stacks with a perf event (cpu-cycles, else cpu-clock) aggregated "
        "in kernel, count kmem tracepoint calls over the same window, and report each "
        "allocator function's inclusive/self CPU share, calls/s and estimated ns per call. "
        "Ctrl-C or SIGTERM ends early and still writes. Write -o files from pilot and control "
        "hosts and compare them with `allocscope ab`.",
        EXAMPLES,
        run,
    )
    add_measure_args(p)
    p.add_argument(
        "--label",
        action="append",
        metavar="K=V",
        help="label stored in the host metadata (repeatable), e.g. group=pilot",
    )
    p.add_argument(
        "--workload",
        choices=["open-close", "tmpfs-write"],
        help="run a built-in allocation workload alongside for the duration",
    )
    p.add_argument(
        "--show-absent",
        action="store_true",
        help="also list allocator functions this kernel does not have",
    )
    p.add_argument("--histogram", action="store_true", help="print the --exact histogram")
    p.add_argument(
        "-o", "--output", type=output_arg, metavar="FILE", help="write the result file (JSON) here"
    )
    add_output_format(p)


def add_measure_args(p: Any, *, default_duration: float | None = 30.0) -> None:
    """Flags shared by ``overhead`` and ``ab --toggle``: what and how to sample."""
    p.add_argument(
        "-d",
        "--duration",
        type=window_arg,
        default=default_duration,
        metavar="SECONDS",
        help=f"how long to measure (default {default_duration})",
    )
    p.add_argument(
        "-F",
        "--frequency",
        type=int,
        default=DEFAULT_FREQUENCY,
        metavar="HZ",
        help=f"sampling frequency per CPU (default {DEFAULT_FREQUENCY})",
    )
    p.add_argument("-C", "--cpus", metavar="CPUS", help="only these CPUs, e.g. 0-3,6")
    p.add_argument("-p", "--pid", type=pid_arg, metavar="PID", help="only this process")
    p.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="NAME[:KIND]",
        help="also account this function; KIND (page, kmem_cache, kmalloc, slab, "
        "any, other) picks the tracepoint that counts its calls",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="also time every call of the page allocator core with fentry/fexit "
        "(needs BTF + fentry)",
    )
    p.add_argument("--exact-function", metavar="NAME", help="the function --exact times")
    p.add_argument(
        "--stack-storage",
        type=int,
        default=DEFAULT_STACK_STORAGE,
        metavar="N",
        help=f"kernel stack map entries (default {DEFAULT_STACK_STORAGE})",
    )


def sampler_settings_from(
    args: argparse.Namespace,
) -> tuple[SamplerSettings, list[AllocFunction]]:
    """Validated :class:`SamplerSettings` and the function list from parsed flags."""
    from allocscope.collector.kallsyms import Kallsyms
    from allocscope.collector.overhead import (
        exact_target,
        parse_function_arg,
        resolve_functions,
    )
    from allocscope.collector.sampler import SamplerSettings, parse_cpus

    if not 1 <= args.frequency <= 100_000:
        raise AllocscopeError(f"-F {args.frequency}: frequency must be 1..100000 Hz")
    try:
        cpus = parse_cpus(args.cpus) if args.cpus else None
        extra = [parse_function_arg(f) for f in args.function]
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    ksyms = Kallsyms.load()
    functions = resolve_functions(ksyms.has, extra)
    for name, _ in extra:
        if not ksyms.has(name):
            raise AllocscopeError(f"--function {name}: not in /proc/kallsyms on this kernel")
    exact = None
    if args.exact or args.exact_function:
        exact = exact_target(ksyms.has, args.exact_function)
    settings = SamplerSettings(
        frequency=args.frequency,
        cpus=cpus,
        pid=args.pid,
        stack_storage=args.stack_storage,
        exact_function=exact,
    )
    return settings, functions


def run(args: argparse.Namespace) -> int:
    from allocscope.collector.host import parse_labels
    from allocscope.collector.overhead import run_overhead
    from allocscope.collector.payloads import OverheadPayload
    from allocscope.reports.overhead import histogram_table, overhead_table

    try:
        labels = parse_labels(args.label)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    settings, functions = sampler_settings_from(args)
    result = run_overhead(
        settings,
        args.duration,
        functions,
        labels,
        workload=args.workload,
        on_start=lambda: print(
            f"sampling for {args.duration:g} s... Ctrl-C ends early"
            if args.duration is not None
            else "sampling until Ctrl-C",
            file=sys.stderr,
            flush=True,
        ),
    )

    def table() -> str:
        text = overhead_table(result, show_absent=args.show_absent)
        exact = result.typed(OverheadPayload).exact
        if args.histogram and exact is not None:
            text += histogram_table(exact) + "\n"
        return text

    return emit_result(result, args, table)
