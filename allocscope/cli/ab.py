"""``allocscope ab``: pilot vs control host groups, or profiling on/off on one host."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from allocscope.cli.common import add_output_format, add_verb, emit_result, output_arg, window_arg
from allocscope.errors import AllocscopeError

EXAMPLES = """\
  allocscope ab --pilot p*.json --control c*.json              # host groups, table + verdict
  allocscope ab --pilot p*.json --control c*.json --json -o ab.json
  allocscope ab --pilot p*.json --control c*.json --stat median --force  # mixed kernels
  allocscope ab --toggle -d 120 --period 10                    # one host, vm.mem_profiling 1/0
  allocscope ab --toggle -d 20 --period 2 -F 999 --exact --workload tmpfs-write -o t.json
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "ab",
        "compare allocator CPU cost: pilot vs control hosts, or profiling on vs off",
        "Groups: read `allocscope overhead -o` results and compare each allocator function's "
        "ns per call and CPU share between the groups: ratio with a bootstrap 95% CI, "
        "Mann-Whitney U p-value, n per group, and a one-line verdict. Results with different "
        "event types, frequencies or kernels are refused unless --force.\n\n"
        "--toggle: on this host, alternate vm.mem_profiling 1/0 every --period, pair adjacent "
        "windows and report the on/off ratio per function (paired bootstrap CI, Wilcoxon "
        "signed-rank p). The original value is always restored (normal exit, error, Ctrl-C, "
        "SIGTERM).",
        EXAMPLES,
        run,
    )
    p.add_argument("--pilot", nargs="+", metavar="FILE", help="overhead results of pilot hosts")
    p.add_argument("--control", nargs="+", metavar="FILE", help="overhead results of control hosts")
    p.add_argument(
        "--force",
        action="store_true",
        help="compare results with different event types, frequencies or kernels",
    )
    p.add_argument(
        "--stat",
        choices=["mean", "median"],
        default="mean",
        help="group statistic whose ratio is reported (default mean)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap RNG seed (fixed default)")
    p.add_argument(
        "-o",
        "--output",
        type=output_arg,
        metavar="FILE",
        help="write the ab result file (JSON) here",
    )
    add_output_format(p)
    t = p.add_argument_group("one host: --toggle")
    t.add_argument(
        "--toggle",
        action="store_true",
        help="alternate vm.mem_profiling on this host instead of comparing files",
    )
    t.add_argument(
        "--period",
        type=window_arg,
        default=10.0,
        metavar="SECONDS",
        help="length of each on/off window (default 10)",
    )
    t.add_argument(
        "--workload",
        choices=["open-close", "tmpfs-write"],
        help="run a built-in allocation workload for the whole toggle run",
    )
    t.add_argument("--label", action="append", metavar="K=V", help="host label (repeatable)")
    t.add_argument("--sysctl", default=None, help=argparse.SUPPRESS)  # tests: a stand-in file
    from allocscope.cli.overhead import add_measure_args

    add_measure_args(t, default_duration=120.0)


def run(args: argparse.Namespace) -> int:
    if args.toggle:
        if args.pilot or args.control:
            raise AllocscopeError("--toggle measures this host; don't pass --pilot/--control")
        return run_toggle_cli(args)
    if not args.pilot or not args.control:
        raise AllocscopeError("give --pilot FILE.. and --control FILE.. (or --toggle)")
    return run_groups(args)


def _seed(args: argparse.Namespace) -> int:
    from allocscope.collector.stats import DEFAULT_SEED

    return DEFAULT_SEED if args.seed is None else int(args.seed)


def run_groups(args: argparse.Namespace) -> int:
    from allocscope.collector.ab import Loaded, compare_groups
    from allocscope.collector.host import collect_host_metadata
    from allocscope.collector.result import Result, now, read_result
    from allocscope.reports.overhead import ab_table

    pilot = [Loaded(p, read_result(p, expect_kind="overhead")) for p in args.pilot]
    control = [Loaded(p, read_result(p, expect_kind="overhead")) for p in args.control]
    payload = compare_groups(
        pilot, control, stat=args.stat, alpha=args.alpha, seed=_seed(args), force=args.force
    )
    result = Result.of(
        payload,
        collect_host_metadata(),
        now(),
        0.0,
        {
            "stat": args.stat,
            "alpha": args.alpha,
            "seed": _seed(args),
            "force": args.force,
            "pilot": args.pilot,
            "control": args.control,
        },
    )
    return emit_result(result, args, lambda: ab_table(payload))


def run_toggle_cli(args: argparse.Namespace) -> int:
    from allocscope.cli.overhead import sampler_settings_from
    from allocscope.collector.host import MEM_PROFILING_SYSCTL, parse_labels
    from allocscope.collector.payloads import TogglePayload
    from allocscope.collector.toggle import Sysctl, capture_toggle
    from allocscope.reports.overhead import toggle_table

    try:
        labels = parse_labels(args.label)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    if args.period <= 0:
        raise AllocscopeError("--period must be positive")
    duration = args.duration if args.duration is not None else 120.0
    windows = int(duration // args.period)
    windows -= windows % 2
    if windows < 2:
        raise AllocscopeError(
            f"-d {duration:g} with --period {args.period:g} gives fewer than "
            "2 windows; make -d at least twice --period"
        )
    sysctl = Sysctl(args.sysctl or MEM_PROFILING_SYSCTL)
    sysctl.check_toggleable()  # refuse before spending time compiling probes
    settings, functions = sampler_settings_from(args)
    result = capture_toggle(
        sysctl,
        settings,
        functions,
        duration=duration,
        period=args.period,
        windows=windows,
        workload=args.workload,
        labels=labels,
        alpha=args.alpha,
        seed=_seed(args),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    return emit_result(result, args, lambda: toggle_table(result.typed(TogglePayload)))
