"""The capture core's rules, against real processes and the kernel's own view.

For every live verb (who-calls, top --live, overhead; ab --toggle in the VM tests), run with a
built-in workload and saving its result (``-o`` into a fresh directory, or ``--json``):

* ``kill -9``: within 2 s the BPF programs it held (ids read from its ``/proc/PID/fdinfo``, so
  other tools' programs do not count) are gone, the workload child is gone, no tmpfs of ours
  is mounted, no temp file or half-written ``-o`` file is left;
* Ctrl-C (SIGINT to the process group), ``kill -INT`` to a job a script put in the background
  (SIGINT ignored at start: it used to run its whole window), and SIGTERM: exit 130/130/143,
  no traceback, the partial result saved and marked interrupted, and the same nothing left.

A normal run leaves no tmpfs either; bad ``-d``/``-p``/``--count`` are one-line usage errors.
A new ``Capture(...)`` kind in collector/ fails :func:`test_every_capture_is_killed_by_a_test`
until it is added here. Each case compiles one BPF program (~2-3 s here).
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

from allocscope.collector.atomic import TEMP_RE

ALLOCSCOPE = [sys.executable, "-m", "allocscope"]
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # this tree's
TMPFS_PREFIX = "allocscope-tmpfs-"


def prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {int(p["id"]) for p in json.loads(out.stdout or "[]")}


def held_prog_ids(pid: int) -> set[int]:
    """The BPF programs process ``pid`` holds open (``prog_id:`` in its fdinfo). Other tests
    and tools load programs concurrently: only these ids are ours to watch."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for fd in fdinfo.iterdir() if fdinfo.is_dir() else []:
        try:
            text = fd.read_text()
        except OSError:
            continue
        ids |= {int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("prog_id:")}
    return ids


def our_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [ln for ln in f if TMPFS_PREFIX in ln]


