"""The context/lifespan datasets in the store: the agent's interval commit (rows before the
hosts record, orphans removed only when uncommitted), the spool carrying an interval's rows,
ingest, and the continuous capture's per-interval differences."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from support import synth
from support.synth import FleetSpec, host_metadata
from support.synth_context import context_result, lifespan_result, points

from allocscope.collector import context
from allocscope.collector.agent import Spool
from allocscope.collector.agent_capture import diff_raw
from allocscope.collector.allocinfo import AllocinfoSnapshot
from allocscope.collector.ingest import ingest
from allocscope.collector.query import DuckDBEngine, run_named
from allocscope.collector.snapshot import snapshot_table
from allocscope.collector.store import Store
from allocscope.collector.store_fleet import context_table, lifespan_table
from allocscope.errors import InputError

T = synth.START + 7200.0


def interval(h: int = 0) -> tuple[Any, pa.Table, list[tuple[str, pa.Table]]]:
    host = host_metadata(h, 0, FleetSpec())
    snap = AllocinfoSnapshot(None, [], "none", taken_at=T)
    table = snapshot_table(snap, host)
    extra = [
        (
            "context",
            context_table(context_result(h, host, T - 60, 60.0), "x", taken_at=T, source="agent"),
        ),
        (
            "lifespan",
            lifespan_table(lifespan_result(h, host, T - 60, 60.0), "x", taken_at=T, source="agent"),
        ),
    ]
    return host, table, extra


def tag_rates(store: Store) -> list[Any]:
    return run_named(DuckDBEngine(store), "tag-rates", {}).rows


def test_interval_commit_and_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "s"))
    host, table, extra = interval()
    real = Store.write_part

    def no_commit(self: Store, dataset: str, t: pa.Table, path: str, **kw: Any) -> str:
        if dataset == "hosts":
            raise OSError("killed before the commit")
        return real(self, dataset, t, path, **kw)

    monkeypatch.setattr(Store, "write_part", no_commit)
    with pytest.raises(OSError):
        store.commit_snapshot(table, host, T, extra=extra)
    monkeypatch.undo()
    assert len(store.files("context")) == len(store.files("lifespan")) == 1
    assert tag_rates(store) == []  # written but not committed: no query sees it
    assert store.clean_orphans(host.hostname) == 3  # allocinfo, context, lifespan parts
    assert store.files("context") == store.files("lifespan") == []
    store.commit_snapshot(table, host, T, extra=extra)
    assert store.clean_orphans(host.hostname) == 0
    assert len(tag_rates(store)) == 3  # committed: the three synthetic tags


def test_ingested_results_are_not_orphans(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    host = host_metadata(0, 0, FleetSpec())
    paths = []
    for i, res in enumerate((context_result(0, host, T, 60.0), lifespan_result(0, host, T, 60.0))):
        p = str(tmp_path / f"r{i}.json")
        res.write(p)
        paths.append(p)
    rep = ingest(store, paths)
    assert [k for _, k, _ in rep.imported] == ["context", "lifespan"] and not rep.skipped
    assert store.clean_orphans(host.hostname) == 0  # a result part is its own commit
    assert len(tag_rates(store)) == 3
    assert ingest(store, paths).duplicates == paths


def test_payload_without_sums_is_refused(tmp_path: Path) -> None:
    res = context_result(0, host_metadata(0, 0, FleetSpec()), T, 60.0)
    del res.payload["tags"][0]["sums"]
    with pytest.raises(InputError, match=r"tags\[0\]\.sums: missing"):
        context_table(res, "old.json")


def test_spool_keeps_interval_rows(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    spool = Spool(str(tmp_path / "spool"), 10)
    host, table, extra = interval()
    spool.add(table, T, extra)
    assert [os.path.basename(p) for p in spool.pending()] == [f"snap-{int(T * 1e9):020d}.parquet"]
    assert spool.flush(store, lambda s: None) == 1
    assert os.listdir(tmp_path / "spool") == []  # the snapshot and its rows are gone
    assert len(store.files("context")) == 1 and len(tag_rates(store)) == 3


def test_diff_raw_splits_cumulative_reads() -> None:
    """Two cumulative reads of one probe: the second interval is exactly the growth, and the
    intervals add up to the whole."""

    def raw(n: int, m: int) -> context.RawCapture:
        return context.RawCapture(
            [
                context.RawSample(1, True, (10, 20), 0, 0, points(n, 64)),
                context.RawSample(2, True, (30,), 1, 1, points(m, 128)),
            ],
            {},
            [n * 10, m * 10, 0],
            [n * 640, m * 1280, 0],
            hits=n + m,
        )

    first, both = raw(5, 0), raw(12, 7)
    second = diff_raw(both, first)
    assert [(s.site, s.sums.hits) for s in second.samples] == [(1, 7), (2, 7)]
    assert second.samples[0].sums.bytes_w == points(12, 64).bytes_w - points(5, 64).bytes_w
    assert second.events == [70, 70, 0] and second.hits == 14
    assert diff_raw(first, None) is first
