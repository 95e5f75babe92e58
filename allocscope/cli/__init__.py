"""``allocscope <verb>``: the one command-line front door.

The CLI sits in the collector because it orchestrates data production (probes -> collector);
it hands finished data to :mod:`allocscope.reports` for presentation. Each verb lives in its
own module here exposing ``register(subparsers)``; the module sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from allocscope.errors import AllocscopeError
from allocscope.reports.terminal import SafeStream

# (verb, module, one-line help): the order is the order of `allocscope --help`. Only the
# module of the verb being run is imported, so `allocscope top` never loads pyarrow, duckdb or
# BCC (start-up stays fast, and verbs work where a heavy wheel cannot load).
VERBS: tuple[tuple[str, str, str], ...] = (
    ("doctor", "doctor", "what this host can do, and how to fix what it can't"),
    ("top", "top", "rank allocation sites by bytes or calls (allocinfo or live)"),
    ("snapshot", "snapshot", "save allocinfo plus host metadata as one Parquet file"),
    ("diff", "diff", "per-site change between two allocinfo reads or snapshots"),
    ("who-calls", "who_calls", "who calls an allocation site (live, sampled)"),
    (
        "context",
        "context",
        "every allocation tag: rates, memcg charge, callers (live, byte-sampled)",
    ),
    ("lifespan", "lifespan", "how long allocations live, per site and caller (live, sampled)"),
    ("leaks", "leaks", "outstanding kernel allocations older than T (sampled memleak)"),
    ("overhead", "overhead", "CPU cost of the allocators (and of allocation profiling) here"),
    ("ab", "ab", "compare allocator CPU cost: pilot vs control hosts, or profiling on vs off"),
    ("collect", "collect", "agent: snapshot allocinfo + host metadata into a store"),
    (
        "ingest",
        "ingest",
        "import snapshot, who-calls, overhead, context and lifespan files into a store",
    ),
    ("query", "query", "named fleet queries or raw SQL over a store (DuckDB or Spark)"),
    ("report", "report", "one self-contained HTML report (charts, tables, flame graphs)"),
    ("export", "export", "export allocinfo as Prometheus node_exporter textfile metrics"),
)

EPILOG = """\
examples:
  allocscope doctor                      # what this host can do, and how to fix what it can't
  allocscope top -n 20 --by subsystem    # where kernel memory goes (needs /proc/allocinfo)
  allocscope top --live 10               # the same from kmem tracepoints, any kernel
  allocscope who-calls xas_alloc -d 30   # who is behind an allocinfo line
  allocscope overhead -d 60 -o host.json # what allocation profiling costs here
run `allocscope VERB --help` for each verb's options and examples.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written example epilogs as written."""


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser for ``verb`` (every verb when None); the others get a help-only stub."""
    parser = argparse.ArgumentParser(
        prog="allocscope",
        description="Context capture and overhead profiling for Linux memory allocation "
        "profiling (/proc/allocinfo).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module, help_text in VERBS:
        if verb is None or verb == name:
            importlib.import_module(f"allocscope.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb named on the command line (top-level options are only -h/--help)."""
    known = {v for v, _m, _h in VERBS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in known else None
    return None


def die(message: str, code: int = 2) -> int:
    print(f"allocscope: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb with stdout and stderr behind the terminal guard (reports/terminal.py):
    process names and input files are other people's text, and this runs as root."""
    out, err = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, SafeStream(out))
    sys.stderr = cast(TextIO, SafeStream(err))
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _verb_of(argv)
    parser = build_parser(verb) if verb else build_parser("")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        output = getattr(args, "output", None)
        if output and output != "-":  # before a capture, not after its window
            from allocscope.collector.atomic import check_output

            check_output(output)
        rc = args.func(args)
        return int(rc or 0)
    except AllocscopeError as e:
        return die(str(e), e.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