def _wait_attached(proc: subprocess.Popen[bytes], timeout: float = 60) -> set[int]:
    """Until the probes are loaded and the workload child runs; the programs' ids."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "allocscope ended before attaching"
        kids = psutil.Process(proc.pid).children(recursive=True)
        ids = held_prog_ids(proc.pid)
        if ids and kids:
            time.sleep(1.0)  # the workload is inside its loop (tmpfs mounted)
            return held_prog_ids(proc.pid)
        time.sleep(0.2)
    pytest.fail("no BPF program and workload child within 60 s")


# every live verb; OUTPUT: how each saves its result (-o FILE, or --json on stdout)
VERBS = {
    "who-calls": ["who-calls", "xas_alloc", "-d", "60", "--workload", "tmpfs-write"],
    "top --live": ["top", "--live", "60", "--workload", "tmpfs-write", "--no-frees"],
    "overhead": ["overhead", "-d", "60", "--workload", "tmpfs-write"],
    "leaks": ["leaks", "-d", "60", "--workload", "leak-pipes"],
    "context": ["context", "-d", "60", "--workload", "tmpfs-write"],
}
HAS_OUTPUT = {"who-calls", "top --live", "overhead", "context", "leaks"}


def _argv(verb: str, out: Path) -> list[str]:
    if verb in HAS_OUTPUT:
        return [*ALLOCSCOPE, *VERBS[verb], "-o", str(out)]
    return [*ALLOCSCOPE, *VERBS[verb], "--json"]


def _temps(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if TEMP_RE.match(n)]


def _left_behind(ids: set[int], kids: list[psutil.Process]) -> str:
    """What the capture left: its programs, live workload children, tmpfs mounts."""
    alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    if alive:
        return f"workload child outlived its parent: {alive}"
    if ids & prog_ids():
        return f"BPF programs still loaded: {sorted(ids & prog_ids())}"
    if our_mounts():
        return f"tmpfs left mounted: {our_mounts()}"
    return ""


def _settle(ids: set[int], kids: list[psutil.Process]) -> str:
    deadline = time.monotonic() + 2.0
    while (why := _left_behind(ids, kids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return why


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_kill_9_leaves_no_probe_child_mount_or_temp(verb: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _argv(verb, tmp_path / "out.json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    try:
        ids = _wait_attached(proc)
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
        why = _settle(ids, kids)
        assert not why, f"{verb} after kill -9: {why}"
        assert _temps(tmp_path) == [] and not (tmp_path / "out.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def bpf_or_perf_fds(pid: int) -> list[str]:
    """The BPF objects (programs, maps, links) and perf events process ``pid`` holds open."""
    held = []
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir() if fds.is_dir() else []:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
            held.append(f"fd {fd.name} -> {target}")
    return held


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_the_workload_child_holds_no_bpf_or_perf_fd(verb: str, tmp_path: Path) -> None:
    """The rule, checked in the child's own fd table while the probes are attached: a child
    holding a program's fd would keep it loaded after its parent died."""
    proc = subprocess.Popen(
        _argv(verb, tmp_path / "out.json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    try:
        ids = _wait_attached(proc)
        assert ids, "the parent holds its programs"
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert kids, "no workload child"
        held = {k.pid: bpf_or_perf_fds(k.pid) for k in kids}
        assert not any(held.values()), f"{verb}: workload child holds {held}"
        assert bpf_or_perf_fds(proc.pid), "the check sees the parent's own BPF fds"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
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
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "overhead"
    assert not our_mounts()
    leftovers = [p for p in os.listdir("/tmp") if p.startswith(TMPFS_PREFIX)]
    assert leftovers == [], leftovers


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# how the signal arrives: Ctrl-C (the whole foreground process group), kill -INT to a job a
# shell script started in the background (it starts with SIGINT ignored), kill -TERM
HOW = {
    "ctrl-c": (signal.SIGINT, 130),
    "kill-int-background-job": (signal.SIGINT, 130),
    "sigterm": (signal.SIGTERM, 143),
}


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize("how", sorted(HOW))
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_interrupt_saves_the_capture_and_leaves_nothing(
    verb: str, how: str, tmp_path: Path
) -> None:
    sig, code = HOW[how]
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        _argv(verb, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        preexec_fn=_ignore_sigint if how == "kill-int-background-job" else None,
    )
    try:
        ids = _wait_attached(proc)
        kids = psutil.Process(proc.pid).children(recursive=True)
        if how == "ctrl-c":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode(errors="replace")
    assert proc.returncode == code, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    if verb in HAS_OUTPUT:  # the partial result is saved where it was asked for
        doc = json.loads(out.read_text())
        assert doc["settings"]["interrupted"] is True and doc["duration"] < 60
        assert doc["payload"]
        if verb == "who-calls":
            assert doc["payload"]["total_calls"] > 0
    else:
        live = json.loads(stdout)["live"]
        assert live["interrupted"] is True and live["events"] > 0 and live["duration"] < 60
    assert _temps(tmp_path) == []
    why = _settle(ids, kids)
    assert not why, f"{verb} after {how}: {why}"


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
    r = subprocess.run([*ALLOCSCOPE, *args], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# Result kind of each capture above; ab --toggle needs a writable vm.mem_profiling (absent on
# this host), so VM tests send it each signal inside the profiling guests.
KIND_OF = {
    "who-calls": "who-calls",
    "top --live": "top-live",
    "overhead": "overhead",
    "leaks": "lifespan",
    "context": "context",
}
VM_ONLY = {
    "ab-toggle": ("tests/vm/test_ab_toggle_vm.py", "tests/vm/test_ab_toggle_signals_vm.py"),
}
# what a VM test file must do to each capture it covers: Ctrl-C, SIGTERM and kill -9
VM_SIGNALS = ("os.killpg(proc.pid, signal.SIGINT)", "signal.SIGTERM", "proc.kill()")


def test_every_capture_is_killed_by_a_test() -> None:
    """A new live capture (a new ``Capture("kind", ...)`` in collector/) fails here until it
    is added to :data:`VERBS` (or, if it cannot run on this host, to :data:`VM_ONLY`, whose
    files must send it every signal)."""
    import re

    collector = Path(__file__).resolve().parents[2] / "collector"
    kinds = set()
    for src in collector.glob("*.py"):
        if src.name == "capture.py":  # its docstring's example
            continue
        kinds |= set(re.findall(r'Capture\(\s*"([^"]+)"', src.read_text()))
    assert kinds, "no Capture(...) found: has the runner moved?"
    assert kinds == set(KIND_OF.values()) | set(VM_ONLY)
    for kind, paths in VM_ONLY.items():
        text = "".join((collector.parent / p).read_text() for p in paths)
        missing = [s for s in VM_SIGNALS if s not in text]
        assert not missing, f"{kind}: no VM test does {missing}"
