"""``allocscope snapshot``: allocinfo + host metadata into one versioned Parquet file."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.snapshot import SNAPSHOT_SCHEMA, SNAPSHOT_SCHEMA_VERSION, read_snapshot


def test_snapshot_of_real_fixture_round_trips(cli: Any, fixtures_dir: Path, tmp_path: Path) -> None:
    src = fixtures_dir / "allocinfo-7.3-boot.txt"
    out = tmp_path / "s.parquet"
    rc, stdout, err = cli(
        "snapshot", "-o", str(out), "--file", str(src), "--label", "group=pilot", "--json"
    )
    assert rc == 0, err
    summary = json.loads(stdout)
    text = read_allocinfo(str(src))
    assert summary["rows"] == len(text.records)
    assert summary["bytes"] == text.total_bytes
    assert summary["allocinfo_version"] == "2.0"
    assert summary["labels"] == {"group": "pilot"}

    back = read_snapshot(str(out))
    assert back.records == text.records  # sites, bytes, calls, extras (accurate:no), numa
    assert back.version == "2.0"
    assert back.host is not None and back.host.hostname == socket.gethostname()
    assert back.host.labels == {"group": "pilot"}

    table = pq.read_table(str(out))
    assert table.schema.names == SNAPSHOT_SCHEMA.names
    meta = table.schema.metadata
    assert int(meta[b"allocscope.schema"]) == SNAPSHOT_SCHEMA_VERSION
    cols = table.to_pydict()
    assert sum(cols["bytes"]) == text.total_bytes
    assert cols["accurate"].count(False) == 5
    assert set(cols["hostname"]) == {socket.gethostname()}
    assert "mm" in set(cols["subsystem"])


def test_snapshot_table_output_and_atomic(cli: Any, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    src = fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"
    rc, stdout, err = cli("snapshot", "-o", str(out), "--file", str(src))
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}: ") and "allocinfo 1.0" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]  # no temp file left


def test_snapshot_errors(cli: Any, fixtures_dir: Path, tmp_path: Path) -> None:
    src = fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"
    out = tmp_path / "s.parquet"
    rc, _, err = cli("snapshot", "-o", str(out), "--file", str(src), "--label", "novalue")
    assert rc == 2 and "KEY=VALUE" in err and err.count("\n") == 1
    bad = tmp_path / "bad.txt"
    bad.write_text("allocinfo - version: 1.0\n  1 1 a.c:1 func:a\nbroken\n  1 1 a.c:2 func:b\n")
    rc, _, err = cli("snapshot", "-o", str(out), "--file", str(bad))
    assert rc == 2 and err == f"allocscope: error: {bad}:3: not an allocinfo line: 'broken'\n"
    assert not out.exists()
    rc, _, err = cli("snapshot", "-o", str(out), "--file", str(bad), "--lenient")
    assert rc == 0 and "skipped 1 malformed line" in err
    assert len(read_snapshot(str(out)).records) == 2
    rc, _, err = cli("snapshot", "-o", str(tmp_path / "again.parquet"), "--file", str(out))
    assert rc == 2 and "already a snapshot" in err


def test_snapshot_subsystems_override(cli: Any, fixtures_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[[rule]]\npath = "lib/**"\nsubsystem = "library"\n')
    out = tmp_path / "s.parquet"
    src = fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"
    rc, _, err = cli("snapshot", "-o", str(out), "--file", str(src), "--subsystems", str(toml))
    assert rc == 0, err
    cols = pq.read_table(str(out), columns=["file", "subsystem"]).to_pydict()
    subs = {s for f, s in zip(cols["file"], cols["subsystem"], strict=True) if f.startswith("lib/")}
    assert subs == {"library"}
