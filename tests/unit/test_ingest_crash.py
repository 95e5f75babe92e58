"""kill -9 an ingest at random points while it streams batches into the store.

Afterwards every visible file is a whole Parquet file, every ``hosts`` commit record has its
rows, no snapshot is committed twice, and a re-run imports exactly what is missing and removes
the killed runs' hidden temp files.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from support.synth import FleetSpec, write_snapshot_files

from allocscope.collector.store import Store
from allocscope.collector.store_schemas import DATASETS

SPEC = FleetSpec(hosts=40, sites=2000, snapshots=3)
CHILD = """
import sys
from allocscope.collector.ingest import ingest
from allocscope.collector.store import Store
print("go", flush=True)
ingest(Store(sys.argv[1]), [sys.argv[2]], batch_rows=20000, chunk_rows=8000)
print("done", flush=True)
"""


def _check(store: Store) -> set[tuple[str, int]]:
    for ds in DATASETS:
        for f in store.files(ds):
            pq.read_table(f)  # whole: footer and every page readable
    hosts = store.read("hosts", ["hostname", "taken_at", "sites"])
    keys = list(zip(hosts["hostname"].to_pylist(), hosts["taken_at"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a snapshot committed twice"
    ai = store.read("allocinfo", ["hostname", "taken_at"])
    rows = Counter(zip(ai["hostname"].to_pylist(), ai["taken_at"].to_pylist(), strict=True))
    for key, sites in zip(keys, hosts["sites"].to_pylist(), strict=True):
        # exactly its own rows: a part orphaned by a kill (published, its commit record not)
        # is removed before its snapshots are imported again
        assert rows[key] == sites, key
    return set(store.known_snapshots())


def _run(cmd: list[str], kill_after: float | None) -> float:
    """Run the child; kill -9 it ``kill_after`` seconds into its ingest. Returns the seconds
    its ingest ran."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "go\n"
    t = time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        p.kill()
    out, err = p.communicate()
    if kill_after is None:
        assert p.returncode == 0 and "done" in out, err
    return time.monotonic() - t


def test_kill_9_during_ingest(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_snapshot_files(str(src), SPEC)
    # how long a whole ingest takes here, so the kills land inside one
    whole = _run([sys.executable, "-c", CHILD, str(tmp_path / "scratch"), str(src)], None)
    store = Store(str(tmp_path / "store"))
    cmd = [sys.executable, "-c", CHILD, store.root, str(src)]
    rng = random.Random(int(os.environ.get("ALLOCSCOPE_CRASH_SEED", "7")))
    total = SPEC.hosts * SPEC.snapshots
    partial = 0
    for _ in range(5):
        _run(cmd, rng.uniform(0.1, 0.9) * whole)
        n = len(_check(store))
        partial += n < total
        if n == total:  # finished before the kill: start again, and kill sooner
            shutil.rmtree(store.root)
            whole /= 2
    _run(cmd, None)
    assert len(_check(store)) == total
    temps = [f for d, _, fs in os.walk(store.root) for f in fs if not f.endswith(".parquet")]
    assert temps == []
    assert partial, "no run was killed mid-ingest"
