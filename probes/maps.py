"""Reading BCC maps into plain Python values, so no reader hands a BCC table upward.

Two reads every probe half needs: all entries of a map (one batched syscall where the kernel
has ``BPF_MAP_LOOKUP_BATCH``, 5.6+, else one lookup per key), and a per-CPU array summed over
CPUs index by index (counters and histograms are per-CPU so the programs need no atomics).
"""

from __future__ import annotations

from typing import Any


def items(table: Any) -> list[tuple[Any, Any]]:
    """All entries of a BPF map, in one batched syscall where the kernel allows."""
    try:
        return list(table.items_lookup_batch())
    except Exception:  # noqa: BLE001 - no batch ops on this kernel/map type (BCC: bare Exception)
        return list(table.items())


def percpu_sums(table: Any, n: int) -> list[int]:
    """A per-CPU array of ``n`` slots, summed over CPUs, index by index."""
    out = [0] * n
    for k, v in items(table):
        i = as_int(k)
        if 0 <= i < n:
            out[i] = sum(as_int(x) for x in v)
    return out


def as_int(x: Any) -> int:
    """BCC hands back ctypes scalars or plain ints depending on the read path."""
    return int(x.value) if hasattr(x, "value") else int(x)
