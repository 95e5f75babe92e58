"""The probe loader: compiles, attaches, counts real events, detaches on every exit path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


def bpf_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:bpf") or "perf_event" in target:
            out.append(target)
    return out


@pytest.fixture
def test_program(monkeypatch: pytest.MonkeyPatch) -> None:
    import allocscope.probes.loader as loader

    monkeypatch.setattr(loader, "program_path", lambda name: str(DATA / f"{name}.bpf.c"))


@pytest.mark.usefixtures("live", "test_program")
def test_probe_counts_and_detaches() -> None:
    from allocscope.collector.kallsyms import Kallsyms
    from allocscope.probes.loader import Probe

    before = bpf_fds()
    n = 5000
    with Probe("count_cache_allocs") as p:
        p.attach_raw_tracepoint("kmem_cache_alloc", "on_kmem_cache_alloc")
        assert [a.backend for a in p.attachments] == ["raw_tracepoint"]
        assert p.headers is not None and p.headers.kind != "none"
        for _ in range(n):
            os.close(os.open("/etc/hostname", os.O_RDONLY))
        counts = {k.value: v.value for k, v in p["counts"].items()}
        assert len(bpf_fds()) > len(before)
    assert bpf_fds() == before, "probe left BPF fds open after close"
    ks = Kallsyms.load()
    by_func: dict[str, int] = {}
    for addr, c in counts.items():
        by_func[ks.function_at(addr)] = by_func.get(ks.function_at(addr), 0) + c
    # every open() allocates a struct file; the allocating function is in kallsyms
    file_allocators = [f for f in ("alloc_empty_file", "__alloc_file") if ks.has(f)]
    assert file_allocators, "no struct-file allocator in kallsyms"
    assert max(by_func.get(f, 0) for f in file_allocators) >= n


@pytest.mark.usefixtures("live")
def test_sigterm_detaches_and_reports(tmp_path: Path) -> None:
    """SIGTERM during a capture: the loop ends like Ctrl-C, partial data is written, fds closed."""
    script = tmp_path / "cap.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        import allocscope.probes.loader as loader
        loader.program_path = lambda name: {str(DATA)!r} + "/" + name + ".bpf.c"
        from allocscope.probes.loader import Probe, interruptible, sleep_until_interrupted
        with interruptible():
            with Probe("count_cache_allocs") as p:
                p.attach_raw_tracepoint("kmem_cache_alloc", "on_kmem_cache_alloc")
                print("ready", flush=True)
                interrupted = sleep_until_interrupted(60)
                total = sum(v.value for v in p["counts"].values())
        def target(f):
            try:
                return os.readlink("/proc/self/fd/" + f)
            except OSError:
                return ""
        left = [f for f in os.listdir("/proc/self/fd") if target(f).startswith("anon_inode:bpf")]
        print(json.dumps({{"interrupted": interrupted, "total": total, "left": left}}))
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(200):
        os.close(os.open("/etc/hostname", os.O_RDONLY))
    time.sleep(0.5)  # let the child get from print("ready") into its sleep
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    import json

    data = json.loads(out.strip().splitlines()[-1])
    assert data["interrupted"] is True
    assert data["total"] >= 200
    assert data["left"] == []
