"""Counted-once totals in snapshot files (issue 13): the metadata records the plain sums,
memory counted once, the containers and whether a live read was consistent; the subsystem
column keeps container tags out of ``mm``; diff and top use what a live snapshot recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from report_samples import HOST
from test_counted_totals import A_OBJECTS, A_PLAIN, A_TEXT, B_OBJECTS, B_PLAIN, B_TEXT, _files

from allocscope.collector.allocinfo import parse_allocinfo_text, read_allocinfo
from allocscope.collector.containers import counted_once
from allocscope.collector.diff import diff_snapshots
from allocscope.collector.snapshot import (
    counted_of_table,
    read_snapshot,
    snapshot_table,
    write_snapshot,
)
from allocscope.reports.allocinfo import diff_json

SLAB_OBJECTS_A = 34096  # as /proc/slabinfo would say on the live host: 6864 B free in slabs
SLAB_OBJECTS_B = 49096  # 8248 B free


def _snapshot(tmp_path: Path, name: str, text: str, slab: int | None, t: float) -> Path:
    snap = parse_allocinfo_text(text, name)
    snap.taken_at = t
    snap.slab_objects_bytes = slab
    snap.consistent = False if name == "b" else None
    path = tmp_path / f"{name}.parquet"
    write_snapshot(str(path), snap, HOST)
    return path


def test_snapshot_metadata_records_counted_once_and_consistency(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, "b", B_TEXT, SLAB_OBJECTS_B, 1_700_000_060.0)
    meta = pq.read_schema(str(path)).metadata
    assert meta[b"allocscope.consistent"] == b"0"  # CONTENT_ID never settled
    counted = json.loads(meta[b"allocscope.counted"])
    assert counted["bytes"] == B_PLAIN and counted["calls"] == 14 + 2 + 450 + 1 + 4
    assert counted["memory_bytes"] == B_OBJECTS + 8248
    assert counted["memory_exact"] is False  # per-CPU overhead is never known
    assert counted["containers"]["slab"] == {
        "bytes": 57344,
        "calls": 14,
        "tags": 1,
        "objects_bytes": SLAB_OBJECTS_B,
        "overhead_bytes": 8248,
        "objects_source": "/proc/slabinfo",
    }
    back = read_snapshot(str(path))
    assert back.consistent is False and back.slab_objects_bytes == SLAB_OBJECTS_B
    # a saved file: no slabinfo figure, consistency not checked
    other = _snapshot(tmp_path, "a", A_TEXT, None, 1_700_000_000.0)
    meta = pq.read_schema(str(other)).metadata
    assert meta[b"allocscope.consistent"] == b""
    counted = json.loads(meta[b"allocscope.counted"])
    assert counted["memory_bytes"] == A_OBJECTS
    assert counted["containers"]["slab"]["overhead_bytes"] is None
    back = read_snapshot(str(other))
    assert back.consistent is None and back.slab_objects_bytes is None


def test_snapshot_subsystem_column_keeps_containers_out_of_mm(fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    table = snapshot_table(snap, HOST)
    subs = dict(zip(table["function"].to_pylist(), table["subsystem"].to_pylist(), strict=False))
    assert subs["alloc_slab_page"] == "(slab pages: container)"
    assert subs.get("ractl_alloc_folio", "mm") == "mm"
    slab_rows = [
        b
        for b, s in zip(table["bytes"].to_pylist(), table["subsystem"].to_pylist(), strict=True)
        if s == "(slab pages: container)"
    ]
    assert sum(slab_rows) == counted_once(snap.records).containers["slab"].bytes
    # the table-level count agrees with the record-level one (same rule, fewer records)
    by_table = counted_of_table(table, 1000)
    by_records = counted_once(snap.records, slab_objects_bytes=1000)
    assert by_table.totals_dict() == by_records.totals_dict()


def test_snapshot_cli_json_has_counted_once(cli: Any, tmp_path: Path) -> None:
    a, _ = _files(tmp_path)
    out_path = tmp_path / "s.parquet"
    rc, out, err = cli("snapshot", "-o", str(out_path), "--file", str(a), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["bytes"] == A_PLAIN and doc["memory_bytes"] == A_OBJECTS
    assert doc["containers"]["slab"]["bytes"] == 40960 and doc["consistent"] is None
    meta = pq.read_schema(str(out_path)).metadata
    assert json.loads(meta[b"allocscope.counted"])["memory_bytes"] == A_OBJECTS


def test_diff_of_live_snapshots_is_exact_for_slab(tmp_path: Path) -> None:
    pa_ = _snapshot(tmp_path, "a", A_TEXT, SLAB_OBJECTS_A, 1_700_000_000.0)
    pb = _snapshot(tmp_path, "b", B_TEXT, SLAB_OBJECTS_B, 1_700_000_060.0)
    d = diff_snapshots(read_snapshot(str(pa_)), read_snapshot(str(pb)))
    t = diff_json(d, d.changes)["totals"]
    assert t["containers_a"]["slab"]["overhead_bytes"] == 40960 - SLAB_OBJECTS_A == 6864
    assert t["containers_b"]["slab"]["overhead_bytes"] == 57344 - SLAB_OBJECTS_B == 8248
    assert t["memory_bytes_a"] == A_OBJECTS + 6864
    assert t["memory_bytes_b"] == B_OBJECTS + 8248
    assert t["delta_memory_bytes"] == 15000 + 8248 - 6864
    assert t["bytes_a"] == A_PLAIN and t["bytes_b"] == B_PLAIN


def test_top_of_a_live_snapshot_uses_its_slabinfo_figure(cli: Any, tmp_path: Path) -> None:
    pb = _snapshot(tmp_path, "b", B_TEXT, SLAB_OBJECTS_B, 1_700_000_060.0)
    rc, out, err = cli("top", "--file", str(pb), "--json")
    assert rc == 0, err
    totals = json.loads(out)["totals"]
    assert totals["bytes"] == B_PLAIN and totals["memory_bytes"] == B_OBJECTS + 8248
    assert totals["containers"]["slab"]["overhead_bytes"] == 8248


def test_diff_bound_names_what_is_unknown(tmp_path: Path) -> None:
    from allocscope.reports.allocinfo import diff_counted_once_line

    pa_ = _snapshot(tmp_path, "a", A_TEXT, SLAB_OBJECTS_A, 1_700_000_000.0)
    pb = _snapshot(tmp_path, "b", B_TEXT, SLAB_OBJECTS_B, 1_700_000_060.0)
    live = diff_snapshots(read_snapshot(str(pa_)), read_snapshot(str(pb)))
    line = diff_counted_once_line(live, human=False)
    assert "(at least: free space in per-CPU chunks unknown)" in line
    assert "of which free or fragmented 6864 -> 8248" in line
    saved = diff_snapshots(parse_allocinfo_text(A_TEXT, "a"), read_snapshot(str(pb)))
    assert "free slab space unknown" in diff_counted_once_line(saved, human=False)
