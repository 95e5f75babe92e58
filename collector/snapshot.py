"""The snapshot file: one allocinfo read plus its host metadata, in one Parquet file.

This is the unit the fleet store ingests, so its schema is versioned and documented
(docs/design/store.md, "Snapshot schema"). One row per allocinfo tag; host columns are
repeated on every row so a directory of snapshots is queryable as one table without joins. The whole
:class:`HostMetadata` (labels included) and the read's own facts are also kept in the Parquet
key-value metadata under ``allocscope.*``.
"""

from __future__ import annotations

# pyright: reportAttributeAccessIssue=false
# (pyarrow.compute makes its functions at import time and ships no stubs)
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allocscope.collector.allocinfo import (
    AllocinfoSnapshot,
    AllocRecord,
    NumaCount,
    extras_items,
)
from allocscope.collector.atomic import write_atomic
from allocscope.collector.containers import (
    CONTAINER_FUNCTIONS,
    CountedTotals,
    container_kind,
    counted_once,
    may_be_container,
    recorded_slab_objects,
)
from allocscope.collector.host import HostMetadata
from allocscope.collector.rollup import container_group
from allocscope.collector.site import Site, exact_key, line_free_key
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import InputError

SNAPSHOT_SCHEMA_VERSION = 1

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("hostname", pa.string()),
        ("boot_id", pa.string()),
        ("kernel_release", pa.string()),
        ("taken_at", pa.timestamp("us", tz="UTC")),
        ("uptime_s", pa.float64()),
        ("mem_profiling", pa.string()),
        ("file", pa.string()),
        ("line", pa.int32()),
        ("module", pa.string()),
        ("function", pa.string()),
        ("site_key", pa.string()),
        ("loose_key", pa.string()),
        ("subsystem", pa.string()),
        ("bytes", pa.int64()),
        ("calls", pa.int64()),
        ("accurate", pa.bool_()),
        ("extras", pa.string()),  # JSON object of key:value extras ("{}" when none)
        ("numa", pa.string()),  # JSON list of [nid, bytes, calls] ("[]" when none)
    ]
)


def _site_columns(snap: AllocinfoSnapshot) -> dict[str, Any]:
    """The per-tag columns of :data:`SNAPSHOT_SCHEMA` (file ... numa, keys aside).

    From the compiled scanner's columns when the parse has them: numbers are wrapped
    without copying and no record object is built, which is most of a snapshot's CPU cost
    in the collection agent. Otherwise from the records.
    """
    c = snap.columns
    if c is not None:
        n = c.n
        json_of: dict[str, str] = {"": "{}"}
        extras = []
        for text in c.extras.to_list():
            js = json_of.get(text)
            if js is None:
                js = json_of[text] = json.dumps(dict(extras_items(text)), sort_keys=True)
            extras.append(js)
        return {
            "file": c.file.to_list(),
            "line": c.numbers("line"),
            "module": c.module.to_list(),
            "function": c.function.to_list(),
            "bytes": pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(c.nbytes)]),
            "calls": pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(c.calls)]),
            "accurate": [b != 0 for b in c.accurate],
            "extras": extras,
            "numa": ["[]"] * n,  # NUMA sub-lines never take the compiled path
        }
    recs = snap.records
    return {
        "file": [r.site.file for r in recs],
        "line": [r.site.line for r in recs],
        "module": [r.site.module for r in recs],
        "function": [r.site.function for r in recs],
        "bytes": [r.bytes for r in recs],
        "calls": [r.calls for r in recs],
        "accurate": [r.accurate for r in recs],
        "extras": [json.dumps(r.extras, sort_keys=True) if r.extras else "{}" for r in recs],
        "numa": [
            json.dumps([[c.nid, c.bytes, c.calls] for c in r.numa]) if r.numa else "[]"
            for r in recs
        ],
    }


def counted_of_table(table: pa.Table, slab_objects_bytes: int | None = None) -> CountedTotals:
    """Memory counted once over a table of allocinfo rows (snapshot or store schema): only
    the rows whose function may be a container's become records; the rule is
    collector/containers.py's."""
    if not table.num_rows:
        return counted_once([], slab_objects_bytes=slab_objects_bytes)
    # a vectorized first look (every container's function contains one of these names)
    mask = None
    for name in CONTAINER_FUNCTIONS:
        hit = pc.fill_null(pc.match_substring(table["function"], name), False)
        mask = hit if mask is None else pc.or_(mask, hit)
    cand = table.select(["file", "line", "function", "bytes", "calls"]).filter(mask).to_pydict()
    records = [
        AllocRecord(Site(file or "", line or 0, function or ""), nbytes or 0, calls or 0)
        for file, line, function, nbytes, calls in zip(
            cand["file"], cand["line"], cand["function"], cand["bytes"], cand["calls"], strict=True
        )
    ]
    total_bytes = int(pc.sum(table["bytes"]).as_py() or 0)
    total_calls = int(pc.sum(table["calls"]).as_py() or 0)
    rest = (
        total_bytes - sum(r.bytes for r in records),
        total_calls - sum(r.calls for r in records),
    )
    return counted_once(records, slab_objects_bytes=slab_objects_bytes, others=rest)


