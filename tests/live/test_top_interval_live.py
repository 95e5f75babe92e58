"""``top --interval`` full-screen, in a real terminal: tmux runs it, the test sends keys and
reads the pane, as a user would see it.

The source is a saved allocinfo the test rewrites between refreshes (this host has no
/proc/allocinfo), so the Δ columns must show exactly what the test changed. With ``--live``
the source is one kmem_sites probe kept attached for the watch: run in a pipe while this
process opens and closes a file, each refresh's Δcalls at the struct-file site must be the
opens made between the two reads.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need

HEAD = "allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n"
BODY = "  8192  2 lib/xarray.c:378 func:xas_alloc\n 409600 1 fs/dcache.c:1 func:__d_alloc\n"
GROWN = "  8192  2 lib/xarray.c:378 func:xas_alloc\n 413696 9 fs/dcache.c:1 func:__d_alloc\n"
SESSION = "allocscope-top-interval-test"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def pane() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_for(text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = pane()
        if text in seen:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared; the pane shows:\n{seen}")


@pytest.fixture
def screen(tmp_path: Path) -> Iterator[Path]:
    need(shutil.which("tmux") is not None, "tmux not installed (./scripts/setup installs it)")
    src = tmp_path / "allocinfo.txt"
    src.write_text(HEAD + BODY)
    rc_file = tmp_path / "rc"
    cmd = (
        f"env -u COLUMNS -u LINES {sys.executable} -m allocscope top --file {src} -i 0.5; "
        f"echo $? > {rc_file}; sleep 30"
    )
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    tmux("new-session", "-d", "-s", SESSION, "-x", "160", "-y", "30", cmd)
    try:
        yield src
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)


def test_full_screen_refreshes_sorts_and_quits(screen: Path) -> None:
    first = wait_for("sorted by bytes")
    assert "q quit" in first and "fs/dcache.c:1 func:__d_alloc" in first
    screen.write_text(HEAD + GROWN)  # +4096 bytes, +8 calls on one tag
    grown = wait_for("+4.0K")
    assert "+8" in grown and "__d_alloc" in grown
    tmux("send-keys", "-t", SESSION, "n")
    by_name = wait_for("sorted by name")
    lines = by_name.splitlines()
    dcache = next(i for i, ln in enumerate(lines) if "fs/dcache.c" in ln)
    xarray = next(i for i, ln in enumerate(lines) if "lib/xarray.c" in ln)
    assert dcache < xarray  # "fs/..." before "lib/..."
    tmux("send-keys", "-t", SESSION, "q")
    rc_file = screen.parent / "rc"
    deadline = time.monotonic() + 10
    while not rc_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rc_file.read_text().strip() == "0"


# --- top --live --interval: one probe for the whole watch, in a pipe ------------------------

FILE_ALLOCATORS = ("alloc_empty_file", "__alloc_file", "alloc_file")


class OpenLoop:
    """Opens and closes a file in a thread of this process until stopped, recording
    (wall time, opens so far) every 100 opens, so the opens between two refreshes are known."""

    def __init__(self) -> None:
        self.timeline: list[tuple[float, int]] = [(time.time(), 0)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for _ in range(100):
                os.close(os.open("/etc/hostname", os.O_RDONLY))
            n += 100
            self.timeline.append((time.time(), n))
            time.sleep(0.001)  # a steady pace, not a CPU hog beside the watch

    def __enter__(self) -> OpenLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def opens_between(self, t0: float, t1: float) -> float:
        def at(t: float) -> float:
            times = [p[0] for p in self.timeline]
            i = bisect.bisect_right(times, t)
            if i == 0:
                return 0.0
            if i == len(times):
                return float(self.timeline[-1][1])
            (ta, na), (tb, nb) = self.timeline[i - 1], self.timeline[i]
            return na + (nb - na) * (t - ta) / (tb - ta) if tb > ta else float(na)

        return at(t1) - at(t0)


def _file_allocator() -> str:
    from allocscope.collector.kallsyms import Kallsyms

    ks = Kallsyms.load()
    present = [f for f in FILE_ALLOCATORS if ks.ranges(f)]
    assert present, f"none of {FILE_ALLOCATORS} in /proc/kallsyms"
    return present[0]


def _watch(*extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "allocscope", "top", "--live", "-i", "1", "--iterations", "3"]
    cmd += ["-p", str(os.getpid()), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_live_watch_json_counts_each_refresh_opens(live: None) -> None:
    """Δcalls of the struct-file site per refresh = the opens this process made between the
    two reads (the probe is filtered to this process; the reads' wall times bound them)."""
    fn = _file_allocator()
    with OpenLoop() as loop:
        p = _watch("--json", "--exact-frees")
    assert p.returncode == 0, p.stderr
    assert "until q or Ctrl-C" in p.stderr and "CALLS = allocations" in p.stderr
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [d["refresh"] for d in docs] == [0, 1, 2]
    assert docs[0]["source"] == "kmem tracepoints (live)"
    for prev, doc in zip(docs, docs[1:], strict=False):
        rows = {r["key"]: r for r in doc["rows"]}
        assert fn in rows, f"{fn} missing: {sorted(rows)[:20]}"
        got = rows[fn]["delta_calls"]
        want = loop.opens_between(prev["taken_at"], doc["taken_at"])
        assert want > 1000, "the open loop hardly ran"
        # the reads happen a few ms before taken_at; this process opens little else
        assert abs(got - want) <= 0.05 * want + 300, (got, want)
        # closed files are freed again: live bytes barely move (RCU-delayed frees at most)
        assert abs(rows[fn]["delta_bytes"]) < 0.2 * got * 1024
        assert doc["seconds"] == pytest.approx(1.0, abs=0.5)


def test_live_watch_plain_tables_in_a_pipe(live: None) -> None:
    fn = _file_allocator()
    with OpenLoop():
        p = _watch("--exact")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.count("ΔCALLS") == 3 and "refresh 3" in out and "kmem tracepoints (live)" in out
    assert not re.search(r"0x[0-9a-f]{6,}|ffffffff", out)  # sites named, never addresses
    deltas = []
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[-1] == fn and len(cells) >= 6:  # a refresh with Δ columns
            deltas.append(int(cells[3]))
    assert len(deltas) == 2 and all(d > 1000 for d in deltas), out
