"""``allocscope <verb>``: the one command-line front door.

The CLI sits in the collector because it orchestrates data production (probes -> collector);
it hands finished data to :mod:`allocscope.reports` for presentation. Each verb lives in its
own module here exposing ``register(subparsers)``; the module sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from allocscope.collector.errors import AllocscopeError

# (verb, module): the order is the order of `allocscope --help`.
VERBS: tuple[tuple[str, str], ...] = (
    ("doctor", "doctor"),
    ("top", "top"),
    ("snapshot", "snapshot"),
    ("diff", "diff"),
    ("who-calls", "who_calls"),
    ("overhead", "overhead"),
    ("ab", "ab"),
    ("collect", "collect"),
    ("ingest", "ingest"),
    ("query", "query"),
    ("report", "report"),
    ("export", "export"),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocscope",
        description="Context capture and overhead profiling for Linux memory allocation "
        "profiling (/proc/allocinfo).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for _verb, module in VERBS:
        name = f"allocscope.collector.cli.{module}"
        if importlib.util.find_spec(name) is None:
            continue  # verb not built yet in this tree
        importlib.import_module(name).register(sub)
    return parser


def die(message: str, code: int = 2) -> int:
    print(f"allocscope: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
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
