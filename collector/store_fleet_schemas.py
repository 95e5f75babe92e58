"""Schemas of the store's ``context`` and ``lifespan`` datasets (docs/design/store.md).

Both hold one row per (host, interval, tag or site, caller) with the byte sampler's ADDITIVE
sums -- estimates and their variances -- never intervals: an interval does not add up across
hosts or windows, a variance does (hosts and windows are independent samples), so a fleet
query sums ``calls``/``calls_var`` and derives the combined interval from the sums exactly as
collector/byte_sampling.py does for one capture.

Versioned by a column: ``schema_version`` (:data:`FLEET_SCHEMA_VERSION`) on every row, so a
reader can tell rows written before a column changed meaning; changes add columns only.
"""

from __future__ import annotations

import pyarrow as pa

FLEET_SCHEMA_VERSION = 1

_TS = pa.timestamp("us", tz="UTC")
_LABELS = pa.map_(pa.string(), pa.string())

# Every row of both datasets starts with these. ``taken_at`` joins the agent's rows to their
# ``hosts`` commit record (the interval's snapshot); for an ingested result it is the result's
# start, as in ``callers``. ``source`` is ``agent`` (committed by a hosts row) or ``ingest``.
INTERVAL_COMMON: list[tuple[str, pa.DataType]] = [
    ("hostname", pa.string()),
    ("boot_id", pa.string()),
    ("kernel_release", pa.string()),
    ("taken_at", _TS),
    ("window_start", _TS),
    ("interval_s", pa.float64()),
    ("mem_profiling", pa.string()),
    ("labels", _LABELS),
    ("source", pa.string()),
    ("schema_version", pa.int32()),
]

_SUMS: list[tuple[str, pa.DataType]] = [
    ("hits", pa.int64()),
    ("calls", pa.float64()),
    ("calls_var", pa.float64()),
    ("bytes", pa.float64()),
    ("bytes_var", pa.float64()),
]

CONTEXT_SCHEMA = pa.schema(
    INTERVAL_COMMON
    + [
        ("tag_mode", pa.string()),  # exact-tag | call-site
        ("rate", pa.int64()),  # the last mean gap R: one point's bytes weight (empty bounds)
        ("total_events", pa.int64()),  # counted (exact) in the window, every hook
        ("total_bytes", pa.int64()),
        ("row_kind", pa.string()),  # tag | caller
        ("tag", pa.string()),
        ("function", pa.string()),
        ("file", pa.string()),
        ("line", pa.int32()),
        ("module", pa.string()),
        ("subsystem", pa.string()),
        ("match", pa.string()),
        ("caller", pa.string()),  # null on tag rows; 'other' sums the callers not kept
        ("other_callers", pa.int64()),  # on the 'other' row: how many it sums
    ]
    + _SUMS
    + [
        ("charged_hits", pa.int64()),  # tag rows, null when the charge is unknown
        ("charged_calls", pa.float64()),
        ("charged_calls_var", pa.float64()),
        ("charged_bytes", pa.float64()),
        ("charged_bytes_var", pa.float64()),
        ("live_bytes", pa.int64()),  # allocinfo after the window (tag rows; null without it)
        ("live_calls", pa.int64()),
        ("folded_json", pa.string()),  # tag rows: folded stack -> sample points
    ]
)

# Estimates of a lifespan row, each stored as value and variance.
LIFESPAN_ESTIMATES = (
    "allocated_calls",
    "allocated_bytes",
    "freed_calls",
    "live_calls",
    "live_bytes",
    "old_calls",
    "old_bytes",
)

LIFESPAN_SCHEMA = pa.schema(
    INTERVAL_COMMON
    + [
        ("view", pa.string()),
        ("sample_rate", pa.int64()),
        ("addr_shift", pa.int32()),
        ("older_than_ns", pa.int64()),
        ("window_ns", pa.int64()),
        # row | hist (one freed-lifespan log2 bucket of the row) | addr (the row's kept
        # addresses' calls sums in hist_calls, their squares in hist_calls_var; added
        # 2026-12-07, absent when its intervals count objects)
        ("row_kind", pa.string()),
        ("site", pa.string()),
        ("tag", pa.string()),
        ("alloc_source", pa.string()),  # kmalloc | kmem_cache_alloc | mm_page_alloc
        ("caller", pa.string()),
        ("sampled", pa.int64()),
        ("freed_sampled", pa.int64()),
        ("live_sampled", pa.int64()),
        ("missed_frees", pa.int64()),
    ]
    + [(f"{e}{suffix}", pa.float64()) for e in LIFESPAN_ESTIMATES for suffix in ("", "_var")]
    + [
        ("lifespan_mean_ns", pa.float64()),  # row: mean lifespan of its freed objects
        ("lifespan_calls", pa.float64()),  # row: calls weight behind the mean (sum of hist)
        ("slot", pa.int32()),  # hist rows: bucket [2^slot, 2^(slot+1)) ns
        ("hist_sampled", pa.int64()),
        ("hist_calls", pa.float64()),
        ("hist_calls_var", pa.float64()),
        ("stacks_json", pa.string()),  # row: sampled folded stacks (leaks: the old ones)
    ]
)
