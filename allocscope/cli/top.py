"""``allocscope top``: where kernel memory is, ranked, filtered and rolled up.

Reads ``/proc/allocinfo`` (or a saved copy, or a snapshot), or — on kernels without
allocation profiling — traces the kmem tracepoints for ``--live SECONDS`` and ranks call
sites the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from allocscope.cli.common import (
    add_output_format,
    add_result_file,
    add_row_limit,
    add_verb,
    pid_arg,
    positive_arg,
    print_json,
    size_arg,
    window_arg,
    write_result,
)
from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocinfoSnapshot, read_allocinfo
from allocscope.collector.rollup import GROUP_BY, SORT_KEYS, Filters, rollup
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.collector.top_interval import WATCH_SORT_KEYS
from allocscope.errors import AllocscopeError

EXAMPLES = """\
  allocscope top                            # biggest allocation sites, live /proc/allocinfo
  allocscope top -n 20 --by subsystem       # memory per subsystem (net, mm, fs/ext4, ...)
  allocscope top -s calls --function 'kmalloc*' --path 'fs/**'
  allocscope top -m 10M --by function       # functions holding at least 10 MiB
  allocscope top --file allocinfo.txt.gz --json   # a saved copy (text, gzip, or snapshot)
  cat /proc/allocinfo | allocscope top --file - --csv
  allocscope top --live 5 --workload open-close -n 15   # no allocinfo? trace kmem for 5 s
  allocscope top --live 5 --exact-frees     # live bytes exact (every object tracked)
  allocscope top --live 10 -o live.json     # ... and keep the capture as a result file
  allocscope top -i 2 -s rate               # refresh every 2 s, fastest-growing first
  allocscope top -i 1 --iterations 10 --by subsystem --json > growth.ndjson
  allocscope top --live -i 1 -s dcalls      # no allocinfo: one kmem probe, Δ per second
  allocscope top --live -i 2 --iterations 5 --workload open-close | less
