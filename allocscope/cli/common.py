"""Argument helpers every verb shares, so flags mean the same thing everywhere."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from allocscope.collector.units import parse_duration, parse_size

T = TypeVar("T")


def _typed(fn: Callable[[str], T], what: str) -> Callable[[str], T]:
    def conv(text: str) -> T:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    conv.__name__ = what
    return conv


size_arg = _typed(parse_size, "size")
duration_arg = _typed(parse_duration, "duration")


def count_arg(text: str) -> int:
    """A row count, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {n}")
    return n


def add_row_limit(
    p: argparse.ArgumentParser,
    default: int | None = None,
    help: str = "show the first N rows (default: 30 in a table, all with --json/--csv)",
) -> None:
    """``-n/--top N``: the same flag, spelled and checked the same way, in every verb."""
    p.add_argument("-n", "--top", type=count_arg, default=default, metavar="N", help=help)


def add_verb(
    sub: Any,
    name: str,
    help: str,
    description: str,
    examples: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A verb parser whose --help ends with real examples, as BCC tools' do."""
    from allocscope.cli import HelpFormatter

    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.rstrip() + "\n",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def add_output_format(
    p: argparse.ArgumentParser, *, csv: bool = False, folded: bool = False
) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if csv:
        g.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    if folded:
        g.add_argument(
            "--folded", action="store_true", help="print folded stacks (flame-graph input)"
        )


def emit_result(result: Any, args: argparse.Namespace, table: Callable[[], str]) -> int:
    """A verb's result: written to ``-o`` (atomically, by Result.write), then printed as JSON
    (the same document) or as the table ``table()`` renders. Returns the exit status."""
    if args.output:
        result.write(args.output)
    if args.json:
        print_json(result.to_dict())
    else:
        sys.stdout.write(table())
    return 0


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
