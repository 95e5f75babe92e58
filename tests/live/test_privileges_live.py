"""What doctor and the capturing verbs say about privileges, checked with real processes:
an unprivileged ``doctor`` (``setpriv`` to nobody, no capabilities) and ``kernel.kptr_restrict=2``
set for the test (restored in a ``finally``, even when the test fails). The expected words are
derived from the kernel's state read here, not hard-coded per host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import REPO, need

KPTR = "/proc/sys/kernel/kptr_restrict"
PARANOID = "/proc/sys/kernel/perf_event_paranoid"


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _allocscope(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "allocscope", *args]
    if unprivileged:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/", check=False)


@pytest.fixture
def root() -> None:
    need(os.geteuid() == 0, "needs root (to drop privileges and to set kernel.kptr_restrict)")
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) not installed")


def _tracefs_mounted() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "tracefs":
                return parts[1]
    return None


def test_unprivileged_doctor_says_what_is_really_wrong(root: None) -> None:
    r = _allocscope("doctor", "--json", unprivileged=True)
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    lines = {c["check"]: c for c in doc["checks"]}
    assert doc["facts"]["privileges"]["root"] is False
    assert lines["privileges"]["status"] == "fail"
    # attach rows: a privilege problem, not kernel configs
    attach = [c for c in doc["checks"] if c["check"].startswith(("bpf ", "perf "))]
    assert attach
    for c in attach:
        assert c["status"] != "ok" and "CONFIG_" not in c["fix"] and "root" in c["fix"], c
    # tracefs: mounted (the mount table says so) but unreadable is not "not mounted"
    mount = _tracefs_mounted()
    need(mount is not None, "tracefs not mounted (./scripts/setup mounts it)")
    if not os.stat(str(mount)).st_mode & 0o005:  # root-only, the usual mode
        assert lines["tracefs"]["status"] == "fail"
        assert lines["tracefs"]["value"] == f"mounted at {mount}, not readable by this user"
    # kallsyms: the gate the kernel really applies for this (CAP_SYSLOG-less) process
    kptr, paranoid = _read(KPTR), _read(PARANOID)
    k = lines["kallsyms"]
    if kptr == 0 and paranoid <= 1:
        assert k["status"] == "ok"
    else:
        assert k["status"] == "fail"
        if kptr == 0:
            assert f"perf_event_paranoid={paranoid}" in k["value"]
            assert "kptr_restrict=0" not in k["fix"] and "perf_event_paranoid=1" in k["fix"]
        elif kptr == 1:
            assert "CAP_SYSLOG" in k["value"] and "run as root" in k["fix"]


@pytest.fixture
def kptr_restrict_2(root: None) -> Iterator[None]:
    saved = _read(KPTR)
    try:
        with open(KPTR, "w") as f:
            f.write("2")
        yield
    finally:
        with open(KPTR, "w") as f:
            f.write(str(saved))
        assert _read(KPTR) == saved


def test_kptr_restrict_2_is_said_exactly(kptr_restrict_2: None) -> None:
    """kptr_restrict=2 zeroes /proc/kallsyms even for root: every symbol-needing verb says so,
    the fix that helps (root does not), and what still works; no BPF is compiled first."""
    with open("/proc/kallsyms") as f:
        assert int(f.readline().split()[0], 16) == 0  # the kernel really hides them from root
    for args in (
        ("who-calls", "kmem_cache_alloc_noprof", "-d", "1"),
        ("top", "--live", "1"),
        ("overhead", "-d", "1"),
    ):
        r = _allocscope(*args)
        assert r.returncode == 3, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        err = r.stderr
        assert err.startswith("allocscope: error: /proc/kallsyms shows zero addresses: ")
        assert "kernel.kptr_restrict=2 hides kernel addresses from every user, root included" in err
        assert "fix: sysctl kernel.kptr_restrict=1" in err
        assert "exact allocinfo tags need none" in err
    doc = json.loads(_allocscope("doctor", "--json", "--no-bpf").stdout)
    k = next(c for c in doc["checks"] if c["check"] == "kallsyms")
    assert k["status"] == "fail" and "root included" in k["value"]
    assert "run as root" not in k["fix"]


def test_repo_is_importable_by_nobody(root: None) -> None:
    """The unprivileged test above runs this checkout: nobody must be able to read it."""
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            "import allocscope, sys; sys.stdout.write(allocscope.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )
    assert r.returncode == 0 and r.stdout.startswith(str(REPO)), r.stderr
