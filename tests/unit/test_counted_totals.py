"""Counted-once totals beyond top (issue 13): diff, snapshot metadata, the store's hosts rows
and the HTML report, on hand-written files whose containers are known and on the real
fixtures. The rule itself (which tags are containers) is collector/containers.py's, tested in
tests/unit/test_containers.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from allocscope.collector.allocinfo import parse_allocinfo_text, read_allocinfo
from allocscope.collector.containers import counted_once
from allocscope.collector.diff import diff_snapshots
from allocscope.reports.allocinfo import diff_table

A_TEXT = """\
allocinfo - version: 2.0
#     <size>  <calls> <tag info>
      40960       10 mm/slub.c:3347 func:alloc_slab_page
       8192        2 mm/percpu-vm.c:103 func:pcpu_alloc_pages
      30000      300 fs/dcache.c:1 func:__d_alloc
       4096        1 lib/xarray.c:378 func:xas_alloc
      16384        4 mm/readahead.c:200 func:ractl_alloc_folio
"""
B_TEXT = """\
allocinfo - version: 2.0
#     <size>  <calls> <tag info>
      57344       14 mm/slub.c:3347 func:alloc_slab_page
       8192        2 mm/percpu-vm.c:103 func:pcpu_alloc_pages
      45000      450 fs/dcache.c:1 func:__d_alloc
       4096        1 lib/xarray.c:378 func:xas_alloc
      16384        4 mm/readahead.c:200 func:ractl_alloc_folio
"""
A_OBJECTS = 30000 + 4096 + 16384  # every tag but the two containers
B_OBJECTS = 45000 + 4096 + 16384
A_PLAIN = A_OBJECTS + 40960 + 8192
B_PLAIN = B_OBJECTS + 57344 + 8192


def _files(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(A_TEXT)
    b.write_text(B_TEXT)
    return a, b


# ------------------------------------------------------------------------------- diff


def test_diff_json_keeps_plain_sums_and_adds_counted_once(cli: Any, tmp_path: Path) -> None:
    a, b = _files(tmp_path)
    rc, out, err = cli("diff", str(a), str(b), "--json")
    assert rc == 0, err
    t = json.loads(out)["totals"]
    assert (t["bytes_a"], t["bytes_b"], t["delta_bytes"]) == (A_PLAIN, B_PLAIN, B_PLAIN - A_PLAIN)
    assert t["memory_bytes_a"] == A_OBJECTS and t["memory_bytes_b"] == B_OBJECTS
    assert t["delta_memory_bytes"] == B_OBJECTS - A_OBJECTS == 15000
    assert t["memory_exact_a"] is False and t["memory_exact_b"] is False  # saved text files
    assert t["containers_a"]["slab"]["bytes"] == 40960
    assert t["containers_b"]["slab"]["bytes"] == 57344
    assert t["containers_b"]["slab"]["overhead_bytes"] is None
    assert t["containers_a"]["percpu"] == t["containers_b"]["percpu"]
    assert t["containers_a"]["percpu"]["bytes"] == 8192
    # --by subsystem: the slab pages are their own group, not mm's
    rc, out, err = cli("diff", str(a), str(b), "--json", "--by", "subsystem")
    groups = {g["key"]: g for g in json.loads(out)["groups"]}
    assert groups["(slab pages: container)"]["delta_bytes"] == 57344 - 40960
    assert "mm" not in groups  # mm's only object tag (readahead) did not change


def test_diff_table_has_one_counted_once_line(cli: Any, tmp_path: Path) -> None:
    a, b = _files(tmp_path)
    rc, out, err = cli("diff", str(a), str(b))
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("memory counted once:")]
    assert len(lines) == 1
    d = diff_snapshots(parse_allocinfo_text(A_TEXT, "a"), parse_allocinfo_text(B_TEXT, "b"))
    raw = diff_table(d, d.changes, human=False)
    line = next(ln for ln in raw.splitlines() if ln.startswith("memory counted once:"))
    assert f"A {A_OBJECTS}, B {B_OBJECTS}, change +15000 (at least" in line
    assert "slab pages 40960 -> 57344" in line and "per-CPU chunk pages 8192 -> 8192" in line


def test_diff_real_fixtures(cli: Any, fixtures_dir: Path) -> None:
    fa = fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"
    fb = fixtures_dir / "allocinfo-7.3-boot.txt"
    rc, out, err = cli("diff", str(fa), str(fb), "--json", "--by", "subsystem")
    assert rc == 0, err
    t = json.loads(out)["totals"]
    for side, path in (("a", fa), ("b", fb)):
        snap = read_allocinfo(str(path))
        want = counted_once(snap.records)
        assert t[f"bytes_{side}"] == sum(r.bytes for r in snap.records)
        assert t[f"memory_bytes_{side}"] == want.memory_bytes
        slab = want.containers["slab"].bytes
        assert slab > 0 and t[f"containers_{side}"]["slab"]["bytes"] == slab
        assert (
            t[f"memory_bytes_{side}"] == t[f"bytes_{side}"] - slab - want.containers["percpu"].bytes
        )
