"""Schemas of the store's core datasets and how every part file is written.

``allocinfo``, ``hosts``, ``callers`` and ``overhead`` are defined here (``context`` and
``lifespan`` in collector/store_fleet_schemas.py); :data:`SCHEMAS`, :data:`SORT_KEYS` and
:func:`parquet_options` cover all six. Separate from collector/store.py (paths, atomic parts,
crash cleanup) because the row builders (collector/store_rows.py, store_tables.py,
store_fleet.py), the batch writer and the readers need the schemas without the store's
writing machinery.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from allocscope.collector.snapshot import SNAPSHOT_SCHEMA
from allocscope.collector.store_fleet_schemas import CONTEXT_SCHEMA, LIFESPAN_SCHEMA

STORE_SCHEMA_VERSION = 2  # 2: hosts' counted-once columns (added, null in older parts)
DATASETS = ("allocinfo", "hosts", "callers", "overhead", "context", "lifespan")
# Datasets an agent interval writes beside its snapshot, before the commit record.
INTERVAL_DATASETS = ("context", "lifespan")
ROW_GROUP_ROWS = 128 * 1024  # small enough that a one-host query skips most of a batch file

TS = pa.timestamp("us", tz="UTC")
LABELS = pa.map_(pa.string(), pa.string())

ALLOCINFO_SCHEMA = SNAPSHOT_SCHEMA

HOSTS_SCHEMA = pa.schema(
    [
        ("hostname", pa.string()),
        ("boot_id", pa.string()),
        ("kernel_release", pa.string()),
        ("taken_at", TS),
        ("boot_time", TS),
        ("uptime_s", pa.float64()),
        ("cpus", pa.int32()),
        ("cpu_model", pa.string()),
        ("memory_bytes", pa.int64()),
        ("mem_profiling", pa.string()),
        ("mem_profiling_writable", pa.bool_()),
        ("mem_profiling_compressed", pa.bool_()),
        ("labels", LABELS),
        ("allocinfo_version", pa.string()),
        ("source", pa.string()),
        ("sites", pa.int64()),
        ("total_bytes", pa.int64()),
        ("total_calls", pa.int64()),
        ("agent_cpu_s", pa.float64()),  # the agent's own CPU for this snapshot (null if ingested)
        ("agent_rss_bytes", pa.int64()),
        ("stored_at", TS),
        # store schema 2, additive (null in parts written before): memory counted once
        # (collector/containers.py; ``memory_bytes`` above is the host's RAM) and the
        # containers that the plain ``total_bytes`` counts beside the objects inside them
        ("counted_bytes", pa.int64()),
        ("counted_exact", pa.bool_()),  # false: free slab space unknown, a lower bound
        ("slab_page_bytes", pa.int64()),
        ("slab_overhead_bytes", pa.int64()),  # null when /proc/slabinfo was not read
        ("percpu_page_bytes", pa.int64()),
    ]
)
# columns a part written by an older store schema may lack (read as null: union by name)
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "hosts": (
        "counted_bytes",
        "counted_exact",
        "slab_page_bytes",
        "slab_overhead_bytes",
        "percpu_page_bytes",
    ),
}

_RESULT_COMMON: list[tuple[str, pa.DataType]] = [
    ("hostname", pa.string()),
    ("boot_id", pa.string()),
    ("kernel_release", pa.string()),
    ("taken_at", TS),  # the result's start
    ("duration_s", pa.float64()),
    ("mem_profiling", pa.string()),
    ("labels", LABELS),
]

CALLERS_SCHEMA = pa.schema(
    _RESULT_COMMON
    + [
        ("site", pa.string()),  # what the user asked for (function or file:line)
        ("site_function", pa.string()),  # clone-suffix-free function, the join key to allocinfo
        ("site_key", pa.string()),  # file:line when the result names one
        ("backend", pa.string()),
        ("total_calls", pa.int64()),
        ("lost", pa.int64()),
        ("caller", pa.string()),  # null for a result with no callers (kept so it is not lost)
        ("calls", pa.int64()),
        ("share", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("bytes", pa.int64()),
        ("payload_json", pa.string()),  # the whole payload (folded stacks, allocinfo join)
    ]
)

OVERHEAD_SCHEMA = pa.schema(
    _RESULT_COMMON
    + [
        ("function", pa.string()),  # null when the payload has no functions table
        ("kind", pa.string()),
        ("present", pa.bool_()),
        ("inclusive_samples", pa.int64()),
        ("self_samples", pa.int64()),
        ("inclusive_share", pa.float64()),
        ("self_share", pa.float64()),
        ("calls", pa.int64()),
        ("calls_per_second", pa.float64()),
        ("ns_per_call", pa.float64()),
        ("row_json", pa.string()),  # the function row as the overhead verb wrote it
        ("settings_json", pa.string()),
        ("payload_json", pa.string()),  # the whole payload: nothing an unknown field held is lost
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "allocinfo": ALLOCINFO_SCHEMA,
    "hosts": HOSTS_SCHEMA,
    "callers": CALLERS_SCHEMA,
    "overhead": OVERHEAD_SCHEMA,
    "context": CONTEXT_SCHEMA,
    "lifespan": LIFESPAN_SCHEMA,
}


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every part is written: zstd, and dictionary encoding for the string columns only.

    Numbers such as ``bytes`` have nearly one value per row: trying a dictionary first and
    falling back to plain costs writing time and made the files larger (7.8 instead of
    9.5 MB per million allocinfo rows).
    """
    strings = [f.name for f in schema if f.type == pa.string()]
    return {"compression": "zstd", "use_dictionary": strings}


SORT_KEYS: dict[str, list[str]] = {
    "allocinfo": ["hostname", "taken_at", "site_key"],
    "hosts": ["hostname", "taken_at"],
    "callers": ["hostname", "taken_at", "site", "caller"],
    "overhead": ["hostname", "taken_at", "function"],
    "context": ["hostname", "taken_at", "tag", "row_kind", "caller"],
    "lifespan": ["hostname", "taken_at", "site", "caller", "row_kind", "slot"],
}


def part_metadata(dataset: str) -> dict[bytes, bytes]:
    """The key/value metadata every part carries: the store layout version and its dataset."""
    return {
        b"allocscope.store_schema": str(STORE_SCHEMA_VERSION).encode(),
        b"allocscope.dataset": dataset.encode(),
    }
