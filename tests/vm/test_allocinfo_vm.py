"""The allocinfo reader and ``top``/``snapshot`` on a real profiling kernel's /proc/allocinfo.

Run inside a guest:
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_allocinfo_vm.py -q
    ../shared/kernel/vmrun --kernel 6.12 -- .venv/bin/python -m pytest tests/vm/test_allocinfo_vm.py

The live file changes between two reads, so exact checks read it once into one copy and
compute both sides from that copy; the check on the live path brackets ``top`` between two
independent sums and allows a small relative drift.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.allocinfo import read_allocinfo


@lru_cache(maxsize=1)
def pyarrow_loads() -> bool:
    """pyarrow dies with SIGILL under QEMU's default CPU model (no SSE4.2): probe it apart."""
    r = subprocess.run([sys.executable, "-c", "import pyarrow.parquet"], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def run(cli: Any) -> Any:
    """``allocscope VERB ...`` in-process. The CLI imports only the verb it runs, and top,
    snapshot and diff load pyarrow only for Parquet, so this works on any guest CPU."""
    return cli


def raw_sums(text: str) -> tuple[int, int, int]:
    """Like ``awk '$1 ~ /^-?[0-9]+$/ {b+=$1; c+=$2; n++}'``: nothing shared with the parser."""
    b = c = n = 0
    for line in text.split("\n"):
        f = line.split()
        if len(f) >= 4 and f[0].lstrip("-").isdigit() and f[1].lstrip("-").isdigit():
            b += int(f[0])
            c += int(f[1])
            n += 1
    return b, c, n


def top_json(run: Any, *args: str) -> dict[str, Any]:
    rc, out, err = run("top", "--json", *args)
    assert rc == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_top_total_equals_raw_sum_of_one_copy(
    run: Any, allocinfo_path: Path, tmp_path: Path
) -> None:
    raw = allocinfo_path.read_bytes()  # one read; both sides use this copy
    copy = tmp_path / "allocinfo.txt"
    copy.write_bytes(raw)
    b, c, n = raw_sums(raw.decode())
    assert n > 1000, f"only {n} tags in the guest's allocinfo"
    assert b > 0
    doc = top_json(run, "--file", str(copy))
    assert doc["totals"]["bytes"] == b
    assert doc["totals"]["calls"] == c
    assert doc["totals"]["tags"] == n
    assert doc["warnings"] == []
    assert sum(s["bytes"] for s in doc["sites"]) == b
    groups = top_json(run, "--file", str(copy), "--by", "subsystem")["groups"]
    assert sum(g["bytes"] for g in groups) == b
    assert {"mm", "kernel", "fs"} <= {g["key"] for g in groups}


def test_top_on_the_live_file_matches_sums_around_it(run: Any, allocinfo_path: Path) -> None:
    before = raw_sums(allocinfo_path.read_text())[0]
    doc = top_json(run)  # no --file: reads /proc/allocinfo itself
    after = raw_sums(allocinfo_path.read_text())[0]
    assert doc["source"] == str(allocinfo_path)
    lo, hi = min(before, after), max(before, after)
    got = doc["totals"]["bytes"]
    assert lo * 0.98 <= got <= hi * 1.02, (before, got, after)


def test_version_detection(allocinfo_path: Path, kernel_version: tuple[int, ...]) -> None:
    snap = read_allocinfo(str(allocinfo_path))
    header = allocinfo_path.read_text().split("\n", 1)[0]
    want = "2.0" if kernel_version >= (7, 0) else "1.0"
    if kernel_version[:2] == (6, 12):
        want = "1.0"
    assert header == f"allocinfo - version: {want}"
    assert snap.version == want
    assert not snap.warnings and not snap.truncated
    assert all(r.site.file and r.site.line > 0 and r.site.function for r in snap.records)
    text_inaccurate = allocinfo_path.read_text().count(" accurate:no")
    parsed_inaccurate = sum(1 for r in snap.records if not r.accurate)
    if want == "1.0":
        assert parsed_inaccurate == text_inaccurate == 0
    else:
        # Tags missing early-boot allocations are fixed at boot: the same set both reads.
        assert parsed_inaccurate == text_inaccurate > 0


def test_live_snapshot_round_trip(run: Any, allocinfo_path: Path, tmp_path: Path) -> None:
    if not pyarrow_loads():
        pytest.skip("pyarrow cannot load on this guest's CPU model (SIGILL); vmrun needs -cpu max")
    out = tmp_path / "live.parquet"
    rc, stdout, err = run("snapshot", "-o", str(out), "--json", "--label", "where=vm")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["source"] == str(allocinfo_path)
    assert summary["rows"] > 1000
    doc = top_json(run, "--file", str(out))
    assert doc["totals"]["bytes"] == summary["bytes"]
    # Diffing the snapshot against the live file: same kernel, so no moved sites.
    rc, stdout, err = run("diff", str(out), str(allocinfo_path), "--json")
    assert rc == 0, err
    d = json.loads(stdout)
    assert d["kernels_differ"] is False and d["totals"]["moved"] == 0


def test_fixture_from_this_kernel_family_parses(
    fixtures_dir: Path, kernel_version: tuple[int, ...]
) -> None:
    """The shipped fixture is a capture of one of these kernels; same shape as the live file."""
    name = (
        "allocinfo-7.3-boot.txt" if kernel_version >= (7, 0) else ("allocinfo-6.12-tmpfs-write.txt")
    )
    snap = read_allocinfo(str(fixtures_dir / name))
    live = read_allocinfo("/proc/allocinfo")
    assert snap.version == live.version
    common = {r.site.key for r in snap.records} & {r.site.key for r in live.records}
    assert len(common) > 0.8 * len(snap.records)


def test_ioctl_on_7_3_and_absent_on_6_12(
    allocinfo_path: Path, kernel_version: tuple[int, ...]
) -> None:
    """7.3: the ioctl's tags are the text's tags; 6.12: a clear CapabilityError."""
    from allocscope.collector.allocinfo import query_tags
    from allocscope.collector.allocinfo_ioctl import AllocinfoIoctl
    from allocscope.errors import CapabilityError

    if kernel_version < (7, 0):
        with pytest.raises(CapabilityError, match="ioctl"):
            query_tags(str(allocinfo_path), function="xas_alloc")
        return
    text = read_allocinfo(str(allocinfo_path))
    with AllocinfoIoctl(str(allocinfo_path)) as dev:
        cid = dev.content_id()
        assert cid == dev.content_id()  # no module loads in the guest
        first = dev.get_at(0)
        assert dev.layout is not None
        assert first is not None and first.site == text.records[0].site
    print(f"allocinfo ioctl layout: {dev.layout}, content id {cid}")

    xas = query_tags(str(allocinfo_path), function="xas_alloc")
    want = [r for r in text.records if r.site.function == "xas_alloc"]
    assert want and [r.site for r in xas] == [r.site for r in want]
    assert all(r.site.file == "lib/xarray.c" for r in xas)

    everything = query_tags(str(allocinfo_path))
    assert [r.site for r in everything] == [r.site for r in text.records]
    assert [r.accurate for r in everything] == [r.accurate for r in text.records]
    got, b = sum(r.bytes for r in everything), text.total_bytes
    assert abs(got - b) <= 0.02 * b, (got, b)

    inaccurate = query_tags(str(allocinfo_path), inaccurate=True)
    assert {r.site for r in inaccurate} == {r.site for r in text.records if not r.accurate}


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


def test_compiled_scanner_takes_the_live_file(allocinfo_path: Path) -> None:
    """The real kernel's text is what the compiled scanner is for: it must take all of it
    (not decline to the Python path) and agree with the line parser on the same copy."""
    from allocscope.collector.allocinfo import parse_allocinfo, parse_allocinfo_bytes, scanner

    assert scanner() == "compiled", "the C scanner was not built (scripts/setup builds it)"
    raw = allocinfo_path.read_bytes()
    snap = parse_allocinfo_bytes(raw, str(allocinfo_path))
    assert snap.columns is not None, "the compiled scanner declined the live allocinfo"
    slow = parse_allocinfo(raw.decode().splitlines(keepends=True), str(allocinfo_path))
    assert list(snap.records) == slow.records
    assert snap.version == slow.version and len(slow.records) > 1000
    b, c, n = raw_sums(raw.decode())
    assert (snap.total_bytes, snap.total_calls, len(snap.records)) == (b, c, n)
