"""Context and lifespan results -> rows of the store's ``context`` and ``lifespan`` datasets.

One function per kind, used by ``ingest`` (a result file; ``source`` ``ingest``) and by the
agent (one interval; ``source`` ``agent``, ``taken_at`` the interval's snapshot stamp, so the
rows are committed by that snapshot's ``hosts`` record). Rows carry the sampler's additive
sums (collector/store_fleet_schemas.py), taken from the payload's ``sums``; a payload written
before those existed is refused with the field named, since its intervals cannot be combined.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from allocscope.collector.payloads import (
    ContextPayload,
    Estimate,
    LifespanPayload,
    SampleSums,
)
from allocscope.collector.result import Result
from allocscope.collector.store_fleet_schemas import (
    CONTEXT_SCHEMA,
    FLEET_SCHEMA_VERSION,
    LIFESPAN_ESTIMATES,
    LIFESPAN_SCHEMA,
)
from allocscope.collector.store_rows import dumps, to_us
from allocscope.errors import InputError


def _common(res: Result, taken_at: float | None, source: str) -> dict[str, Any]:
    h = res.host
    return {
        "hostname": h.hostname,
        "boot_id": h.boot_id,
        "kernel_release": h.kernel_release,
        "taken_at": to_us(res.start if taken_at is None else taken_at),
        "window_start": to_us(res.start),
        "interval_s": float(res.duration),
        "mem_profiling": h.mem_profiling,
        "labels": sorted(h.labels.items()),
        "source": source,
        "schema_version": FLEET_SCHEMA_VERSION,
    }


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [r.get(name) for r in rows] for name in schema.names}
    arrays = []
    for f in schema:
        if f.type == pa.timestamp("us", tz="UTC"):
            arrays.append(pa.array(cols[f.name], pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(cols[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _sums(s: SampleSums | None, prefix: str = "") -> dict[str, Any]:
    if s is None:
        return {}
    return {
        f"{prefix}hits": s.hits,
        f"{prefix}calls": s.calls,
        f"{prefix}calls_var": s.calls_var,
        f"{prefix}bytes": s.bytes,
        f"{prefix}bytes_var": s.bytes_var,
    }


def context_table(
    res: Result, path: str, *, taken_at: float | None = None, source: str = "ingest"
) -> pa.Table:
    """Rows of the ``context`` dataset: one per tag (its sums, charged sums, allocinfo live
    numbers, folded stacks) and one per caller the payload kept (with its 'other' row)."""
    p = res.typed(ContextPayload, path)
    base = _common(res, taken_at, source)
    base.update(
        {
            "tag_mode": p.tag_mode,
            "rate": p.rate,
            "total_events": p.totals.events,
            "total_bytes": p.totals.bytes,
        }
    )
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(p.tags):
        if t.sums is None:
            raise InputError(
                path,
                None,
                f"payload.tags[{i}].sums: missing (written by a context verb without the "
                "sampler's raw sums; its intervals cannot be combined across hosts)",
            )
        tag = {
            **base,
            "tag": t.tag,
            "function": t.function,
            "file": t.file,
            "line": t.line,
            "module": t.module,
            "subsystem": t.subsystem,
            "match": t.match,
        }
        rows.append(
            {
                **tag,
                "row_kind": "tag",
                **_sums(t.sums),
                **_sums(t.charged_sums, "charged_"),
                "live_bytes": t.live_bytes,
                "live_calls": t.live_calls,
                "folded_json": dumps(t.folded) if t.folded else None,
            }
        )
        for j, c in enumerate(t.callers):
            if c.sums is None:
                raise InputError(path, None, f"payload.tags[{i}].callers[{j}].sums: missing")
            rows.append(
                {
                    **tag,
                    "row_kind": "caller",
                    "caller": c.caller,
                    "other_callers": c.callers,
                    **_sums(c.sums),
                }
            )
    return _table(rows, CONTEXT_SCHEMA)


def _estimate(name: str, e: Estimate) -> dict[str, Any]:
    return {name: e.value, f"{name}_var": e.var}


def lifespan_table(
    res: Result, path: str, *, taken_at: float | None = None, source: str = "ingest"
) -> pa.Table:
    """Rows of the ``lifespan`` dataset: one per (site/tag, caller), plus one per non-empty
    log2 lifespan bucket of it (combined fleet histograms are sums over those), plus one
    ``addr`` row when its lifespan intervals counted kept addresses (``hist_calls`` = sum of
    the addresses' calls totals, ``hist_calls_var`` = sum of their squares)."""
    p = res.typed(LifespanPayload, path)
    base = _common(res, taken_at, source)
    base.update(
        {
            "view": p.view,
            "sample_rate": p.sample_rate,
            "addr_shift": p.addr_shift,
            "older_than_ns": p.older_than_ns,
            "window_ns": p.window_ns,
        }
    )
    rows: list[dict[str, Any]] = []
    for r in p.rows:
        key = {
            **base,
            "site": r.site,
            "tag": r.tag,
            "alloc_source": r.source,
            "caller": r.caller,
        }
        row: dict[str, Any] = {
            **key,
            "row_kind": "row",
            "sampled": r.sampled,
            "freed_sampled": r.freed_sampled,
            "live_sampled": r.live_sampled,
            "missed_frees": r.missed_frees,
            "stacks_json": dumps(r.stacks) if r.stacks else None,
        }
        for name in LIFESPAN_ESTIMATES:
            row.update(_estimate(name, getattr(r, name)))
        if r.lifespan is not None:
            row["lifespan_mean_ns"] = r.lifespan.mean_ns.value
            row["lifespan_calls"] = sum(s.calls for s in r.lifespan_hist)
        rows.append(row)
        life = r.lifespan
        if life is not None and life.addr_calls is not None and life.addr_calls_sq is not None:
            # the kept addresses' Kish sums behind the percentile intervals (fleet report)
            rows.append(
                {
                    **key,
                    "row_kind": "addr",
                    "hist_calls": life.addr_calls,
                    "hist_calls_var": life.addr_calls_sq,
                }
            )
        for s in r.lifespan_hist:
            rows.append(
                {
                    **key,
                    "row_kind": "hist",
                    "slot": max(0, s.high_ns.bit_length() - 2),
                    "hist_sampled": s.sampled,
                    "hist_calls": s.calls,
                    "hist_calls_var": s.calls_var,
                }
            )
    return _table(rows, LIFESPAN_SCHEMA)
