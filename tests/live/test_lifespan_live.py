"""``lifespan`` / ``leaks`` against a planted leak whose truth the test knows.

A child process holds :data:`N` pipes, each with one byte written (one page each from
``(anon_)pipe_write``, plus the pipe's slab objects), while churning opens and closes of
another file in batches of 64 (``struct file``s from ``path_openat`` that live microseconds).
It starts allocating only when the window has begun, so every held object is inside it.

One run, three probes on the same events, all filtered to the child: the default sample (what
``allocscope leaks`` runs), a denser sample (``addr_shift`` 2: slab caches reuse a few dozen
addresses for the churn, and the default keeps 1 in 32 of them, too few for a comparison of
lifespans), and a census (every object). Checks:

* the leaks view ranks the planted caller first; its outstanding calls and bytes intervals
  contain the truth (N pages, N x PAGE_SIZE), and the census counts exactly N;
* the churned caller's lifespans are short (its p90 interval ends below the held objects'
  age), the held ones are all old;
* the sampled lifespan percentiles and allocated calls contain the census values (99.9%
  intervals, see :data:`CONFIDENCE`);
* BCC's memleak, run on the same workload, lists the planted caller's stack.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import bpf_problem, need
from support.agent_argv import python_child

from allocscope.collector.capture import Capture
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.lifespan import PAGE_SITE, build_payload, capture_raw
from allocscope.collector.payloads import LifespanPayload, LifespanRow
from allocscope.collector.result import read_result
from allocscope.probes.headers import resolve_headers
from allocscope.probes.lifespan import LifespanSettings

N = 2048
# Intervals checked at 99.9%: one run is one draw, and a 95% interval misses 1 run in 20 by
# design (their 95% coverage is checked by simulation in tests/unit/test_lifespan.py).
CONFIDENCE = 0.999
WINDOW_S = 6.0
PAGE = resource.getpagesize()
REPO = Path(__file__).resolve().parents[2]
# pages held from pipe_write: the N pipes, plus the child's "held" line in its stdout pipe
# (read only after the window)
PAGES_HELD = N + 1
PIPE_WRITE = re.compile(r"(anon_)?pipe_write")
MEMLEAK = "/usr/sbin/memleak-bpfcc"

CHILD = f"""
import sys
from allocscope.collector import workloads
sys.stdin.readline()
held = workloads.hold_pipes({N})
print("held", flush=True)
workloads.churn_files(600)
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_held(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held", "the child did not hold its pipes"


@contextmanager
def planted_leak() -> Iterator[Child]:
    proc = python_child(CHILD)
    try:
        time.sleep(0.5)  # its interpreter is up (pid filter needs only the pid)
        yield Child(proc)
    finally:
        proc.kill()
        proc.wait(10)


@dataclass
class Run:
    leaks: LifespanPayload  # default settings, leaks view
    dense: LifespanPayload  # addr_shift 2, lifespan view
    census: LifespanPayload  # every object, lifespan view
    census_leaks: LifespanPayload


@pytest.fixture(scope="module")
def run() -> Run:
    problem = bpf_problem()
    need(problem is None, problem or "")
    ksyms = Kallsyms.load()
    with planted_leak() as child:
        cap = Capture("lifespan", duration=WINDOW_S, pid=child.pid)
        settings = [
            LifespanSettings(pid=child.pid, salt=0x5EED),
            LifespanSettings(pid=child.pid, addr_shift=2, salt=0xC0FFEE),
            LifespanSettings.census(pid=child.pid),
        ]
        with cap:
            raws = capture_raw(cap, settings, on_start=child.go)
        child.wait_held()
    return Run(
        leaks=build_payload(raws[0], ksyms, view="leaks", confidence=CONFIDENCE),
        dense=build_payload(raws[1], ksyms, view="lifespan", confidence=CONFIDENCE),
        census=build_payload(raws[2], ksyms, view="lifespan"),
        census_leaks=build_payload(raws[2], ksyms, view="leaks"),
    )


def _row(p: LifespanPayload, site: str, caller: re.Pattern[str] | str) -> LifespanRow:
    for r in p.rows:
        if r.site == site and re.fullmatch(caller, r.caller):
            return r
    pytest.fail(f"no row {site} <- {caller} in {[(r.site, r.caller) for r in p.rows]}")


def _inside(x: float, low: float, high: float) -> bool:
    return low <= x <= high


@pytest.mark.usefixtures("live")
def test_leaks_rank_the_planted_caller_first_with_the_truth_inside(run: Run) -> None:
    top = run.leaks.rows[0]
    assert top.site == PAGE_SITE and PIPE_WRITE.fullmatch(top.caller), run.leaks.rows[:3]
    assert _inside(PAGES_HELD, top.old_calls.low, top.old_calls.high), top.old_calls
    assert _inside(PAGES_HELD * PAGE, top.old_bytes.low, top.old_bytes.high), top.old_bytes
    assert top.stacks and any("pipe_write" in s for s in top.stacks)
    # the census counted every held page
    exact = _row(run.census_leaks, PAGE_SITE, PIPE_WRITE)
    assert exact.old_calls.value == PAGES_HELD
    assert exact.old_calls.low == exact.old_calls.high == PAGES_HELD


@pytest.mark.usefixtures("live")
def test_churn_lives_short_held_objects_live_long(run: Run) -> None:
    older = run.census_leaks.older_than_ns
    churn = _row(run.census, "alloc_empty_file", "path_openat")
    assert churn.lifespan is not None and churn.freed_sampled > 10 * N
    assert churn.lifespan.p90_ns.high < older, churn.lifespan
    held = _row(run.census, "alloc_empty_file", "alloc_file_pseudo")
    assert held.live_sampled == N and held.freed_sampled == 0
    assert all(s.low_ns >= older // 2 for s in held.age_hist), held.age_hist
    # and in the default sample: every held page it tracked is old
    top = run.leaks.rows[0]
    assert top.old_calls.value == top.live_calls.value > 0


@pytest.mark.usefixtures("live")
def test_sampled_lifespans_and_counts_against_the_census(run: Run) -> None:
    exact = _row(run.census, "alloc_empty_file", "path_openat")
    sampled = _row(run.dense, "alloc_empty_file", "path_openat")
    assert exact.lifespan is not None and sampled.lifespan is not None
    for q in ("p50_ns", "p90_ns", "mean_ns"):
        e = getattr(exact.lifespan, q)
        s = getattr(sampled.lifespan, q)
        assert _inside(e.value, s.low, s.high), (q, e, s)
    # census intervals are exact counts; the sample's intervals contain them
    assert exact.allocated_calls.low == exact.allocated_calls.value
    a = sampled.allocated_calls
    assert _inside(exact.allocated_calls.value, a.low, a.high), (exact.allocated_calls, a)
    held_exact = _row(run.census, PAGE_SITE, PIPE_WRITE)
    held = _row(run.dense, PAGE_SITE, PIPE_WRITE)
    assert _inside(held_exact.live_calls.value, held.live_calls.low, held.live_calls.high)


@pytest.mark.usefixtures("live")
def test_memleak_finds_the_same_caller() -> None:
    need(os.access(MEMLEAK, os.X_OK), f"{MEMLEAK} not installed (bpfcc-tools)")
    with planted_leak() as child:
        # memleak compiles with BCC too: give it the header tree allocscope uses
        env = {**os.environ, **resolve_headers().environment()}
        ml = subprocess.Popen(
            [MEMLEAK, "-o", "1000", "-T", "20", str(int(WINDOW_S)), "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            assert ml.stdout is not None
            seen = []
            for line in ml.stdout:  # "Attaching to kernel allocators, Ctrl+C to quit."
                seen.append(line)
                if "Attaching" in line:
                    break
            assert seen and "Attaching" in seen[-1], "".join(seen[-20:])
            time.sleep(1.0)
            child.go()
            child.wait_held()
            # memleak prints its one report after the interval and exits; once (CI host run,
            # 2026-12-07) it did not exit within 120 s. Read what it prints in a thread, and
            # judge the report, printed or not, when it exits or at the deadline.
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(ml.stdout or ()), daemon=True)
            reader.start()
            try:
                ml.wait(timeout=120)
            except subprocess.TimeoutExpired:
                ml.kill()
            reader.join(10)
            out = "".join(lines)
        finally:
            if ml.poll() is None:
                ml.kill()
    blocks = re.split(r"\n\s*(?=\d+ bytes in \d+ allocations from stack)", out)

    def allocations(block: str) -> int:
        m = re.search(r"in (\d+) allocations", block)
        return int(m.group(1)) if m else 0

    planted = [b for b in blocks if "pipe_write" in b and allocations(b) >= N // 2]
    assert planted, f"memleak did not list the pipe_write stack:\n{out[-3000:]}"


@pytest.mark.usefixtures("live")
def test_leaks_cli_writes_a_lifespan_result(tmp_path: Path) -> None:
    out = tmp_path / "leaks.json"
    with planted_leak() as child:
        r = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allocscope",
                "leaks",
                "-d",
                "4",
                "-p",
                str(child.pid),
                "--json",
                "-o",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        # the child starts holding once the probe is attached: its compile takes a few s
        time.sleep(1.0)
        child.go()
        stdout, stderr = r.communicate(timeout=180)
    assert r.returncode == 0, stderr
    assert "Traceback" not in stderr
    res = read_result(str(out), expect_kind="lifespan")
    p = res.typed(LifespanPayload)
    assert p.view == "leaks" and p.counters["alloc_events"] > 0
    assert '"kind": "lifespan"' in stdout
