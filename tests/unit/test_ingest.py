"""ingest: validation, all-or-nothing per file, duplicates, results flattening."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli
from support.synth import FleetSpec, results, write_snapshot_files

from allocscope.collector import snapshot_check as check_mod
from allocscope.collector import store_batch
from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.host import collect_host_metadata
from allocscope.collector.ingest import ingest, read_snapshot_file
from allocscope.collector.snapshot import write_snapshot
from allocscope.collector.store import Store, StoreUnavailable

SPEC = FleetSpec(hosts=3, sites=25, snapshots=2)


@pytest.fixture
def good(tmp_path: Path) -> list[str]:
    paths = write_snapshot_files(str(tmp_path / "in"), SPEC)
    for n, r in enumerate(results(SPEC)):
        p = tmp_path / "in" / f"{r.kind}-{n}.json"
        r.write(str(p))
        paths.append(str(p))
    return paths


def _bad_files(tmp_path: Path, good: list[str]) -> dict[str, str]:
    snaps = [p for p in good if p.endswith(".parquet")]
    d = tmp_path / "bad"
    d.mkdir()
    out = {}
    # a snapshot cut in half (copied mid-write by some other tool)
    data = open(snaps[0], "rb").read()
    (d / "truncated.parquet").write_bytes(data[: len(data) // 2])
    out["truncated.parquet"] = "not a readable Parquet file"
    # a Parquet file that is not a snapshot
    pq.write_table(pa.table({"x": [1, 2]}), d / "other.parquet")
    out["other.parquet"] = "not an allocscope snapshot"
    # a snapshot whose rows name two hosts (half-imported would be wrong either way)
    t = pq.read_table(snaps[0])
    names = t["hostname"].to_pylist()
    names[-1] = "intruder"
    t2 = t.set_column(0, "hostname", pa.array(names)).replace_schema_metadata(t.schema.metadata)
    pq.write_table(t2, d / "twohosts.parquet")
    out["twohosts.parquet"] = "not one value"
    # a snapshot with a null byte count in its last row
    b = t["bytes"].to_pylist()
    b[-1] = None
    t3 = t.set_column(t.schema.get_field_index("bytes"), "bytes", pa.array(b, pa.int64()))
    pq.write_table(t3.replace_schema_metadata(t.schema.metadata), d / "nullbytes.parquet")
    out["nullbytes.parquet"] = "nulls"
    # a whole footer but garbage in the data pages: the bulk decoder fails, and only this
    # file may be skipped for it
    raw = bytearray(data)
    for k in range(200, min(len(raw) - 4096, 2200)):
        raw[k] = 0xA5
    (d / "corruptpage.parquet").write_bytes(bytes(raw))
    out["corruptpage.parquet"] = "not a readable Parquet file"
    # JSON with a syntax error on line 3
    (d / "broken.json").write_text('{\n "schema": 1,\n "kind": who-calls\n}\n')
    out["broken.json"] = "broken.json:3: bad JSON"
    # who-calls whose 2nd caller is malformed
    wc = json.loads(open([p for p in good if "who-calls" in p][0]).read())
    wc["callers"] = wc["payload"]["callers"]
    wc["payload"]["callers"][1]["calls"] = "many"
    (d / "badcaller.json").write_text(json.dumps(wc))
    out["badcaller.json"] = "payload.callers[1].calls: expected an integer"
    # a result kind the store does not take
    wc2 = json.loads(open([p for p in good if "who-calls" in p][0]).read())
    wc2["kind"] = "top-live"
    wc2["payload"] = {"bytes_kind": "live", "sites": []}
    (d / "toplive.json").write_text(json.dumps(wc2))
    out["toplive.json"] = "are not stored"
    # a who-calls payload labelled overhead (once ingested as a row of NULLs)
    wc3 = json.loads(open([p for p in good if "who-calls" in p][0]).read())
    wc3["kind"] = "overhead"
    (d / "mislabelled.json").write_text(json.dumps(wc3))
    out["mislabelled.json"] = "this looks like a 'who-calls' payload"
    # the two usual mistakes: something else named .parquet, and raw allocinfo text
    (d / "junk.parquet").write_text("<html>404</html>")
    out["junk.parquet"] = "no PAR1 magic"
    (d / "allocinfo.txt").write_text("allocinfo - version: 2.0\n 4096 1 mm/a.c:1 func:f\n")
    out["allocinfo.txt"] = "allocinfo text, not a snapshot: make one with `allocscope snapshot"
    return out


def test_ingest_good_and_bad(tmp_path: Path, good: list[str]) -> None:
    bad = _bad_files(tmp_path, good)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, [str(tmp_path / "in"), str(tmp_path / "bad")])
    skipped = {p.rsplit("/", 1)[1]: why for p, why in rep.skipped}
    assert set(skipped) == set(bad)
    for name, why in bad.items():
        assert why in skipped[name], (name, skipped[name])
    n_snaps = SPEC.hosts * SPEC.snapshots
    assert len([i for i in rep.imported if i[1] == "snapshot"]) == n_snaps
    # nothing of a bad file reached the store
    ai = store.read("allocinfo")
    assert ai.num_rows == SPEC.rows
    assert "intruder" not in set(ai["hostname"].to_pylist())
    assert store.read("hosts").num_rows == n_snaps
    callers = store.read("callers")
    n_res = sum(r.kind == "who-calls" for r in results(SPEC))
    assert callers.num_rows == n_res * 3  # one row per caller
    ov = store.read("overhead")
    assert ov.num_rows == n_res * 2  # one row per function
    row = [r for r in ov.to_pylist() if r["function"] == "__alloc_pages_noprof"][0]
    assert json.loads(row["row_json"])["future_field"] == [1, 2], "unknown fields are kept"
    assert "functions" in json.loads(row["payload_json"])


def test_other_column_types_are_cast(tmp_path: Path, good: list[str]) -> None:
    """A producer that wrote ``line`` as int64 is read the careful way and stored as int32."""
    snap = [p for p in good if p.endswith(".parquet")][0]
    t = pq.read_table(snap)
    i = t.schema.get_field_index("line")
    t = t.set_column(i, "line", t["line"].cast(pa.int64())).replace_schema_metadata(
        t.schema.metadata
    )
    p = tmp_path / "wide.parquet"
    pq.write_table(t, p)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, [str(p)])
    assert not rep.skipped and rep.rows == t.num_rows
    assert store.read("allocinfo").schema.field("line").type == pa.int32()


def test_reingest_is_duplicate(tmp_path: Path, good: list[str]) -> None:
    store = Store(str(tmp_path / "store"))
    first = ingest(store, good)
    files = sorted(store.files("allocinfo") + store.files("callers"))
    again = ingest(store, good)
    assert again.imported == [] and len(again.duplicates) == len(first.imported)
    assert sorted(store.files("allocinfo") + store.files("callers")) == files


def test_cli_exit_status_and_messages(tmp_path: Path, good: list[str], cli: Cli) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    rc, out, err = cli("ingest", "--store", str(tmp_path / "s"), *good, str(bad))
    assert rc == 1
    assert f"skipped {bad}: not a result file" in err
    assert "imported 6 context, 6 lifespan, 3 overhead, 6 snapshot, 3 who-calls (" in out
    assert "1 skipped" in out


def test_real_snapshot_file_roundtrip(tmp_path: Path, fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"))
    host = collect_host_metadata({"group": "control"})
    path = str(tmp_path / "one.parquet")
    write_snapshot(path, snap, host)
    s = read_snapshot_file(path)
    assert s.host.labels == {"group": "control"} and s.table.num_rows == len(snap.records)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, [path])
    assert rep.rows == len(snap.records) and not rep.skipped
    h = store.read("hosts").to_pylist()[0]
    assert h["allocinfo_version"] == "1.0" and h["total_bytes"] == snap.total_bytes


def test_moved_store_file_is_not_a_snapshot(tmp_path: Path, good: list[str]) -> None:
    store = Store(str(tmp_path / "store"))
    ingest(store, good)
    copy = tmp_path / "copy.parquet"
    shutil.copy(store.files("allocinfo")[0], copy)
    rep = ingest(Store(str(tmp_path / "other")), [str(copy)])
    assert rep.skipped and "not an allocscope snapshot" in rep.skipped[0][1]


def _stored_order_ok(store: Store) -> bool:
    """Every allocinfo part is sorted by (hostname, taken_at, site_key)."""
    for f in store.files("allocinfo"):
        t = pq.read_table(f, columns=["hostname", "taken_at", "site_key"])
        keys = list(
            zip(
                t["hostname"].to_pylist(),
                t["taken_at"].to_pylist(),
                t["site_key"].to_pylist(),
                strict=True,
            )
        )
        assert keys == sorted(keys), f
    return True


def test_unsorted_snapshots_are_stored_sorted(tmp_path: Path, fixtures_dir: Path) -> None:
    """Real snapshots come in /proc/allocinfo order, not site order: the bulk path sorts them."""
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    paths = []
    for name in ("zeta", "alpha", "mid"):  # not in host order either
        host = collect_host_metadata({"group": "pilot"})
        host = dataclasses.replace(host, hostname=name)
        p = str(tmp_path / f"{name}.parquet")
        write_snapshot(p, snap, host)
        paths.append(p)
    keys = pq.read_table(paths[0])["site_key"].to_pylist()
    assert keys != sorted(keys), "the fixture must exercise the sort"
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, paths)
    assert not rep.skipped and rep.rows == 3 * len(snap.records)
    assert len(store.files("allocinfo")) == 1
    assert _stored_order_ok(store)
    assert sorted(store.read("hosts")["hostname"].to_pylist()) == ["alpha", "mid", "zeta"]


def test_small_chunks_and_batches_store_the_same(tmp_path: Path) -> None:
    """Many chunks per batch and many batches: same rows, same hosts rows, parts sorted."""
    spec = FleetSpec(hosts=5, sites=40, snapshots=3)
    paths = write_snapshot_files(str(tmp_path / "in"), spec)
    one = Store(str(tmp_path / "one"))
    many = Store(str(tmp_path / "many"))
    ra = ingest(one, paths)
    rb = ingest(many, paths, chunk_rows=90, batch_rows=250)
    assert ra.rows == rb.rows == spec.rows and not rb.skipped
    assert len(many.files("allocinfo")) > len(one.files("allocinfo"))
    assert _stored_order_ok(many)
    cols = ["hostname", "taken_at", "site_key", "bytes", "calls"]
    a = one.read("allocinfo", cols).sort_by([(c, "ascending") for c in cols])
    b = many.read("allocinfo", cols).sort_by([(c, "ascending") for c in cols])
    assert a.equals(b)
    ha = one.read("hosts").drop_columns(["stored_at"]).sort_by("hostname")
    hb = many.read("hosts").drop_columns(["stored_at"]).sort_by("hostname")
    assert ha.sort_by([("hostname", "ascending"), ("taken_at", "ascending")]).equals(
        hb.sort_by([("hostname", "ascending"), ("taken_at", "ascending")])
    )
    assert many.known_snapshots() == one.known_snapshots()


def test_batch_spanning_days_is_split_per_day(tmp_path: Path) -> None:
    spec = FleetSpec(hosts=2, sites=10, snapshots=4, step=43_200.0)  # two snapshots a day
    paths = write_snapshot_files(str(tmp_path / "in"), spec)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, paths)
    assert rep.rows == spec.rows
    days = sorted({os.path.basename(os.path.dirname(f)) for f in store.files("allocinfo")})
    assert len(days) == 2 and len(store.files("hosts")) == 2
    for f in store.files("allocinfo"):
        day = os.path.basename(os.path.dirname(f))[3:]
        stamps = set(pq.read_table(f, columns=["taken_at"])["taken_at"].to_pylist())
        assert {s.strftime("%Y-%m-%d") for s in stamps} == {day}
    assert _stored_order_ok(store)
    # every hosts row joins its rows
    ai = store.read("allocinfo", ["hostname", "taken_at"])
    rows_keys = set(zip(ai["hostname"].to_pylist(), ai["taken_at"].to_pylist(), strict=True))
    h = store.read("hosts", ["hostname", "taken_at"])
    assert set(zip(h["hostname"].to_pylist(), h["taken_at"].to_pylist(), strict=True)) == rows_keys


def test_row_groups_as_one_shot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows streamed chunk by chunk are written in whole row groups, like one write_table."""
    monkeypatch.setattr(store_batch, "ROW_GROUP_ROWS", 64)
    spec = FleetSpec(hosts=4, sites=25, snapshots=2)
    paths = write_snapshot_files(str(tmp_path / "in"), spec)
    store = Store(str(tmp_path / "store"))
    ingest(store, paths, chunk_rows=30)
    (part,) = store.files("allocinfo")
    md = pq.ParquetFile(part).metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sizes == [64] * (spec.rows // 64) + [spec.rows % 64]


def test_same_snapshot_twice_in_one_ingest(tmp_path: Path, good: list[str]) -> None:
    snap = [p for p in good if p.endswith(".parquet")][0]
    copy = tmp_path / "copy.parquet"
    shutil.copy(snap, copy)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, [snap, str(copy)])
    assert len(rep.imported) == 1 and len(rep.duplicates) == 1
    assert store.read("allocinfo").num_rows == SPEC.sites


