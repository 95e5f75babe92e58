"""allocinfo "1.1": the accumulative-calls column of kernels carrying David Wang's patch
(lib/alloc_tag: Add accumulative call counter, linux-mm 2024): read on every path, kept as
an extra, shown by ``top`` as a column only when present. The sample file is hand-written
from the patch's format string (``"%12lli %8llu "``, the tag, ``" %llu\\n"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scanners import python_only

from allocscope.collector.allocinfo import (
    CUMULATIVE_KEY,
    AllocinfoSnapshot,
    parse_allocinfo,
    parse_allocinfo_bytes,
    parse_allocinfo_text,
    read_allocinfo,
)
from allocscope.collector.host import HostMetadata
from allocscope.collector.rollup import rollup
from allocscope.collector.snapshot import read_snapshot, write_snapshot
from allocscope.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = DATA / "allocinfo-1.1-accumulative.txt"
HEAD = "allocinfo - version: 1.1\n#     <size>  <calls> <tag info> <accumulative calls>\n"
U64_MAX = (1 << 64) - 1


def last_fields(text: str) -> list[int | None]:
    """The accumulative column by str.split(), independent of the parser's regexes."""
    out: list[int | None] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 4 or line.startswith(("#", "allocinfo")):
            continue
        out.append(int(f[-1]) if f[-1].isdigit() else None)
    return out


def every_path(text: str, lenient: bool = False) -> list[AllocinfoSnapshot]:
    """The same text through the line parser, the whole-text and bytes fast paths, with and
    without the compiled scanner (which declines 1.1 lines)."""
    snaps = [
        parse_allocinfo(text.splitlines(keepends=True), "t", lenient=lenient),
        parse_allocinfo_text(text, "t", lenient=lenient),
        parse_allocinfo_bytes(text.encode(), "t", lenient=lenient),
    ]
    with python_only():
        snaps.append(parse_allocinfo_text(text, "t", lenient=lenient))
        snaps.append(parse_allocinfo_bytes(text.encode(), "t", lenient=lenient))
    return snaps


def test_sample_file_is_read_with_its_column_on_every_path() -> None:
    text = SAMPLE.read_text()
    want = last_fields(text)
    assert want[2] == U64_MAX  # the file holds the u64 edge
    for snap in every_path(text):
        assert snap.version == "1.1" and not snap.warnings
        assert [r.cumulative_calls for r in snap.records] == want
        assert snap.records[0].site.function == "__pud_alloc"
        assert snap.records[2].site.module == "foo"
        assert snap.records[5].bytes == -4096  # signed bytes still read
        assert snap.columns is None  # the compiled scanner left 1.1 to Python


def test_missing_column_is_none_not_zero() -> None:
    """v2 of the patch prints the 1.1 header with the option off: no column at all; a 1.0
    line mixed in (or a tag printed before the option) has none either."""
    text = HEAD + (
        "       45056       11 mm/memory.c:6939 func:__pud_alloc \n"
        "        4096        1 a/b.c:1 func:f accurate:no 12\n"
    )
    for snap in every_path(text):
        assert [r.cumulative_calls for r in snap.records] == [None, 12]
        assert snap.records[0].extras == {}
        assert snap.records[1].extras == {"accurate": "no", CUMULATIVE_KEY: "12"}
        assert not snap.records[1].accurate
    off = every_path(HEAD + "  1 1 a/b.c:1 func:f \n")[0]
    r = rollup(off.records)
    assert r.total_cumulative_calls is None and r.rows[0].cumulative_calls is None


