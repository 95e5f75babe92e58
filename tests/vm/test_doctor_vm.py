"""``allocscope doctor`` on a real profiling kernel: allocinfo, mem_profiling, kprobe, fentry.

Run inside a guest (one BCC compile, ~10 s under emulation):
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_doctor_vm.py -q
    ../shared/kernel/vmrun --kernel 6.12 -- .venv/bin/python -m pytest tests/vm/test_doctor_vm.py

The guest kernels have kprobes, fentry (BTF + trampolines) and allocation profiling, booted
with ``sysctl.vm.mem_profiling=1`` by vmrun; doctor must find all of that by trying.
The CLI function is called directly: building the full parser would import every verb, and
pyarrow dies with SIGILL under QEMU's default CPU model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from allocscope.cli import doctor as doctor_cli
from allocscope.probes import capabilities as caps


@pytest.fixture(scope="module")
def report() -> tuple[int, dict[str, object]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = doctor_cli.run(argparse.Namespace(json=True, no_bpf=False, refresh=False))
    return rc, json.loads(buf.getvalue())


def test_doctor_in_guest(
    report: tuple[int, dict[str, object]], kernel_version: tuple[int, ...], allocinfo_path: Path
) -> None:
    rc, data = report
    assert rc == 0 and data["usable"] is True
    facts = data["facts"]
    assert isinstance(facts, dict)
    header = allocinfo_path.read_text().splitlines()[0]
    m = re.match(r"allocinfo - version: (\d+\.\d+)", header)
    assert m, header
    assert facts["allocinfo"]["present"] is True
    assert facts["allocinfo"]["version"] == m[1]
    if kernel_version[:2] >= (7, 0):
        assert facts["allocinfo"]["version"] == "2.0"
    expected = Path("/proc/sys/vm/mem_profiling").read_text().strip()
    assert facts["mem_profiling"]["value"] == expected == "1"
    attach = facts["attach"]
    for key in ("tracepoint", "raw_tracepoint", "kprobe", "fentry", "perf_event_cpu_clock"):
        assert attach[key]["ok"] is True, (key, attach[key]["detail"])
    status = data["status"]
    assert isinstance(status, dict)
    for check in (
        "allocinfo",
        "vm.mem_profiling",
        "BTF",
        "bpf kprobe",
        "bpf fentry",
        "kernel headers",
    ):
        assert status[check] == "ok", check
    assert facts["headers"]["matches"] is True  # CONFIG_IKHEADERS: the kernel's own


def test_one_compile_served_everything(report: tuple[int, dict[str, object]]) -> None:
    """kprobe/fentry helpers for the default function reuse doctor's single compile."""
    assert caps.can_attach_kprobe(caps.DEFAULT_FUNCTION) is True
    assert caps.can_attach_fentry(caps.DEFAULT_FUNCTION) is True
    info = caps._checker.cache_info()
    assert info.misses == 1
