"""Profiling's memory from /proc/vmstat on the real kernels (7.3 and 6.12): the host
metadata and the overhead payload's profiling_memory block carry struct page + page_ext
(nr_memmap_pages + nr_memmap_boot_pages), next to allocinfo's alloc_page_ext tag.

    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_profiling_memory_vm.py
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from allocscope.collector.host import collect_host_metadata
from allocscope.collector.profiling_memory import profiling_memory

pytestmark = pytest.mark.vm

PAGE = os.sysconf("SC_PAGE_SIZE")


def vmstat() -> dict[str, int]:
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


def test_memmap_from_vmstat_in_host_metadata_and_overhead_block() -> None:
    v = vmstat()
    names = [k for k in v if k.startswith("nr_memmap")]
    assert len(names) == 2, names  # both kernels are past 6.11
    runtime = v.get("nr_memmap_pages", v.get("nr_memmap"))
    boot = v.get("nr_memmap_boot_pages", v.get("nr_memmap_boot"))
    assert runtime is not None and boot is not None

    host = collect_host_metadata()
    assert host.memmap_bytes == runtime * PAGE
    assert host.memmap_boot_bytes == boot * PAGE
    total = host.memmap_total_bytes
    assert total is not None
    # struct page alone is 64 bytes per page of RAM (x86-64), and page_ext adds to it
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_total = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    assert total >= mem_total // PAGE * 64

    m = profiling_memory()
    assert m["status"] == "known"
    assert m["memmap_total_bytes"] == total
    # page_ext is part of the memmap counters; allocinfo's tag for it can only be smaller
    # (it misses what was allocated before profiling started: accurate:no at boot)
    assert 0 < m["page_ext_bytes"] <= total
    print(
        f"{platform.release()}: {', '.join(names)}; memmap {total} B "
        f"({total / mem_total:.2%} of MemTotal), boot {boot * PAGE} B, "
        f"alloc_page_ext tag {m['page_ext_bytes']} B"
    )
