"""The capture core's rules, against real processes and the kernel's own view.

For every live verb with ``--workload``: after ``kill -9`` of allocscope, within 2 s no BPF
program of ours is loaded (``bpftool prog list``), the workload child is gone, and no tmpfs
of ours is mounted (``/proc/mounts``). A normal run leaves no tmpfs either; Ctrl-C prints no
child traceback and exits 130, SIGTERM 143; bad ``-d``/``-p``/``--count`` are one-line usage
errors. Each case compiles one BPF program (~2-3 s here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ALLOCSCOPE = [sys.executable, "-m", "allocscope"]
TMPFS_PREFIX = "allocscope-tmpfs-"


def prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {int(p["id"]) for p in json.loads(out.stdout or "[]")}


def our_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [ln for ln in f if TMPFS_PREFIX in ln]


def _wait_attached(proc: subprocess.Popen[bytes], before: set[int], timeout: float = 60) -> None:
    """Until the probes are loaded and the workload child runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "allocscope ended before attaching"
        kids = psutil.Process(proc.pid).children(recursive=True)
        if prog_ids() - before and kids:
            time.sleep(1.0)  # the workload is inside its loop (tmpfs mounted)
            return
        time.sleep(0.2)
    pytest.fail("no BPF program and workload child within 60 s")


VERBS = {
    "who-calls": ["who-calls", "xas_alloc", "-d", "60", "--workload", "tmpfs-write"],
    "top --live": ["top", "--live", "60", "--workload", "tmpfs-write", "--no-frees"],
    "overhead": ["overhead", "-d", "60", "--workload", "tmpfs-write"],
    "leaks": ["leaks", "-d", "60", "--workload", "leak-pipes"],
    "context": ["context", "-d", "60", "--workload", "tmpfs-write"],
}


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_kill_9_leaves_no_probe_child_or_mount(verb: str) -> None:
    before = prog_ids()
    proc = subprocess.Popen(
        [*ALLOCSCOPE, *VERBS[verb]], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_attached(proc, before)
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
            if not alive and not (prog_ids() - before) and not our_mounts():
                break
            time.sleep(0.1)
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"{verb}: workload child outlived its parent: {alive}"
        assert not (prog_ids() - before), f"{verb}: BPF programs still loaded after kill -9"
        assert not our_mounts(), f"{verb}: tmpfs left mounted: {our_mounts()}"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.usefixtures("live")
def test_a_normal_tmpfs_run_leaves_no_mount(tmp_path: Path) -> None:
    r = subprocess.run(
        [*ALLOCSCOPE, "overhead", "-d", "3", "--workload", "tmpfs-write", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "overhead"
    assert not our_mounts()
    leftovers = [p for p in os.listdir("/tmp") if p.startswith(TMPFS_PREFIX)]
    assert not leftovers, leftovers


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exit_codes_and_no_child_traceback(sig: int, code: int) -> None:
    before = prog_ids()
    args = ["who-calls", "alloc_empty_file", "-d", "60", "--workload", "open-close", "--json"]
    proc = subprocess.Popen(
        [*ALLOCSCOPE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    _wait_attached(proc, before)
    # Ctrl-C in a terminal reaches the whole foreground process group
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    text = err.decode(errors="replace")
    assert proc.returncode == code, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    doc = json.loads(out)
    assert doc["settings"]["interrupted"] is True and doc["payload"]["total_calls"] > 0
    assert not (prog_ids() - before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["who-calls", "xas_alloc", "-d", "0"], "must be positive"),
        (["overhead", "-d", "0"], "must be positive"),
        (["top", "--live", "0"], "must be positive"),
        (["who-calls", "xas_alloc", "-p", "999999999"], "no such process"),
        (["overhead", "-p", "999999999"], "no such process"),
        (["leaks", "-d", "0"], "must be positive"),
        (["lifespan", "-p", "999999999"], "no such process"),
        (["collect", "--store", "/tmp/x", "--count", "0"], "must be 1 or more"),
        (["collect", "--store", "/tmp/x", "--count", "-3"], "must be 0 or more"),
        (["collect", "--store", "/tmp/x", "--spool-max", "-1"], "must be 0 or more"),
    ],
)
def test_bad_windows_pids_and_counts_are_usage_errors(args: list[str], message: str) -> None:
    r = subprocess.run([*ALLOCSCOPE, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# Result kind of each capture above; ab --toggle needs a writable vm.mem_profiling (absent on
# this host), so tests/vm/test_ab_toggle_vm.py interrupts it inside the profiling guests.
KIND_OF = {
    "who-calls": "who-calls",
    "top --live": "top-live",
    "overhead": "overhead",
    "leaks": "lifespan",
    "context": "context",
}
VM_ONLY = {"ab-toggle": "tests/vm/test_ab_toggle_vm.py"}


def test_every_capture_is_killed_by_a_test() -> None:
    """A new live capture (a new ``Capture("kind", ...)`` in collector/) fails here until it
    is added to :data:`VERBS` (or, if it cannot run on this host, to :data:`VM_ONLY`)."""
    import re

    collector = Path(__file__).resolve().parents[2] / "collector"
    kinds = set()
    for src in collector.glob("*.py"):
        if src.name == "capture.py":  # its docstring's example
            continue
        kinds |= set(re.findall(r'Capture\(\s*"([^"]+)"', src.read_text()))
    assert kinds, "no Capture(...) found: has the runner moved?"
    assert kinds == set(KIND_OF.values()) | set(VM_ONLY)
    for path in VM_ONLY.values():
        assert (collector.parent / path).is_file()
