"""Rows of the store's ``hosts`` dataset, the columns every result row repeats, and the time
stamps (µs, ``dt=`` day) that make a snapshot's rows join.

Separate from collector/store.py (where and how parts are written) because the agent, ingest,
snapshot checks and the result tables (collector/store_tables.py, store_fleet.py) build rows
without writing anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from allocscope.collector.containers import CountedTotals
from allocscope.collector.host import HostMetadata
from allocscope.collector.snapshot import counted_of_table
from allocscope.collector.store_schemas import HOSTS_SCHEMA, LABELS, TS

# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)


def to_us(t: float) -> int:
    """Unix seconds -> µs exactly as collector/snapshot.py stamps rows (truncation), so a
    snapshot's ``hosts`` row and its ``allocinfo`` rows always join on ``taken_at``."""
    return int(t * 1_000_000)


def dt_of(t: float) -> str:
    """The ``dt=`` partition (UTC day) of a unix time."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class AgentStats:
    """The agent's own cost for one snapshot, stored next to it so the fleet can watch it."""

    cpu_s: float
    rss_bytes: int


def day_of_us(us: int) -> str:
    """The ``dt=`` partition of a µs stamp (the UTC day its second falls in)."""
    return dt_of(float(us // 1_000_000))


def hosts_rows(
    items: Iterable[
        tuple[HostMetadata, float, str | None, str, pa.Table | None, AgentStats | None]
    ],
    totals: list[tuple[int, int, int]] | None = None,
    counted: list[CountedTotals | None] | None = None,
    slab_objects: list[int | None] | None = None,
) -> pa.Table:
    """``hosts`` rows: one per (host metadata, taken_at, allocinfo version, source, rows, stats).

    ``totals`` (sites, bytes, calls) may be given instead of the rows, for batch ingest, and
    ``counted`` (memory counted once, collector/containers.py) beside them; otherwise it is
    computed from the rows, with ``slab_objects`` (/proc/slabinfo's object bytes of a live
    read, per item) where known. A snapshot without either has null counted columns.
    """
    cols: dict[str, list[Any]] = {name: [] for name in HOSTS_SCHEMA.names}
    stored = to_us(time.time())
    for i, (host, taken_at, version, source, rows, agent) in enumerate(items):
        got: CountedTotals | None = None
        if counted is not None:
            got = counted[i]
        elif rows is not None:
            got = counted_of_table(rows, slab_objects[i] if slab_objects else None)
        if totals is not None:
            sites, tbytes, tcalls = totals[i]
        else:
            assert rows is not None
            sites = rows.num_rows
            tbytes = int(pc.sum(rows["bytes"]).as_py() or 0)
            tcalls = int(pc.sum(rows["calls"]).as_py() or 0)
        cols["counted_bytes"].append(got.memory_bytes if got else None)
        cols["counted_exact"].append(got.exact if got else None)
        cols["slab_page_bytes"].append(got.container_bytes("slab") if got else None)
        cols["slab_overhead_bytes"].append(got.overhead_bytes("slab") if got else None)
        cols["percpu_page_bytes"].append(got.container_bytes("percpu") if got else None)
        cols["hostname"].append(host.hostname)
        cols["boot_id"].append(host.boot_id)
        cols["kernel_release"].append(host.kernel_release)
        if rows is not None and rows.num_rows:
            # the rows' own stamp: the join key must be bit-identical whatever made the rows
            cols["taken_at"].append(pc.cast(rows["taken_at"][0], pa.int64()).as_py())
        else:
            cols["taken_at"].append(to_us(taken_at))
        cols["boot_time"].append(to_us(host.boot_time) if host.boot_time else None)
        cols["uptime_s"].append(max(0.0, taken_at - host.boot_time) if host.boot_time else None)
        cols["cpus"].append(host.cpus)
        cols["cpu_model"].append(host.cpu_model)
        cols["memory_bytes"].append(host.memory_bytes)
        cols["mem_profiling"].append(host.mem_profiling)
        cols["mem_profiling_writable"].append(host.mem_profiling_writable)
        cols["mem_profiling_compressed"].append(host.mem_profiling_compressed)
        cols["labels"].append(sorted(host.labels.items()))
        cols["allocinfo_version"].append(version)
        cols["source"].append(source)
        cols["sites"].append(sites)
        cols["total_bytes"].append(tbytes)
        cols["total_calls"].append(tcalls)
        cols["agent_cpu_s"].append(agent.cpu_s if agent else None)
        cols["agent_rss_bytes"].append(agent.rss_bytes if agent else None)
        cols["stored_at"].append(stored)
    arrays = []
    for field in HOSTS_SCHEMA:
        if field.type == TS:
            arrays.append(pa.array(cols[field.name], pa.int64()).cast(TS))
        else:
            arrays.append(pa.array(cols[field.name], field.type))
    return pa.Table.from_arrays(arrays, schema=HOSTS_SCHEMA)


def result_common(host: HostMetadata, start: float, duration: float, n: int) -> dict[str, Any]:
    """The result columns every row of a callers/overhead result repeats."""
    return {
        "hostname": [host.hostname] * n,
        "boot_id": [host.boot_id] * n,
        "kernel_release": [host.kernel_release] * n,
        "taken_at": pa.array([to_us(start)] * n, pa.int64()).cast(TS),
        "duration_s": [float(duration)] * n,
        "mem_profiling": [host.mem_profiling] * n,
        "labels": pa.array([sorted(host.labels.items())] * n, LABELS),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