"""

# `--live` without SECONDS: with --interval, the probe stays attached for the whole watch
LIVE_WATCH = 0.0

NO_ALLOCINFO = (
    f"{PROC_ALLOCINFO} is not present: this kernel lacks CONFIG_MEM_ALLOC_PROFILING "
    "(Linux 6.10+); use `allocscope top --live SECONDS` to trace allocations instead, "
    "or --file FILE to read a saved copy"
)


def _is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def load_source(path: str | None, *, lenient: bool = False) -> AllocinfoSnapshot:
    """An allocinfo read from the live file (None), text/gzip/stdin, or a snapshot .parquet."""
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        raise AllocscopeError(NO_ALLOCINFO)
    if path is not None and path != "-" and _is_parquet(path):
        # pyarrow is imported only for snapshots: text reads must work where it can't load
        # (e.g. a QEMU guest whose CPU model lacks SSE4.2).
        from allocscope.collector.snapshot import read_snapshot

        return read_snapshot(path)
    return read_allocinfo(path, lenient=lenient)


def read_source(args: argparse.Namespace) -> AllocinfoSnapshot:
    """``--file`` as given, or this host's allocinfo now: through the 7.3+ ioctl when the
    filters name exact functions or files, bracketed by CONTENT_ID (collector/allocinfo_live.py).
    ``-m`` is not pushed into the kernel: totals cover tags below it too."""
    if args.file is not None:
        return load_source(args.file, lenient=args.lenient)
    if not os.path.exists(PROC_ALLOCINFO):
        raise AllocscopeError(NO_ALLOCINFO)
    from allocscope.collector.allocinfo_live import LiveFilter, read_live

    flt = LiveFilter(tuple(args.function or ()), tuple(args.path or ()), tuple(args.module or ()))
    return read_live(flt, lenient=args.lenient)


def print_warnings(snap: AllocinfoSnapshot, limit: int = 3) -> None:
    """The first few parse warnings on stderr, and how many malformed lines were skipped."""
    if snap.skipped:
        s = "s" if snap.skipped != 1 else ""
        print(
            f"allocscope: warning: {snap.source}: skipped {snap.skipped} malformed line{s} "
            "(--lenient)",
            file=sys.stderr,
        )
    for w in snap.warnings[:limit]:
        print(f"allocscope: warning: {w}", file=sys.stderr)
    if len(snap.warnings) > limit:
        print(f"allocscope: warning: ... and {len(snap.warnings) - limit} more", file=sys.stderr)


def load_subsystems(path: str | None) -> SubsystemMap:
    return SubsystemMap.load(path) if path else default_map()


def add_common_filters(p: argparse.ArgumentParser) -> None:
    """Input and subsystem flags shared by top and diff."""
    p.add_argument(
        "--subsystems",
        metavar="FILE.toml",
        help="subsystem rules tried before the defaults (docs/design/allocinfo.md)",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip malformed lines (counted in a warning) instead of failing",
    )
    p.add_argument(
        "--exact",
        dest="human",
        action="store_false",
        help="print exact byte and call counts instead of human units",
    )


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "top",
        help="rank allocation sites by bytes or calls (allocinfo or live)",
        description="Rank /proc/allocinfo tags by bytes, calls or name; filter by function, "
        "source path or module globs; roll up by function, file, module or subsystem. Totals "
        "cover everything the filters matched, not only the rows shown.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument(
        "-s",
        "--sort",
        choices=sorted(set(SORT_KEYS) | set(WATCH_SORT_KEYS)),
        default="bytes",
        help="sort key; with --interval also delta (Δbytes), rate (Δbytes/s), dcalls (Δcalls)",
    )
    p.add_argument(
        "-i",
        "--interval",
        type=window_arg,
        metavar="SECONDS",
        help="refresh every SECONDS with the change since the last read: a full-screen view "
        "on a terminal (keys b c d r k n sort, q quits), repeated tables in a pipe",
    )
    p.add_argument(
        "--iterations",
        type=positive_arg,
        metavar="N",
        help="with --interval: stop after N refreshes (plain tables, never full-screen)",
    )
    add_row_limit(p)
    p.add_argument(
        "-m",
        "--min-bytes",
        type=size_arg,
        default=None,
        metavar="SIZE",
        help="hide rows below SIZE (4096, 64K, 10M, 1G)",
    )
    p.add_argument("--by", choices=GROUP_BY, default="site", help="roll rows up by this key")
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
        help="only source files matching GLOB: 'fs/**', 'mm/*.c', '*.h' (without '/': the "
        "base name; '*' stays in one directory, '**' crosses them; repeatable)",
    )
    p.add_argument(
        "--module",
        action="append",
        metavar="GLOB",
        help="only modules matching GLOB; built-in tags are 'vmlinux' (repeatable)",
    )
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="read a saved allocinfo (text, .gz, '-' for stdin, or a snapshot "
        ".parquet) instead of /proc/allocinfo",
    )
    p.add_argument(
        "--live",
        type=window_arg,
        nargs="?",
        const=LIVE_WATCH,
        metavar="SECONDS",
        help="trace kmem tracepoints for SECONDS and rank call sites (any kernel); with "
        "--interval, no SECONDS: one probe stays attached until q, Ctrl-C or --iterations",
    )
    p.add_argument(
        "--workload",
        metavar="NAME",
        help="with --live: run a built-in workload during the window (open-close, tmpfs-write)",
    )
    p.add_argument(
        "-p", "--pid", type=pid_arg, metavar="PID", help="with --live: only this process"
    )
    p.add_argument(
        "--no-frees",
        dest="frees",
        action="store_false",
        help="with --live: ignore frees (bytes allocated, not live bytes)",
    )
    p.add_argument(
        "--exact-frees",
        action="store_true",
        help="with --live: track every object to its free (exact live bytes, ~6x the cost; "
        "default: estimated from 1 in 32 addresses)",
    )
    add_result_file(p, "top-live", when="with --live SECONDS")
    add_common_filters(p)
    add_output_format(p, csv=True)


def _live(args: argparse.Namespace) -> tuple[AllocinfoSnapshot, str, dict[str, Any], Any]:
    if args.file:
        raise AllocscopeError(
            "--live and --file are exclusive: one reads allocinfo, the other traces"
        )
    try:
        from allocscope.collector import top_live
    except ImportError as e:
        raise AllocscopeError(f"--live is not available in this build ({e})") from None
    cap = top_live.capture_top_live(
        args.live,
        frees=args.frees,
        exact_frees=args.exact_frees,
        pid=args.pid,
        workload=args.workload,
        log=lambda m: print(m, file=sys.stderr),
    )
    what = "live bytes" if cap.bytes_kind == "live" else f"{cap.bytes_kind} bytes"
    if cap.bytes_kind == "live" and not args.exact_frees:
        what += " (estimated from 1 in 32 addresses; --exact-frees for exact)"
    title = (
        f"live capture, {what} per function: backend {cap.backend}, window "
        f"{cap.duration:.1f}s, {cap.events} events, {cap.lost} lost"
        + (" (interrupted)" if cap.interrupted else "")
    )
    extra = {
        "live": {
            "backend": cap.backend,
            "bytes_kind": cap.bytes_kind,
            "duration": cap.duration,
            "events": cap.events,
            "lost": cap.lost if isinstance(cap.lost, int) else dict(cap.lost),
            "interrupted": cap.interrupted,
        }
    }
    return cap.snapshot, title, extra, cap.result


def _watch(args: argparse.Namespace, subsystems: SubsystemMap) -> int:
    from allocscope.cli.top_watch import run_watch
    from allocscope.collector.containers import slab_objects_bytes
    from allocscope.collector.top_interval import Watcher

    if args.live is not None:
        return _watch_live(args, subsystems)
    if args.file == "-":
        raise AllocscopeError("--interval re-reads its input: stdin cannot be read twice")
    if args.csv:
        raise AllocscopeError("--interval prints tables or --json lines, not --csv")
    path = args.file
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        raise AllocscopeError(NO_ALLOCINFO)
    watcher = Watcher(
        lambda: read_source(args),
        by=args.by,
        filters=Filters.of(args.function, args.path, args.module),
        subsystems=subsystems,
        min_bytes=args.min_bytes,
        slab_objects=slab_objects_bytes if path is None else None,
    )
    return run_watch(args, watcher)


def _watch_live(args: argparse.Namespace, subsystems: SubsystemMap) -> int:
    """``--live --interval``: one kmem_sites probe attached for the whole watch, its
    cumulative per-site sums read each refresh (collector/top_live_watch.py)."""
    from allocscope.cli.top_watch import run_watch
    from allocscope.collector.top_interval import Watcher
    from allocscope.probes.loader import interrupting_signal

    if args.file:
        raise AllocscopeError(
            "--live and --file are exclusive: one reads allocinfo, the other traces"
        )
    if args.live != LIVE_WATCH:
        raise AllocscopeError(
            "with --interval, --live takes no SECONDS: the watch runs until q, Ctrl-C or "
            "--iterations N"
        )
    if args.csv:
        raise AllocscopeError("--interval prints tables or --json lines, not --csv")
    try:
        from allocscope.collector import top_live_watch
    except ImportError as e:
        raise AllocscopeError(f"--live is not available in this build ({e})") from None
    with top_live_watch.watch_top_live(
        frees=args.frees,
        exact_frees=args.exact_frees,
        pid=args.pid,
        workload=args.workload,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    ) as reader:
        watcher = Watcher(
            reader,
            by=args.by,
            filters=Filters.of(args.function, args.path, args.module),
            subsystems=subsystems,
            min_bytes=args.min_bytes,
        )
        return run_watch(args, watcher)
    # the window ended on Ctrl-C or SIGTERM outside the refresh loop; the probe is detached
    return 128 + interrupting_signal()


def run(args: argparse.Namespace) -> int:
    for flag in ("workload", "pid"):
        if getattr(args, flag) is not None and args.live is None:
            raise AllocscopeError(f"--{flag} needs --live SECONDS")
    if not args.frees and args.live is None:
        raise AllocscopeError("--no-frees needs --live SECONDS")
    if args.exact_frees and (args.live is None or not args.frees):
        raise AllocscopeError("--exact-frees needs --live SECONDS (and frees)")
    if args.output is not None and (args.live is None or args.interval is not None):
        raise AllocscopeError(
            "-o needs --live SECONDS (one capture window); a saved allocinfo is kept with "
            "`allocscope snapshot`"
        )
    if args.iterations is not None and args.interval is None:
        raise AllocscopeError("--iterations needs --interval SECONDS")
    if args.interval is None and args.sort not in SORT_KEYS:
        raise AllocscopeError(f"-s {args.sort} needs --interval (a change needs two reads)")
    if args.live == LIVE_WATCH and args.interval is None:
        raise AllocscopeError(
            "--live needs SECONDS (a window), or --interval SECONDS to watch until q or Ctrl-C"
        )
    subsystems = load_subsystems(args.subsystems)
    if args.interval is not None:
        return _watch(args, subsystems)
    extra: dict[str, Any] = {}
    result = None
    if args.live is not None:
        snap, title, extra, result = _live(args)
    else:
        snap = read_source(args)
        title = f"{snap.source}: allocinfo {snap.version or '?'}, {len(snap.records)} tags"
    print_warnings(snap)
    limit = args.top
    if limit is None and not (args.json or args.csv):
        limit = 30
    filters = Filters.of(args.function, args.path, args.module)
    # what a live snapshot file recorded from /proc/slabinfo (None for text and --live)
    slab_objects = snap.slab_objects_bytes
    if args.file is None and args.live is None:
        # this host's allocinfo, now: the kernel's own slab object figure makes the
        # counted-once total exact (collector/containers.py)
        from allocscope.collector.containers import slab_objects_bytes

        slab_objects = slab_objects_bytes()
    try:
        r = rollup(
            snap.records,
            by=args.by,
            sort=args.sort,
            limit=limit,
            min_bytes=args.min_bytes,
            filters=filters,
            subsystems=subsystems,
            slab_objects=slab_objects,
        )
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    from allocscope.reports import allocinfo as rep

    if args.json:
        print_json(
            rep.top_json(
                r, source=snap.source, version=snap.version, warnings=snap.warnings, extra=extra
            )
        )
    elif args.csv:
        sys.stdout.write(rep.top_csv(r))
    else:
        sys.stdout.write(rep.top_table(r, human=args.human, title=title))
    if result is not None:
        sys.stdout.flush()
        write_result(result, args, on_stdout=False)
    if extra.get("live", {}).get("interrupted"):
        from allocscope.probes.loader import interrupting_signal

        return 128 + interrupting_signal()  # 130 / 143, as every live verb
    return 0
