"""The report's sections read from the store's ``hosts``, ``callers`` and ``overhead`` datasets:
host labels for grouping, who-calls callers merged per site, overhead per allocator function.

Separate from collector/report_data.py (the allocinfo SQL and ``gather``) because these read
the store's other datasets, each through the one store relation (collector/store_read.py);
the ``context`` and ``lifespan`` sections are collector/report_fleet.py's.
"""

from __future__ import annotations

import json
from typing import Any

from allocscope.collector.report_fleet import fleet_context, fleet_lifespan
from allocscope.collector.report_model import (
    CONTROL,
    GROUP_LABEL,
    PILOT,
    FleetCallers,
    FleetOverhead,
    ReportData,
)
from allocscope.collector.store import Store
from allocscope.collector.store_read import fetch, pattern, quote, relation_sql


def _labels_from_row(row: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    raw = row.get("labels")
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if isinstance(raw, dict):
        out.update({str(k): str(v) for k, v in raw.items()})
    elif isinstance(raw, list):  # Arrow map read as [(k, v)] or [{"key":..,"value":..}]
        for item in raw:
            if isinstance(item, dict) and "key" in item:
                out[str(item["key"])] = str(item.get("value"))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out[str(item[0])] = str(item[1])
    for k, v in row.items():
        if k.startswith("label_") and v is not None:
            out[k[len("label_") :]] = str(v)
    if "group" in row and row["group"] is not None and GROUP_LABEL not in out:
        out[GROUP_LABEL] = str(row["group"])
    return out


def store_labels(con: Any, store: Store) -> dict[str, dict[str, str]]:
    """hostname -> labels, from the store's ``hosts`` dataset (latest row per host wins).

    Falls back to the host metadata kept in each snapshot file's Parquet footer when the
    store has no ``hosts`` dataset.
    """
    out: dict[str, dict[str, str]] = {}
    if store.files("hosts"):
        tables = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        rel = con.sql(
            "SELECT * FROM hosts_t"
            if "hosts_t" in tables
            else f"SELECT * FROM {relation_sql(store, 'hosts')}"
        )
        cols = [
            c for c in rel.columns if c in ("hostname", "labels", "group") or c.startswith("label_")
        ]
        order = next(
            (c for c in ("taken_at", "collected_at", "stored_at", "dt") if c in rel.columns), None
        )
        sql = "SELECT " + ", ".join(f'"{c}"' for c in cols) + " FROM rel"
        if order:
            sql += f' ORDER BY "{order}"'
        for values in con.sql(sql).fetchall():
            row = dict(zip(cols, values, strict=True))
            if row.get("hostname") is not None:
                out[str(row["hostname"])] = _labels_from_row(row)
        return out
    parts = quote(pattern(store, "allocinfo"))
    rows = con.sql(
        f"SELECT file_name, decode(value) FROM parquet_kv_metadata({parts})"
        " WHERE decode(key) = 'allocscope.host' ORDER BY file_name"
    ).fetchall()
    for _name, text in rows:
        try:
            meta = json.loads(text)
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("hostname"):
            out[str(meta["hostname"])] = {
                str(k): str(v) for k, v in (meta.get("labels") or {}).items()
            }
    return out


MAX_MERGED_RESULTS = 500  # who-calls payloads parsed per site for the merged flame graph


def store_results(con: Any, data: ReportData, store: Store, top_n: int) -> None:
    """who-calls and overhead results ingested into the store, summarized across hosts."""
    if store.files("callers"):
        _fleet_callers(con, data, store, top_n)
    if store.files("overhead"):
        _fleet_overhead(con, data, store)
    data.fleet_context = fleet_context(store, top_n)
    data.fleet_lifespan = fleet_lifespan(store, top_n)


def _fleet_callers(con: Any, data: ReportData, store: Store, top_n: int) -> None:
    con.execute(
        "CREATE TEMP VIEW callers AS SELECT *, coalesce(site_function, site) AS s FROM "
        + relation_sql(store, "callers")
    )
    sites = fetch(
        con,
        """
        SELECT s, count(*), count(DISTINCT hostname), sum(total_calls),
               string_agg(DISTINCT backend, ', ' ORDER BY backend)
        FROM (SELECT DISTINCT hostname, taken_at, s, total_calls, backend FROM callers)
        GROUP BY s ORDER BY sum(total_calls) DESC NULLS LAST, s""",
    )
    for site, results, hosts, total, backends in sites:
        total = int(total or 0)
        rows = fetch(
            con,
            """
            SELECT caller, count(DISTINCT hostname), sum(calls), sum(bytes),
                   min(share), median(share), max(share)
            FROM callers WHERE s = ? AND caller IS NOT NULL
            GROUP BY caller ORDER BY sum(calls) DESC NULLS LAST, caller LIMIT ?""",
            [site, max(top_n, 20)],
        )
        callers = [
            {
                "caller": c,
                "hosts": int(h),
                "calls": int(n or 0),
                "share": (float(n or 0) / total) if total else None,
                "host_share_min": lo,
                "host_share_median": med,
                "host_share_max": hi,
                "bytes": int(b or 0),
            }
            for c, h, n, b, lo, med, hi in rows
        ]
        folded: dict[str, float] = {}
        for (payload,) in fetch(
            con,
            "SELECT payload_json FROM (SELECT DISTINCT hostname, taken_at, payload_json "
            "FROM callers WHERE s = ?) ORDER BY taken_at DESC LIMIT ?",
            [site, MAX_MERGED_RESULTS],
        ):
            try:
                stacks = json.loads(payload or "{}").get("folded") or {}
            except (ValueError, AttributeError):
                continue
            if isinstance(stacks, dict):
                for k, v in stacks.items():
                    if isinstance(v, (int, float)):
                        folded[str(k)] = folded.get(str(k), 0.0) + float(v)
        data.fleet_callers.append(
            FleetCallers(
                str(site), int(results), int(hosts), total, backends or "", callers, folded
            )
        )


def _fleet_overhead(con: Any, data: ReportData, store: Store) -> None:
    """Per allocator function, each host's latest overhead result; pilot vs control medians
    when the results carry ``group`` labels."""
    con.execute("CREATE TEMP VIEW overhead AS SELECT * FROM " + relation_sql(store, "overhead"))
    con.execute(
        f"""
        CREATE TEMP TABLE oh AS
        SELECT o.*, lower(coalesce(o.labels['{GROUP_LABEL}'], '')) AS grp
        FROM overhead o JOIN (SELECT hostname, max(taken_at) AS t FROM overhead
                              GROUP BY hostname) l
          ON o.hostname = l.hostname AND o.taken_at = l.t
        WHERE o.function IS NOT NULL AND coalesce(o.present, true)"""
    )
    (hosts,) = fetch(con, "SELECT count(DISTINCT hostname) FROM oh")[0]
    if not hosts:
        return
    groups = {g for (g,) in fetch(con, "SELECT DISTINCT grp FROM oh")}
    grouped = PILOT in groups and CONTROL in groups
    rows = fetch(
        con,
        f"""
        SELECT function, any_value(kind), count(DISTINCT hostname),
               median(inclusive_share), median(self_share), median(ns_per_call),
               count(DISTINCT hostname) FILTER (WHERE grp = '{PILOT}'),
               count(DISTINCT hostname) FILTER (WHERE grp = '{CONTROL}'),
               median(inclusive_share) FILTER (WHERE grp = '{PILOT}'),
               median(inclusive_share) FILTER (WHERE grp = '{CONTROL}'),
               median(ns_per_call) FILTER (WHERE grp = '{PILOT}'),
               median(ns_per_call) FILTER (WHERE grp = '{CONTROL}')
        FROM oh GROUP BY function ORDER BY median(inclusive_share) DESC NULLS LAST, function""",
    )
    out = []
    for fn, kind, n, inc, slf, ns, np_, nc, pinc, cinc, pns, cns in rows:
        row: dict[str, Any] = {
            "function": fn,
            "kind": kind,
            "hosts": int(n),
            "inclusive_share_median": inc,
            "self_share_median": slf,
            "ns_per_call_median": ns,
        }
        if grouped:
            row.update(
                {
                    "pilot_hosts": int(np_),
                    "control_hosts": int(nc),
                    "pilot_inclusive_share": pinc,
                    "control_inclusive_share": cinc,
                    "pilot_ns_per_call": pns,
                    "control_ns_per_call": cns,
                    "ns_per_call_ratio": (pns / cns) if pns is not None and cns else None,
                }
            )
        out.append(row)
    data.fleet_overhead = FleetOverhead(int(hosts), grouped, out)
