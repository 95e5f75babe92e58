"""The report's fleet sections for the store's ``context`` and ``lifespan`` datasets.

Every number comes from the named queries (collector/queries/tag_rates.sql, tag_callers.sql,
charged_by_subsystem.sql, lifespan_by_tag.sql, leaks_fleet.sql) on DuckDB, so the report
shows exactly what ``allocscope query`` answers. Two things SQL does not give are done here
from the same stored sums: the merged flame graph of a tag (its folded stacks summed over
committed intervals) and the lifespan intervals (collector/lifespan_stats.py, the functions a
single capture uses -- the SQL gives the point values): percentiles by ``quantile`` (exact
binomial order-statistic ranks, ``order_ranks``) on ``n = min(objects' Kish n, kept addresses'
Kish n)`` as in one capture (commit d49de6b), and the mean by ``mean`` with the design effect
``objects' n / n``. See :func:`lifespan_intervals` for how the addresses' n is combined.
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


@dataclass(frozen=True, slots=True)
class HostClusters:
    """One host's kept addresses, over all its rows of one tag: ``calls`` the sum of the
    addresses' calls totals, ``root_sq`` the sum over rows of sqrt(sum of their squares)."""

    calls: float
    root_sq: float


def addr_n(hosts: list[HostClusters]) -> float | None:
    """Kish's effective number of kept addresses behind a tag's fleet histogram, taken
    conservatively: within one host, rows of different intervals and callers may hold the
    same addresses (one probe, one salt, for the agent's life; callers share a cache), and the
    store keeps each row's sums, not its addresses. Merging vectors can only grow the sum of
    squares up to ``(sum_r sqrt(Q_r))^2`` (the triangle inequality), so a host's ``Q_h`` is
    taken as that bound: its intervals count as if they all saw the same addresses. Hosts are
    independent samples (their own machines and salts): their sums add. None: no row kept
    address sums."""
    s = sum(h.calls for h in hosts)
    q = sum(h.root_sq * h.root_sq for h in hosts)
    return s * s / q if hosts and q > 0 else None


def lifespan_intervals(
    w: list[float],
    w2: list[float],
    weighted_sum: float,
    hosts: list[HostClusters],
    confidence: float = 0.95,
) -> dict[str, float]:
    """A tag's fleet intervals from its summed histogram (``w``, ``w2`` per slot), the summed
    ``sum w L`` and its hosts' address sums, by the single capture's rule
    (collector/lifespan.py ``_lifespan``): ``n = min(objects' Kish n, addresses' n)``,
    percentiles on exact binomial ranks over ``n``, the mean's variance times
    ``objects' n / n``. No cap at a window: a fleet histogram spans many."""
    n_obj = lifespan_stats.n_eff(w, w2)
    n_addr = addr_n(hosts)
    n = n_obj if n_addr is None else min(n_obj, n_addr)
    out: dict[str, float] = {"n_draws": n}
    for q, name in ((0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")):
        iv = lifespan_stats.quantile(w, w2, q, confidence, n)
        out[f"{name}_low"], out[f"{name}_high"] = iv.low, iv.high
    deff = n_obj / n if n > 0 else 1.0
    m = lifespan_stats.mean(w, w2, weighted_sum, confidence, design_effect=deff)
    out["mean_ns_low"], out["mean_ns_high"] = m.low, m.high
    return out


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
        wsum: dict[str, float] = {}
        objects_only: dict[str, int] = {}
        for key, ws_, bare in _sql(
            e,
            "SELECT COALESCE(c.tag, c.site), SUM(c.lifespan_mean_ns * c.lifespan_calls), "
            "COUNT(*) FILTER (WHERE c.addr_shift > 0 AND c.lifespan_calls > 0)"
            + _COMMITTED.replace("{dataset}", "{lifespan}")
            + " AND c.row_kind = 'row' GROUP BY 1",
        ):
            wsum[str(key)] = float(ws_ or 0.0)
            objects_only[str(key)] = int(bare or 0)
        clusters: dict[str, list[HostClusters]] = {}
        for key, s_, root, n_rows in _sql(
            e,
            "SELECT COALESCE(c.tag, c.site), SUM(c.hist_calls), "
            "SUM(SQRT(GREATEST(c.hist_calls_var, 0.0))), COUNT(*)"
            + _COMMITTED.replace("{dataset}", "{lifespan}")
            + " AND c.row_kind = 'addr' GROUP BY 1, c.hostname",
        ):
            clusters.setdefault(str(key), []).append(
                HostClusters(float(s_ or 0.0), float(root or 0.0))
            )
            objects_only[str(key)] = objects_only.get(str(key), 0) - int(n_rows or 0)
        for t in tags:
            key = str(t["tag"])
            w, w2 = hist.get(key, ([], []))
            if sum(w) > 0:
                t.update(lifespan_intervals(w, w2, wsum.get(key, 0.0), clusters.get(key, [])))
                # sampled rows whose intervals counted objects (written before the addr rows,
                # or their addr_sums map was full): counted by objects, as they were
                t["rows_by_objects"] = max(0, objects_only.get(key, 0))
            t["hist"] = w
        out.tags = tags
        out.leaks = _rows(run_named(e, "leaks-fleet", {"limit": str(top_n)}))
        return out
    finally:
        e.close()
