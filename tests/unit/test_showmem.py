"""The show_mem "Memory allocations" block of a kernel log, on a real sample.

``tests/data/dmesg-7.3-sysrq-m.txt`` is the whole ``dmesg`` of the 7.3 test guest after
``echo m > /proc/sysrq-trigger`` (captured 2026-12-04 in the vmrun guest; the paths on its
boot command line are generalised); the VM suite checks the same parse against that kernel's
own /proc/allocinfo.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.allocinfo import AllocinfoSnapshot, read_allocinfo
from allocscope.collector.diff import diff_snapshots
from allocscope.collector.showmem import ROUNDING_KEY, parse_blocks, parse_kernel_log
from allocscope.errors import InputError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "dmesg-7.3-sysrq-m.txt"
BLOCK = """\
[   14.784752] Memory allocations (profiling is currently turned on):
[   14.784977]     6.65 MiB     1079 mm/slub.c:3347 func:alloc_slab_page
[   14.785176]      914 KiB      285 kernel/fork.c:365 func:alloc_thread_stack_node
[   14.785199]      608 B          3 drivers/foo/bar.c:12 [foo] func:foo_probe
"""


def test_the_real_sample_gives_its_ten_tags() -> None:
    snap = read_allocinfo(str(SAMPLE))
    assert snap.version == "show_mem" and snap.partial
    assert len(snap.records) == 10
    first = snap.records[0]
    assert first.site.tag == "mm/slub.c:3347 func:alloc_slab_page"
    assert first.calls == 1079
    assert first.bytes == round(6.65 * 2**20)
    assert int(first.extras[ROUNDING_KEY]) == int(0.005 * 2**20)  # 3 significant digits
    kernfs = next(r for r in snap.records if r.site.function == "__kernfs_new_node")
    assert (kernfs.calls, kernfs.site.line) == (9810, 665)
    assert "only the top 10 tags" in snap.warnings[0] and ":343:" in snap.warnings[0]


@pytest.mark.parametrize(
    "prefix",
    [
        "",  # dmesg -t
        "[   14.784977] ",
        "[Fri Dec  4 22:02:03 2026] ",  # dmesg -T
        "Dec 04 22:02:03 guest kernel: ",  # journalctl -k
        "<4>[   14.784977] ",  # /dev/kmsg style
    ],
)
def test_log_prefixes(prefix: str) -> None:
    text = "".join(prefix + line.split("] ", 1)[1] + "\n" for line in BLOCK.splitlines())
    (block,) = parse_blocks(text, "log")
    assert block.profiling == "on"
    assert [r.bytes for r in block.records] == [round(6.65 * 2**20), 914 * 1024, 608]
    assert block.records[2].site.module == "foo"


def test_gzip_and_older_header_and_several_blocks(tmp_path: Path) -> None:
    old = BLOCK.replace(" (profiling is currently turned on)", "")
    newer = BLOCK.replace("1079", "2000")
    text = old + "[   20.0] some other message\n" + newer
    p = tmp_path / "kern.log.gz"
    p.write_bytes(gzip.compress(text.encode()))
    snap = read_allocinfo(str(p))
    assert snap.records[0].calls == 2000  # the last block wins
    assert any("2 show_mem blocks" in w for w in snap.warnings)
    blocks = parse_blocks(text, "x")
    assert blocks[0].profiling is None and len(blocks[0].records) == 3


def test_a_message_inside_the_block_ends_it() -> None:
    text = BLOCK.splitlines()
    text.insert(2, "[   14.785] eth0: link up")
    (block,) = parse_blocks("\n".join(text), "log")
    assert len(block.records) == 1


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("    6.65 MiB   abc mm/slub.c:3347 func:alloc_slab_page", "malformed"),
        ("    99999999999 EiB  1 mm/slub.c:3 func:f", "out of the range"),
    ],
)
def test_bad_lines_name_file_and_line(line: str, why: str) -> None:
    text = "Memory allocations:\n" + line + "\n"
    with pytest.raises(InputError, match=rf"^log:2: .*{why}"):
        parse_kernel_log(text.encode(), "log")


def test_a_log_without_a_block_is_refused() -> None:
    with pytest.raises(InputError, match="no show_mem 'Memory allocations' block"):
        parse_kernel_log(b"Memory allocations: none here\n", "dmesg.txt")


def _snap(records: Any, partial: bool = False) -> AllocinfoSnapshot:
    return AllocinfoSnapshot(version="2.0", records=records, source="s", partial=partial)


def test_diff_against_full_allocinfo_compares_only_listed_tags(fixtures_dir: Path) -> None:
    oom = read_allocinfo(str(SAMPLE))
    full = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    d = diff_snapshots(oom, full)
    assert len(d.changes) == 10 and d.count("new") == 0  # 2,900 unlisted tags are not "new"
    assert d.a.tags == d.b.tags == 10
    assert d.b.bytes == sum(c.bytes_b for c in d.changes) < full.total_bytes
    assert not d.kernels_differ  # "show_mem" is not a kernel version
    assert d.notes and "A lists only 10 tags" in d.notes[0]
    # alloc_large_system_hash: 2.30 MiB printed, exact in the file; within rounding = same
    hashes = next(c for c in d.changes if c.site.function == "alloc_large_system_hash")
    assert hashes.status == "same" and hashes.delta_bytes != 0


def test_cli_top_and_diff_read_a_kernel_log(cli: Any, fixtures_dir: Path) -> None:
    rc, out, err = cli("top", "--file", str(SAMPLE), "--json")
    assert rc == 0, err
    assert "show_mem" in out and "alloc_slab_page" in out
    rc, out, err = cli("diff", str(SAMPLE), str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    assert rc == 0, err
    assert "only those are compared" in err and "0 new" in out
