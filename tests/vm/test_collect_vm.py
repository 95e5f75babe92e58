"""``allocscope collect --once`` against a real /proc/allocinfo, then a query on what it stored.

Run inside a guest:
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_collect_vm.py -q

pyarrow and DuckDB need SSE4.2/AVX2 and die with SIGILL under QEMU's default ``qemu64`` CPU,
which plain vmrun uses; ``./scripts/test`` boots the guests with ``-cpu max``. The first test
needs neither (it checks the agent's inputs on the live file); the second needs both: it skips
with the reason under plain vmrun and fails in CI if they cannot load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from conftest import need

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.host import collect_host_metadata


@lru_cache(maxsize=1)
def store_libs_load() -> bool:
    r = subprocess.run(
        [sys.executable, "-c", "import pyarrow.parquet, duckdb"], capture_output=True
    )
    return r.returncode == 0


def test_agent_inputs_on_live_allocinfo(allocinfo_path: Path) -> None:
    """What one agent tick reads: the live allocinfo (whole, parsable) and host metadata."""
    snap = read_allocinfo(None)
    assert snap.source == str(allocinfo_path)
    assert snap.version in ("1.0", "2.0") and len(snap.records) > 1000
    assert snap.total_bytes > 0 and not snap.truncated
    host = collect_host_metadata({"group": "pilot"})
    assert host.mem_profiling == "1" and host.boot_id and host.labels == {"group": "pilot"}


def test_collect_once_then_query(allocinfo_path: Path, tmp_path: Path) -> None:
    need(
        store_libs_load(),
        "pyarrow/duckdb die with SIGILL on this guest CPU (no SSE4.2/AVX2); "
        "run through ./scripts/test (QEMU -cpu max)",
    )
    store = tmp_path / "store"
    script = shutil.which("allocscope", path=os.path.dirname(sys.executable))
    assert script, "allocscope console script not next to the interpreter"
    exe = [script]
    r = subprocess.run(
        [
            *exe,
            "collect",
            "--store",
            str(store),
            "--once",
            "--label",
            "group=pilot",
            "--spool",
            str(tmp_path / "spool"),
            "--self-stats",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stored ")
    q = subprocess.run(
        [
            *exe,
            "query",
            "--store",
            str(store),
            "--json",
            "--sql",
            "SELECT COUNT(*) AS sites, SUM(bytes) AS bytes, MIN(mem_profiling) AS mp"
            " FROM {allocinfo}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert q.returncode == 0, q.stderr
    row = json.loads(q.stdout)["rows"][0]
    live = read_allocinfo(None)
    assert abs(row["sites"] - len(live.records)) < 50  # modules/tags may come and go
    assert row["bytes"] > 0 and row["mp"] == "1"
    top = subprocess.run(
        [*exe, "query", "--store", str(store), "top-sites", "--csv"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert top.returncode == 0 and len(top.stdout.splitlines()) == 21
