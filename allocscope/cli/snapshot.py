"""``allocscope snapshot``: one allocinfo read plus host metadata, saved as Parquet.

The snapshot is the unit fleet collection ingests and ``diff`` compares; its schema is
versioned (:mod:`allocscope.collector.snapshot`, docs/design/store.md "Snapshot schema").
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from allocscope.cli.common import add_verb, output_arg, print_json
from allocscope.cli.top import load_source, load_subsystems, print_warnings
from allocscope.collector.allocinfo import PROC_ALLOCINFO
from allocscope.collector.host import collect_host_metadata, parse_labels
from allocscope.errors import AllocscopeError
from allocscope.reports.format import bytes_short

EXAMPLES = """\
  allocscope snapshot -o before.parquet                # live /proc/allocinfo + host metadata
  allocscope snapshot -o host1.parquet --label group=pilot --label rack=a1
  allocscope snapshot -o old.parquet --file allocinfo-6.12.txt   # a saved text copy
  allocscope diff before.parquet after.parquet         # what changed between two snapshots
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "snapshot",
        help="save allocinfo plus host metadata as one Parquet file",
        description="Capture /proc/allocinfo (or a saved copy) with this host's metadata "
        "(hostname, kernel, boot id, CPUs, memory, vm.mem_profiling, labels) into one "
        "Parquet file with a versioned schema (docs/design/store.md). Written atomically. "
        "A saved copy "
        "is recorded with THIS host's metadata: label it if it came from elsewhere.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument(
        "-o",
        "--output",
        type=output_arg,
        required=True,
        metavar="FILE.parquet",
        help="where to write the snapshot",
    )
    p.add_argument(
        "-f",
        "--file",
        metavar="ALLOCINFO",
        help="read a saved allocinfo (text, .gz, '-' for stdin) instead of /proc/allocinfo",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="attach a label (repeatable), e.g. group=pilot",
    )
    p.add_argument(
        "--subsystems",
        metavar="FILE.toml",
        help="subsystem rules for the snapshot's subsystem column",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip malformed lines (counted in a warning) instead of failing",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: pyarrow must not be loaded to register the verb.
    from allocscope.collector.snapshot import SNAPSHOT_SCHEMA_VERSION, write_snapshot

    try:
        labels = parse_labels(args.label)
    except ValueError as e:
        raise AllocscopeError(str(e)) from None
    if args.file is None and os.path.exists(PROC_ALLOCINFO):
        # this host, now: bracketed by CONTENT_ID on 7.3+ (a read that never settles is
        # kept and says so)
        from allocscope.collector.allocinfo_live import read_live
        from allocscope.collector.containers import slab_objects_bytes

        snap = read_live(None, lenient=args.lenient)
        # this host's slab objects now, as top reads them: the counted-once total recorded in
        # the metadata is exact (None where /proc/slabinfo is not readable)
        snap.slab_objects_bytes = slab_objects_bytes()
    else:
        snap = load_source(args.file, lenient=args.lenient)
    print_warnings(snap)
    if snap.host is not None:
        raise AllocscopeError(f"{args.file}: is already a snapshot; copy it instead")
    host = collect_host_metadata(labels)
    snap.host = host
    rows = write_snapshot(args.output, snap, host, load_subsystems(args.subsystems))
    from allocscope.collector.containers import counted_once

    counted = counted_once(snap.records, slab_objects_bytes=snap.slab_objects_bytes)
    summary = {
        "output": args.output,
        "schema": SNAPSHOT_SCHEMA_VERSION,
        "rows": rows,
        "source": snap.source,
        "allocinfo_version": snap.version,
        "bytes": snap.total_bytes,
        "calls": snap.total_calls,
        "memory_bytes": counted.memory_bytes,
        "memory_exact": counted.exact,
        "containers": counted.to_dict(),
        "consistent": snap.consistent,
        "hostname": host.hostname,
        "kernel_release": host.kernel_release,
        "labels": labels,
        "warnings": snap.warnings,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {args.output}: {rows} tags, {bytes_short(snap.total_bytes)} from "
            f"{snap.source} (allocinfo {snap.version or '?'}), host {host.hostname}, "
            f"kernel {host.kernel_release}, schema v{SNAPSHOT_SCHEMA_VERSION}"
        )
        if counted.bytes != counted.memory_bytes:
            bound = "" if counted.exact else " at least"
            print(f"  memory counted once:{bound} {bytes_short(counted.memory_bytes)}")
        if snap.consistent is False:
            print("  marked inconsistent: modules changed allocinfo during every read attempt")
    return 0
