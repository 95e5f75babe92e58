"""The agent: --once, spooling while the store is away, flushing later, a bounded spool."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from allocscope.collector.agent import Agent, AgentConfig, Spool
from allocscope.collector.store import Store

FIXTURE = "allocinfo-7.3-boot.txt"


def _agent(tmp_path: Path, fixtures_dir: Path, store: Path, **kw: Any) -> tuple[Agent, io.StringIO]:
    cfg = AgentConfig(
        store=str(store),
        file=str(fixtures_dir / FIXTURE),
        spool=str(tmp_path / "spool"),
        labels={"group": "pilot"},
        **kw,
    )
    out = io.StringIO()
    return Agent(cfg, out=out), out


def test_once(tmp_path: Path, fixtures_dir: Path, cli: Any) -> None:
    rc, out, _ = cli(
        "collect",
        "--store",
        str(tmp_path / "s"),
        "--once",
        "--file",
        str(fixtures_dir / FIXTURE),
        "--label",
        "group=pilot",
        "--spool",
        str(tmp_path / "spool"),
        "--self-stats",
    )
    assert rc == 0 and out.startswith("stored ") and "self-stats: 1 snapshots" in out
    store = Store(str(tmp_path / "s"))
    hosts = store.read("hosts").to_pylist()
    assert len(hosts) == 1
    assert dict(hosts[0]["labels"]) == {"group": "pilot"}
    assert hosts[0]["agent_cpu_s"] > 0 and hosts[0]["agent_rss_bytes"] > 10 << 20
    assert store.read("allocinfo").num_rows == hosts[0]["sites"] > 2000


def test_spool_while_store_unavailable_then_flush(tmp_path: Path, fixtures_dir: Path) -> None:
    blocker = tmp_path / "mnt"
    blocker.write_text("the store's mount point is a file: nothing can be created below it")
    store_path = blocker / "store"
    agent, out = _agent(tmp_path, fixtures_dir, store_path, count=3, interval=0.01)
    assert agent.run() == 0
    assert out.getvalue().count("spooled ") == 3
    spooled = agent.spool.pending()
    assert len(spooled) == 3
    # the store comes back: the next run flushes the spool (oldest first) then stores its own
    blocker.unlink()
    agent2, out2 = _agent(tmp_path, fixtures_dir, store_path, once=True)
    assert agent2.run() == 0
    assert "flushed 3 spooled snapshot(s)" in out2.getvalue()
    assert agent2.spool.pending() == []
    store = Store(str(store_path))
    assert len(store.known_snapshots()) == 4
    hosts = store.read("hosts")
    assert pc.sum(hosts["sites"]).as_py() == store.read("allocinfo").num_rows


def test_spool_is_bounded_and_keeps_oldest(tmp_path: Path, fixtures_dir: Path) -> None:
    blocker = tmp_path / "mnt"
    blocker.write_text("x")
    agent, out = _agent(
        tmp_path, fixtures_dir, blocker / "store", count=5, interval=0.01, spool_max=3
    )
    agent.run()
    spool = Spool(str(tmp_path / "spool"), 3)
    names = [os.path.basename(p) for p in spool.pending()]
    assert len(names) == 3 and spool.dropped() == 2
    assert out.getvalue().count("spool full (3): dropped") == 2
    taken = sorted(
        float(line.split("taken_at=")[1].split()[0])
        for line in out.getvalue().splitlines()
        if line.startswith("spooled ")
    )
    kept = sorted(int(n[5:-8]) / 1e9 for n in names)
    # the two oldest (the boot baseline) and the newest survive; the middle ones went
    assert kept == pytest.approx([taken[0], taken[1], taken[4]], abs=1e-6)


def test_count_and_interval_are_fixed_rate(tmp_path: Path, fixtures_dir: Path) -> None:
    agent, out = _agent(tmp_path, fixtures_dir, tmp_path / "s", count=4, interval=0.3)
    t0 = time.monotonic()
    agent.run()
    elapsed = time.monotonic() - t0
    assert len(Store(str(tmp_path / "s")).known_snapshots()) == 4
    assert elapsed >= 0.9  # three waits of one interval between four snapshots


def test_sigterm_stops_between_snapshots(tmp_path: Path, fixtures_dir: Path) -> None:
    exe = shutil.which("allocscope", path=os.path.dirname(sys.executable))
    assert exe
    p = subprocess.Popen(
        [
            exe,
            "collect",
            "--store",
            str(tmp_path / "s"),
            "--interval",
            "10",
            "--jitter",
            "0",
            "--file",
            str(fixtures_dir / FIXTURE),
            "--spool",
            str(tmp_path / "spool"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    first = p.stdout.readline()
    assert first.startswith("stored ")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143  # 128 + SIGTERM, as every verb after an interruption
    assert len(Store(str(tmp_path / "s")).known_snapshots()) == 1


def test_bad_allocinfo_is_one_line_error(tmp_path: Path, cli: Any) -> None:
    bad = tmp_path / "allocinfo"
    bad.write_text("allocinfo - version: 2.0\n   12 x mm/a.c:1 func:f\n")
    rc, out, err = cli(
        "collect",
        "--store",
        str(tmp_path / "s"),
        "--once",
        "--file",
        str(bad),
        "--spool",
        str(tmp_path / "spool"),
    )
    assert rc == 2 and f"{bad}:2:" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "s" / "allocinfo")


def test_unmounted_store_filesystem_spools_instead_of_writing_underneath(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's mount point (in fstab) exists as an empty, writable directory but its
    filesystem is not mounted: snapshots go to the spool, nothing lands in the directory;
    once it is mounted the spool is flushed into it."""
    from allocscope.collector import mounts

    mnt = tmp_path / "data"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# <fs> <mp> <type>\nUUID=1 / ext4 defaults 0 1\nnfs:/x {mnt} nfs rw 0 0\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 254:1 / / rw - ext4 /dev/vda rw\n")
    monkeypatch.setattr(mounts, "FSTAB", str(fstab))
    monkeypatch.setattr(mounts, "MOUNTINFO", str(mountinfo))
    agent, out = _agent(tmp_path, fixtures_dir, mnt / "allocscope", once=True)
    assert agent.run() == 0
    assert "not mounted" in out.getvalue() and len(agent.spool.pending()) == 1
    assert list(mnt.iterdir()) == []
    mountinfo.write_text(mountinfo.read_text() + f"40 22 0:50 / {mnt} rw - nfs nfs:/x rw\n")
    agent2, out2 = _agent(tmp_path, fixtures_dir, mnt / "allocscope", once=True)
    assert agent2.run() == 0
    assert "flushed 1 spooled snapshot(s)" in out2.getvalue()
    assert len(Store(str(mnt / "allocscope")).known_snapshots()) == 2


def test_two_agents_flushing_one_spool_store_each_snapshot_once(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A cron --once next to the systemd agent shares the default spool: both flushing it at
    once store every spooled snapshot once, drop none, and neither fails on the other's
    removals."""
    import threading

    blocker = tmp_path / "mnt"
    blocker.write_text("x")
    agent, _out = _agent(tmp_path, fixtures_dir, blocker / "store", count=6, interval=0.0)
    agent.run()
    assert len(agent.spool.pending()) == 6
    blocker.unlink()
    store = Store(str(blocker / "store"))
    done: list[int] = []
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            done.append(Spool(str(tmp_path / "spool"), 1000).flush(store, lambda m: None))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and sorted(done) == [0, 6]
    assert Spool(str(tmp_path / "spool"), 1000).dropped() == 0
    assert len(store.known_snapshots()) == 6 and len(store.files("hosts")) == 6
