"""Exact tags and ``vm.mem_profiling=0`` on the real kernels (collector/exact_tags.py).

7.3 (6.14+) leaves ``current->alloc_tag`` unset while profiling is off (alloc_hooks() checks
the static key): who-calls reads no tag, says so, and matches by function name. 6.12 sets it
anyway: the tag is still read, and the note says allocinfo's counters do not move. On both,
doctor says which, and allocinfo's counters for the site stay put. One BCC program.

    ../shared/kernel/vmrun [--kernel 6.12] --cpus 1 -- .venv/bin/python -m pytest \\
        tests/vm/test_exact_tags_vm.py -q
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from allocscope.collector import workloads
from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.doctor import run_doctor
from allocscope.collector.exact_tags import (
    PROFILING_OFF_NOTE,
    PROFILING_OFF_TAGGED_NOTE,
    tags_need_profiling,
)
from allocscope.collector.who_calls import Options, capture
from allocscope.probes.who_calls import TRACEPOINT_FAMILY

pytestmark = [pytest.mark.vm, pytest.mark.single_cpu]  # flips a static key under load


def test_profiling_off_who_calls_and_doctor(
    mem_profiling: Path, kernel_version: tuple[int, ...]
) -> None:
    gated = kernel_version[:2] >= (6, 14)
    assert tags_need_profiling(platform.release()) is gated
    tag = next(r.site.tag for r in read_allocinfo().records if r.site.function == "xas_alloc")
    mem_profiling.write_text("0")
    assert mem_profiling.read_text().strip() == "0"
    before = {r.site.tag: r.calls for r in read_allocinfo().records}

    rep = run_doctor(try_bpf=False)
    line = next(x for x in rep.lines if x.check == "vm.mem_profiling")
    assert line.status == "warn"
    assert ("current->alloc_tag unset" if gated else "exact tags still read") in line.consequence

    r = capture(Options(sites=["xas_alloc"], sample=1, during=lambda: workloads.tmpfs_write(16)))
    p = r.payload
    assert p["backend"] in TRACEPOINT_FAMILY
    assert p["total_calls"] > 0  # the kernel did allocate at the site (the probe counted it)
    # ... but allocinfo's counters for it did not move
    after = {r.site.tag: r.calls for r in read_allocinfo().records}
    assert after[tag] == before[tag]
    if gated:  # no event carried a tag: matched by function name, and said so
        assert p["tag_mode"] == "function-name"
        assert p["sites"][0]["tags_seen"] == []
        assert PROFILING_OFF_NOTE in p["notes"]
    else:  # 6.12 set the tag anyway
        assert p["tag_mode"] == "exact-tag"
        assert p["sites"][0]["tags_seen"] == [tag]
        assert PROFILING_OFF_TAGGED_NOTE in p["notes"]
