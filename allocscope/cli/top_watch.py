"""``top --interval N``: refresh every N seconds, on a curses screen or as repeated tables.

On a terminal it is a full-screen view like top(1) and slabtop(1): keys change the sort, ``q``
quits. In a pipe, or with ``--iterations``, it prints one table per refresh (one JSON document
per line with ``--json``), as ``vmstat 1`` does. Ctrl-C or SIGTERM end it with 130/143 like
every other verb; ``q`` and the last of ``--iterations`` with 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from allocscope.collector.top_interval import WATCH_SORT_KEYS, Frame, Watcher
from allocscope.reports.terminal import printable
from allocscope.reports.top_interval import KEYS_HELP, frame_json, frame_table, frame_title

KEYMAP = {"b": "bytes", "c": "calls", "d": "delta", "r": "rate", "k": "dcalls", "n": "name"}


def run_watch(args: argparse.Namespace, watcher: Watcher) -> int:
    from allocscope.probes.loader import interruptible, interrupting_signal

    sort = args.sort if args.sort in WATCH_SORT_KEYS else "bytes"
    limit = args.top
    interactive = sys.stdout.isatty() and sys.stdin.isatty()
    interactive = interactive and args.iterations is None and not (args.json or args.csv)
    try:
        with interruptible():
            if interactive:
                import curses

                return int(curses.wrapper(_screen, watcher, args.interval, sort, limit, args))
            return _plain(watcher, args.interval, sort, limit, args)
    except KeyboardInterrupt:
        return 128 + interrupting_signal()


def _plain(
    watcher: Watcher, interval: float, sort: str, limit: int | None, args: argparse.Namespace
) -> int:
    limit = 30 if limit is None and not args.json else limit
    n = 0
    next_at = time.monotonic()
    while args.iterations is None or n < args.iterations:
        frame = watcher.step()
        if args.json:
            sys.stdout.write(json.dumps(frame_json(frame, sort, limit)) + "\n")
        else:
            sys.stdout.write(frame_title(frame, sort) + "\n")
            sys.stdout.write(frame_table(frame, sort, limit, human=args.human) + "\n")
        sys.stdout.flush()
        n += 1
        if args.iterations is not None and n >= args.iterations:
            break
        next_at += interval  # a fixed cadence: a slow read does not stretch the next one
        time.sleep(max(0.0, next_at - time.monotonic()))
    return 0


def _screen(
    stdscr: Any,
    watcher: Watcher,
    interval: float,
    sort: str,
    limit: int | None,
    args: argparse.Namespace,
) -> int:
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    stdscr.timeout(100)  # ms: how quickly a key is seen
    frame = watcher.step()
    next_at = time.monotonic() + interval
    dirty = True
    while True:
        if dirty:
            _draw(stdscr, frame, sort, limit, args.human)
            dirty = False
        ch = stdscr.getch()
        if ch in (ord("q"), ord("Q")):
            return 0
        if 0 <= ch < 256 and chr(ch) in KEYMAP:
            sort, dirty = KEYMAP[chr(ch)], True
        elif ch == curses.KEY_RESIZE:
            dirty = True
        if time.monotonic() >= next_at:
            frame = watcher.step()
            next_at = max(next_at + interval, time.monotonic())
            dirty = True


def _draw(stdscr: Any, frame: Frame, sort: str, limit: int | None, human: bool) -> None:
    import curses

    height, width = stdscr.getmaxyx()
    rows = max(1, height - 7) if limit is None else limit  # title, header, rules, totals
    lines = [frame_title(frame, sort), ""]
    lines += frame_table(frame, sort, rows, human=human).splitlines()
    lines = lines[: max(0, height - 2)] + ["", KEYS_HELP]
    stdscr.erase()
    for y, line in enumerate(lines[:height]):
        try:
            stdscr.addstr(y, 0, printable(line)[: max(0, width - 1)])
        except curses.error:
            pass  # the bottom-right cell of a tiny screen
    stdscr.refresh()
