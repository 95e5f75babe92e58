"""The report's file inputs as Arrow: saved allocinfo (text, .gz, /proc) and snapshot Parquet.

Both kinds become rows of the snapshot schema (the columns :data:`COLUMNS` that the report's
SQL reads, collector/report_data.py), so one set of queries serves saved files and a fleet
store alike. A snapshot Parquet passes the checks ingest applies (collector/snapshot_check.py
via collector/snapshot.py) before any of it is shown.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from allocscope.collector.allocinfo import PROC_ALLOCINFO
from allocscope.collector.host import HostMetadata, collect_host_metadata
from allocscope.collector.subsystem import SubsystemMap
from allocscope.errors import InputError

COLUMNS = (
    "hostname",
    "boot_id",
    "kernel_release",
    "taken_at",
    "uptime_s",
    "mem_profiling",
    "file",
    "line",
    "module",
    "function",
    "site_key",
    "loose_key",
    "subsystem",
    "bytes",
    "calls",
    "accurate",
)


def _file_host(path: str) -> HostMetadata:
    """Text allocinfo carries no host facts: the file name stands in for the host."""
    return HostMetadata(
        hostname=os.path.basename(path),
        kernel_release="unknown",
        boot_id="",
        boot_time=0.0,
        cpus=0,
        cpu_model="unknown",
        memory_bytes=0,
        mem_profiling=None,
    )


def load_files(
    paths: list[str],
    subsystems: SubsystemMap,
    slab_objects: dict[tuple[str, int], int] | None = None,
) -> tuple[Any, dict[str, dict[str, str]], dict[tuple[str, int], str]]:
    """Saved allocinfo (text, .gz, or snapshot Parquet) -> one Arrow table + host labels.

    Several text files are read as successive snapshots of one host, in the order given
    (their modification times become the snapshot times), so ``--file before --file after``
    shows the change. Snapshot Parquet files carry their own host and time. Also returns
    (host, snapshot ms) -> file name, to label each snapshot's bar with its file, and fills
    ``slab_objects`` with (host, snapshot ms) -> the slab object bytes a live snapshot recorded.
    """
    import pyarrow as pa

    from allocscope.collector.allocinfo import read_allocinfo
    from allocscope.collector.snapshot import is_parquet, read_snapshot, snapshot_table

    tables = []
    labels: dict[str, dict[str, str]] = {}
    names: dict[tuple[str, int], str] = {}
    text_paths = [p for p in paths if not is_parquet(p)]
    text_host = (
        (_file_host(text_paths[0]) if len(text_paths) == 1 else _file_host("allocinfo files"))
        if text_paths
        else None
    )
    if text_paths and all(p == PROC_ALLOCINFO for p in text_paths):
        text_host = collect_host_metadata()  # the live file: this host, now
    last_t = 0.0
    for path in paths:
        if is_parquet(path):
            snap = read_snapshot(path)
            host = snap.host or _file_host(path)
            labels[host.hostname] = dict(host.labels)
        else:
            snap = read_allocinfo(path)
            assert text_host is not None
            host = text_host
            mtime = _saved_at(path, snap.taken_at)
            # Distinct, increasing times keep the given order even for copies with equal mtimes.
            snap.taken_at = max(mtime, last_t + 1.0) if len(text_paths) > 1 else mtime
            last_t = snap.taken_at
        if not snap.records:
            raise InputError(path, None, "no allocinfo lines in this file")
        tables.append(snapshot_table(snap, host, subsystems).select(list(COLUMNS)))
        key = (host.hostname, int(snap.taken_at * 1_000_000) // 1000)
        names[key] = os.path.basename(path)
        if slab_objects is not None and snap.slab_objects_bytes is not None:
            slab_objects[key] = snap.slab_objects_bytes
    table = pa.concat_tables(tables) if tables else None
    return table, labels, names


def _saved_at(path: str, read_at: float) -> float:
    """When a saved copy was taken: its mtime; for /proc, stdin and pipes, when we read it."""
    try:
        st = os.stat(path)
    except OSError:
        return read_at
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or path.startswith("/proc/"):
        return read_at
    return st.st_mtime