def subsystem_column(files: list[str], functions: list[str], sub: SubsystemMap) -> list[str]:
    """Each row's subsystem as top and diff roll up: a container tag (slab or per-CPU chunk
    pages) is its own group, never ``mm`` (it holds every subsystem's objects)."""
    out = list(map(sub.classify, files, functions))
    for i, fn in enumerate(functions):
        if fn and may_be_container(fn):
            kind = container_kind(Site(files[i] or "", 0, fn))
            if kind is not None:
                out[i] = container_group(kind)
    return out


def snapshot_table(
    snap: AllocinfoSnapshot, host: HostMetadata, subsystems: SubsystemMap | None = None
) -> pa.Table:
    """Rows for one snapshot, in :data:`SNAPSHOT_SCHEMA` order."""
    sub = subsystems or default_map()
    rows = _site_columns(snap)
    n = len(rows["file"])
    taken_us = int(snap.taken_at * 1_000_000)
    uptime = max(0.0, snap.taken_at - host.boot_time) if host.boot_time else 0.0
    files, lines, modules, functions = rows["file"], rows["line"], rows["module"], rows["function"]
    cols: dict[str, Any] = {
        "hostname": [host.hostname] * n,
        "boot_id": [host.boot_id] * n,
        "kernel_release": [host.kernel_release] * n,
        "taken_at": pa.array([taken_us] * n, pa.timestamp("us", tz="UTC")),
        "uptime_s": [uptime] * n,
        "mem_profiling": [host.mem_profiling] * n,
        **rows,
        "site_key": list(map(exact_key, files, lines, modules)),
        "loose_key": list(map(line_free_key, files, functions, modules)),
        "subsystem": subsystem_column(files, functions, sub),
    }
    table = pa.table(cols, schema=SNAPSHOT_SCHEMA)
    meta = {
        b"allocscope.schema": str(SNAPSHOT_SCHEMA_VERSION).encode(),
        b"allocscope.kind": b"allocinfo-snapshot",
        b"allocscope.host": json.dumps(host.to_dict()).encode(),
        b"allocscope.allocinfo_version": (snap.version or "").encode(),
        b"allocscope.source": snap.source.encode(),
        b"allocscope.taken_at": repr(snap.taken_at).encode(),
        b"allocscope.truncated": b"1" if snap.truncated else b"0",
        # not checked (a file, a kernel before 7.3) / one consistent set / never settled
        b"allocscope.consistent": {None: b"", True: b"1", False: b"0"}[snap.consistent],
        b"allocscope.counted": json.dumps(
            counted_of_table(table, snap.slab_objects_bytes).totals_dict(), sort_keys=True
        ).encode(),
    }
    return table.replace_schema_metadata(meta)


def write_snapshot(
    path: str, snap: AllocinfoSnapshot, host: HostMetadata, subsystems: SubsystemMap | None = None
) -> int:
    """Write one snapshot atomically (zstd Parquet); returns the row count."""
    table = snapshot_table(snap, host, subsystems)
    write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))
    return int(table.num_rows)


def is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def read_snapshot(path: str) -> AllocinfoSnapshot:
    """Read a snapshot file back into the core model (host metadata attached).

    The file passes the checks ingest applies (collector/snapshot_check.py) first: ``top``,
    ``diff`` and ``report`` refuse what the store would refuse, with the same one-line reason.
    """
    # snapshot_check builds on this module's schema: imported here, not at the top.
    from allocscope.collector.snapshot_check import read_snapshot_file

    checked = read_snapshot_file(path, keep_order=True)
    table, host = checked.table, checked.host
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    d = table.to_pydict()
    records = [
        AllocRecord(
            Site(d["file"][i], d["line"][i], d["function"][i], d["module"][i] or ""),
            d["bytes"][i],
            d["calls"][i],
            json.loads(d["extras"][i] or "{}"),
            [NumaCount(*x) for x in json.loads(d["numa"][i] or "[]")],
        )
        for i in range(table.num_rows)
    ]
    return AllocinfoSnapshot(
        version=checked.version,
        records=records,
        source=path,
        taken_at=checked.taken_at,
        host=host,
        truncated=meta.get(b"allocscope.truncated") == b"1",
        consistent={b"1": True, b"0": False}.get(meta.get(b"allocscope.consistent", b"")),
        slab_objects_bytes=recorded_counted_slab_objects(meta),
    )


def recorded_counted(meta: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The ``allocscope.counted`` metadata (memory counted once) of a snapshot, or None for
    a file written before it was recorded (or a damaged value)."""
    raw = meta.get(b"allocscope.counted")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def recorded_counted_slab_objects(meta: dict[bytes, bytes]) -> int | None:
    """/proc/slabinfo's object bytes a live snapshot recorded (None for a saved file's)."""
    return recorded_slab_objects(recorded_counted(meta))
