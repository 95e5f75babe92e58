"""ab --toggle on a real profiling kernel (run inside vmrun):

    cd REPO   # the repository root, with ../shared beside it
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_ab_toggle_vm.py -q

Proves that the toggled capture measures what the kernel did: every window counted page
allocations by fexit, no more than the kernel's own pgalloc counters grew, and each comparison
is a well-formed paired estimate; and that the original sysctl value comes back after a normal
run and after SIGTERM, whatever it was. Whether profiling costs more is a measurement, not a
test (docs/benchmarks.md "ab --toggle in the vmrun guests"): a CI run on 7.3 with 1 vCPU saw a
pooled fexit median of -22.6% for 6 pairs of 2 s, as guest noise allows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.result import read_result

# Toggling vm.mem_profiling flips static keys (kernel text patched with int3) while the workload
# runs on the other vCPU; under QEMU TCG with 2 vCPUs the other CPU can execute the stale int3
# ("Oops: int3" in free_unref_folios, seen on 7.3), so scripts/test runs these in a 1-vCPU guest.
pytestmark = [pytest.mark.vm, pytest.mark.single_cpu]
SYSCTL = "/proc/sys/vm/mem_profiling"


def _pgalloc() -> int:
    """Pages the kernel allocated (vmstat pgalloc_<zone>, counted per page in rmqueue)."""
    with open("/proc/vmstat") as f:
        return sum(int(v) for k, v in (ln.split() for ln in f) if k.startswith("pgalloc_"))


def _need_profiling_kernel() -> None:
    """Inside a vmrun guest (tests/vm/conftest.py skips elsewhere) these must be there."""
    if not os.path.exists(SYSCTL) or not os.access(SYSCTL, os.W_OK):
        pytest.fail(f"{SYSCTL} missing or read-only in the guest (--profiling never?)")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.fail("no BTF in the guest kernel: fentry/fexit (--exact) cannot work")


def _read() -> str:
    with open(SYSCTL) as f:
        return f.read().strip()


def _write(value: str) -> None:
    with open(SYSCTL, "w") as f:
        f.write(value + "\n")


def _allocscope(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "allocscope.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_toggle_profiling_on_costs_more_per_page_allocation(tmp_path: Path) -> None:
    _need_profiling_kernel()
    original = _read()
    out_path = tmp_path / "toggle.json"
    proc = _allocscope(
        "ab",
        "--toggle",
        "-d",
        "24",
        "--period",
        "2",
        "-F",
        "199",
        "--exact",
        "--workload",
        "tmpfs-write",
        "-o",
        str(out_path),
    )
    pgalloc_before = _pgalloc()
    out, err = proc.communicate(timeout=600)
    pgalloc = _pgalloc() - pgalloc_before
    print(out)
    assert proc.returncode == 0, err[-3000:]
    assert _read() == original
    r = read_result(str(out_path), expect_kind="ab-toggle")
    p: dict[str, Any] = r.payload
    assert p["restored"] is True and p["original"] == original and p["pairs"] >= 4
    assert any("not counted" in n for n in p["notes"])
    exact_fn = r.settings["exact_function"]
    assert exact_fn in ("__alloc_frozen_pages_noprof", "__alloc_pages_noprof")
    for w in p["window_results"]:
        assert w["exact"]["calls"] > 1000, "the workload did not allocate pages in a window"
    # each counted call that succeeded allocated >= 1 page, and vmstat counts every page
    counted = sum(w["exact"]["calls"] for w in p["window_results"])
    assert counted <= pgalloc, (counted, pgalloc)
    pooled = {row["function"]: row for row in p["pooled"]}
    median = pooled[f"exact:{exact_fn} (median)"]
    paired = next(
        c
        for c in p["comparisons"]
        if c["function"] == exact_fn and c["metric"] == "exact_median_ns"
    )
    sampled = pooled.get("[page allocator]")
    print(
        f"exact median ns/page allocation on {median['on_ns_per_call']:.0f} vs off "
        f"{median['off_ns_per_call']:.0f} (pooled {100 * (median['ratio'] - 1):+.1f}%); "
        f"paired ratio {paired['ratio']:.3f} CI {paired['ci_low']}..{paired['ci_high']} "
        f"p={paired['p_value']}; sampled [page allocator] on/off "
        f"{sampled['ratio'] if sampled else None}"
    )
    assert median["on_ns_per_call"] > 0 and median["off_ns_per_call"] > 0
    assert paired["ci_low"] <= paired["ratio"] <= paired["ci_high"], paired
    assert 0 < paired["p_value"] <= 1


@pytest.mark.parametrize("original", ["1", "0"])
def test_sigterm_restores_original_value(tmp_path: Path, original: str) -> None:
    _need_profiling_kernel()
    boot_value = _read()
    _write(original)
    try:
        out_path = tmp_path / "toggle.json"
        proc = _allocscope(
            "ab", "--toggle", "-d", "120", "--period", "1", "-F", "49", "-o", str(out_path)
        )
        assert proc.stderr is not None
        seen_other = False
        for line in proc.stderr:  # "window N/M (mem_profiling=X) done"
            if line.startswith("window "):
                seen_other = seen_other or f"mem_profiling={original}" not in line
                if line.startswith("window 2/"):
                    break
        assert seen_other or original == "0"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 143, err[-3000:]  # 128 + SIGTERM, as every live verb
        assert _read() == original
        r = read_result(str(out_path), expect_kind="ab-toggle")
        assert r.settings["interrupted"] is True and r.payload["restored"] is True
        assert 2 <= r.payload["windows"] < 120
    finally:
        _write(boot_value)
