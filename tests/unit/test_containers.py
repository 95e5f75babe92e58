"""Counted-once totals: containers (slab pages, per-CPU chunks) versus object tags, on both
real fixtures and on hand-written files whose containers are known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allocscope.collector.allocinfo import AllocRecord, parse_allocinfo_text, read_allocinfo
from allocscope.collector.containers import container_kind, counted_once, slab_objects_bytes
from allocscope.collector.rollup import rollup
from allocscope.collector.site import Site

HAND = """\
allocinfo - version: 2.0
#     <size>  <calls> <tag info>
      40960       10 mm/slub.c:3347 func:alloc_slab_page
       8192        2 mm/percpu-vm.c:103 func:pcpu_alloc_pages
      30000      300 fs/dcache.c:1 func:__d_alloc
       4096        1 lib/xarray.c:378 func:xas_alloc
      16384        4 mm/readahead.c:200 func:ractl_alloc_folio
"""


def test_hand_written_file_splits_containers_from_objects() -> None:
    snap = parse_allocinfo_text(HAND, "hand")
    t = counted_once(snap.records)
    assert t.bytes == 40960 + 8192 + 30000 + 4096 + 16384  # the kernel's sum, unchanged
    assert t.object_bytes == 30000 + 4096 + 16384
    assert t.containers["slab"].bytes == 40960 and t.containers["percpu"].bytes == 8192
    assert t.memory_bytes == t.object_bytes and not t.exact  # no slabinfo: a lower bound
    live = counted_once(snap.records, slab_objects_bytes=34096)
    assert live.containers["slab"].overhead_bytes == 40960 - 34096
    assert live.memory_bytes == t.object_bytes + 40960 - 34096
    assert not live.exact  # per-CPU overhead stays unknown


def test_overhead_never_negative() -> None:
    recs = [AllocRecord(Site("mm/slub.c", 1, "alloc_slab_page"), 4096, 1)]
    assert counted_once(recs, slab_objects_bytes=10_000).containers["slab"].overhead_bytes == 0


def test_container_match_needs_file_and_function() -> None:
    assert container_kind(Site("mm/slub.c", 3347, "alloc_slab_page")) == "slab"
    assert container_kind(Site("mm/slub.c", 2478, "alloc_slab_page.isra.0")) == "slab"
    assert container_kind(Site("drivers/x.c", 1, "alloc_slab_page")) is None
    assert container_kind(Site("mm/percpu.c", 512, "pcpu_mem_zalloc")) is None  # metadata


def test_real_fixtures(fixtures_dir: Path) -> None:
    for name, slab_tags in (("allocinfo-7.3-boot.txt", 3), ("allocinfo-6.12-tmpfs-write.txt", 2)):
        snap = read_allocinfo(str(fixtures_dir / name))
        t = counted_once(snap.records)
        slab = t.containers["slab"]
        assert slab.tags == slab_tags and slab.bytes > 0
        by_hand = sum(
            r.bytes
            for r in snap.records
            if r.site.function not in ("alloc_slab_page", "pcpu_alloc_pages")
        )
        assert t.object_bytes == by_hand
        assert t.memory_bytes == t.bytes - slab.bytes - t.containers["percpu"].bytes


def test_subsystem_rollup_keeps_containers_out_of_mm(fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    r = rollup(snap.records, by="subsystem")
    rows = {row.key: row for row in r.rows}
    slab_pages = rows["(slab pages: container)"]
    mm = rows["mm"]
    assert slab_pages.bytes == r.counted.containers["slab"].bytes
    assert mm.bytes + slab_pages.bytes + rows["(per-CPU chunk pages: container)"].bytes == sum(
        x.bytes for x in snap.records if x.site.file.startswith("mm/")
    )
    assert mm.bytes / r.total_bytes < 0.6  # was 73.6% with the slab pages in it


def test_slabinfo_reader(tmp_path: Path) -> None:
    p = tmp_path / "slabinfo"
    p.write_text(
        "slabinfo - version: 2.1\n"
        "# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : ...\n"
        "kernfs_node_cache   9900   9900    136   30    1 : tunables 0 0 0 : slabdata 330 330 0\n"
        "kmalloc-4k           108    112   4096    8    8 : tunables 0 0 0 : slabdata 14 14 0\n"
    )
    # footprint = pages * 4096 / objperslab: 136 B objects take 4096 // 30 = 136 B each
    assert slab_objects_bytes(str(p)) == 9900 * 136 + 108 * 4096
    p.write_text("slabinfo - version: 2.1\ngarbage line\n")
    assert slab_objects_bytes(str(p)) is None
    assert slab_objects_bytes(str(tmp_path / "missing")) is None


def test_top_json_and_text_show_both_numbers(cli: Any, fixtures_dir: Path) -> None:
    import json

    rc, out, err = cli("top", "--file", str(fixtures_dir / "allocinfo-7.3-boot.txt"), "--json")
    assert rc == 0, err
    totals = json.loads(out)["totals"]
    assert totals["bytes"] > totals["memory_bytes"] > 0
    assert totals["containers"]["slab"]["overhead_bytes"] is None  # a saved file
    rc, out, err = cli("top", "--file", str(fixtures_dir / "allocinfo-7.3-boot.txt"), "-n", "2")
    assert "memory counted once:" in out and "slab pages" in out
