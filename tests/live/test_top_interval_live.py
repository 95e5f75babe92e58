"""``top --interval`` full-screen, in a real terminal: tmux runs it, the test sends keys and
reads the pane, as a user would see it.

The source is a saved allocinfo the test rewrites between refreshes (this host has no
/proc/allocinfo), so the Δ columns must show exactly what the test changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
