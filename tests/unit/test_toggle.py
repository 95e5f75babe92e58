"""ab --toggle: the sysctl is alternated, windows are paired, and the original value always
comes back -- on normal exit, on an exception, on SIGINT and on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.toggle import Sysctl, run_toggle
from allocscope.errors import CapabilityError


def _fake(tmp_path: Path, value: str = "1", cmdline: str = "quiet") -> Sysctl:
    path = tmp_path / "mem_profiling"
    path.write_text(value + "\n")
    cmd = tmp_path / "cmdline"
    cmd.write_text(cmdline + "\n")
    return Sysctl(str(path), cmdline_path=str(cmd))


def test_alternates_and_restores_on_normal_exit(tmp_path: Path) -> None:
    s = _fake(tmp_path, "0")
    seen: list[str] = []
    run = run_toggle(
        s, lambda: s.read(), windows=4, period=0, sleep=lambda _: seen.append(s.read())
    )
    assert seen == ["1", "0", "1", "0"]
    assert [w.state for w in run.windows] == ["1", "0", "1", "0"]
    assert [w.begin for w in run.windows] == ["1", "0", "1", "0"]  # snapshot after the write
    assert len(run.pairs()) == 2 and all(on.state == "1" for on, _ in run.pairs())
    assert run.restored and not run.interrupted and s.read() == "0"


def test_restores_on_exception(tmp_path: Path) -> None:
    s = _fake(tmp_path, "1")
    calls = 0

    def snapshot() -> int:
        nonlocal calls
        calls += 1
        if calls == 4:  # in the second (off) window
            assert s.read() == "0"
            raise RuntimeError("map read failed")
        return calls

    with pytest.raises(RuntimeError, match="map read failed"):
        run_toggle(s, snapshot, windows=6, period=0, sleep=lambda _: None)
    assert s.read() == "1"


def test_keyboard_interrupt_keeps_finished_windows(tmp_path: Path) -> None:
    s = _fake(tmp_path, "1")
    n = 0

    def sleep(_: float) -> None:
        nonlocal n
        n += 1
        if n == 4:
            raise KeyboardInterrupt

    run = run_toggle(s, lambda: 0, windows=10, period=1, sleep=sleep)
    assert run.interrupted and run.restored and len(run.windows) == 3
    assert len(run.pairs()) == 1 and s.read() == "1"


@pytest.mark.parametrize(
    "setup,match",
    [
        ("absent", "absent"),
        ("readonly", "read-only"),
        ("never", "never"),
        ("garbage", "expected 0 or 1"),
    ],
)
def test_refusals(tmp_path: Path, setup: str, match: str) -> None:
    s = _fake(tmp_path, "1", cmdline="sysctl.vm.mem_profiling=never" if setup == "never" else "")
    if setup == "absent":
        os.unlink(s.path)
    elif setup == "readonly":
        os.chmod(s.path, 0o444)
    elif setup == "garbage":
        Path(s.path).write_text("maybe\n")
    with pytest.raises(CapabilityError, match=match):
        run_toggle(s, lambda: 0, windows=2, period=0, sleep=lambda _: None)
    if setup != "absent":
        assert Path(s.path).read_text().strip() in ("1", "maybe")  # untouched


def test_cli_refuses_without_toggleable_sysctl(tmp_path: Path, cli: Any) -> None:
    rc, _, err = cli(
        "ab", "--toggle", "-d", "4", "--period", "2", "--sysctl", str(tmp_path / "nope")
    )
    assert rc == 3 and "absent" in err and "Traceback" not in err
    rc, _, err = cli("ab", "--toggle", "-d", "1", "--period", "2")
    assert rc == 2 and "fewer than 2 windows" in err


CHILD = textwrap.dedent("""
    import sys
    from allocscope.collector.toggle import Sysctl, run_toggle
    from allocscope.probes.loader import interruptible

    s = Sysctl(sys.argv[1], cmdline_path=sys.argv[2])
    def snapshot():
        print("state", s.read(), flush=True)
        return 0
    with interruptible():
        run = run_toggle(s, snapshot, windows=10000, period=0.05)
    print("done", run.interrupted, run.restored, len(run.windows), flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("original", ["1", "0"])
def test_signal_restores_original_in_subprocess(
    tmp_path: Path, sig: signal.Signals, original: str
) -> None:
    s = _fake(tmp_path, original)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, s.path, s.cmdline_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    states = []
    for line in proc.stdout:
        states.append(line.split()[1])
        if len(states) >= 5:  # well into the run, the sysctl alternating
            break
    assert set(states) == {"0", "1"}
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("done True True")
    assert s.read() == original


@pytest.mark.parametrize("original", ["1", "0"])
def test_kill_9_is_restored_by_the_guardian(tmp_path: Path, original: str) -> None:
    """SIGKILL runs no handler: the guardian process puts the original value back."""
    s = _fake(tmp_path, original)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, s.path, s.cmdline_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.split()[1] != original:  # the sysctl is flipped right now
            break
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 5.0
    while s.read() != original and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.read() == original


def test_the_guardian_leaves_a_restored_value_alone(tmp_path: Path) -> None:
    """After a normal run the guardian writes nothing: the value someone sets after us
    stays (a guardian that restored late would clobber it)."""
    s = _fake(tmp_path, "1")
    run_toggle(s, lambda: 0, windows=2, period=0.01)
    s.write("0")  # an operator's later change
    time.sleep(0.2)
    assert s.read() == "0"
