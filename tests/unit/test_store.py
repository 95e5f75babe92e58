"""The store's layout, atomic writes and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from allocscope.collector.allocinfo import AllocinfoSnapshot, read_allocinfo
from allocscope.collector.host import HostMetadata, collect_host_metadata
from allocscope.collector.snapshot import snapshot_table
from allocscope.collector.store import Store, StoreUnavailable, safe_name
from allocscope.collector.store_rows import AgentStats, dt_of
from allocscope.collector.store_schemas import HOSTS_SCHEMA, STORE_SCHEMA_VERSION

FIXTURE = "allocinfo-7.3-boot.txt"


def _snap(
    fixtures_dir: Path, labels: dict[str, str] | None = None
) -> tuple[AllocinfoSnapshot, HostMetadata, pa.Table]:
    snap = read_allocinfo(str(fixtures_dir / FIXTURE))
    host = collect_host_metadata(labels or {"group": "pilot"})
    return snap, host, snapshot_table(snap, host)


def test_commit_snapshot_layout_and_contents(tmp_path: Path, fixtures_dir: Path) -> None:
    snap, host, rows = _snap(fixtures_dir)
    store = Store(str(tmp_path / "s"))
    a, h = store.commit_snapshot(
        rows,
        host,
        snap.taken_at,
        allocinfo_version=snap.version,
        source=snap.source,
        agent=lambda: AgentStats(0.01, 1 << 20),
    )
    day = dt_of(snap.taken_at)
    assert os.path.dirname(a).endswith(f"allocinfo/dt={day}")
    assert os.path.dirname(h).endswith(f"hosts/dt={day}")
    assert os.path.basename(a).startswith(f"part-{safe_name(host.hostname)}-")
    meta = pq.ParquetFile(a).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    t = pq.read_table(a)
    assert t.schema.metadata[b"allocscope.store_schema"] == str(STORE_SCHEMA_VERSION).encode()
    assert t.num_rows == len(snap.records)
    keys = t["site_key"].to_pylist()
    assert keys == sorted(keys)
    assert set(t["subsystem"].to_pylist()) - {""}, "subsystem column is filled at ingest"
    assert all(
        k.endswith(f"{f}")
        for k, f in zip(t["loose_key"].to_pylist(), t["function"].to_pylist(), strict=True)
    )
    hosts = store.read("hosts")
    assert hosts.num_rows == 1 and hosts.schema.equals(HOSTS_SCHEMA, check_metadata=False)
    row = hosts.to_pylist()[0]
    assert dict(row["labels"]) == {"group": "pilot"}
    assert row["total_bytes"] == snap.total_bytes and row["sites"] == len(snap.records)
    assert row["agent_cpu_s"] == pytest.approx(0.01) and row["agent_rss_bytes"] == 1 << 20
    assert store.known_snapshots() == {(host.hostname, int(snap.taken_at * 1_000_000))}
    # the commit record joins its rows exactly (same µs stamp)
    assert set(t["taken_at"].to_pylist()) == {row["taken_at"]}


def test_failed_write_leaves_nothing(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, host, rows = _snap(fixtures_dir)
    store = Store(str(tmp_path / "s"))

    def boom(*a: Any, **k: Any) -> None:
        a[1].write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(StoreUnavailable, match="No space left"):
        store.commit_snapshot(rows, host, snap.taken_at)
    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert leftovers == []


def test_unwritable_store_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        Store(str(blocker / "store")).check_writable()


def _writer(root: str, host_index: int, n: int) -> None:
    from support.synth import FleetSpec, fleet

    store = Store(root)
    for k, (host, taken, table) in enumerate(
        fleet(FleetSpec(hosts=host_index + 1, sites=20, snapshots=n))
    ):
        if k // n == host_index:
            store.commit_snapshot(table, host, taken)


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    root = str(tmp_path / "s")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, i, 5)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(root)
    assert len(store.files("allocinfo")) == 20 and len(store.files("hosts")) == 20
    assert len(store.known_snapshots()) == 20
    assert store.read("allocinfo").num_rows == 20 * 20


def test_batch_names_carry_pid(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    a = store.part_path("allocinfo", "2026-11-29", "batch", 123, batch=True)
    me = safe_name(socket.gethostname())
    assert a.endswith(f"part-batch-123-{os.getpid()}@{me}.parquet")
    assert store.part_path("hosts", "2026-11-29", "a/b c", 5).endswith("part-a_b_c-5.parquet")


def test_clean_stale_temps_only_dead_own(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    d = tmp_path / "allocinfo" / "dt=2026-11-29"
    d.mkdir(parents=True)
    me = socket.gethostname().replace(".", "_")
    dead = d / f".part-x-1.parquet.{me}.999999999.0123456789abcdef.tmp"
    alive = d / f".part-x-2.parquet.{me}.{os.getpid()}.0123456789abcdef.tmp"
    other = d / ".part-x-3.parquet.otherhost.999999999.0123456789abcdef.tmp"
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    assert store.clean_stale_temps() == 1
    assert not dead.exists() and alive.exists() and other.exists()


def test_killed_writability_probe_is_cleaned(tmp_path: Path) -> None:
    """A writer killed inside check_writable leaves its probe file at the store's top."""
    store = Store(str(tmp_path))
    store.check_writable()
    assert os.listdir(tmp_path) == []
    me = socket.gethostname().replace(".", "_")
    stale = tmp_path / f".writable.{me}.999999999.0123456789abcdef.tmp"
    stale.write_text("ok")
    assert store.clean_stale_temps() == 1
    assert not stale.exists()


