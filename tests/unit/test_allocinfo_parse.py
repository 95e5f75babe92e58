"""The allocinfo parser on real captures and on every quirk the kernel (or a human) produces."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest

from allocscope.collector.allocinfo import (
    AllocinfoSnapshot,
    AllocRecord,
    NumaCount,
    parse_allocinfo,
    parse_allocinfo_bytes,
    parse_allocinfo_text,
    read_allocinfo,
)
from allocscope.collector.site import Site
from allocscope.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data"
EXCERPT = DATA / "lpc2024-allocinfo-excerpt.txt"


def independent_sums(text: str) -> tuple[int, int, int]:
    """awk '$1 ~ /^-?[0-9]+$/ {b+=$1; c+=$2; n++}': no regex shared with the parser."""
    b = c = n = 0
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) >= 4 and fields[0].lstrip("-").isdigit():
            b += int(fields[0])
            c += int(fields[1])
            n += 1
    return b, c, n


def both(text: str, source: str = "t", lenient: bool = False) -> AllocinfoSnapshot:
    """Parse with the whole-text fast path and the line parser; they must agree."""
    fast = parse_allocinfo_text(text, source, lenient=lenient)
    slow = parse_allocinfo(text.splitlines(keepends=True), source, lenient=lenient)
    assert fast == slow
    return fast


# ------------------------------------------------------------------ real fixtures


@pytest.mark.parametrize(
    ("name", "version", "min_tags"),
    [("allocinfo-6.12-tmpfs-write.txt", "1.0", 2000), ("allocinfo-7.3-boot.txt", "2.0", 2000)],
)
def test_real_fixture_totals(fixtures_dir: Path, name: str, version: str, min_tags: int) -> None:
    path = fixtures_dir / name
    text = path.read_text()
    snap = read_allocinfo(str(path))
    b, c, n = independent_sums(text)
    assert snap.version == version
    assert len(snap.records) == n >= min_tags
    assert snap.total_bytes == b
    assert snap.total_calls == c
    assert not snap.warnings and not snap.truncated and snap.skipped == 0
    # Every record names a file, a positive line and a function.
    assert all(r.site.file and r.site.line > 0 and r.site.function for r in snap.records)
    assert both(text, str(path)).records == snap.records


def test_real_fixture_accurate_no(fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    text = (fixtures_dir / "allocinfo-7.3-boot.txt").read_text()
    inaccurate = [r for r in snap.records if not r.accurate]
    assert len(inaccurate) == text.count("accurate:no") == 5
    assert all(r.extras == {"accurate": "no"} for r in inaccurate)
    pud = next(r for r in inaccurate if r.site.function == "__pud_alloc")
    assert (pud.bytes, pud.calls, pud.site.file, pud.site.line) == (45056, 11, "mm/memory.c", 6939)


def test_real_fixture_6_12_has_no_extras(fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt"))
    assert all(r.extras == {} and r.accurate for r in snap.records)
    xas = [r for r in snap.records if r.site.function == "xas_alloc"]
    assert xas and all(r.site.file == "lib/xarray.c" for r in xas)


# ------------------------------------------------------------------ hand-written samples

V1 = (  # the kernel ends tag lines with a space
    "allocinfo - version: 1.0\n"
    "#     <size>  <calls> <tag info>\n"
    "           0        0 init/main.c:1311 func:do_initcalls \n"
    "       45056       11 mm/memory.c:6939 func:__pud_alloc \n"
)


def test_version_1_0_with_trailing_space() -> None:
    snap = both(V1)
    assert snap.version == "1.0"
    assert [r.site for r in snap.records] == [
        Site("init/main.c", 1311, "do_initcalls"),
        Site("mm/memory.c", 6939, "__pud_alloc"),
    ]
    assert snap.records[0].bytes == 0 and snap.records[0].calls == 0  # zero lines kept
    assert snap.records[1].bytes == 45056 and snap.records[1].calls == 11


def test_version_2_0_accurate_and_unknown_extras() -> None:
    text = (
        "allocinfo - version: 2.0\n"
        "#     <size>  <calls> <tag info>\n"
        "       45056       11 mm/memory.c:6939 func:__pud_alloc accurate:no \n"
        "        4096        1 mm/x.c:1 func:f accurate:no newkey:42 other: \n"
        "        8192        2 mm/x.c:2 func:g \n"
    )
    snap = both(text)
    assert snap.version == "2.0"
    r0, r1, r2 = snap.records
    assert not r0.accurate and r0.extras == {"accurate": "no"}
    assert r1.extras == {"accurate": "no", "newkey": "42", "other": ""}
    assert r2.accurate and r2.extras == {}


def test_module_tags() -> None:
    text = (
        "allocinfo - version: 1.0\n"
        "        4096        1 drivers/foo/bar.c:12 [foo] func:foo_probe \n"
        "         128        2 net/x/y.c:7 [nf_conntrack] func:nf_ct_alloc accurate:no\n"
    )
    snap = both(text)
    assert snap.records[0].site == Site("drivers/foo/bar.c", 12, "foo_probe", "foo")
    assert snap.records[0].site.key == "drivers/foo/bar.c:12 [foo]"
    assert snap.records[1].site.module == "nf_conntrack"
    assert snap.records[1].extras == {"accurate": "no"}


def test_negative_bytes_and_calls() -> None:
    snap = both(
        "allocinfo - version: 1.0\n   -4096       -1 mm/a.c:1 func:a \n"
        "    8192        2 mm/a.c:2 func:b\n"
    )
    assert (snap.records[0].bytes, snap.records[0].calls) == (-4096, -1)
    assert snap.total_bytes == 4096 and snap.total_calls == 1


def test_numa_sub_lines_attach_to_tag_above() -> None:
    text = (
        "allocinfo - version: 2.0\n"
        "       12288        3 mm/a.c:1 func:a \n"
        "          nid0     8192        2\n"
        "          nid1     4096        1\n"
        "        4096        1 mm/a.c:2 func:b \n"
    )
    snap = both(text)
    assert len(snap.records) == 2
    assert snap.records[0].numa == [NumaCount(0, 8192, 2), NumaCount(1, 4096, 1)]
    assert snap.records[1].numa == []
    assert snap.total_bytes == 12288 + 4096  # sub-lines are not extra tags


def test_truncated_last_line_is_dropped_with_warning() -> None:
    text = V1 + "       4096        1 mm/sl"  # the read stopped mid-line
    snap = both(text)
    assert snap.truncated
    assert len(snap.records) == 2
    assert any("truncated" in w for w in snap.warnings)


def test_a_lone_unterminated_line_is_garbage_not_a_truncated_read() -> None:
    """No header and no record: nothing was being written, it is not allocinfo (such a file
    used to pass as an empty read, exit 0)."""
    for text in ('{"schema": 1, "kind": "who-calls"}', "[" * 1000):
        with pytest.raises(InputError, match="x.txt:1: not an allocinfo line"):
            parse_allocinfo_bytes(text.encode(), "x.txt")


def test_last_line_without_newline_but_complete_is_kept() -> None:
    snap = both(V1 + "        4096        1 mm/a.c:3 func:c")
    assert not snap.truncated and len(snap.records) == 3


def test_malformed_line_in_middle_names_file_and_line() -> None:
    text = V1 + "this is not allocinfo\n        4096        1 mm/a.c:3 func:c \n"
    with pytest.raises(InputError) as ei:
        parse_allocinfo_text(text, "saved.txt")
    assert ei.value.path == "saved.txt" and ei.value.lineno == 5
    assert str(ei.value).startswith("saved.txt:5: ")
    assert "\n" not in str(ei.value)
    with pytest.raises(InputError, match=r"^saved\.txt:5: "):
        parse_allocinfo(text.splitlines(keepends=True), "saved.txt")


def test_malformed_line_lenient_skips_and_counts() -> None:
    text = (
        V1
        + "garbage one\n        4096        1 mm/a.c:3 func:c \nfunc:only\n"
        + ("        1        1 mm/a.c:4 func:d\n")
    )
    snap = both(text, "saved.txt", lenient=True)
    assert snap.skipped == 2
    assert len(snap.records) == 4
    assert any(w.startswith("saved.txt:5:") for w in snap.warnings)
    assert any(w.startswith("saved.txt:7:") for w in snap.warnings)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("  4096 1 mm/a.c:1 func:a notakeyvalue\n", "after func"),
        ("  4096 1 mm/a.c:1 func:a :novalue\n", "after func"),
        ("  4096 mm/a.c:1 func:a\n", "not an allocinfo line"),
        ("  4096 1 mm/a.c func:a\n", "not an allocinfo line"),
        ("  4096 1 mm/a.c:1 a\n", "not an allocinfo line"),
        ("  4x96 1 mm/a.c:1 func:a\n", "not an allocinfo line"),
    ],
)
def test_malformed_shapes(line: str, why: str) -> None:
    text = V1 + line + "        1        1 mm/a.c:4 func:d\n"
    with pytest.raises(InputError, match=rf"^f:5: .*{why}"):
        parse_allocinfo_text(text, "f")


def test_second_header_with_other_version_is_an_error() -> None:
    with pytest.raises(InputError, match=r"^f:5: second header"):
        parse_allocinfo_text(V1 + "allocinfo - version: 2.0\n", "f")


def test_newer_version_warns_and_reads() -> None:
    snap = both("allocinfo - version: 3.1\n   4096 1 mm/a.c:1 func:a\n")
    assert snap.version == "3.1" and len(snap.records) == 1
    assert any("newer" in w for w in snap.warnings)


def test_empty_input_is_an_error() -> None:
    with pytest.raises(InputError, match="empty"):
        parse_allocinfo_text("", "empty.txt")


def test_header_only_is_an_empty_snapshot() -> None:
    snap = both("allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n")
    assert snap.version == "2.0" and snap.records == []


def test_no_header_is_fine() -> None:
    snap = both("   4096 1 mm/a.c:1 func:a\n")
    assert snap.version is None and len(snap.records) == 1


def test_crlf_and_tabs_parse_the_same() -> None:
    snap = both("allocinfo - version: 1.0\r\n\t4096\t1\tmm/a.c:1\tfunc:a\r\n")
    assert snap.records == [AllocRecord(Site("mm/a.c", 1, "a"), 4096, 1)]


def test_seed_excerpt() -> None:
    text = EXCERPT.read_text()
    assert text.startswith("# sort -g -r /proc/allocinfo") and text.rstrip().endswith("...")
    snap = both(text, str(EXCERPT))
    b, c, n = independent_sums(text)
    assert len(snap.records) == n == 29
    assert snap.total_bytes == b and snap.total_calls == c
    assert snap.version is None  # an excerpt has no header
    top = snap.records[0]
    assert (top.bytes, top.calls, top.site.tag) == (
        60944384,
        5287,
        "mm/slub.c:2325 func:alloc_slab_page",
    )


# ------------------------------------------------------------------ sources


def test_gzip_file(tmp_path: Path, fixtures_dir: Path) -> None:
    src = fixtures_dir / "allocinfo-7.3-boot.txt"
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert read_allocinfo(str(gz)).records == read_allocinfo(str(src)).records


def test_stdin_plain_and_gzip(monkeypatch: pytest.MonkeyPatch) -> None:
    for payload in (V1.encode(), gzip.compress(V1.encode())):
        fake = io.TextIOWrapper(io.BytesIO(payload))
        monkeypatch.setattr(sys, "stdin", fake)
        snap = read_allocinfo("-")
        assert snap.source == "<stdin>" and len(snap.records) == 2


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_allocinfo(str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="cannot read"):
        read_allocinfo(str(tmp_path))  # a directory
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_allocinfo(str(bad))


def test_binary_garbage_is_a_located_error(tmp_path: Path) -> None:
    p = tmp_path / "bin"
    p.write_bytes(b"allocinfo - version: 1.0\n\x00\x01\xff\xfe\n  1 1 a.c:1 func:a\n")
    with pytest.raises(InputError, match=rf"^{p}:2: "):
        read_allocinfo(str(p))
