"""Result files -> rows of the store's ``callers`` and ``overhead`` datasets (schemas in
collector/store.py).

A who-calls or overhead result is a JSON payload; the store keeps it flattened (one row per
caller, one per allocator function) so fleet queries aggregate it in SQL, plus the whole
payload in every row so a field this version does not know is never lost. Every number is
checked on the way in, and a bad one is named by its field path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from allocscope.collector.result import Result
from allocscope.collector.site import SiteQuery, canonical_function
from allocscope.collector.store import CALLERS_SCHEMA, OVERHEAD_SCHEMA, dumps, result_common
from allocscope.errors import InputError


def _num(v: Any, what: str, path: str, integer: bool = False) -> Any:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(path, None, f"{what} is not a number: {v!r}")
    if integer:
        if isinstance(v, float) and not v.is_integer():
            raise InputError(path, None, f"{what} is not an integer: {v!r}")
        return int(v)
    return float(v)


def _site_fields(site: Any) -> tuple[str, str | None, str | None]:
    """(as asked, function, file:line) from a who-calls payload's ``site``."""
    if isinstance(site, dict):
        func = site.get("function")
        key = site.get("key") or (
            f"{site['file']}:{site['line']}" if site.get("file") and site.get("line") else None
        )
        text = str(site.get("query") or key or func or "")
        return text, canonical_function(func) if func else None, key
    text = str(site)
    try:
        q = SiteQuery.parse(text)
    except ValueError:
        return text, None, None
    key = f"{q.file}:{q.line}" if q.file and q.line is not None else None
    return text, q.function, key


def callers_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``callers`` dataset for one who-calls result (validated)."""
    p = res.payload
    callers = p.get("callers")
    if not isinstance(callers, list):
        raise InputError(path, None, "who-calls payload has no 'callers' list")
    if "site" not in p:
        raise InputError(path, None, "who-calls payload has no 'site'")
    site, func, key = _site_fields(p["site"])
    if func is None:
        join = p.get("allocinfo") if isinstance(p.get("allocinfo"), dict) else {}
        f = join.get("function") if join else None
        func = canonical_function(f) if isinstance(f, str) else None
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(callers):
        what = f"callers[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("caller"), str):
            raise InputError(path, None, f"{what} has no caller name")
        rows.append(
            {
                "caller": c["caller"],
                "calls": _num(c.get("calls"), f"{what}.calls", path, True),
                "share": _num(c.get("share"), f"{what}.share", path),
                "ci_low": _num(c.get("ci_low"), f"{what}.ci_low", path),
                "ci_high": _num(c.get("ci_high"), f"{what}.ci_high", path),
                "bytes": _num(c.get("bytes"), f"{what}.bytes", path, True),
            }
        )
    if not rows:
        rows.append(dict.fromkeys(("caller", "calls", "share", "ci_low", "ci_high", "bytes")))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    cols.update(
        {
            "site": [site] * n,
            "site_function": [func] * n,
            "site_key": [key] * n,
            "backend": [str(p["backend"]) if p.get("backend") is not None else None] * n,
            "total_calls": [_num(p.get("total_calls"), "total_calls", path, True)] * n,
            "lost": [_num(p.get("lost"), "lost", path, True)] * n,
            "payload_json": [dumps(p)] * n,
        }
    )
    for k in ("caller", "calls", "share", "ci_low", "ci_high", "bytes"):
        cols[k] = [r[k] for r in rows]
    return pa.table(cols).select(CALLERS_SCHEMA.names).cast(CALLERS_SCHEMA)


_OVERHEAD_FIELDS: tuple[tuple[str, str], ...] = (
    ("inclusive_samples", "int"),
    ("self_samples", "int"),
    ("inclusive_share", "float"),
    ("self_share", "float"),
    ("calls", "int"),
    ("calls_per_second", "float"),
    ("ns_per_call", "float"),
)


def overhead_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``overhead`` dataset: the payload's ``functions`` table flattened, with the
    raw payload kept in every row so fields this version does not know are not lost."""
    p = res.payload
    funcs = p.get("functions")
    if funcs is not None and not isinstance(funcs, list):
        raise InputError(path, None, "overhead payload 'functions' is not a list")
    rows: list[dict[str, Any]] = []
    for i, f in enumerate(funcs or []):
        what = f"functions[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("function"), str):
            raise InputError(path, None, f"{what} has no function name")
        row: dict[str, Any] = {
            "function": f["function"],
            "kind": str(f["kind"]) if f.get("kind") is not None else None,
            "present": bool(f["present"]) if f.get("present") is not None else None,
            "row_json": dumps(f),
        }
        for k, t in _OVERHEAD_FIELDS:
            row[k] = _num(f.get(k), f"{what}.{k}", path, t == "int")
        rows.append(row)
    if not rows:
        rows.append(
            dict.fromkeys(
                ["function", "kind", "present", "row_json"] + [k for k, _ in _OVERHEAD_FIELDS]
            )
        )
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    for k in ["function", "kind", "present", "row_json"] + [k for k, _ in _OVERHEAD_FIELDS]:
        cols[k] = [r[k] for r in rows]
    cols["settings_json"] = [dumps(res.settings)] * n
    cols["payload_json"] = [dumps(p)] * n
    return pa.table(cols).select(OVERHEAD_SCHEMA.names).cast(OVERHEAD_SCHEMA)


RESULT_DATASETS: dict[str, tuple[str, Callable[[Result, str], pa.Table]]] = {
    "who-calls": ("callers", callers_table),
    "overhead": ("overhead", overhead_table),
}
