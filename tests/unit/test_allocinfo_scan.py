"""The compiled allocinfo scanner (collector/_allocinfo_scan.c): built, exact, and declining
what it must leave to the Python paths. Agreement with them on generated input is in
test_allocinfo_hypothesis.py; this file pins the cases that matter by name."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import need
from scanners import python_only

from allocscope.collector import allocinfo
from allocscope.collector.allocinfo import (
    RecordList,
    parse_allocinfo,
    parse_allocinfo_bytes,
    read_allocinfo,
)
from allocscope.collector.host import HostMetadata
from allocscope.collector.snapshot import snapshot_table
from allocscope.errors import InputError

HEAD = "allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n"


@pytest.fixture(autouse=True)
def compiled() -> None:
    """Every test here needs the extension; CI must have built it (setup installs gcc)."""
    need(
        allocinfo.scanner() == "compiled",
        "compiled allocinfo scanner not built (apt install build-essential python3-dev; "
        "pip install -e .)",
    )


def scanned(text: str) -> RecordList | None:
    recs = parse_allocinfo_bytes(text.encode(), "t").records
    return recs if isinstance(recs, RecordList) else None


def test_scanner_takes_real_captures_and_matches_the_line_parser(fixtures_dir: Path) -> None:
    for name in ("allocinfo-6.12-tmpfs-write.txt", "allocinfo-7.3-boot.txt"):
        path = fixtures_dir / name
        snap = read_allocinfo(str(path))
        assert snap.columns is not None, f"{name}: the compiled path declined a real capture"
        slow = parse_allocinfo(path.read_text().splitlines(keepends=True), name)
        assert list(snap.records) == slow.records
        assert snap.total_bytes == sum(r.bytes for r in slow.records)
        assert snap.total_calls == sum(r.calls for r in slow.records)


def test_columns_hold_every_field() -> None:
    text = HEAD + (
        "       -4096       -1 mm/slub.c:7 func:x.constprop.0 \n"
        "         128        2 net/x/y.c:70 [nf_conntrack] func:nf_ct_alloc accurate:no k:v:w\n"
        "           0        0 a:b.c:9 func:f accurate:no accurate:yes"
    )
    recs = scanned(text)
    assert recs is not None and len(recs) == 3
    c = recs.columns
    assert c.numbers("nbytes") == [-4096, 128, 0]
    assert c.numbers("calls") == [-1, 2, 0]
    assert c.numbers("line") == [7, 70, 9]
    assert c.file.to_list() == ["mm/slub.c", "net/x/y.c", "a:b.c"]
    assert c.module.to_list() == ["", "nf_conntrack", ""]
    assert c.function.to_list() == ["x.constprop.0", "nf_ct_alloc", "f"]
    assert c.extras.to_list() == ["", "accurate:no k:v:w", "accurate:no accurate:yes"]
    assert list(c.accurate) == [1, 0, 1]  # the last accurate: wins, as in a dict
    assert [r.accurate for r in recs] == [True, False, True]
    assert recs[1].extras == {"accurate": "no", "k": "v:w"}


@pytest.mark.parametrize(
    ("why", "line"),
    [
        ("19 digits may overflow int64", " 1234567890123456789 1 a.c:1 func:f\n"),
        ("a NUMA sub-line", " 1 1 a.c:1 func:f\n  nid0 1 1\n"),
        ("an excerpt's ...", " 1 1 a.c:1 func:f\n...\n"),
        ("a blank line", " 1 1 a.c:1 func:f\n\n 1 1 a.c:2 func:g\n"),
        ("a carriage return", " 1 1 a.c:1 func:f\r\n"),
        ("non-ASCII", " 1 1 a.c:1 func:f\u00e9\n"),
        ("a truncated last line", " 1 1 a.c:1 func:f\n 1 1 a.c:2 fu"),
    ],
)
def test_scanner_declines_and_the_python_path_decides(why: str, line: str) -> None:
    text = HEAD + line
    assert scanned(text) is None, why
    with python_only():
        want = parse_allocinfo_bytes(text.encode(), "t", lenient=True)
    assert parse_allocinfo_bytes(text.encode(), "t", lenient=True) == want


def test_numbers_no_kernel_prints_are_refused_on_every_path() -> None:
    """Past s64 (bytes, calls) or int32 (line): refused with file:line, compiled or not."""
    for line in (
        " 12345678901234567890 3 a.c:1 func:f\n",
        " 1 123456789012345678901 a.c:1 func:f\n",
        " 1 1 a.c:2147483648 func:f\n",
    ):
        for only_python in (False, True):
            with pytest.raises(InputError, match=r"^t:3: .* out of range"):
                if only_python:
                    with python_only():
                        parse_allocinfo_bytes((HEAD + line).encode(), "t")
                else:
                    parse_allocinfo_bytes((HEAD + line).encode(), "t")
    edge = parse_allocinfo_bytes((HEAD + f" {(1 << 63) - 1} 3 a.c:2147483647 func:f\n").encode())
    assert edge.records[0].bytes == (1 << 63) - 1 and edge.records[0].site.line == (1 << 31) - 1


def test_a_racing_negative_calls_sum_printed_unsigned_is_read_back_signed() -> None:
    """The kernel prints calls with %llu (lib/alloc_tag.c alloc_tag_to_text), and the per-CPU
    sum can be read below zero mid-race: -1 prints as 2^64 - 1. That is a kernel's number, read
    as -1 as the ioctl reader reads the same counter (it used to be refused as out of range,
    failing a whole snapshot); 2^64 itself is not one."""
    for only_python in (False, True):
        text = (HEAD + f" -4096 {(1 << 64) - 1} a.c:1 func:f\n").encode()
        if only_python:
            with python_only():
                snap = parse_allocinfo_bytes(text, "t")
        else:
            snap = parse_allocinfo_bytes(text, "t")
        assert (snap.records[0].bytes, snap.records[0].calls) == (-4096, -1)
    with pytest.raises(InputError, match=r"^t:3: calls 18446744073709551616 is out of range"):
        parse_allocinfo_bytes((HEAD + f" 1 {1 << 64} a.c:1 func:f\n").encode(), "t")


def test_snapshot_from_columns_equals_snapshot_from_records(fixtures_dir: Path) -> None:
    host = HostMetadata("h", "7.3.0", "b", 1.0, 2, "cpu", 1 << 30, "1")
    for name in ("allocinfo-6.12-tmpfs-write.txt", "allocinfo-7.3-boot.txt"):
        path = str(fixtures_dir / name)
        fast = read_allocinfo(path)
        with python_only():
            slow = read_allocinfo(path)
        assert fast.columns is not None and slow.columns is None
        slow.taken_at = fast.taken_at
        a, b = snapshot_table(fast, host), snapshot_table(slow, host)
        assert a.schema == b.schema
        assert a.equals(b), name
        assert pc.sum(a["bytes"]).as_py() == fast.total_bytes


def test_strings_rejects_bad_offsets() -> None:
    scan = allocinfo._allocinfo_scan
    assert scan is not None
    off = memoryview(bytearray(12)).cast("i")
    off[1], off[2] = 3, 2  # decreasing
    with pytest.raises(ValueError):
        scan.strings(off.tobytes(), b"abc")
    off[1], off[2] = 1, 9  # past the data
    with pytest.raises(ValueError):
        scan.strings(off.tobytes(), b"abc")