def test_huge_numbers_on_every_path() -> None:
    """u64 max is read exactly (%llu); one more, or 25 digits, is a file:line error."""
    for snap in every_path(HEAD + f" 1 1 a.c:1 func:f {U64_MAX}\n"):
        assert snap.records[0].cumulative_calls == U64_MAX
    for big in (str(U64_MAX + 1), "9" * 25):
        for only_python in (False, True):
            with pytest.raises(InputError, match=r"^t:3: accumulative calls .* out of range"):
                if only_python:
                    with python_only():
                        parse_allocinfo_bytes((HEAD + f" 1 1 a.c:1 func:f {big}\n").encode(), "t")
                else:
                    parse_allocinfo_text(HEAD + f" 1 1 a.c:1 func:f {big}\n", "t")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (" 1 1 a.c:1 func:f -5\n", "unexpected field '-5'"),  # %llu is never negative
        (" 1 1 a.c:1 func:f 12 34\n", "unexpected field '12'"),  # one column, not two
        (" 1 1 a.c:1 func:f 12 accurate:no\n", "unexpected field '12'"),  # last, or nothing
        (" 1 1 a.c:1 func:f 1x\n", "unexpected field '1x'"),
    ],
)
def test_malformed_column_is_a_file_line_error(line: str, why: str) -> None:
    text = HEAD + line + " 2 2 a.c:2 func:g 5\n"
    with pytest.raises(InputError, match=rf"^t:3: {why}"):
        parse_allocinfo(text.splitlines(keepends=True), "t")
    with pytest.raises(InputError, match=rf"^t:3: {why}"):
        parse_allocinfo_text(text, "t")
    with pytest.raises(InputError, match=rf"^t:3: {why}"):
        parse_allocinfo_bytes(text.encode(), "t")
    lenient = every_path(text, lenient=True)
    for snap in lenient:
        assert snap.skipped == 1 and [r.cumulative_calls for r in snap.records] == [5]


def test_top_shows_the_column_only_when_present(cli: Any, tmp_path: Path) -> None:
    code, out, _ = cli("top", "--file", str(SAMPLE))
    assert code == 0
    header = out.splitlines()[1].split()
    assert header[:4] == ["BYTES", "CALLS", "CUM", "CALLS"]
    pud = next(line for line in out.splitlines() if "__pud_alloc" in line)
    assert pud.split()[2] == "1.3k"
    assert "accumulative counter" in out
    plain = tmp_path / "plain.txt"
    plain.write_text(
        "".join(
            line.rsplit(" ", 1)[0] + " \n" if line[:1] == " " else line
            for line in SAMPLE.read_text().splitlines(keepends=True)
        )
    )
    code, out10, _ = cli("top", "--file", str(plain))
    assert code == 0 and "CUM CALLS" not in out10 and "accumulative" not in out10


def test_json_and_csv_carry_the_column(cli: Any) -> None:
    code, out, _ = cli("top", "--file", str(SAMPLE), "--json", "-n", "0")
    doc = json.loads(out)
    want = sum(x for x in last_fields(SAMPLE.read_text()) if x is not None)
    assert doc["totals"]["cumulative_calls"] == want
    code, out, _ = cli("top", "--file", str(SAMPLE), "--json")
    sites = {s["function"]: s for s in json.loads(out)["sites"]}
    assert sites["foo_probe"]["cumulative_calls"] == U64_MAX
    assert sites["alloc_slab_page"]["cumulative_calls"] == 9813
    code, out, _ = cli("top", "--file", str(SAMPLE), "--by", "subsystem", "--json")
    groups = json.loads(out)["groups"]
    assert sum(g["cumulative_calls"] for g in groups) == want
    code, out, _ = cli("top", "--file", str(SAMPLE), "--csv")
    lines = out.splitlines()
    assert lines[0].endswith(",cumulative_calls")
    assert any(line.endswith(",1290") and "__pud_alloc" in line for line in lines)


def test_snapshot_keeps_the_column(tmp_path: Path) -> None:
    """Kept in the snapshot's extras JSON (a decimal string): no schema change, u64 intact."""
    snap = read_allocinfo(str(SAMPLE))
    host = HostMetadata("h", "6.11.0-accu", "b", 1.0, 2, "cpu", 1 << 30, "1")
    out = tmp_path / "s.parquet"
    write_snapshot(str(out), snap, host)
    back = read_snapshot(str(out))
    assert back.version == "1.1"
    assert [r.cumulative_calls for r in back.records] == [r.cumulative_calls for r in snap.records]
