"""Result files -> rows of the store's ``callers`` and ``overhead`` datasets (schemas in
collector/store_schemas.py).

A who-calls or overhead result is a JSON payload; the store keeps it flattened (one row per
caller, one per allocator function) so fleet queries aggregate it in SQL, plus the whole
payload in every row so a field this version does not know is never lost. Every number is
checked on the way in, and a bad one is named by its field path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from allocscope.collector.payloads import FunctionRow, OverheadPayload, WhoCallsPayload
from allocscope.collector.result import Result
from allocscope.collector.site import SiteQuery, canonical_function
from allocscope.collector.store_fleet import context_table, lifespan_table
from allocscope.collector.store_rows import dumps, result_common
from allocscope.collector.store_schemas import CALLERS_SCHEMA, OVERHEAD_SCHEMA


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
    """Rows of the ``callers`` dataset for one who-calls result (its typed payload)."""
    p = res.typed(WhoCallsPayload, path)
    site, func, key = _site_fields(p.site)
    if func is None and p.allocinfo is not None:
        f = p.allocinfo.extra.get("function")  # some writers name the joined function here
        func = canonical_function(f) if isinstance(f, str) else None
    rows: list[dict[str, Any]] = [
        {
            "caller": c.caller,
            "calls": c.calls,
            "share": float(c.share),
            "ci_low": None if c.ci_low is None else float(c.ci_low),
            "ci_high": None if c.ci_high is None else float(c.ci_high),
            "bytes": c.bytes,
        }
        for c in p.callers
    ]
    if not rows:
        rows.append(dict.fromkeys(("caller", "calls", "share", "ci_low", "ci_high", "bytes")))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    cols.update(
        {
            "site": [site] * n,
            "site_function": [func] * n,
            "site_key": [key] * n,
            "backend": [p.backend] * n,
            "total_calls": [p.total_calls] * n,
            "lost": [p.lost] * n,
            "payload_json": [dumps(res.payload)] * n,  # as written: nothing unknown is lost
        }
    )
    for k in ("caller", "calls", "share", "ci_low", "ci_high", "bytes"):
        cols[k] = [r[k] for r in rows]
    return pa.table(cols).select(CALLERS_SCHEMA.names).cast(CALLERS_SCHEMA)


_OVERHEAD_FIELDS: tuple[str, ...] = (
    "inclusive_samples",
    "self_samples",
    "inclusive_share",
    "self_share",
    "calls",
    "calls_per_second",
    "ns_per_call",
)


def _function_values(f: FunctionRow) -> dict[str, Any]:
    return {
        "inclusive_samples": f.inclusive_samples,
        "self_samples": f.self_samples,
        "inclusive_share": f.inclusive_share,
        "self_share": f.self_share,
        "calls": f.calls,
        "calls_per_second": f.calls_per_second,
        "ns_per_call": f.ns_per_call,
    }


def overhead_table(res: Result, path: str) -> pa.Table:
    """Rows of the ``overhead`` dataset: the payload's ``functions`` table flattened, with the
    raw row and payload kept as written so fields this version does not know are not lost."""
    p = res.typed(OverheadPayload, path)
    raw_rows = res.payload["functions"]  # the same rows, as written (validated above)
    rows: list[dict[str, Any]] = []
    for f, raw in zip(p.functions, raw_rows, strict=True):
        rows.append(
            {
                "function": f.function,
                "kind": f.kind,
                "present": f.present,
                "row_json": dumps(raw),
                **_function_values(f),
            }
        )
    if not rows:
        rows.append(dict.fromkeys(["function", "kind", "present", "row_json", *_OVERHEAD_FIELDS]))
    n = len(rows)
    cols = result_common(res.host, res.start, res.duration, n)
    for k in ["function", "kind", "present", "row_json", *_OVERHEAD_FIELDS]:
        cols[k] = [r[k] for r in rows]
    cols["settings_json"] = [dumps(res.settings)] * n
    cols["payload_json"] = [dumps(res.payload)] * n
    return pa.table(cols).select(OVERHEAD_SCHEMA.names).cast(OVERHEAD_SCHEMA)


RESULT_DATASETS: dict[str, tuple[str, Callable[[Result, str], pa.Table]]] = {
    "who-calls": ("callers", callers_table),
    "overhead": ("overhead", overhead_table),
    "context": ("context", context_table),
    "lifespan": ("lifespan", lifespan_table),
}
