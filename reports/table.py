"""Generic terminal tables: a totals row, numbers right-aligned (units: :mod:`.format`).

Every verb's table goes through :func:`render` so they look alike: a header, the rows, a
rule, then the totals row; numeric columns right-aligned, text left-aligned.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from allocscope.reports.terminal import printable


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    align: Sequence[str] | None = None,
    totals: Sequence[Any] | None = None,
) -> str:
    """A plain table; ``align`` is ``"right"``/``"left"`` per column (default: left).

    The totals row is separated from the body by a dashed rule built from the column
    widths tabulate chose, so it lines up whatever the content.
    """
    body = [list(map(_cell, r)) for r in rows]
    all_rows = body + ([list(map(_cell, totals))] if totals is not None else [])
    colalign = tuple(align) if align else None
    text = tabulate(
        all_rows,
        headers=list(headers),
        tablefmt="simple",
        colalign=colalign,
        disable_numparse=True,
    )
    if totals is None:
        return text
    lines = text.splitlines()
    rule = lines[1] if len(lines) > 1 else ""
    return "\n".join(lines[:-1] + [rule, lines[-1]])


def _cell(v: Any) -> str:
    return "" if v is None else printable(str(v))


def to_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV (raw numbers, no human units) for spreadsheets and scripts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()
