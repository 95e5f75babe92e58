"""``query --sql`` runs as root: by default it reads the store and nothing else, and writes
nothing anywhere (not even inside the store); ``--unrestricted-sql`` is the explicit way out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def store(tmp_path: Path, fixtures_dir: Path, cli: Any) -> Path:
    root = tmp_path / "store"
    f = str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt")
    rc, _, err = cli("collect", "--store", str(root), "--once", "--file", f)
    assert rc == 0, err
    return root


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_normal_query_still_works(store: Path, cli: Any) -> None:
    rc, out, err = cli(
        "query", "--store", str(store), "--csv", "--sql", "SELECT COUNT(*) AS n FROM {allocinfo}"
    )
    assert rc == 0, err
    assert int(out.splitlines()[1]) > 1000  # every tag of the fixture


def test_copy_to_outside_is_refused(store: Path, cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    before = _tree(store)
    rc, out, err = cli(
        "query", "--store", str(store), "--sql", f"COPY (SELECT * FROM {{allocinfo}}) TO '{target}'"
    )
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "COPY statements are refused" in err
    assert not target.exists() and _tree(store) == before


def test_select_cannot_read_other_files(store: Path, cli: Any) -> None:
    for sql in (
        "SELECT * FROM read_text('/etc/shadow')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_text('{store}/../../../../etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
    ):
        rc, out, err = cli("query", "--store", str(store), "--sql", sql)
        assert rc == 2 and out == "", sql
        assert "file system operations are disabled" in err and err.count("\n") == 1, err


def test_nothing_is_written_into_the_store(store: Path, cli: Any) -> None:
    before = _tree(store)
    part = store / "allocinfo" / "dt=2000-01-01"
    for sql in (
        f"COPY (SELECT * FROM {{allocinfo}}) TO '{part}/planted.parquet'",
        f"ATTACH '{store}/planted.db'",
        "CREATE TABLE t AS SELECT 1",
        "INSTALL httpfs",
        "LOAD json",
        "SET enable_external_access = true",
        "SELECT 1; COPY (SELECT 1) TO 'planted.csv'",
    ):
        rc, out, err = cli("query", "--store", str(store), "--sql", sql)
        assert rc == 2 and out == "", sql
        assert "statements are refused" in err and err.count("\n") == 1, err
    assert _tree(store) == before and not os.path.exists("planted.csv")


def test_unrestricted_sql_is_the_explicit_way_out(store: Path, cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    rc, _, err = cli(
        "query",
        "--store",
        str(store),
        "--unrestricted-sql",
        "--sql",
        f"COPY (SELECT COUNT(*) AS n FROM {{allocinfo}}) TO '{target}'",
    )
    assert rc == 0, err
    assert target.read_text().startswith("n\n")
    rc, _, err = cli("query", "--store", str(store), "--unrestricted-sql", "top-sites")
    assert rc == 2 and "--unrestricted-sql applies to --sql only" in err


def test_help_explains_the_flag(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli("query", "--help")
    out = capsys.readouterr().out
    assert "--unrestricted-sql" in out and "read-only" in out and "COPY" in out
