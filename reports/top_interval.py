"""``top --interval`` on screen and in pipes: one table per refresh, plus its JSON line.

The same table serves curses (one screen, redrawn) and plain output (one table per refresh,
as ``vmstat 1`` prints); :func:`frame_table` gives the text, the CLI decides where it goes.
"""

from __future__ import annotations

import time
from typing import Any

from allocscope.collector.rollup import UNKNOWN_SUBSYSTEM
from allocscope.collector.top_interval import Frame
from allocscope.reports.allocinfo import counted_once_line
from allocscope.reports.format import bytes_short, count_short, integer, signed
from allocscope.reports.table import render

KEYS_HELP = "q quit  b bytes  c calls  d Δbytes  r Δ/s  k Δcalls  n name"


def _size(n: float, human: bool) -> str:
    return bytes_short(n) if human else integer(n)


def _calls(n: float, human: bool) -> str:
    return count_short(n) if human else integer(n)


def _delta_size(n: float, human: bool) -> str:
    return signed(bytes_short if human else integer, n)


def _delta_calls(n: float, human: bool) -> str:
    return signed(count_short if human else integer, n)


def _rate(frame: Frame, delta: int, human: bool) -> str:
    if frame.seconds <= 0:
        return ""
    per_s = delta / frame.seconds
    return _delta_size(round(per_s), human) + "/s"


def frame_title(frame: Frame, sort: str) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(frame.taken_at))
    since = f"Δ over {frame.seconds:.1f}s" if frame.seconds > 0 else "first read: no Δ yet"
    title = f"{when}  refresh {frame.index + 1}, {since}, sorted by {sort}  {frame.source}"
    if frame.warnings:  # e.g. a live watch's lost events, a read that never settled
        more = len(frame.warnings) - 1
        title += f"  warning: {frame.warnings[0]}" + (f" (+{more} more)" if more else "")
    return title


def frame_table(frame: Frame, sort: str, limit: int | None, *, human: bool = True) -> str:
    """The refresh as ``top`` prints a table, with Δbytes, Δcalls and Δbytes/s columns."""
    by = frame.rollup.by
    # allocinfo 1.1 (accumulative calls): allocations per second, a column only then
    cum = frame.rollup.total_cumulative_calls is not None
    # live sites (top --live) know functions, not files: a column of "unknown" says nothing
    sub = by != "subsystem" and any(r.subsystem not in ("", UNKNOWN_SUBSYSTEM) for r in frame.rows)
    headers = ["BYTES", "CALLS", "ΔBYTES", "ΔCALLS", "ΔBYTES/S", *["ALLOCS/S"] * cum]
    headers += [*["SUBSYSTEM"] * sub, {"site": "SITE"}.get(by, by.upper())]
    align = ["right"] * (5 + cum) + ["left"] * (1 + sub)

    def allocs(rate: float | None) -> list[str]:
        if not cum:
            return []
        return ["" if rate is None else _calls(round(rate), human) + "/s"]

    rows = [
        [
            _size(r.bytes, human),
            _calls(r.calls, human),
            _delta_size(r.delta_bytes, human) if frame.seconds else "",
            _delta_calls(r.delta_calls, human) if frame.seconds else "",
            _rate(frame, r.delta_bytes, human),
            *allocs(r.calls_rate(frame.seconds)),
            *[r.subsystem] * sub,
            r.key,
        ]
        for r in frame.sorted_rows(sort, limit)
    ]
    ro = frame.rollup
    known = [r.delta_cumulative for r in frame.rows if r.delta_cumulative is not None]
    total_rate = sum(known) / frame.seconds if known and frame.seconds > 0 else None
    totals = [
        _size(ro.total_bytes, human),
        _calls(ro.total_calls, human),
        _delta_size(frame.delta_bytes, human) if frame.seconds else "",
        _delta_calls(frame.delta_calls, human) if frame.seconds else "",
        _rate(frame, frame.delta_bytes, human),
        *allocs(total_rate),
        *[""] * sub,
        f"total ({ro.total_tags} tags, {len(frame.rows)} rows)",
    ]
    out = [render(headers, rows, align=align, totals=totals)]
    line = counted_once_line(ro, human)
    if line:
        out.append(line)
    return "\n".join(out) + "\n"


def frame_json(frame: Frame, sort: str, limit: int | None) -> dict[str, Any]:
    """One refresh as one JSON document (``--json`` prints one per line)."""
    ro = frame.rollup
    return {
        "refresh": frame.index,
        "taken_at": frame.taken_at,
        "seconds": frame.seconds,
        "source": frame.source,
        "version": frame.version,
        "by": ro.by,
        "sort": sort,
        "totals": {
            "bytes": ro.total_bytes,
            "calls": ro.total_calls,
            "tags": ro.total_tags,
            "delta_bytes": frame.delta_bytes,
            "delta_calls": frame.delta_calls,
            "memory_bytes": ro.counted.memory_bytes,
        },
        **({"warnings": list(frame.warnings)} if frame.warnings else {}),
        "rows": [
            {
                "key": r.key,
                "bytes": r.bytes,
                "calls": r.calls,
                "delta_bytes": r.delta_bytes,
                "delta_calls": r.delta_calls,
                "bytes_per_second": r.rate(frame.seconds),
                "subsystem": r.subsystem,
                "accurate": r.accurate,
                **(
                    {"allocs_per_second": r.calls_rate(frame.seconds)}
                    if r.delta_cumulative is not None
                    else {}
                ),
            }
            for r in frame.sorted_rows(sort, limit)
        ],
    }
