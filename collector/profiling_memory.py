"""Memory allocation profiling's own memory, read from allocinfo's lines for it.

The profiler keeps a tag pointer per page (``page_ext``, ``mm/page_ext.c
func:alloc_page_ext``) and per slab object (``slab_obj_exts``, ``mm/slub.c
func:alloc_slab_obj_exts``); allocinfo accounts both like any other allocation, so its own
cost is two lines of the file. ``overhead`` reports them next to the CPU cost.
"""

from __future__ import annotations

import os
from typing import Any

from allocscope.collector.allocinfo import PROC_ALLOCINFO, read_allocinfo
from allocscope.errors import InputError

PROFILING_MEMORY_FUNCS = {"alloc_page_ext": "page_ext", "alloc_slab_obj_exts": "slab_obj_ext"}


def profiling_memory(path: str | None = None) -> dict[str, Any]:
    """Memory the profiling itself uses, from allocinfo's own lines, or why it is unknown.

    page_ext (``mm/page_ext.c func:alloc_page_ext``) is shared with other page_ext users
    (page_owner, idle tracking), so it is an upper bound when those are enabled too.
    """
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return {
            "status": "unknown",
            "reason": "no /proc/allocinfo (kernel without CONFIG_MEM_ALLOC_PROFILING)",
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
    return out
