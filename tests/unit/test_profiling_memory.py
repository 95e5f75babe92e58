"""Profiling's memory from /proc/vmstat (nr_memmap_pages + nr_memmap_boot_pages: struct page
plus page_ext, Linux 6.11+): read into host metadata and the overhead payload's
profiling_memory block, and compared pilot minus control by ``ab``."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from allocscope.collector.ab import GIB, Loaded, compare_groups, memmap_comparison
from allocscope.collector.host import HostMetadata, read_memmap
from allocscope.collector.payloads import ProfilingMemory
from allocscope.collector.profiling_memory import profiling_memory
from allocscope.collector.result import Result
from allocscope.reports.overhead import ab_table, memory_line

PAGE = os.sysconf("SC_PAGE_SIZE")
VMSTAT_73 = "nr_free_pages 600000\nnr_memmap_pages 512\nnr_memmap_boot_pages 12800\npgfault 1\n"


def test_read_memmap_both_spellings(tmp_path: Path) -> None:
    new = tmp_path / "vmstat"
    new.write_text(VMSTAT_73)
    assert read_memmap(str(new)) == (512 * PAGE, 12800 * PAGE)
    old = tmp_path / "vmstat-6.11"  # the first name the counters had
    old.write_text("nr_memmap 7\nnr_memmap_boot 9\n")
    assert read_memmap(str(old)) == (7 * PAGE, 9 * PAGE)
    none = tmp_path / "vmstat-6.6"
    none.write_text("nr_free_pages 1\n")
    assert read_memmap(str(none)) is None
    assert read_memmap(str(tmp_path / "absent")) is None


def test_host_metadata_round_trips_the_figures() -> None:
    h = HostMetadata(
        "h", "7.3.4", "b", 0.0, 2, "x", 3 << 30, "1", memmap_bytes=1, memmap_boot_bytes=2
    )
    back = HostMetadata.from_dict(h.to_dict())
    assert back.memmap_total_bytes == 3
    older = h.to_dict()
    del older["memmap_bytes"], older["memmap_boot_bytes"]  # a result from before
    assert HostMetadata.from_dict(older).memmap_total_bytes is None
    for bad in ("54M", -1, 1.5, True):
        with pytest.raises(ValueError, match="memmap_bytes is not a byte count"):
            HostMetadata.from_dict({**h.to_dict(), "memmap_bytes": bad})


def test_profiling_memory_block_of_a_saved_file(fixtures_dir: Path) -> None:
    """From a saved allocinfo: the alloc_page_ext tag, and no vmstat (not this host's)."""
    m = profiling_memory(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    assert m["status"] == "known" and m["page_ext_bytes"] > 0
    assert "memmap_total_bytes" not in m
    typed = ProfilingMemory.from_dict({**m, "memmap_total_bytes": 5 << 20}, "pm")
    assert "struct page + page_ext" in memory_line(typed)
    assert "struct page" not in memory_line(ProfilingMemory.from_dict(m, "pm"))


def _result(memory: int, memmap: int | None, page_ext: int, profiling: str) -> Result:
    host = HostMetadata(
        "h",
        "7.3.4",
        "b",
        0.0,
        2,
        "x",
        memory,
        profiling,
        memmap_bytes=None if memmap is None else memmap // 4,
        memmap_boot_bytes=None if memmap is None else memmap - memmap // 4,
    )
    payload = {
        "seconds": 10.0,
        "functions": [],
        "profiling_memory": {"status": "known", "page_ext_bytes": page_ext, "total_bytes": 0},
    }
    return Result("overhead", host, 0.0, 10.0, {"event": "cpu-clock", "frequency": 99}, payload)


def test_ab_memory_is_pilot_minus_control_per_gib() -> None:
    """Pilot hosts carry 2 MiB/GiB more struct page + page_ext than control hosts (8 bytes of
    page_ext per 4 KiB page); RAM sizes differ, so the difference is taken per GiB."""
    rng = random.Random(3)
    base, extra = 16 << 20, 2 << 20  # per GiB: struct page (64 B / 4 KiB), page_ext
    pilot, control = [], []
    for i in range(6):
        gib = rng.choice((4, 8, 16))
        pilot.append(Loaded(f"p{i}", _result(gib * GIB, gib * (base + extra), 6 << 20, "1")))
        gib = rng.choice((4, 8, 16))
        control.append(Loaded(f"c{i}", _result(gib * GIB, gib * base, 0, "0")))
    m = memmap_comparison(pilot, control)
    assert m.n_a == m.n_b == 6 and not m.note
    assert m.per_gib_b == base and m.delta_per_gib == extra
    mean_gib = sum(x.result.host.memory_bytes for x in pilot) / len(pilot) / GIB
    assert m.delta_bytes == extra * mean_gib
    assert m.page_ext_tag_a == 6 << 20 and m.page_ext_tag_b == 0
    payload = compare_groups(pilot, control)
    assert payload.memory == m
    assert payload.to_dict()["memory"]["delta_per_gib"] == extra
    text = ab_table(payload)
    assert "pilot minus control +2.00 MiB per GiB of RAM" in text
    assert "alloc_page_ext tag 6.00 MiB (pilot)" in text


def test_ab_memory_without_figures_says_why() -> None:
    pilot = [Loaded("p", _result(GIB, None, 0, "1"))]
    control = [Loaded("c", _result(GIB, 16 << 20, 0, "0"))]
    m = memmap_comparison(pilot, control)
    assert m.delta_per_gib is None and "group A" in m.note and m.n_b == 1
    assert "not compared" in ab_table(dataclasses.replace(compare_groups(pilot, control)))