def test_read_empty_dataset_has_schema(tmp_path: Path) -> None:
    t = Store(str(tmp_path)).read("callers")
    assert t.num_rows == 0 and "caller" in t.schema.names


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _hold(path: str) -> subprocess.Popen[str]:
    """Another process writing ``path`` (a same-hostname clone: its pid means nothing here)."""
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def _uncommitted(store: Store, fixtures_dir: Path, name: str) -> str:
    """A published allocinfo part named ``name`` whose commit record is not (yet) written."""
    _snap_, host, rows = _snap(fixtures_dir)
    _a, h = store.commit_snapshot(rows, host, 1764400000.0)
    os.unlink(h)
    part = os.path.join(store.dataset_dir("allocinfo"), f"dt={dt_of(1764400000.0)}", name)
    if not os.path.exists(part):
        os.rename(_a, part)
    return part


@pytest.mark.parametrize("kind", ["agent", "batch"])
def test_an_uncommitted_part_is_removed_only_when_its_writer_is_provably_gone(
    tmp_path: Path, fixtures_dir: Path, kind: str
) -> None:
    """Pid and hostname are no proof (a cron --once next to the agent, clones sharing a
    hostname): a part whose writer still holds its lock stays; once the writer is gone it
    goes."""
    store = Store(str(tmp_path / "s"))
    me = safe_name(socket.gethostname())
    host = collect_host_metadata().hostname
    name = (
        f"part-{safe_name(host)}-1764400000000000000.parquet"
        if kind == "agent"
        else f"part-batch-1-999999999@{me}.parquet"  # a pid that is dead here
    )
    part = _uncommitted(store, fixtures_dir, name)
    writer = _hold(part)
    try:
        assert store.clean_orphans(host) == 0 and os.path.exists(part)
    finally:
        writer.communicate("")
    assert store.clean_orphans(host) == 1 and not os.path.exists(part)
    assert [os.path.basename(f) for f in os.listdir(os.path.dirname(part))] == []


def test_a_commit_written_while_cleaning_keeps_the_part(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer commits between the clean-up's first look and its lock: the part stays."""
    store = Store(str(tmp_path / "s"))
    host = collect_host_metadata().hostname
    part = _uncommitted(store, fixtures_dir, f"part-{safe_name(host)}-1764400000000000000.parquet")
    commit = part.replace(os.sep + "allocinfo" + os.sep, os.sep + "hosts" + os.sep)
    real_exists = os.path.exists
    looks = []

    def exists(p: Any) -> bool:
        if p == commit:
            looks.append(p)
            if len(looks) == 2:  # the look under the lock: committed by now
                return True
        return real_exists(p)

    monkeypatch.setattr(os.path, "exists", exists)
    assert store.clean_orphans(host) == 0
    monkeypatch.undo()
    assert len(looks) == 2 and os.path.exists(part)


def test_a_clones_live_temp_file_is_left_alone(tmp_path: Path) -> None:
    """A temp with our hostname and a pid dead here, but its writer (a clone) holds it."""
    store = Store(str(tmp_path))
    d = tmp_path / "allocinfo" / "dt=2026-11-29"
    d.mkdir(parents=True)
    me = socket.gethostname().replace(".", "_")
    temp = d / f".part-x-1.parquet.{me}.999999999.0123456789abcdef.tmp"
    temp.write_bytes(b"partial")
    writer = _hold(str(temp))
    try:
        assert store.clean_stale_temps() == 0 and temp.exists()
    finally:
        writer.communicate("")
    assert store.clean_stale_temps() == 1 and not temp.exists()
