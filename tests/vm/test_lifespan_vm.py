"""lifespan/leaks on a real allocation-profiling kernel (run inside vmrun): exact tags.

A child holds :data:`N` pipes (one page each, allocated under a ``fs/pipe.c`` allocinfo tag:
``anon_pipe_prefill_and_lock`` on 7.3) and frees none of them during the window. The probe reads
``current->alloc_tag`` at ``mm_page_alloc``, so the row's site is the exact allocinfo tag; the
tag's calls delta in ``/proc/allocinfo`` over the window is the kernel's own count of what the
child still holds, and the sampled outstanding-calls estimate's interval must contain it.
One BCC program (~10 s to compile under emulation).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allocscope.collector.allocinfo import AllocinfoSnapshot, read_allocinfo
from allocscope.collector.capture import Capture
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.lifespan import PAGE_SITE, build_payload, capture_raw
from allocscope.probes.lifespan import LifespanSettings

pytestmark = pytest.mark.vm

N = 1500  # pipes: 3000 fds, under the guest's default hard limit of 4096
CONFIDENCE = 0.999  # one run is one draw (95% coverage: tests/unit/test_lifespan.py)
REPO = Path(__file__).resolve().parents[2]
CHILD = f"""
import sys, time
from allocscope.collector import workloads
sys.stdin.readline()
held = workloads.hold_pipes({N})
time.sleep(600)
"""


def tag_calls(snap: AllocinfoSnapshot, tag: str) -> int:
    return sum(r.calls for r in snap.records if r.site.tag == tag)


def test_outstanding_estimate_of_an_exact_tag_contains_allocinfo_delta() -> None:
    ksyms = Kallsyms.load()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    reads: dict[str, AllocinfoSnapshot] = {}

    def go() -> None:
        reads["before"] = read_allocinfo("/proc/allocinfo")
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()

    try:
        time.sleep(1.0)
        cap = Capture("lifespan", duration=6.0, pid=child.pid)
        settings = LifespanSettings(pid=child.pid, read_tag=True)
        with cap:
            raw = capture_raw(cap, [settings], on_start=go)[0]
        reads["after"] = read_allocinfo("/proc/allocinfo")  # the child still holds them
    finally:
        child.kill()
        child.wait(30)
    p = build_payload(raw, ksyms, view="leaks", confidence=CONFIDENCE)
    assert p.tag_mode == "exact-tag", p.notes
    # the pipe's page: allocated in anon_pipe_write (6.x) or anon_pipe_prefill_and_lock (7.3)
    pipe_tag = re.compile(r"fs/pipe\.c:\d+ func:\w*pipe\w*")
    rows = [r for r in p.rows if r.site == PAGE_SITE and r.tag and pipe_tag.fullmatch(r.tag)]
    assert rows, [(r.site, r.tag, r.caller) for r in p.rows[:5]]
    row = rows[0]
    assert row.tag is not None and "pipe" in row.caller
    delta = tag_calls(reads["after"], row.tag) - tag_calls(reads["before"], row.tag)
    assert delta >= N  # no frees: every held page is still charged to the tag
    assert row.live_calls.low <= delta <= row.live_calls.high, (delta, row.live_calls)
