"""Policy for the VM suite: tests that need a real allocation-profiling kernel.

These tests run inside a guest booted by ``../shared/kernel/vmrun`` (``./scripts/test`` does it
for the 7.3 and 6.12 kernels). Each file must also work on its own::

    ../shared/kernel/vmrun [--kernel 6.12] -- .venv/bin/python -m pytest tests/vm/test_x.py

Outside a guest they skip: they toggle ``vm.mem_profiling`` and load probes, which must not
happen on a developer's or a production host by accident. Inside one, a missing
``/proc/allocinfo`` is a failure, not a skip -- the guest kernels are built to have it.

``./scripts/test`` boots the guests with QEMU ``-cpu max``; plain vmrun uses QEMU's default CPU
model, on which importing pyarrow or duckdb dies with SIGILL (``./scripts/test --kernel 6.12
tests/vm/test_x.py`` runs one file the same way).

Fixtures from ``tests/conftest.py`` (``cli``, ``live``, ``fixtures_dir``) work here too.
Each BCC program takes ~10 s to compile under emulation: load few per test file.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ALLOCINFO = Path("/proc/allocinfo")
TRACEFS = Path("/sys/kernel/tracing")
NOT_IN_GUEST = "not inside a vmrun guest (run ./scripts/test)"


def in_vmrun_guest() -> bool:
    """vmrun boots its kernels with ``vmrun.ctl=`` on the command line; nothing else does."""
    try:
        return "vmrun.ctl=" in Path("/proc/cmdline").read_text()
    except OSError:
        return False


def _ensure_tracefs() -> None:
    """vm-init mounts tracefs; mount it here if a guest image ever doesn't."""
    events = TRACEFS / "events"
    if events.is_dir() and any(events.iterdir()):
        return
    subprocess.run(["mount", "-t", "tracefs", "tracefs", str(TRACEFS)], check=False)
    if not (events.is_dir() and any(events.iterdir())):
        pytest.fail(f"tracefs is not mounted at {TRACEFS} in the guest", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def vm_guest() -> Iterator[None]:
    """Skip the whole suite outside a vmrun guest; inside, make sure tracefs is there."""
    if not in_vmrun_guest():
        pytest.skip(NOT_IN_GUEST)
    _ensure_tracefs()
    yield


@pytest.fixture(scope="session")
def allocinfo_path() -> Path:
    """``/proc/allocinfo`` of the guest kernel (its absence in a guest is a failure)."""
    if not ALLOCINFO.exists():
        pytest.fail(
            f"{ALLOCINFO} missing in the guest: was it booted with --profiling never?",
            pytrace=False,
        )
    return ALLOCINFO


@pytest.fixture(scope="session")
def kernel_version() -> tuple[int, ...]:
    """The guest kernel's version as integers, e.g. (7, 3, 4) for 7.3.4-allocprof."""
    m = re.match(r"(\d+(?:\.\d+)*)", platform.release())
    assert m, f"unparsable kernel release {platform.release()!r}"
    return tuple(int(x) for x in m[1].split("."))


@pytest.fixture
def mem_profiling() -> Iterator[Path]:
    """The ``vm.mem_profiling`` sysctl file; its value is restored after the test."""
    path = Path("/proc/sys/vm/mem_profiling")
    if not path.exists():
        pytest.fail(f"{path} missing in the guest", pytrace=False)
    before = path.read_text().strip()
    try:
        yield path
    finally:
        if path.read_text().strip() != before:
            path.write_text(before + "\n")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m[1].split()) if m else set()


def pytest_report_header() -> list[str]:
    """Say which kernel the VM suite ran on, so a failing run's log tells at once."""
    where = "vmrun guest" if in_vmrun_guest() else "NOT a vmrun guest: VM tests skip"
    lines = [f"vm suite: {platform.release()} ({where}); CI={os.environ.get('CI', '')}"]
    missing = {"sse4_2", "avx2"} - _cpu_flags()
    if in_vmrun_guest() and missing:
        lines.append(
            f"vm suite: guest CPU lacks {', '.join(sorted(missing))}: importing pyarrow/duckdb "
            "will die with SIGILL; run through ./scripts/test (QEMU -cpu max)"
        )
    return lines
