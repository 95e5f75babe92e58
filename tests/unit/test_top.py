"""``allocscope top`` on saved allocinfo: ranking, filters, roll-ups, formats, errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.allocinfo import parse_allocinfo_text
from allocscope.collector.containers import container_kind
from allocscope.collector.rollup import Filters, container_group, normalize_path, rollup
from allocscope.collector.subsystem import default_map

SAMPLE = (  # the kernel ends tag lines with a space
    "allocinfo - version: 2.0\n"
    "#     <size>  <calls> <tag info>\n"
    "     8388608     2048 mm/slub.c:3347 func:alloc_slab_page accurate:no \n"
    "     4194304     1024 fs/ext4/super.c:1395 func:ext4_alloc_inode \n"
    "     2097152      512 net/core/skbuff.c:600 func:kmalloc_reserve \n"
    "     1048576     9000 lib/xarray.c:378 func:xas_alloc \n"
    "      524288      128 drivers/net/virtio_net.c:100 [virtio_net] func:add_recvbuf \n"
    "       65536       16 ./include/linux/vmalloc.h:189 func:vmalloc_huge \n"
    "       -4096       -1 mm/slub.c:3345 func:alloc_slab_page \n"
    "           0        0 init/main.c:1433 func:do_initcalls \n"
    "       32768        8 fs/binfmt_elf.c:1617 func:fill_files_note \n"
    "       32768        8 fs/binfmt_elf.c:1617 func:fill_files_note \n"
)
SAMPLE_BYTES = 8388608 + 4194304 + 2097152 + 1048576 + 524288 + 65536 - 4096 + 0 + 65536
SAMPLE_CALLS = 2048 + 1024 + 512 + 9000 + 128 + 16 - 1 + 0 + 16


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    p = tmp_path / "allocinfo.txt"
    p.write_text(SAMPLE)
    return p


def top_json(cli: Any, *args: str) -> dict[str, Any]:
    rc, out, err = cli("top", *args, "--json")
    assert rc == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_json_totals_and_fields(cli: Any, sample: Path) -> None:
    doc = top_json(cli, "--file", str(sample))
    assert doc["totals"]["bytes"] == SAMPLE_BYTES
    assert doc["totals"]["calls"] == SAMPLE_CALLS
    assert doc["version"] == "2.0"
    sites = doc["sites"]
    assert sum(s["bytes"] for s in sites) == SAMPLE_BYTES  # --json shows all rows by default
    first = sites[0]
    assert {
        k: first[k]
        for k in ("bytes", "calls", "file", "line", "module", "function", "accurate", "subsystem")
    } == {
        "bytes": 8388608,
        "calls": 2048,
        "file": "mm/slub.c",
        "line": 3347,
        "module": "",
        "function": "alloc_slab_page",
        "accurate": False,
        "subsystem": "(slab pages: container)",  # a container: never mm's own memory
    }
    by_fn = {s["function"]: s for s in sites}
    assert by_fn["add_recvbuf"]["module"] == "virtio_net"
    assert by_fn["add_recvbuf"]["subsystem"] == "net"
    assert by_fn["ext4_alloc_inode"]["subsystem"] == "fs/ext4"
    assert by_fn["vmalloc_huge"]["subsystem"] == "mm"  # ./include/... normalized
    # The duplicated tag (a file compiled twice) is one site holding both.
    assert by_fn["fill_files_note"]["bytes"] == 65536 and by_fn["fill_files_note"]["tags"] == 2


def test_sorting(cli: Any, sample: Path) -> None:
    by_bytes = [s["bytes"] for s in top_json(cli, "--file", str(sample))["sites"]]
    assert by_bytes == sorted(by_bytes, reverse=True)
    by_calls = [s["calls"] for s in top_json(cli, "--file", str(sample), "-s", "calls")["sites"]]
    assert by_calls == sorted(by_calls, reverse=True) and by_calls[0] == 9000
    names = [s["key"] for s in top_json(cli, "--file", str(sample), "-s", "name")["sites"]]
    assert names == sorted(names)


def test_limit_and_min_bytes_keep_totals(cli: Any, sample: Path) -> None:
    doc = top_json(cli, "--file", str(sample), "-n", "2")
    assert len(doc["sites"]) == 2 and doc["totals"]["bytes"] == SAMPLE_BYTES
    assert doc["shown"]["bytes"] == 8388608 + 4194304
    doc = top_json(cli, "--file", str(sample), "-m", "1M")
    assert [s["bytes"] for s in doc["sites"]] == [8388608, 4194304, 2097152, 1048576]
    doc = top_json(cli, "--file", str(sample), "--min-bytes", "2M")
    assert len(doc["sites"]) == 3


def test_filters(cli: Any, sample: Path) -> None:
    doc = top_json(cli, "--file", str(sample), "--function", "alloc_slab*")
    assert {s["function"] for s in doc["sites"]} == {"alloc_slab_page"}
    assert doc["totals"]["bytes"] == 8388608 - 4096  # totals follow the filter
    doc = top_json(cli, "--file", str(sample), "--path", "fs/**")
    assert {s["file"] for s in doc["sites"]} == {"fs/ext4/super.c", "fs/binfmt_elf.c"}
    doc = top_json(cli, "--file", str(sample), "--module", "virtio*")
    assert [s["function"] for s in doc["sites"]] == ["add_recvbuf"]
    doc = top_json(cli, "--file", str(sample), "--module", "vmlinux", "--path", "net/*")
    assert doc["sites"] == []  # net/* is one level: net/core/skbuff.c does not match
    doc = top_json(cli, "--file", str(sample), "--path", "net/**", "--path", "lib/*")
    assert {s["function"] for s in doc["sites"]} == {"kmalloc_reserve", "xas_alloc"}


@pytest.mark.parametrize("by", ["function", "file", "module", "subsystem"])
def test_rollups_sum_to_totals(cli: Any, sample: Path, by: str) -> None:
    doc = top_json(cli, "--file", str(sample), "--by", by)
    assert "sites" not in doc
    groups = doc["groups"]
    assert sum(g["bytes"] for g in groups) == SAMPLE_BYTES
    assert sum(g["calls"] for g in groups) == SAMPLE_CALLS
    assert sum(g["tags"] for g in groups) == 10
    keys = {g["key"] for g in groups}
    expected = {
        "function": {
            "alloc_slab_page",
            "ext4_alloc_inode",
            "kmalloc_reserve",
            "xas_alloc",
            "add_recvbuf",
            "vmalloc_huge",
            "do_initcalls",
            "fill_files_note",
        },
        "module": {"vmlinux", "virtio_net"},
        # slab pages are a container of every subsystem's objects: their own row, not mm's
        "subsystem": {"(slab pages: container)", "mm", "fs/ext4", "net", "lib", "init", "fs"},
    }.get(by)
    if expected is not None:
        assert keys == expected


def test_rollup_independent_of_cli(fixtures_dir: Path) -> None:
    """Subsystem roll-up of the real fixture equals a dict-based sum over the records."""
    snap = parse_allocinfo_text((fixtures_dir / "allocinfo-6.12-tmpfs-write.txt").read_text())
    want: dict[str, int] = defaultdict(int)
    for r in snap.records:
        kind = container_kind(r.site)
        key = container_group(kind) if kind else None
        want[key or default_map().classify(normalize_path(r.site.file), r.site.function)] += r.bytes
    got = rollup(snap.records, by="subsystem")
    assert {row.key: row.bytes for row in got.rows} == dict(want)
    assert got.rows[0].key == "mm"  # a tmpfs write: page cache and slab dominate


def test_function_glob_matches_clone_suffix() -> None:
    snap = parse_allocinfo_text(
        "   4096 1 mm/a.c:1 func:xas_alloc.constprop.0\n   4096 1 mm/a.c:2 func:xas_allocx\n"
    )
    r = rollup(snap.records, filters=Filters.of(functions=["xas_alloc"]))
    assert [row.site.function for row in r.rows if row.site] == ["xas_alloc.constprop.0"]
    r = rollup(snap.records, by="function")
    assert {row.key for row in r.rows} == {"xas_alloc", "xas_allocx"}


def test_table_has_totals_row_and_human_units(cli: Any, sample: Path) -> None:
    rc, out, err = cli("top", "--file", str(sample), "-n", "3")
    assert rc == 0, err
    lines = out.splitlines()
    assert "allocinfo 2.0" in lines[0]
    assert "8.0M*" in out and "mm/slub.c:3347 func:alloc_slab_page" in out
    total = next(ln for ln in lines if "total (10 tags)" in ln)
    assert total.split()[0] == "15.6M"
    assert "3 of 9 rows shown" in out
    assert "accurate:no" in out  # the footnote for the * mark
    rc, out, _ = cli("top", "--file", str(sample), "-n", "1", "--exact")
    assert "8388608*" in out and str(SAMPLE_BYTES) in out


def test_csv(cli: Any, sample: Path) -> None:
    rc, out, err = cli("top", "--file", str(sample), "--csv")
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sum(int(r["bytes"]) for r in rows) == SAMPLE_BYTES
    assert rows[0]["function"] == "alloc_slab_page" and rows[0]["accurate"] == "no"
    rc, out, _ = cli("top", "--file", str(sample), "--csv", "--by", "subsystem")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["subsystem"] == "(slab pages: container)"
    assert sum(int(r["bytes"]) for r in rows) == SAMPLE_BYTES


def test_stdin_and_gzip(
    cli: Any, sample: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SAMPLE.encode())))
    assert top_json(cli, "--file", "-")["totals"]["bytes"] == SAMPLE_BYTES
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(SAMPLE.encode()))
    assert top_json(cli, "--file", str(gz))["totals"]["bytes"] == SAMPLE_BYTES


def test_subsystems_override(cli: Any, sample: Path, tmp_path: Path) -> None:
    toml = tmp_path / "subs.toml"
    toml.write_text('[[rule]]\npath = "lib/xarray.c"\nsubsystem = "mm/xarray"\n')
    doc = top_json(cli, "--file", str(sample), "--by", "subsystem", "--subsystems", str(toml))
    keys = {g["key"]: g["bytes"] for g in doc["groups"]}
    assert keys["mm/xarray"] == 1048576 and "lib" not in keys
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\n")
    rc, out, err = cli("top", "--file", str(sample), "--subsystems", str(bad))
    assert rc == 2 and err.startswith(f"allocscope: error: {bad}: bad TOML")


def test_malformed_input_one_line_error(cli: Any, tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(SAMPLE.replace("lib/xarray.c:378", "lib/xarray.c"))
    rc, out, err = cli("top", "--file", str(p))
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith(f"allocscope: error: {p}:6: not an allocinfo line")
    assert "Traceback" not in err
    rc, out, err = cli("top", "--file", str(p), "--lenient", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["totals"]["bytes"] == SAMPLE_BYTES - 1048576
    assert "skipped 1 malformed line" in err


def test_missing_file_and_bad_flags(cli: Any, tmp_path: Path) -> None:
    rc, _, err = cli("top", "--file", str(tmp_path / "nope"))
    assert rc == 2 and "no such file" in err and "Traceback" not in err
    rc, _, err = cli("top", "--file", str(tmp_path / "nope"), "--workload", "open-close")
    assert rc == 2 and "--workload needs --live" in err
    with pytest.raises(SystemExit):
        cli("top", "-m", "lots")


def test_no_allocinfo_suggests_live(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import allocscope.cli.top as top

    monkeypatch.setattr(top, "PROC_ALLOCINFO", str(tmp_path / "allocinfo"))
    rc, out, err = cli("top")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "--live" in err and "--file" in err


def test_reads_a_snapshot(cli: Any, sample: Path, tmp_path: Path) -> None:
    snap = tmp_path / "s.parquet"
    rc, _, err = cli("snapshot", "-o", str(snap), "--file", str(sample))
    assert rc == 0, err
    a = top_json(cli, "--file", str(sample))
    b = top_json(cli, "--file", str(snap))
    assert a["totals"] == b["totals"] and a["sites"] == b["sites"]


def test_live_path_is_wired(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """--live hands its flags to top_live and renders what comes back (no BPF here)."""
    import types

    from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
    from allocscope.collector.site import Site

    seen: dict[str, Any] = {}

    def capture(
        duration: float,
        *,
        frees: bool = True,
        exact_frees: bool = False,
        pid: int | None = None,
        workload: str | None = None,
        log: Any = None,
    ) -> Any:
        seen.update(
            duration=duration, frees=frees, exact_frees=exact_frees, pid=pid, workload=workload
        )
        assert callable(log)  # the "tracing" line goes to stderr once attached
        recs = [
            AllocRecord(Site("", 0, "alloc_empty_file"), 4096, 16),
            AllocRecord(Site("", 0, "getname_flags", ""), 8192, 2),
        ]
        return types.SimpleNamespace(
            snapshot=AllocinfoSnapshot(None, recs, "live"),
            bytes_kind="allocated bytes",
            duration=duration,
            events=18,
            lost=0,
            backend="raw_tracepoint",
            interrupted=False,
            host=None,
            result=None,
        )

    fake = types.ModuleType("allocscope.collector.top_live")
    fake.capture_top_live = capture  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "allocscope.collector.top_live", fake)
    import allocscope.collector as pkg

    monkeypatch.setattr(pkg, "top_live", fake, raising=False)
    rc, out, err = cli("top", "--live", "2", "--workload", "open-close", "-n", "5", "--no-frees")
    assert rc == 0, err
    assert seen == {
        "duration": 2.0,
        "frees": False,
        "exact_frees": False,
        "pid": None,
        "workload": "open-close",
    }
    assert "backend raw_tracepoint" in out and "18 events" in out and "0 lost" in out
    assert "getname_flags" in out and "alloc_empty_file" in out
    assert out.index("getname_flags") < out.index("alloc_empty_file")
    assert "SUBSYSTEM" not in out  # a live capture has no source files to classify
    doc = top_json(cli, "--live", "1")
    assert doc["live"]["events"] == 18 and doc["totals"]["bytes"] == 12288
    assert {site["subsystem"] for site in doc["sites"]} == {"unknown"}


@pytest.mark.parametrize("extra", [[], ["-i", "1", "--live", "1"]])
def test_output_needs_one_live_window(cli: Any, tmp_path: Path, extra: list[str]) -> None:
    rc, _, err = cli("top", *extra, "-o", str(tmp_path / "x.json"))
    assert rc == 2 and "-o needs --live SECONDS" in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_help_text_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from allocscope.cli import main

    for verb in ("top", "snapshot", "diff"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        tail = out[out.rindex("\nexamples:\n") :]
        assert out.rstrip().endswith(tail.rstrip())  # the examples close the help
        assert tail.count("  allocscope ") >= 3


ENTRY = "from allocscope.cli import entry; entry()"  # what the console script runs


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: one line on stderr, exit 2."""
    import subprocess

    bad = tmp_path / "bad.txt"
    bad.write_text(
        "allocinfo - version: 2.0\n  1 1 a.c:1 func:a\n\x00garbage\n  1 1 a.c:2 func:b\n"
    )
    for args in (
        ["top", "--file", str(bad)],
        ["diff", str(bad), str(bad)],
        ["snapshot", "-o", str(tmp_path / "s.parquet"), "--file", str(bad)],
    ):
        r = subprocess.run(
            [sys.executable, "-c", ENTRY, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        assert r.stderr.startswith(f"allocscope: error: {bad}:3: not an allocinfo line")
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
