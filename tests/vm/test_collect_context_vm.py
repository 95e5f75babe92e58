"""``collect --context`` on a real allocation-profiling kernel: each interval's snapshot and
its context rows are stored together, the rows name exact allocinfo tags, and a tag's live
bytes are the snapshot's own bytes for that tag (one read serves both).

Needs pyarrow/duckdb in the guest (QEMU ``-cpu max``, as ./scripts/test boots it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import need

from allocscope.collector import workloads
from allocscope.collector.store import Store


def store_libs_load() -> bool:
    """pyarrow and duckdb import (they die with SIGILL on QEMU's default CPU model)."""
    r = subprocess.run([sys.executable, "-c", "import pyarrow.parquet, duckdb"], check=False)
    return r.returncode == 0


def test_collect_context_exact_tags(allocinfo_path: Path, tmp_path: Path) -> None:
    need(store_libs_load(), "pyarrow/duckdb die with SIGILL on this guest CPU; ./scripts/test")
    child = workloads.start("tmpfs-write", 300.0, wait_ready=60.0)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "allocscope",
                "collect",
                "--store",
                str(tmp_path / "s"),
                "--spool",
                str(tmp_path / "spool"),
                "--interval",
                "20s",
                "--count",
                "2",
                "--jitter",
                "0",
                "--context",
                "--label",
                "group=pilot",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    finally:
        workloads.stop(child)
    assert r.returncode == 0, r.stderr + r.stdout
    store = Store(str(tmp_path / "s"))
    hosts = store.read("hosts").to_pylist()
    assert len(hosts) == 2 and all(h["sites"] > 1000 for h in hosts)
    ai: dict[tuple[object, str], int] = defaultdict(int)
    for a in store.read("allocinfo", ["taken_at", "file", "line", "function", "bytes"]).to_pylist():
        ai[(a["taken_at"], f"{a['file']}:{a['line']} func:{a['function']}")] += a["bytes"]
    tags = [x for x in store.read("context").to_pylist() if x["row_kind"] == "tag"]
    assert {x["taken_at"] for x in tags} == {h["taken_at"] for h in hosts}
    exact = [x for x in tags if x["match"] == "exact-tag"]
    assert exact and all(x["tag_mode"] == "exact-tag" for x in tags)
    for x in exact:  # the live join is the interval's own snapshot
        assert x["live_bytes"] == ai[(x["taken_at"], x["tag"])], x["tag"]
    # the workload's page cache pages: shmem's folio allocation is among the tags every interval
    for h in hosts:
        mine = {x["function"] for x in exact if x["taken_at"] == h["taken_at"]}
        assert "shmem_alloc_folio" in mine or "xas_alloc" in mine, sorted(mine)[:20]
