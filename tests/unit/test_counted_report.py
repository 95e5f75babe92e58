"""Counted-once totals in the HTML report (issue 13): memory counted once, the container
overhead and the plain sum, from snapshot files and from a store."""

from __future__ import annotations

import time
from pathlib import Path

from report_samples import HOST
from test_counted_snapshot import SLAB_OBJECTS_B, _snapshot
from test_counted_totals import B_OBJECTS, B_PLAIN, B_TEXT

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.containers import counted_once
from allocscope.collector.report_data import gather
from allocscope.collector.snapshot import (
    snapshot_table,
)
from allocscope.collector.store import Store
from allocscope.reports.html import render_report


def test_report_shows_counted_once_from_files(tmp_path: Path) -> None:
    pb = _snapshot(tmp_path, "b", B_TEXT, SLAB_OBJECTS_B, time.time() - 60)
    data = gather(title="t", files=[str(pb)])
    (host,) = data.hosts
    assert host.bytes == B_PLAIN
    assert host.counted is not None and host.counted.memory_bytes == B_OBJECTS + 8248
    assert host.counted.overhead_bytes("slab") == 8248
    page = render_report(data)
    assert "Memory counted once:" in page
    assert "container overhead" in page and "per-CPU chunk pages" in page
    assert f'data-v="{B_OBJECTS + 8248}"' in page  # the hosts table's counted-once cell
    subs = dict(data.subsystem_totals)
    assert subs["(slab pages: container)"] == 57344 and subs["mm"] == 16384


def test_report_shows_counted_once_from_a_store(tmp_path: Path, fixtures_dir: Path) -> None:
    store = Store(str(tmp_path / "store"))
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    snap.taken_at = time.time() - 60
    store.commit_snapshot(snapshot_table(snap, HOST), HOST, snap.taken_at, slab_objects=1 << 20)
    data = gather(title="t", store=str(store.root))
    (host,) = data.hosts
    want = counted_once(snap.records, slab_objects_bytes=1 << 20)
    assert host.counted is not None
    assert host.counted.totals_dict() == want.totals_dict()
    assert host.bytes == want.bytes > host.counted.memory_bytes
