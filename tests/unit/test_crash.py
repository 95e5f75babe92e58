"""kill -9 the agent at random points during 100+ snapshot writes.

Afterwards the store must hold only whole files, and every snapshot the agent reported as
stored (its "stored" line is printed after the commit record is written) must be there.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from allocscope.collector.store import Store

FIXTURE = "allocinfo-7.3-boot.txt"
TARGET = 100


def _exe() -> str:
    exe = shutil.which("allocscope", path=os.path.dirname(sys.executable))
    assert exe, "allocscope console script not installed next to the interpreter"
    return exe


def test_kill_9_during_writes(tmp_path: Path, fixtures_dir: Path) -> None:
    store_dir = tmp_path / "store"
    cmd = [
        _exe(),
        "collect",
        "--store",
        str(store_dir),
        "--interval",
        "0",
        "--count",
        "100000",
        "--jitter",
        "0",
        "--file",
        str(fixtures_dir / FIXTURE),
        "--spool",
        str(tmp_path / "spool"),
    ]
    rng = random.Random(int(os.environ.get("ALLOCSCOPE_CRASH_SEED", "5")))
    completed: list[float] = []
    kills = 0
    temps_seen = 0
    # Bounded by kill cycles, not wall time: each cycle waits for the run's first stored
    # snapshot, so TARGET cycles reach TARGET snapshots at any load (a 50 s deadline failed
    # under load average ~16 with the writes themselves fine).
    while len(completed) < TARGET and kills < 3 * TARGET:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []

        def reader(proc: subprocess.Popen[str] = p, sink: list[str] = lines) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.append(line)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        # wait for the first snapshot so every cycle gets past interpreter start-up, then
        # kill at a random moment of the following writes
        start = time.monotonic()
        while not any(x.startswith("stored ") for x in lines) and time.monotonic() - start < 20:
            if p.poll() is not None:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        t.join(5)
        assert p.stderr is not None
        err = p.stderr.read()
        assert "Traceback" not in err, err
        completed += [
            float(x.split("taken_at=")[1].split()[0]) for x in lines if x.startswith("stored ")
        ]
        temps_seen += sum(1 for d, _, fs in os.walk(store_dir) for f in fs if f.endswith(".tmp"))

    assert len(completed) >= TARGET, f"only {len(completed)} snapshots in {kills} runs"
    store = Store(str(store_dir))
    rows_per_snapshot = None
    # 1. every visible file is whole (a torn file would fail to read or miss rows)
    for ds_name in ("allocinfo", "hosts"):
        for f in store.files(ds_name):
            t = pq.read_table(f)
            if ds_name == "allocinfo":
                rows_per_snapshot = rows_per_snapshot or t.num_rows
                assert t.num_rows == rows_per_snapshot, f
            else:
                assert t.num_rows == 1, f
    # 2. every snapshot reported stored is in the store, rows and commit record
    known = store.known_snapshots()
    host = os.uname().nodename
    for ts in completed:
        assert (host, int(ts * 1_000_000)) in known
    # 3. one clean start removes what the kills left (temp files, uncommitted parts)
    r = subprocess.run([*cmd[:7], "1", *cmd[8:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    leftovers = [f for d, _, fs in os.walk(store_dir) for f in fs if not f.endswith(".parquet")]
    assert leftovers == []
    assert (
        len(store.files("allocinfo")) == len(store.files("hosts")) == len(store.known_snapshots())
    )
    # commit records and rows join on (hostname, taken_at): every snapshot is queryable
    ai = store.read("allocinfo", ["hostname", "taken_at"])
    assert {
        (h, t.timestamp())
        for h, t in zip(ai["hostname"].to_pylist(), ai["taken_at"].to_pylist(), strict=True)
    } == {(h, t / 1e6) for h, t in store.known_snapshots()}
    print(
        f"{kills} kill -9, {len(completed)} snapshots reported stored, "
        f"{temps_seen} temp files seen between kills"
    )
