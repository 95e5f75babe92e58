"""The report's fleet sections for the store's ``context`` and ``lifespan`` datasets.

Every number comes from the named queries (collector/queries/tag_rates.sql, tag_callers.sql,
charged_by_subsystem.sql, lifespan_by_tag.sql, leaks_fleet.sql) on DuckDB, so the report
shows exactly what ``allocscope query`` answers. Two things SQL does not give are done here
from the same stored sums: the merged flame graph of a tag (its folded stacks summed over
committed intervals) and the lifespan percentiles' intervals (order statistics over the summed
log2 histograms, collector/lifespan_stats.py ``quantile`` -- the SQL gives the point values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector import lifespan_stats
from allocscope.collector.query import DuckDBEngine, render, run_named
from allocscope.collector.store import Store

MAX_FOLDED_INTERVALS = 500  # intervals whose stacks are summed per tag's flame graph
NR_SLOTS = 48  # probes/lifespan.py NR_SLOTS

_COMMITTED = """
    FROM {dataset} c
    LEFT JOIN (SELECT DISTINCT hostname, taken_at FROM {hosts}) k
      ON c.hostname = k.hostname AND c.taken_at = k.taken_at
    WHERE (c.source <> 'agent' OR k.hostname IS NOT NULL)"""


@dataclass(slots=True)
class TagCallers:
    tag: str
    rate: dict[str, Any]  # its tag-rates row
    callers: list[dict[str, Any]]  # tag-callers rows
    folded: dict[str, float]


@dataclass(slots=True)
class FleetContext:
    hosts: int
    intervals: int
    tags: list[TagCallers] = field(default_factory=list)
    charged: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class FleetLifespan:
    hosts: int
    intervals: int
    tags: list[dict[str, Any]] = field(default_factory=list)  # lifespan-by-tag + intervals
    leaks: list[dict[str, Any]] = field(default_factory=list)


def _rows(r: Any) -> list[dict[str, Any]]:
    return [dict(zip(r.columns, x, strict=True)) for x in r.rows]


def _sql(e: DuckDBEngine, sql: str, values: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Raw SQL with {dataset}/{hosts} references and ? parameters (report code, not user SQL)."""
    text = render(sql, e)
    return [tuple(x) for x in e.con.execute(text, values or []).fetchall()]


def _counts(e: DuckDBEngine, dataset: str) -> tuple[int, int]:
    got = _sql(
        e,
        "SELECT COUNT(DISTINCT c.hostname), COUNT(DISTINCT c.hostname || '@' || "
        "CAST(c.taken_at AS VARCHAR))" + _COMMITTED.replace("{dataset}", "{" + dataset + "}"),
    )
    return int(got[0][0] or 0), int(got[0][1] or 0)


def fleet_context(store: Store, top_n: int) -> FleetContext | None:
    if not store.files("context"):
        return None
    e = DuckDBEngine(store)
    try:
        hosts, intervals = _counts(e, "context")
        out = FleetContext(hosts, intervals)
        for rate in _rows(run_named(e, "tag-rates", {"limit": str(top_n)})):
            tag = str(rate["tag"])
            callers = _rows(run_named(e, "tag-callers", {"tag": tag, "limit": "20"}))
            folded: dict[str, float] = {}
            for (text,) in _sql(
                e,
                "SELECT c.folded_json"
                + _COMMITTED.replace("{dataset}", "{context}")
                + " AND c.tag = ? AND c.row_kind = 'tag' AND c.folded_json IS NOT NULL "
                "ORDER BY c.taken_at DESC LIMIT ?",
                [tag, MAX_FOLDED_INTERVALS],
            ):
                try:
                    stacks = json.loads(text)
                except ValueError:
                    continue
                if isinstance(stacks, dict):
                    for k, v in stacks.items():
                        if isinstance(v, (int, float)):
                            folded[str(k)] = folded.get(str(k), 0.0) + float(v)
            out.tags.append(TagCallers(tag, rate, callers, folded))
        out.charged = _rows(run_named(e, "charged-by-subsystem"))
        return out
    finally:
        e.close()


def fleet_lifespan(store: Store, top_n: int) -> FleetLifespan | None:
    if not store.files("lifespan"):
        return None
    e = DuckDBEngine(store)
    try:
        hosts, intervals = _counts(e, "lifespan")
        out = FleetLifespan(hosts, intervals)
        tags = _rows(run_named(e, "lifespan-by-tag", {"limit": str(top_n)}))
        hist: dict[str, tuple[list[float], list[float]]] = {}
        for key, slot, w, w2 in _sql(
            e,
            "SELECT COALESCE(c.tag, c.site), c.slot, SUM(c.hist_calls), SUM(c.hist_calls_var)"
            + _COMMITTED.replace("{dataset}", "{lifespan}")
            + " AND c.row_kind = 'hist' GROUP BY 1, 2",
        ):
            ws, w2s = hist.setdefault(str(key), ([0.0] * NR_SLOTS, [0.0] * NR_SLOTS))
            if 0 <= int(slot) < NR_SLOTS:
                ws[int(slot)] += float(w or 0.0)
                w2s[int(slot)] += float(w2 or 0.0)
        for t in tags:
            w, w2 = hist.get(str(t["tag"]), ([], []))
            if sum(w) > 0:
                for q, name in ((0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")):
                    iv = lifespan_stats.quantile(w, w2, q)
                    t[f"{name}_low"], t[f"{name}_high"] = iv.low, iv.high
            t["hist"] = w
        out.tags = tags
        out.leaks = _rows(run_named(e, "leaks-fleet", {"limit": str(top_n)}))
        return out
    finally:
        e.close()
