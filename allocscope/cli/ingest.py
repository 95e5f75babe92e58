"""``allocscope ingest``: import snapshot / who-calls / overhead files into a store."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from allocscope.cli.common import add_verb, print_json

EXAMPLES = """\
  allocscope ingest --store ./store host1.parquet host2.parquet   # snapshot files
  allocscope ingest --store ./store results/                      # a directory, recursively
  allocscope ingest --store ./store xas.json overhead-pilot.json  # who-calls / overhead results
  allocscope ingest --store ./store --json snaps/ > ingest.json
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "ingest",
        help="import snapshot, who-calls, overhead, context and lifespan files into a store",
        description="Validate and import files produced elsewhere: snapshot Parquet files "
        "(allocscope snapshot / collect spool), who-calls, overhead, context and lifespan "
        "result JSON. A bad file is reported and skipped, never half-imported; a snapshot or "
        "result already in the store is skipped as a duplicate. Exit status 1 when any file "
        "was skipped.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--store", required=True, metavar="DIR", help="store root")
    p.add_argument("files", nargs="+", metavar="FILE|DIR", help="files or directories")
    p.add_argument("--json", action="store_true", help="print the ingest report as JSON")


def run(args: argparse.Namespace) -> int:
    # Imported here: the store needs pyarrow, which the rest of the CLI must not load.
    from allocscope.collector.ingest import ingest
    from allocscope.collector.store import Store

    t0 = time.perf_counter()
    rep = ingest(Store(args.store), args.files)
    secs = time.perf_counter() - t0
    if args.json:
        doc = rep.to_dict()
        doc["seconds"] = secs
        print_json(doc)
    else:
        for _path, reason in rep.skipped:
            print(f"allocscope: skipped {reason}", file=sys.stderr)
        kinds: dict[str, int] = {}
        for _p, kind, _r in rep.imported:
            kinds[kind] = kinds.get(kind, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
        print(
            f"imported {what} ({rep.rows:,} rows) in {secs:.2f}s into {args.store}; "
            f"{len(rep.duplicates)} duplicate(s), {len(rep.skipped)} skipped"
        )
    return 1 if rep.skipped else 0
