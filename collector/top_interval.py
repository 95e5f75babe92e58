"""``top --interval``: allocinfo read again every N seconds, with the change since the last read.

allocinfo holds live bytes and calls per tag, nothing cumulative, so "what is growing right
now" is a difference of two reads. A :class:`Watcher` keeps the previous roll-up and turns
each new read into rows with Δbytes, Δcalls and Δbytes/s over the monotonic time between the
two reads (reading all ~3,000 tags of /proc/allocinfo takes ~5 ms, so a 1 s interval costs
the host about 0.5% of one CPU). Rows are rolled up the way ``top`` rolls them (site,
function, file, module, subsystem, the same filters), then sorted by any column; a key that
vanished since the last read (a module unloaded) stays one refresh with 0 bytes, so its
negative delta is seen.

Presentation (curses or repeated tables) is the CLI's and reports' job; this is the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.rollup import Filters, Rollup, Row, rollup
from allocscope.collector.subsystem import SubsystemMap

WATCH_SORT_KEYS = ("bytes", "calls", "delta", "rate", "dcalls", "name")


@dataclass(slots=True)
class WatchRow:
    """One key's values now and their change since the previous read."""

    key: str
    bytes: int
    calls: int
    delta_bytes: int
    delta_calls: int
    subsystem: str = ""
    accurate: bool = True
    # allocinfo 1.1: Δ of the accumulative calls (every allocation, freed ones included);
    # None without the column or on the first read
    delta_cumulative: int | None = None

    def rate(self, seconds: float) -> float:
        """Δbytes per second over the refresh (0 on the first read)."""
        return self.delta_bytes / seconds if seconds > 0 else 0.0

    def calls_rate(self, seconds: float) -> float | None:
        """Allocations per second (allocinfo 1.1's accumulative calls), None without them."""
        if self.delta_cumulative is None or seconds <= 0:
            return None
        return self.delta_cumulative / seconds


@dataclass(slots=True)
class Frame:
    """One refresh: every row (unsorted), the totals, and the time since the last read."""

    rows: list[WatchRow]
    rollup: Rollup
    seconds: float  # since the previous read; 0.0 on the first
    taken_at: float  # wall clock of this read
    index: int  # 0 for the first read
    source: str
    version: str | None
    delta_bytes: int = 0
    delta_calls: int = 0
    warnings: list[str] = field(default_factory=list)

    def sorted_rows(self, key: str, limit: int | None = None) -> list[WatchRow]:
        """Rows sorted by ``key`` (descending, by magnitude for deltas; ``name`` ascending)."""
        rows = list(self.rows)
        if key == "name":
            rows.sort(key=lambda r: r.key)
        elif key == "bytes":
            rows.sort(key=lambda r: (-r.bytes, -r.calls, r.key))
        elif key == "calls":
            rows.sort(key=lambda r: (-r.calls, -r.bytes, r.key))
        elif key in ("delta", "rate"):  # same order: one interval for every row
            rows.sort(key=lambda r: (-abs(r.delta_bytes), -r.bytes, r.key))
        elif key == "dcalls":
            rows.sort(key=lambda r: (-abs(r.delta_calls), -r.calls, r.key))
        else:
            raise ValueError(f"unknown sort {key!r} (have: {', '.join(WATCH_SORT_KEYS)})")
        return rows if limit is None or limit < 0 else rows[:limit]


def row_key(row: Row) -> str:
    """The row's key; a live site (``top --live``: a function, no file) by its function and
    module rather than ``:0 func:name``."""
    site = row.site
    if site is not None and not site.file:
        return f"{site.function} [{site.module}]" if site.module else site.function
    return row.key


class Watcher:
    """Reads with ``read`` at each :meth:`step` and diffs against the previous read."""

    def __init__(
        self,
        read: Callable[[], AllocinfoSnapshot],
        *,
        by: str = "site",
        filters: Filters | None = None,
        subsystems: SubsystemMap | None = None,
        min_bytes: int | None = None,
        slab_objects: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._by = by
        self._filters = filters
        self._subsystems = subsystems
        self._min_bytes = min_bytes
        self._slab_objects = slab_objects
        self._clock = clock
        self._prev: dict[str, tuple[int, int, str]] | None = None
        self._prev_cum: dict[str, int] = {}
        self._prev_t = 0.0
        self._index = 0

    def step(self) -> Frame:
        snap = self._read()
        now = self._clock()
        r = rollup(
            snap.records,
            by=self._by,
            filters=self._filters,
            subsystems=self._subsystems,
            slab_objects=self._slab_objects() if self._slab_objects else None,
        )
        prev = self._prev or {}
        rows: list[WatchRow] = []
        keys = [row_key(row) for row in r.rows]
        for key, row in zip(keys, r.rows, strict=True):
            b0, c0, _ = prev.get(key, (row.bytes, row.calls, ""))
            if self._prev is not None and key not in prev:
                b0, c0 = 0, 0  # new since the last read
            cum0 = self._prev_cum.get(key)
            cum = row.cumulative_calls
            rows.append(
                WatchRow(
                    key,
                    row.bytes,
                    row.calls,
                    row.bytes - b0,
                    row.calls - c0,
                    row.subsystem,
                    row.accurate,
                    cum - cum0 if cum is not None and cum0 is not None else None,
                )
            )
        seen = set(keys)
        for key, (b0, c0, sub) in prev.items():
            if key not in seen and (b0 or c0):  # gone since the last read: show it once
                rows.append(WatchRow(key, 0, 0, -b0, -c0, sub))
        if self._min_bytes is not None:
            rows = [x for x in rows if x.bytes >= self._min_bytes or x.delta_bytes]
        seconds = 0.0 if self._prev is None else now - self._prev_t
        frame = Frame(
            rows=rows,
            rollup=r,
            seconds=seconds,
            taken_at=time.time(),
            index=self._index,
            source=snap.source,
            version=snap.version,
            delta_bytes=sum(x.delta_bytes for x in rows),
            delta_calls=sum(x.delta_calls for x in rows),
            warnings=list(snap.warnings),
        )
        self._prev = {
            key: (row.bytes, row.calls, row.subsystem)
            for key, row in zip(keys, r.rows, strict=True)
        }
        self._prev_cum = {
            key: row.cumulative_calls
            for key, row in zip(keys, r.rows, strict=True)
            if row.cumulative_calls is not None
        }
        self._prev_t = now
        self._index += 1
        return frame
