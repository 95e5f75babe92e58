"""``top``, ``diff`` and ``report`` refuse a bad snapshot Parquet for the reasons ingest does.

Both read snapshot files through collector/snapshot_check.py; before, the reader behind
top/diff/report checked only the footer, so a file that ingest refuses (wrong column types, a
bad ``allocscope.schema`` value, null keys, two hosts in one file) was shown as if it were
fine, or failed with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli

from allocscope.collector.ingest import ingest
from allocscope.collector.store import Store

FIXTURE = "allocinfo-7.3-boot.txt"


@pytest.fixture
def good(tmp_path: Path, fixtures_dir: Path, cli: Cli) -> Path:
    out = tmp_path / "good.parquet"
    rc, _o, err = cli("snapshot", "--file", str(fixtures_dir / FIXTURE), "-o", str(out))
    assert rc == 0, err
    return out


def _write(t: pa.Table, meta: dict[bytes, bytes], path: Path) -> Path:
    pq.write_table(t.replace_schema_metadata(meta), path)
    return path


def _bad(good: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    t = pq.read_table(good)
    meta = dict(t.schema.metadata)
    out: dict[str, tuple[Path, str]] = {}
    i = t.schema.get_field_index("bytes")
    as_text = t.set_column(i, "bytes", pa.array([f"{b} bytes" for b in t["bytes"].to_pylist()]))
    out["types"] = (_write(as_text, meta, tmp_path / "types.parquet"), "wrong types")
    out["schema"] = (
        _write(t, {**meta, b"allocscope.schema": b"99"}, tmp_path / "schema.parquet"),
        "snapshot schema 99 is not one this allocscope reads",
    )
    out["schema-text"] = (
        _write(t, {**meta, b"allocscope.schema": b"one"}, tmp_path / "schema-text.parquet"),
        "bad snapshot metadata",
    )
    keys = t["site_key"].to_pylist()
    keys[3] = None
    j = t.schema.get_field_index("site_key")
    nulls = t.set_column(j, "site_key", pa.array(keys, pa.string()))
    out["nulls"] = (_write(nulls, meta, tmp_path / "nulls.parquet"), "'site_key' has 1 nulls")
    names = t["hostname"].to_pylist()
    names[-1] = "intruder"
    two = t.set_column(0, "hostname", pa.array(names))
    out["two-hosts"] = (_write(two, meta, tmp_path / "two.parquet"), "one host at one time")
    return out


@pytest.mark.parametrize("case", ["types", "schema", "schema-text", "nulls", "two-hosts"])
def test_top_diff_report_refuse_what_ingest_refuses(
    good: Path, tmp_path: Path, cli: Cli, case: str
) -> None:
    path, why = _bad(good, tmp_path)[case]
    rep = ingest(Store(str(tmp_path / "store")), [str(path)])
    ((_p, ingest_why),) = rep.skipped
    assert why in ingest_why
    for args in (
        ["top", "--file", str(path)],
        ["diff", str(good), str(path)],
        ["report", "--file", str(path), "-o", str(tmp_path / "r.html")],
    ):
        rc, out, err = cli(*args)
        assert rc == 2 and out == "", (args, err)
        assert err == f"allocscope: error: {ingest_why}\n", (args, err)
    assert not (tmp_path / "r.html").exists()


def test_a_good_snapshot_still_reads(good: Path, cli: Cli, tmp_path: Path) -> None:
    rc, out, err = cli("top", "--file", str(good), "-n", "3")
    assert rc == 0 and out, err
    rc, out, err = cli("diff", str(good), str(good))
    assert rc == 0, err
