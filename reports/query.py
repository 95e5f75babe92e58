"""Query results as a terminal table, CSV or JSON.

Columns whose name says bytes are shown in human units in the table (``--raw`` keeps exact
numbers); CSV and JSON always carry exact values, times as ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from allocscope.reports.format import bytes_short, signed, significant

_BYTES_COLUMNS = ("bytes", "median", "mad", "mean_", "median_", "growth", "delta")


def _is_bytes_column(name: str) -> bool:
    n = name.lower()
    return any(
        n == c or n.startswith(c) or n.endswith("_" + c) or c in n for c in _BYTES_COLUMNS
    ) and not n.endswith(("_s", "_share", "ratio"))


def plain(v: Any) -> Any:
    """A JSON/CSV-ready value."""
    if isinstance(v, _dt.datetime):
        return v.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(v, _dt.date):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    return v


def _cell(name: str, v: Any, human: bool) -> Any:
    if v is None:
        return ""
    if isinstance(v, _dt.datetime):
        return v.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if human and isinstance(v, int | float) and not isinstance(v, bool) and _is_bytes_column(name):
        return signed(bytes_short, v) if name.lower() in ("delta", "growth") else bytes_short(v)
    if isinstance(v, float):
        return significant(v)
    return v


def render_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, human: bool = True
) -> str:
    if not rows:
        return "(no rows)\n"
    body = [[_cell(c, v, human) for c, v in zip(columns, r, strict=True)] for r in rows]
    return (
        tabulate(
            body,
            headers=list(columns),
            tablefmt="simple",
            disable_numparse=True,
            colalign=[
                ("right" if any(isinstance(r[i], int | float) for r in rows) else "left")
                for i in range(len(columns))
            ],
        )
        + "\n"
    )


def render_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else plain(v) for v in r])
    return buf.getvalue()


def render_json(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], meta: dict[str, Any] | None = None
) -> str:
    doc: dict[str, Any] = dict(meta or {})
    doc["columns"] = list(columns)
    doc["rows"] = [{c: plain(v) for c, v in zip(columns, r, strict=True)} for r in rows]
    return json.dumps(doc, indent=2) + "\n"
