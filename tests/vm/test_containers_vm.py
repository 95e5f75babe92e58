"""Counted-once totals against the kernel's own slab figures, live.

Run inside a guest:
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_containers_vm.py -q

``alloc_slab_page`` must not exceed ``Slab:`` in /proc/meminfo (it misses only the slabs made
before profiling started: 84% of it in both guests at boot, 2026-12-04), the objects that
/proc/slabinfo reports must fit in the pages it reports, and ``top --json`` must then give an
exact counted-once total: the object tags plus the slab pages' free space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.containers import counted_once, slab_objects_bytes


def meminfo_bytes(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    raise AssertionError(f"no {key} in /proc/meminfo")


def slabinfo_pages_bytes() -> int:
    total = 0
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        f = line.split()
        total += int(f[f.index("slabdata") + 2]) * int(f[5]) * 4096
    return total


def test_slab_container_against_meminfo_and_slabinfo(allocinfo_path: Path, cli: Any) -> None:
    snap = read_allocinfo(str(allocinfo_path))
    slab_objects = slab_objects_bytes()
    meminfo_slab = meminfo_bytes("Slab")
    pages = slabinfo_pages_bytes()
    t = counted_once(snap.records, slab_objects_bytes=slab_objects)
    slab = t.containers["slab"]
    assert slab_objects is not None and 0 < slab_objects <= pages
    assert 0.5 * meminfo_slab <= slab.bytes <= meminfo_slab * 1.05, (slab.bytes, meminfo_slab)
    assert slab.overhead_bytes is not None and slab.overhead_bytes >= 0
    assert t.memory_bytes == t.object_bytes + slab.overhead_bytes
    assert t.memory_bytes < t.bytes  # the plain sum counts slab objects twice

    rc, out, err = cli("top", "--json", "-n", "1")
    assert rc == 0, err
    totals = json.loads(out)["totals"]
    live_slab = totals["containers"]["slab"]
    assert live_slab["objects_source"] == "/proc/slabinfo"
    assert live_slab["overhead_bytes"] is not None
    # a second read, moments later: the same order of magnitude, not the same bytes
    assert abs(live_slab["bytes"] - slab.bytes) <= 0.2 * slab.bytes
    assert totals["bytes"] > totals["memory_bytes"] > 0
