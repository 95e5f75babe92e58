"""``allocscope collect``: the fleet agent (see :mod:`allocscope.collector.agent`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from allocscope.cli.common import add_verb, count_arg, duration_arg, positive_arg
from allocscope.collector.host import parse_labels
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import AllocscopeError
from allocscope.reports.format import bytes_short

EXAMPLES = """\
  allocscope collect --store /mnt/fleet/store --interval 5m --label group=pilot
  allocscope collect --store /mnt/fleet/store --once        # from cron, one snapshot
  allocscope collect --store ./store --file saved-allocinfo.txt --once --label host=db7
  allocscope collect --store ./store --interval 1s --count 60 --jitter 0 --self-stats
  allocscope collect --store /mnt/fleet/store --interval 5m --context   # + per-tag callers/rates
  allocscope collect --store ./store --interval 30s --count 4 --jitter 0 --context --lifespan
  systemctl enable --now allocscope-collect   # scripts/allocscope-collect.service
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "collect",
        help="agent: snapshot allocinfo + host metadata into a store every interval",
        description="Snapshot /proc/allocinfo with host metadata and labels into the Parquet "
        "store every --interval (after a random start delay of up to --jitter). When the store "
        "cannot be written, snapshots are spooled locally (at most --spool-max; when full the "
        "newest spooled one is dropped, so the oldest go last; drops are counted) and flushed "
        "once it is back. SIGTERM/SIGINT stop it between snapshots (exit 143/130).",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--store", required=True, metavar="DIR", help="store root (shared path ok)")
    p.add_argument(
        "--interval",
        type=duration_arg,
        default=300.0,
        metavar="DURATION",
        help="time between snapshots (default 5m)",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="host label stored with every snapshot (repeatable), e.g. group=pilot",
    )
    p.add_argument("--once", action="store_true", help="take one snapshot and exit (cron)")
    p.add_argument("--count", type=positive_arg, metavar="N", help="stop after N snapshots")
    p.add_argument(
        "-f",
        "--file",
        metavar="ALLOCINFO",
        help="read this allocinfo copy instead of /proc/allocinfo",
    )
    p.add_argument(
        "--spool",
        metavar="DIR",
        help="local spool for when the store is unavailable (default "
        "/var/spool/allocscope as root, else ~/.cache/allocscope/spool)",
    )
    p.add_argument(
        "--spool-max",
        type=count_arg,
        default=1000,
        metavar="N",
        help="most snapshots kept in the spool (default 1000)",
    )
    p.add_argument(
        "--jitter",
        type=duration_arg,
        metavar="DURATION",
        help="random start delay up to this (default: one interval; 0 with --once)",
    )
    p.add_argument(
        "--self-stats",
        action="store_true",
        help="print the agent's own CPU per snapshot and RSS at exit",
    )
    p.add_argument("--subsystems", metavar="FILE.toml", help="extra subsystem rules")
    p.add_argument(
        "--lenient", action="store_true", help="skip malformed allocinfo lines instead of failing"
    )
    p.add_argument("--json", action="store_true", help="print --self-stats as JSON")
    p.add_argument(
        "--context",
        action="store_true",
        help="keep a context capture running (byte-sampled, inside --budget) and store each "
        "interval's per-tag rates, charged share and callers beside its snapshot",
    )
    p.add_argument(
        "--lifespan",
        action="store_true",
        help="keep a lifespan probe attached and store each interval's rows (lifespans of "
        "what was freed, outstanding and old allocations per site and caller, followed "
        "across intervals) beside the snapshot",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="FRACTION",
        help="--context: CPU budget of the sampled part, fraction of one CPU (default 0.002)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        labels = parse_labels(args.label)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    if args.interval <= 0 and not args.once and not args.count:
        raise AllocscopeError("--interval must be > 0 (or use --once / --count)")
    if (args.context or args.lifespan) and args.interval <= 0:
        raise AllocscopeError("--context/--lifespan need --interval > 0 (the capture window)")
    if args.budget is not None and not args.context:
        raise AllocscopeError("--budget applies to --context")
    jitter = args.jitter if args.jitter is not None else (0.0 if args.once else args.interval)
    # Imported here: the agent needs pyarrow, which the rest of the CLI must not load.
    from allocscope.collector.agent import Agent, AgentConfig, spool_default

    cfg = AgentConfig(
        store=args.store,
        interval=args.interval,
        labels=labels,
        file=args.file,
        spool=args.spool or spool_default(),
        spool_max=args.spool_max,
        jitter=jitter,
        once=args.once,
        count=args.count,
        lenient=args.lenient,
        context=args.context,
        lifespan=args.lifespan,
        budget=args.budget,
    )
    sub: SubsystemMap = SubsystemMap.load(args.subsystems) if args.subsystems else default_map()
    agent = Agent(cfg, subsystems=sub)
    rc = agent.run()
    if args.self_stats:
        s = agent.stats.summary(args.interval if args.interval > 0 else 60.0)
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            print(
                f"self-stats: {int(s['snapshots'])} snapshots, CPU per snapshot "
                f"{s['cpu_s_per_snapshot_mean'] * 1000:.1f} ms mean / "
                f"{s['cpu_s_per_snapshot_max'] * 1000:.1f} ms max, wall "
                f"{s['wall_s_per_snapshot_mean'] * 1000:.1f} ms, RSS "
                f"{bytes_short(s['rss_bytes'])} (peak {bytes_short(s['peak_rss_bytes'])}); "
                f"{s['cpu_percent_at_1min']:.4f}% of one CPU at a 1-minute interval, "
                f"{s['cpu_percent_at_interval']:.4f}% at this interval"
            )
    return rc