def test_failed_batch_write_leaves_nothing(
    tmp_path: Path, good: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up mid-batch: the error reaches the caller and no file (whole, partial
    or temp) is left behind, so nothing of the batch was half-imported."""
    calls = {"n": 0}
    real = pq.ParquetWriter.write_table

    def flaky(self: pq.ParquetWriter, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(store_batch, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", flaky)
    store = Store(str(tmp_path / "store"))
    snaps = [p for p in good if p.endswith(".parquet")]
    with pytest.raises(StoreUnavailable, match="No space left"):
        ingest(store, snaps, chunk_rows=30)
    assert calls["n"] > 1
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "store") for f in fs]
    assert left == []


@pytest.mark.parametrize("file_index", [True, False], ids=["file_index", "filename"])
def test_good_files_take_the_bulk_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_index: int
) -> None:
    """Well-formed snapshots are decoded together, never one by one (the slow, careful way);
    with DuckDB < 1.3 (no file_index column) by file name instead."""
    monkeypatch.setattr(check_mod, "_HAS_FILE_INDEX", check_mod._HAS_FILE_INDEX)
    monkeypatch.setattr(check_mod, "_duckdb_has_file_index", lambda version: file_index)

    def careful(path: str) -> NoReturn:
        raise AssertionError(f"{path} was read the careful way")

    monkeypatch.setattr(check_mod, "read_snapshot_file", careful)
    spec = FleetSpec(hosts=4, sites=30, snapshots=2)
    paths = write_snapshot_files(str(tmp_path / "in"), spec)
    store = Store(str(tmp_path / "store"))
    rep = ingest(store, paths, chunk_rows=70)
    assert not rep.skipped and rep.rows == spec.rows
    assert check_mod._HAS_FILE_INDEX is file_index
    assert _stored_order_ok(store)


def test_part_orphaned_by_a_killed_ingest_is_not_counted_twice(tmp_path: Path) -> None:
    """kill -9 between a batch part's rename and its hosts part's: the next ingest removes
    the orphan (its writer, a process of this host, is dead) before importing again."""
    spec = FleetSpec(hosts=3, sites=20, snapshots=2)
    paths = write_snapshot_files(str(tmp_path / "in"), spec)
    store = Store(str(tmp_path / "store"))
    ingest(store, paths, batch_rows=40)  # one batch, hence one part pair, per host snapshot
    part = store.files("allocinfo")[0]
    name = os.path.basename(part)
    dead = name.replace(f"-{os.getpid()}@", "-999999999@")
    assert dead != name
    os.rename(part, os.path.join(os.path.dirname(part), dead))
    os.unlink(
        os.path.join(store.dataset_dir("hosts"), os.path.basename(os.path.dirname(part)), name)
    )
    committed = len(store.known_snapshots())
    assert committed < spec.hosts * spec.snapshots

    rep = ingest(store, paths)
    assert rep.rows == spec.rows - committed * spec.sites
    ai = store.read("allocinfo", ["hostname", "taken_at"])
    per_snapshot = pa.TableGroupBy(ai, ["hostname", "taken_at"]).aggregate([([], "count_all")])
    assert per_snapshot.num_rows == spec.hosts * spec.snapshots
    assert set(per_snapshot["count_all"].to_pylist()) == {spec.sites}
    assert not any(os.path.basename(f) == dead for f in store.files("allocinfo"))


def test_a_live_writers_unpublished_pair_is_left_alone(tmp_path: Path) -> None:
    """An allocinfo part without its hosts part whose writer is alive (it may be between
    the two renames right now) is not touched."""
    spec = FleetSpec(hosts=1, sites=20, snapshots=1)
    store = Store(str(tmp_path / "store"))
    ingest(store, write_snapshot_files(str(tmp_path / "in"), spec))
    part = store.files("allocinfo")[0]
    day = os.path.basename(os.path.dirname(part))
    os.unlink(os.path.join(store.dataset_dir("hosts"), day, os.path.basename(part)))
    assert store.clean_orphans() == 0 and os.path.exists(part)  # this process: alive


def test_ingest_refuses_an_unmounted_store_filesystem(
    tmp_path: Path, good: list[str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from allocscope.collector import mounts

    mnt = tmp_path / "data"
    mnt.mkdir()
    (tmp_path / "fstab").write_text(f"/dev/vdb1 {mnt} xfs defaults 0 2\n")
    (tmp_path / "mountinfo").write_text("22 1 254:1 / / rw - ext4 /dev/vda rw\n")
    monkeypatch.setattr(mounts, "FSTAB", str(tmp_path / "fstab"))
    monkeypatch.setattr(mounts, "MOUNTINFO", str(tmp_path / "mountinfo"))
    rc, _, err = cli("ingest", "--store", str(mnt / "store"), *good)
    assert rc != 0 and "not mounted" in err and err.count("\n") == 1
    assert list(mnt.iterdir()) == []
