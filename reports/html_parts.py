"""The HTML report's building blocks: cells, tables, key/value lists, figures, sections.

Every section module (:mod:`.html_allocinfo`, :mod:`.html_fleet`, :mod:`.html_results`) builds
its HTML from these, so escaping happens in one place: each text that came from data goes
through :func:`~allocscope.reports.svg.esc` here (it also redacts raw kernel addresses), and
the sections never write a data string into markup themselves, except through ``esc``.
:func:`value_text` picks a payload value's units from its key's name, so a result kind the
report has no section for still shows as readable tables (:func:`generic`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from allocscope.reports.format import (
    bytes_compact,
    count_exact,
    decimal,
    pct,
    ratio,
    significant,
)
from allocscope.reports.svg import esc

MAX_TABLE_ROWS = 200
DASH = "\u2014"  # a missing value
Block = tuple[str, str, str]  # one section of the page: (id, nav title, html)


def value_text(key: str, value: Any) -> tuple[str, float | None]:
    """(text, sort value) for a payload value, choosing units from the key's name."""
    k = key.lower()
    if value is None:
        return DASH, None
    if isinstance(value, bool):
        return ("yes" if value else "no"), float(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if k == "ratio" or k.endswith("_ratio"):
            return ratio(v), v
        if "share" in k or k.startswith("ci_") or k.endswith("_pct_frac"):
            return pct(v, 2), v
        if "bytes" in k:
            return bytes_compact(v), v
        if k.endswith("_ns") or k.startswith("ns_") or "ns_per" in k:
            return f"{decimal(v, 1)} ns", v
        if k.endswith("per_second"):
            return f"{decimal(v, 1)}/s", v
        if isinstance(value, int) or v.is_integer() and abs(v) >= 1:
            return count_exact(v), v
        return significant(v), v
    if isinstance(value, (list, tuple)):
        if all(not isinstance(x, (dict, list)) for x in value):
            return ", ".join(str(x) for x in value), None
        return json.dumps(value)[:200], None
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)[:200], None
    return str(value), None


def td(text: str, sort: float | None = None, cls: str = "") -> str:
    attrs = f' data-v="{sort!r}"' if sort is not None else ""
    if sort is not None:
        cls = (cls + " num").strip()
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{esc(text)}</td>"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", caption: str = ""
) -> str:
    """Rows are pre-rendered ``<td>`` strings (see :func:`td`); headers are plain text."""
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return (
        f'<div class="tablewrap"><table class="sortable {cls}">{cap}<thead><tr>{head}'
        f"</tr></thead><tbody>{body}</tbody></table></div>"
    )


def kv(pairs: Sequence[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return f'<dl class="kv">{items}</dl>'


def figure(svg_text: str, caption: str, fig_id: str) -> str:
    return f'<figure id="{esc(fig_id)}">{svg_text}<figcaption>{esc(caption)}</figcaption></figure>'


def section(sid: str, title: str, body: str, cls: str = "") -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<section id="{esc(sid)}"{c}><h2>{esc(title)}</h2>{body}</section>'


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    first: Sequence[str] = (),
    caption: str = "",
    skip: Sequence[str] = (),
) -> str:
    """A table of a list of dicts: the ``first`` keys in order, then the rest as they come."""
    keys: list[str] = [k for k in first if any(k in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in keys and k not in skip:
                keys.append(k)
    body = []
    for r in rows[:MAX_TABLE_ROWS]:
        cells = []
        for k in keys:
            text, sort = value_text(k, r.get(k))
            cells.append(td(text, sort, "mono" if k in ("caller", "function", "site") else ""))
        body.append(cells)
    more = f" (first {MAX_TABLE_ROWS} of {len(rows)})" if len(rows) > MAX_TABLE_ROWS else ""
    return table(keys, body, caption=caption + more)


def generic(payload: Mapping[str, Any], skip: Sequence[str] = (), depth: int = 0) -> str:
    """Any payload: scalars as a key/value list, lists of dicts as tables, dicts recursively."""
    scalars: list[tuple[str, str]] = []
    blocks: list[str] = []
    for k, v in payload.items():
        if k in skip:
            continue
        if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            blocks.append(rows_table(v, caption=k))
        elif isinstance(v, Mapping) and v and depth < 3:
            if all(not isinstance(x, (Mapping, list)) for x in v.values()):
                scalars.extend((f"{k}.{kk}", value_text(kk, vv)[0]) for kk, vv in v.items())
            else:
                blocks.append(f"<h4>{esc(k)}</h4>" + generic(v, depth=depth + 1))
        else:
            scalars.append((k, value_text(k, v)[0]))
    return (kv(scalars) if scalars else "") + "".join(blocks)
