"""Argument helpers every verb shares, so flags mean the same thing everywhere."""

from __future__ import annotations

import argparse
import json
import os
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


def window_arg(text: str) -> float:
    """A capture window (``-d``): positive. Every live verb refuses ``-d 0`` the same way
    (it used to mean "for ever" in one verb and a 0-second capture in another); omitting
    ``-d`` is how to say "until Ctrl-C"."""
    seconds = duration_arg(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a capture window must be positive (omit -d to run until Ctrl-C)"
        )
    return seconds


def pid_arg(text: str) -> int:
    """``-p PID``: a process that exists now, checked once for every verb (who-calls used to
    capture nothing, silently, for a pid that did not exist)."""
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        raise argparse.ArgumentTypeError(f"no such process: {pid}")
    return pid


def output_arg(text: str) -> str:
    """``-o FILE`` in every verb: an empty name is refused (``-o ''`` used to print to stdout
    and write nothing, silently, in export, ab, overhead and who-calls)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an output file needs a name")
    return text


def positive_arg(text: str) -> int:
    """A count that must be 1 or more (``collect --count``)."""
    n = count_arg(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {n}")
    return n


def interrupted_exit_code(result: Any) -> int:
    """130 after Ctrl-C, 143 after SIGTERM (128 + the signal, as shells report it), 0 when
    the capture ran its course: the same in every verb."""
    from allocscope.probes.loader import interrupting_signal

    if not result.settings.get("interrupted"):
        return 0
    return 128 + interrupting_signal()


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
    """A verb parser whose --help ends with real examples, as BCC tools' do, and the verb's
    reference page (docs/verbs/<verb>.md: the README is a five-minute read, not a manual)."""
    from allocscope.cli import HelpFormatter

    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.rstrip() + f"\n\nfull reference: docs/verbs/{name}.md\n",
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


def add_result_file(p: argparse.ArgumentParser, kind: str, *, when: str = "") -> None:
    """``-o FILE``: the verb's Result document written by the safe writer (:func:`write_result`).
    ``kind`` names the result kind in the help; ``when`` prefixes a condition ("with --live")."""
    lead = f"{when}: also write" if when else "also write"
    p.add_argument(
        "-o",
        "--output",
        type=output_arg,
        default=None,
        metavar="FILE",
        help=f"{lead} the result file (JSON, kind {kind})",
    )


def emit_result(result: Any, args: argparse.Namespace, table: Callable[[], str]) -> int:
    """A verb's result, the same way in every verb: printed first (the whole Result document
    with ``--json``, else the table ``table()`` renders), then written to ``-o`` by the safe
    writer, with "wrote FILE" on stderr. Returns the exit status: 130/143 for a run ended by
    Ctrl-C/SIGTERM (:func:`interrupted_exit_code`), else 0.

    A failing ``-o`` (the disk filled during a 60 s capture) loses nothing: the whole Result
    document, which the table does not hold (folded stacks, settings), goes to stdout after
    the table if ``--json`` did not already put it there, and the one error line says so
    (exit 2)."""
    as_json = bool(getattr(args, "json", False))
    if as_json:
        print_json(result.to_dict())
    else:
        sys.stdout.write(table())
    sys.stdout.flush()
    write_result(result, args, on_stdout=as_json)
    return interrupted_exit_code(result)


def write_result(result: Any, args: argparse.Namespace, *, on_stdout: bool) -> None:
    """``-o``'s half of :func:`emit_result`, for a verb that printed something else first
    (``top --live`` prints top's own table or JSON): the safe writer, "wrote FILE" on stderr,
    and on a failed write the whole Result on stdout unless ``on_stdout`` says it is there."""
    from allocscope.collector.atomic import OutputError

    if not getattr(args, "output", None):
        return
    try:
        result.write(args.output)
    except OutputError as e:
        if not on_stdout:
            print_json(result.to_dict())
        sys.stdout.flush()
        raise OutputError(
            e.errno or 0, f"{e} (the whole result is on stdout as JSON instead)"
        ) from None
    print(f"wrote {args.output}", file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
