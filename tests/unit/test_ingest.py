"""ingest: validation, all-or-nothing per file, duplicates, results flattening."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.host import collect_host_metadata
from allocscope.collector.ingest import ingest, read_snapshot_file
from allocscope.collector.snapshot import write_snapshot
from allocscope.collector.store import Store
from allocscope.collector.synth import FleetSpec, results, write_snapshot_files

SPEC = FleetSpec(hosts=3, sites=25, snapshots=2)


@pytest.fixture
def good(tmp_path):
    paths = write_snapshot_files(str(tmp_path / "in"), SPEC)
    for n, r in enumerate(results(SPEC)):
        p = tmp_path / "in" / f"{r.kind}-{n}.json"
        r.write(str(p))
        paths.append(str(p))
    return paths


def _bad_files(tmp_path, good):
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
    out["badcaller.json"] = "callers[1].calls is not a number"
    # a result kind the store does not take
    wc2 = json.loads(open([p for p in good if "who-calls" in p][0]).read())
    wc2["kind"] = "top-live"
    (d / "toplive.json").write_text(json.dumps(wc2))
    out["toplive.json"] = "are not stored"
    return out


def test_ingest_good_and_bad(tmp_path, good):
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
    n_res = len(results(SPEC)) // 2
    assert callers.num_rows == n_res * 3  # one row per caller
    ov = store.read("overhead")
    assert ov.num_rows == n_res * 2  # one row per function
    row = [r for r in ov.to_pylist() if r["function"] == "__alloc_pages_noprof"][0]
    assert json.loads(row["row_json"])["future_field"] == [1, 2], "unknown fields are kept"
    assert "functions" in json.loads(row["payload_json"])


def test_other_column_types_are_cast(tmp_path, good):
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


def test_reingest_is_duplicate(tmp_path, good):
    store = Store(str(tmp_path / "store"))
    first = ingest(store, good)
    files = sorted(store.files("allocinfo") + store.files("callers"))
    again = ingest(store, good)
    assert again.imported == [] and len(again.duplicates) == len(first.imported)
    assert sorted(store.files("allocinfo") + store.files("callers")) == files


def test_cli_exit_status_and_messages(tmp_path, good, cli):
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    rc, out, err = cli("ingest", "--store", str(tmp_path / "s"), *good, str(bad))
    assert rc == 1
    assert f"skipped {bad}: not a result file" in err
    assert "imported 3 overhead, 6 snapshot, 3 who-calls (" in out and "1 skipped" in out


def test_real_snapshot_file_roundtrip(tmp_path, fixtures_dir):
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


def test_moved_store_file_is_not_a_snapshot(tmp_path, good):
    store = Store(str(tmp_path / "store"))
    ingest(store, good)
    copy = tmp_path / "copy.parquet"
    shutil.copy(store.files("allocinfo")[0], copy)
    rep = ingest(Store(str(tmp_path / "other")), [str(copy)])
    assert rep.skipped and "not an allocscope snapshot" in rep.skipped[0][1]
