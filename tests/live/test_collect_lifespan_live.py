"""Fleet proof on this host: ``collect --lifespan`` follows a leak across intervals.

A child holds N pipes (one page each from ``(anon_)pipe_write``), allocated right after the
agent's lifespan probe is attached, and keeps them until the agent has stored its last
interval. The agent keeps one probe attached for its life (collector/agent_capture.py
``LifespanStream``), so the pages tracked in the first interval are still tracked, still live
and older in every later one; a probe per interval (the design before 2026-12-07) saw them
only in the interval they were allocated in.

Checked against what the kernel did: every interval is committed with lifespan rows; the
held pages' row is in every interval, its tracked objects never fewer than in the first
(a tracked page leaves only by its free, and none was freed); from the second interval on
they are all older than the leaks threshold; and the last interval's outstanding-pages
estimate, at 99.9% (one run is one draw), contains N. The agent runs system-wide, so other
processes' pipe pages count too: the check allows :data:`OTHERS` of them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import bpf_problem, need
from support.agent_argv import collect_argv, python_child

from allocscope.collector.byte_sampling import total
from allocscope.collector.lifespan import PAGE_SITE
from allocscope.collector.store import Store
from allocscope.probes.lifespan import DEFAULT_ADDR_SHIFT, DEFAULT_SAMPLE_RATE

N = 4096
OTHERS = 256  # pipe pages other processes may hold at once (16 per busy pipe)
INTERVAL_S = 4
COUNT = 4
REPO = Path(__file__).resolve().parents[2]
PIPE_WRITE = re.compile(r"(anon_)?pipe_write")

CHILD = f"""
import sys, time
from allocscope.collector import workloads
sys.stdin.readline()
held = workloads.hold_pipes({N})
print("held", flush=True)
sys.stdin.readline()
"""


def _held_rows(rows: list[dict[str, Any]], stamp: float) -> list[dict[str, Any]]:
    return [
        x
        for x in rows
        if x["taken_at"] == stamp
        and x["row_kind"] == "row"
        and x["site"] == PAGE_SITE
        and PIPE_WRITE.fullmatch(x["caller"] or "")
    ]


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Store:
    problem = bpf_problem()
    need(problem is None, problem or "")
    d = tmp_path_factory.mktemp("collect-lifespan")
    child = python_child(CHILD)
    agent = subprocess.Popen(
        collect_argv(d, f"{INTERVAL_S}s", "--lifespan", count=COUNT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    lines: list[str] = []
    try:
        assert agent.stdout is not None and child.stdin is not None and child.stdout is not None
        for line in agent.stdout:  # the probe is attached once it says so
            lines.append(line)
            if line.startswith("lifespan: following"):
                break
        else:
            pytest.fail("the agent never attached its lifespan probe:\n" + "".join(lines))
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "held", "the child did not hold its pipes"
        out, _ = agent.communicate(timeout=INTERVAL_S * COUNT + 120)
        lines.append(out)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        child.kill()
        child.wait(10)
    assert agent.returncode == 0, "".join(lines)
    return Store(str(d / "store"))


def test_every_interval_committed_with_lifespan_rows(live: None, collected: Store) -> None:
    hosts = collected.read("hosts").to_pylist()
    assert len(hosts) == COUNT
    rows = collected.read("lifespan").to_pylist()
    assert {x["taken_at"] for x in rows} == {h["taken_at"] for h in hosts}
    assert all(x["source"] == "agent" for x in rows)


def _inside_999(row: dict[str, Any], name: str) -> tuple[bool, Any]:
    one_point = max(1.0, (DEFAULT_SAMPLE_RATE << DEFAULT_ADDR_SHIFT) / 8)
    e = total(row[name], row[f"{name}_var"], one_point, 0.999)
    return e.low <= N + OTHERS and N <= e.high, e


def test_a_leak_is_followed_across_intervals(live: None, collected: Store) -> None:
    rows = collected.read("lifespan").to_pylist()
    stamps = sorted({x["taken_at"] for x in rows})
    assert len(stamps) == COUNT
    for i, stamp in enumerate(stamps):
        held = _held_rows(rows, stamp)
        assert held, f"interval {i}: no pipe_write page row"
        r = max(held, key=lambda x: x["live_sampled"])
        print(i, r["live_sampled"], r["live_calls"], r["old_calls"], r["window_ns"])
        ok, e = _inside_999(r, "live_calls")
        assert ok, (i, "live", e, N)
        if i:  # allocated in the first interval: old in every later one
            ok, e = _inside_999(r, "old_calls")
            assert ok, (i, "old", e, N)
