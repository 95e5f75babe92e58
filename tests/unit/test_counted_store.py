"""Counted-once totals in the fleet store's hosts rows (issue 13), from the agent's commit
and from ingest, and parts written before the columns existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from report_samples import HOST
from test_counted_snapshot import SLAB_OBJECTS_A, _snapshot
from test_counted_totals import A_OBJECTS, A_PLAIN, A_TEXT, B_OBJECTS, B_PLAIN, B_TEXT

from allocscope.collector.allocinfo import parse_allocinfo_text
from allocscope.collector.snapshot import (
    snapshot_table,
)
from allocscope.collector.store import Store
from allocscope.collector.store_read import connect, relation_sql
from allocscope.collector.store_schemas import ADDED_COLUMNS, HOSTS_SCHEMA


def _hosts(store: Store) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = store.read("hosts").to_pylist()
    return sorted(rows, key=lambda r: r["taken_at"])


def test_hosts_rows_carry_counted_once(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    a = parse_allocinfo_text(A_TEXT, "a")
    a.taken_at = 1_700_000_000.0
    store.commit_snapshot(snapshot_table(a, HOST), HOST, a.taken_at, slab_objects=SLAB_OBJECTS_A)
    b = parse_allocinfo_text(B_TEXT, "b")
    b.taken_at = 1_700_000_060.0
    store.commit_snapshot(snapshot_table(b, HOST), HOST, b.taken_at)  # no slabinfo figure
    ra, rb = _hosts(store)
    assert ra["total_bytes"] == A_PLAIN  # the plain sum, unchanged
    assert ra["memory_bytes"] == HOST.memory_bytes  # RAM, a different thing
    assert ra["counted_bytes"] == A_OBJECTS + 6864 and ra["counted_exact"] is False
    assert (ra["slab_page_bytes"], ra["slab_overhead_bytes"]) == (40960, 6864)
    assert ra["percpu_page_bytes"] == 8192
    assert rb["counted_bytes"] == B_OBJECTS and rb["slab_overhead_bytes"] is None
    assert rb["slab_page_bytes"] == 57344
    # the allocinfo rows' subsystem column: the slab pages are not mm's
    rows = store.read("allocinfo", ["function", "subsystem"]).to_pylist()
    assert {r["subsystem"] for r in rows if r["function"] == "alloc_slab_page"} == {
        "(slab pages: container)"
    }


def test_hosts_parts_from_before_the_columns_read_as_null(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    a = parse_allocinfo_text(A_TEXT, "a")
    a.taken_at = 1_700_000_000.0
    store.commit_snapshot(snapshot_table(a, HOST), HOST, a.taken_at, slab_objects=SLAB_OBJECTS_A)
    # a store schema 1 part (no counted columns), sorting before the new one
    new_part = next((tmp_path / "store" / "hosts").glob("dt=*/*.parquet"))
    old_names = [n for n in HOSTS_SCHEMA.names if n not in ADDED_COLUMNS["hosts"]]
    old = pq.read_table(str(new_part)).select(old_names)
    old = old.set_column(
        old_names.index("taken_at"),
        "taken_at",
        pa.array([1_699_999_000_000_000], pa.int64()).cast(HOSTS_SCHEMA.field("taken_at").type),
    )
    pq.write_table(old, str(new_part.parent / "part-0-old.parquet"))
    rows = _hosts(store)
    assert [r["counted_bytes"] for r in rows] == [None, A_OBJECTS + 6864]
    con = connect()
    got = con.sql(
        f"SELECT counted_bytes FROM {relation_sql(store, 'hosts')} ORDER BY taken_at"
    ).fetchall()
    assert got == [(None,), (A_OBJECTS + 6864,)]


def test_ingest_takes_the_recorded_slab_objects(tmp_path: Path) -> None:
    from allocscope.collector.ingest import ingest

    pa_ = _snapshot(tmp_path, "a", A_TEXT, SLAB_OBJECTS_A, 1_700_000_000.0)
    pb = _snapshot(tmp_path, "b", B_TEXT, None, 1_700_000_060.0)
    store = Store(str(tmp_path / "store"))
    ingest(store, [str(pa_), str(pb)])
    ra, rb = _hosts(store)
    assert ra["counted_bytes"] == A_OBJECTS + 6864 and ra["slab_overhead_bytes"] == 6864
    assert rb["counted_bytes"] == B_OBJECTS and rb["slab_overhead_bytes"] is None
    assert (ra["total_bytes"], rb["total_bytes"]) == (A_PLAIN, B_PLAIN)
