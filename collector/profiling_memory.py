"""Memory allocation profiling's own memory, read from allocinfo's lines for it.

The profiler keeps a tag pointer per page (``page_ext``, ``mm/page_ext.c
func:alloc_page_ext``) and per slab object (``slab_obj_exts``, ``mm/slub.c
func:alloc_slab_obj_exts``); allocinfo accounts both like any other allocation, so its own
cost is two lines of the file. ``overhead`` reports them next to the CPU cost.

/proc/vmstat says it directly too (Linux 6.11+): ``nr_memmap_pages`` and
``nr_memmap_boot_pages`` count the pages of per-page metadata, struct page plus page_ext, so
they hold profiling's page_ext whatever allocinfo's tag for it says (the tag misses the part
allocated before profiling started: it is ``accurate:no`` at boot). They are recorded beside
the tag here, in every result's host metadata (collector/host.py), and compared pilot minus
control by ``ab`` (collector/ab.py :func:`~allocscope.collector.ab.memmap_comparison`).
"""

from __future__ import annotations

import os
from typing import Any

from allocscope.collector.allocinfo import PROC_ALLOCINFO, read_allocinfo
from allocscope.collector.host import read_memmap
from allocscope.errors import InputError

PROFILING_MEMORY_FUNCS = {"alloc_page_ext": "page_ext", "alloc_slab_obj_exts": "slab_obj_ext"}


def profiling_memory(path: str | None = None) -> dict[str, Any]:
    """Memory the profiling itself uses, from allocinfo's own lines, or why it is unknown.

    page_ext (``mm/page_ext.c func:alloc_page_ext``) is shared with other page_ext users
    (page_owner, idle tracking), so it is an upper bound when those are enabled too. The
    memmap figures (``memmap_*``, this host's /proc/vmstat, only for the live file) are
    struct page plus page_ext.
    """
    memmap = _memmap() if path is None else {}
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return {
            "status": "unknown",
            "reason": "no /proc/allocinfo (kernel without CONFIG_MEM_ALLOC_PROFILING)",
            **memmap,
        }
    try:
        snap = read_allocinfo(path)
    except InputError as e:
        return {"status": "unknown", "reason": e.reason if path is None else str(e)}
    except OSError as e:
        return {"status": "unknown", "reason": f"cannot read allocinfo: {e}"}
    out: dict[str, Any] = {
        "status": "known",
        "source": snap.source,
        "allocinfo_version": snap.version,
        "page_ext_bytes": 0,
        "slab_obj_ext_bytes": 0,
        "lines": [],
    }
    for r in snap.records:
        what = PROFILING_MEMORY_FUNCS.get(r.site.function)
        if what is None:
            continue
        out[f"{what}_bytes"] += r.bytes
        out["lines"].append(
            {
                "site": r.site.key,
                "function": r.site.function,
                "bytes": r.bytes,
                "calls": r.calls,
                "accurate": r.accurate,
            }
        )
    out["total_bytes"] = out["page_ext_bytes"] + out["slab_obj_ext_bytes"]
    out.update(memmap)
    return out


def _memmap() -> dict[str, Any]:
    """``memmap_bytes``/``memmap_boot_bytes``/``memmap_total_bytes`` from /proc/vmstat, or
    ``{}`` on a kernel that does not print them (before 6.11)."""
    got = read_memmap()
    if got is None:
        return {}
    return {
        "memmap_bytes": got[0],
        "memmap_boot_bytes": got[1],
        "memmap_total_bytes": got[0] + got[1],
        "memmap_source": "/proc/vmstat nr_memmap_pages + nr_memmap_boot_pages",
    }
