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


def add_verb(
    sub: Any,
    name: str,
    help: str,
    description: str,
    examples: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A verb parser whose --help ends with real examples, as BCC tools' do."""
    from allocscope.collector.cli import HelpFormatter

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


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
