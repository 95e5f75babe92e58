"""Two same-host writers racing on one store: none loses or double-counts a snapshot.

A cron ``collect --once`` next to the systemd agent (or two cloned hosts sharing a hostname)
write the same host's parts into one store. Each agent cleans up uncommitted parts at
start-up; that must never touch the other's in-flight part (published rows, commit record
not yet written), or the snapshot is reported ``stored`` with a commit record and no rows.

The writers really race: a continuous agent stores snapshots back to back while ``--once``
agents start one after another (each start runs the clean-up) for
``ALLOCSCOPE_RACE_SECONDS`` (default 60). Afterwards: snapshots the agents reported stored =
commit records = allocinfo parts with their rows. With the lock check taken out of
``atomic.writer_gone`` (a pid-only clean-up) a 60 s run here lost the rows of 2 of 394
committed snapshots.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import REPO

from allocscope.collector.store import Store

FIXTURE = "allocinfo-7.3-boot.txt"
SECONDS = float(os.environ.get("ALLOCSCOPE_RACE_SECONDS", "60"))
# this tree's allocscope in the agents, whatever the installed console script points at
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _collect(store: str, fixture: str, spool: str, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "allocscope"),
        *("collect", "--store", store, "--file", fixture, "--spool", spool, *extra),
    ]


def test_two_same_host_writers_race(tmp_path: Path, fixtures_dir: Path) -> None:
    store = Store(str(tmp_path / "store"))
    fixture = str(fixtures_dir / FIXTURE)
    daemon = subprocess.Popen(
        _collect(
            store.root, fixture, str(tmp_path / "spool-a"), "--interval", "0.01", "--jitter", "0"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # unbuffered: communicate() reads the raw pipe, so lines a buffered readline() had
        # pulled in with the first would be lost from the count (seen once: 485 vs 486)
        bufsize=0,
        env=ENV,
    )
    assert daemon.stdout is not None
    first = daemon.stdout.readline().decode()
    assert first.startswith("stored "), first  # running, and its first snapshot is in
    outputs: list[str] = [first]
    crons = 0
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            cron = subprocess.run(
                _collect(store.root, fixture, str(tmp_path / "spool-b"), "--once"),
                capture_output=True,
                text=True,
                timeout=120,
                env=ENV,
            )
            assert cron.returncode == 0, cron.stderr
            outputs.append(cron.stdout)
            crons += 1
    finally:
        daemon.terminate()
        out_b, err_b = daemon.communicate(timeout=60)
    out, err = out_b.decode(), err_b.decode()
    assert daemon.returncode == 143, err  # stopped by SIGTERM (128 + 15)
    outputs.append(out)
    assert crons >= 2, "the race needs more than one start-up clean-up"

    lines = [ln for o in outputs for ln in o.splitlines()]
    stored = sum(ln.startswith("stored ") for ln in lines)
    assert not any(ln.startswith("spooled ") for ln in lines), "the store was always writable"
    hosts = store.read("hosts", ["hostname", "taken_at", "sites"])
    commits = list(zip(hosts["hostname"].to_pylist(), hosts["taken_at"].to_pylist(), strict=True))
    assert len(commits) == len(set(commits)), "a snapshot committed twice"
    assert stored == len(commits), (stored, len(commits))

    day_names = {
        (os.path.basename(os.path.dirname(p)), os.path.basename(p)) for p in store.files("hosts")
    }
    parts = store.files("allocinfo")
    uncommitted = [
        p
        for p in parts
        if (os.path.basename(os.path.dirname(p)), os.path.basename(p)) not in day_names
    ]
    assert uncommitted == [], "no writer was killed: every part has its commit record"
    assert len(parts) == len(commits), "a commit record without its part"
    rows: Counter[tuple[str, object]] = Counter()
    for p in parts:
        t = pq.read_table(p, columns=["hostname", "taken_at"])
        assert t.num_rows > 2000, p
        keys = set(zip(t["hostname"].to_pylist(), t["taken_at"].to_pylist(), strict=True))
        assert len(keys) == 1, p
        rows[keys.pop()] += t.num_rows
    for key, sites in zip(commits, hosts["sites"].to_pylist(), strict=True):
        assert rows[key] == sites, key
    assert int(pc.sum(hosts["sites"]).as_py()) == sum(rows.values())
