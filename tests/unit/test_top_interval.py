"""``top --interval``: deltas between reads, sorting, and the plain (pipe) output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.allocinfo import parse_allocinfo_text
from allocscope.collector.top_interval import Watcher

HEAD = "allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n"
READS = [
    "  8192  2 lib/xarray.c:378 func:xas_alloc\n  4096 1 fs/dcache.c:1 func:__d_alloc\n"
    "  100 1 drivers/gone.c:5 [gone] func:gone_probe\n",
    " 12288  3 lib/xarray.c:378 func:xas_alloc\n  4096 1 fs/dcache.c:1 func:__d_alloc\n"
    "  65536 16 mm/shmem.c:9 func:shmem_alloc_folio\n",
]


def reader(texts: list[str]) -> Any:
    it = iter(texts)
    return lambda: parse_allocinfo_text(HEAD + next(it), "fake")


def clock(times: list[float]) -> Any:
    it = iter(times)
    return lambda: next(it)


def test_deltas_new_and_gone_keys() -> None:
    w = Watcher(reader(READS), clock=clock([10.0, 12.0]))
    first = w.step()
    assert first.seconds == 0.0 and first.index == 0
    assert all(r.delta_bytes == 0 for r in first.rows)  # nothing to compare with yet
    second = w.step()
    assert second.seconds == 2.0 and second.index == 1
    rows = {r.key: r for r in second.rows}
    assert rows["lib/xarray.c:378 func:xas_alloc"].delta_bytes == 4096
    assert rows["lib/xarray.c:378 func:xas_alloc"].rate(second.seconds) == 2048.0
    assert rows["mm/shmem.c:9 func:shmem_alloc_folio"].delta_bytes == 65536  # new: from 0
    gone = rows["drivers/gone.c:5 [gone] func:gone_probe"]  # module unloaded: shown once
    assert (gone.bytes, gone.delta_bytes, gone.delta_calls) == (0, -100, -1)
    assert second.delta_bytes == 4096 + 65536 - 100
    assert [r.key for r in second.sorted_rows("delta", 2)] == [
        "mm/shmem.c:9 func:shmem_alloc_folio",
        "lib/xarray.c:378 func:xas_alloc",
    ]
    assert second.sorted_rows("dcalls", 1)[0].key == "mm/shmem.c:9 func:shmem_alloc_folio"
    assert second.sorted_rows("name", 1)[0].key.startswith("drivers/gone.c")
    with pytest.raises(ValueError, match="unknown sort"):
        second.sorted_rows("colour")


def test_rolled_up_by_subsystem() -> None:
    w = Watcher(reader(READS), by="subsystem", clock=clock([0.0, 1.0]))
    w.step()
    rows = {r.key: r for r in w.step().rows}
    assert rows["lib"].delta_bytes == 4096 and rows["mm"].delta_bytes == 65536


def _write(path: Path, body: str) -> None:
    path.write_text(HEAD + body)


def test_cli_plain_tables_and_json_lines(cli: Any, tmp_path: Path) -> None:
    f = tmp_path / "allocinfo.txt"
    _write(f, READS[0])
    rc, out, err = cli("top", "--file", str(f), "-i", "0.05", "--iterations", "3", "-s", "rate")
    assert rc == 0, err
    assert out.count("ΔBYTES/S") == 3 and "refresh 3" in out and "first read" in out
    rc, out, err = cli("top", "--file", str(f), "-i", "0.05", "--iterations", "2", "--json")
    assert rc == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["refresh"] for d in docs] == [0, 1]
    assert docs[1]["totals"]["delta_bytes"] == 0 and docs[1]["seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iterations", "2"], "--iterations needs --interval"),
        (["-s", "rate"], "needs --interval"),
        (["-i", "1", "--file", "-"], "stdin cannot be read twice"),
        (["-i", "1", "--live"], "--live and --file are exclusive"),
        (["-i", "1", "--csv"], "not --csv"),
    ],
)
def test_usage_errors(cli: Any, fixtures_dir: Path, args: list[str], message: str) -> None:
    if "--file" not in args:
        args = [*args, "--file", str(fixtures_dir / "allocinfo-7.3-boot.txt")]
    rc, out, err = cli("top", *args)
    assert rc != 0 and message in err


def test_allocinfo_11_gives_allocations_per_second() -> None:
    """1.1's accumulative calls turn into allocations per second (freed ones included), a
    column only when the file has them; a tag new since the last read has no rate yet."""
    from allocscope.reports.top_interval import frame_json, frame_table

    head = "allocinfo - version: 1.1\n#     <size>  <calls> <tag info> <accumulative calls>\n"
    texts = [
        " 8192 2 lib/xarray.c:378 func:xas_alloc 1000\n 4096 1 fs/dcache.c:1 func:__d_alloc 7\n",
        " 8192 2 lib/xarray.c:378 func:xas_alloc 1500\n 4096 1 fs/dcache.c:1 func:__d_alloc 7\n"
        " 64 1 mm/new.c:1 func:fresh 9\n",
    ]
    it = iter(texts)
    w = Watcher(lambda: parse_allocinfo_text(head + next(it), "f"), clock=clock([0.0, 2.0]))
    first = w.step()
    assert all(r.delta_cumulative is None for r in first.rows)
    f = w.step()
    by = {r.key.split(" func:")[0]: r for r in f.rows}
    # live bytes and calls did not move, but 500 allocations came and went in 2 s
    assert by["lib/xarray.c:378"].delta_calls == 0
    assert by["lib/xarray.c:378"].calls_rate(f.seconds) == 250.0
    assert by["fs/dcache.c:1"].calls_rate(f.seconds) == 0.0
    assert by["mm/new.c:1"].calls_rate(f.seconds) is None
    table = frame_table(f, "bytes", None)
    assert "ALLOCS/S" in table.splitlines()[0] and "250/s" in table
    rows = {r["key"].split(" func:")[0]: r for r in frame_json(f, "bytes", None)["rows"]}
    assert rows["lib/xarray.c:378"]["allocs_per_second"] == 250.0
    assert "allocs_per_second" not in rows["mm/new.c:1"]
    plain = Watcher(reader(READS), clock=clock([0.0, 1.0]))
    plain.step()
    assert "ALLOCS/S" not in frame_table(plain.step(), "bytes", None)
