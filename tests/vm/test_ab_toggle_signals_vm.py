"""ab --toggle under Ctrl-C and kill -9, on a real profiling kernel (run inside vmrun):

    vmrun --cpus 1 -- .venv/bin/python -m pytest tests/vm/test_ab_toggle_signals_vm.py

The live-verb lifecycle test (tests/live/test_capture_lifecycle_live.py) cannot run ab --toggle
on a host without a writable ``vm.mem_profiling``; SIGTERM is in test_ab_toggle_vm.py. Here:

* Ctrl-C (SIGINT to the process group) after two windows: exit 130, the partial result saved
  to ``-o`` and marked interrupted, the sysctl back at its original value;
* ``kill -9`` mid-window: none of the BPF programs it held (ids from its ``/proc/PID/fdinfo``)
  stays loaded, no temp file is left where ``-o`` points, and the sysctl is back at its
  original value: no handler runs on SIGKILL, so collector/toggle.py's guardian process
  writes it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allocscope.collector.atomic import TEMP_RE
from allocscope.collector.result import read_result

pytestmark = [pytest.mark.vm, pytest.mark.single_cpu]  # see test_ab_toggle_vm.py
SYSCTL = "/proc/sys/vm/mem_profiling"
REPO = Path(__file__).resolve().parents[2]


def _need_profiling_kernel() -> None:
    if not os.path.exists(SYSCTL) or not os.access(SYSCTL, os.W_OK):
        pytest.fail(f"{SYSCTL} missing or read-only in the guest (--profiling never?)")


def _read() -> str:
    with open(SYSCTL) as f:
        return f.read().strip()


def _write(value: str) -> None:
    with open(SYSCTL, "w") as f:
        f.write(value + "\n")


def _held_prog_ids(pid: int) -> set[int]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        ids |= {int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("prog_id:")}
    return ids


def _loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {int(p["id"]) for p in json.loads(out.stdout or "[]")}


def _start(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "allocscope", "ab", "--toggle", "-d", "120", "--period", "1"]
        + ["-F", "49", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )


def _until_window(proc: subprocess.Popen[str], n: int) -> set[int]:
    """Read stderr until "window N/..." is reported; the programs the process holds then."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(f"window {n}/"):
            return _held_prog_ids(proc.pid)
    pytest.fail(f"ab --toggle ended before window {n}")


def _temps(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if TEMP_RE.match(n)]


def test_ctrl_c_saves_the_windows_so_far_and_restores(tmp_path: Path) -> None:
    _need_profiling_kernel()
    original = _read()
    out = tmp_path / "toggle.json"
    proc = _start(out)
    try:
        ids = _until_window(proc, 2)
        assert ids, "no BPF program held during a window"
        os.killpg(proc.pid, signal.SIGINT)
        _stdout, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert _read() == original
    r = read_result(str(out), expect_kind="ab-toggle")
    assert r.settings["interrupted"] is True and r.payload["restored"] is True
    assert 2 <= r.payload["windows"] < 120
    assert _temps(tmp_path) == []
    assert not ids & _loaded_prog_ids()


def test_kill_9_leaves_no_probe_or_temp(tmp_path: Path) -> None:
    _need_profiling_kernel()
    original = _read()
    out = tmp_path / "toggle.json"
    proc = _start(out)
    try:
        ids = _until_window(proc, 1)
        assert ids, "no BPF program held during a window"
        time.sleep(0.5)  # inside window 2, its sysctl write done
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 2.0
        while ids & _loaded_prog_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not ids & _loaded_prog_ids(), "BPF programs still loaded after kill -9"
        assert _temps(tmp_path) == [] and not out.exists()
        deadline = time.monotonic() + 5.0
        while _read() != original and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _read() == original, "the guardian did not restore vm.mem_profiling"
    finally:
        if proc.poll() is None:
            proc.kill()
        _write(original)
