"""``allocscope doctor --json`` on this host: its attach results must agree with the kernel.

doctor finds attach types by trying; this test checks each verdict against an attempt made by
a different tool (bpftrace, when installed) and the raw tracepoint verdict against a real
``kmem_sites`` load through the probe loader. No expected result is hard-coded except what
allocscope itself needs to run here: tracepoints and raw tracepoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable

import pytest

from allocscope.probes.capabilities import ATTACH_TYPES

# doctor's attach type -> the same attempt spelled as a bpftrace probe.
BPFTRACE_PROBES = {
    "tracepoint": "tracepoint:kmem:kmalloc",
    "kprobe": "kprobe:vfs_read",
    "fentry": "kfunc:vfs_read",
    "perf_event_hw_cycles": "hardware:cycles:1000000",
    "perf_event_cpu_clock": "software:cpu-clock:1000000",
}


def bpftrace_attaches(probe: str) -> bool:
    """Does bpftrace load and attach ``probe`` here? (exits after 100 ms either way)"""
    prog = f"{probe} {{ @n = count(); }} interval:ms:100 {{ exit(); }}"
    env = dict(os.environ, BPFTRACE_NO_USER_SYMBOLS="1")
    r = subprocess.run(
        ["bpftrace", "-e", prog], capture_output=True, text=True, timeout=120, env=env
    )
    return r.returncode == 0


@pytest.fixture(scope="module")
def doctor_json() -> tuple[int, dict[str, object]]:
    import contextlib
    import io

    from allocscope.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["doctor", "--json"])
    return rc, json.loads(buf.getvalue())


def test_doctor_json_structure(live: None, doctor_json: tuple[int, dict[str, object]]) -> None:
    rc, data = doctor_json
    assert rc == 0 and data["usable"] is True
    checks = data["checks"]
    assert isinstance(checks, list) and checks
    for c in checks:
        assert set(c) == {"check", "status", "value", "consequence", "fix"}
        assert c["status"] in ("ok", "warn", "fail")
        if c["status"] != "ok":
            assert c["consequence"] and c["fix"], c
    facts = data["facts"]
    assert isinstance(facts, dict)
    attach = facts["attach"]
    assert set(ATTACH_TYPES) <= set(attach)
    # allocscope's own floor on any host where the live fixture passes:
    assert attach["tracepoint"]["ok"] is True
    assert attach["raw_tracepoint"]["ok"] is True
    status = data["status"]
    assert isinstance(status, dict)
    assert status["bpf tracepoint"] == "ok" and status["bpf raw_tracepoint"] == "ok"
    for key in ATTACH_TYPES:  # failures carry the kernel's/BCC's words, not just "no"
        if not attach[key]["ok"]:
            assert attach[key]["detail"] and attach[key]["detail"] != "loaded and attached"


@pytest.mark.parametrize("key", sorted(BPFTRACE_PROBES))
def test_attach_verdict_agrees_with_bpftrace(
    live: None, doctor_json: tuple[int, dict[str, object]], key: str
) -> None:
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace not installed: no independent attempt to compare with")
    _, data = doctor_json
    facts = data["facts"]
    assert isinstance(facts, dict)
    ours = facts["attach"][key]["ok"]
    theirs = bpftrace_attaches(BPFTRACE_PROBES[key])
    assert ours == theirs, f"doctor says {key} ok={ours}, bpftrace says {theirs}"


def test_raw_tracepoint_verdict_agrees_with_a_real_probe(
    live: None, doctor_json: tuple[int, dict[str, object]]
) -> None:
    from allocscope.errors import CapabilityError
    from allocscope.probes.kmem_sites import KmemSitesSettings
    from allocscope.probes.loader import Probe

    _, data = doctor_json
    facts = data["facts"]
    assert isinstance(facts, dict)
    try:
        with Probe("kmem_sites", KmemSitesSettings(frees=False, pid=os.getpid()).defines()) as p:
            p.attach_raw_tracepoint("kmalloc", "on_kmalloc")
            attached = True
    except (CapabilityError, Exception):  # noqa: BLE001 - any failure means "does not attach"
        attached = False
    assert facts["attach"]["raw_tracepoint"]["ok"] == attached


def test_can_attach_helpers_agree_with_attach_types(live: None) -> None:
    from allocscope.probes import capabilities as caps

    types = caps.attach_types()
    assert caps.can_attach_kprobe(caps.DEFAULT_FUNCTION) == types["kprobe"].ok
    assert caps.can_attach_fentry(caps.DEFAULT_FUNCTION) == types["fentry"].ok
    # A name that is no kernel function never attaches.
    assert caps.can_attach_kprobe("allocscope_no_such_function") is False


def test_doctor_table(live: None, cli: Callable[..., tuple[int, str, str]]) -> None:
    rc, out, _ = cli("doctor")
    assert rc == 0
    for word in ("allocinfo", "bpf tracepoint", "bpf fentry", "lockdown", "privileges"):
        assert word in out
