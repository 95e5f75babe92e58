"""Exact tags need ``vm.mem_profiling=1``: with profiling compiled in but switched off, the
kernel never sets ``current->alloc_tag`` (alloc_hooks() skips it), and doctor and who-calls
must say so (collector/exact_tags.py) instead of claiming exact tags. One BCC program.

    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_exact_tags_vm.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from allocscope.collector import workloads
from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.doctor import run_doctor
from allocscope.collector.exact_tags import PROFILING_OFF_NOTE
from allocscope.collector.who_calls import Options, capture
from allocscope.probes.who_calls import TRACEPOINT_FAMILY

pytestmark = [pytest.mark.vm, pytest.mark.single_cpu]  # flips a static key under load


def test_profiling_off_who_calls_and_doctor_say_exact_tags_need_it(mem_profiling: Path) -> None:
    mem_profiling.write_text("0")
    assert mem_profiling.read_text().strip() == "0"
    before = {r.site.tag: r.calls for r in read_allocinfo().records}

    rep = run_doctor(try_bpf=False)
    line = next(x for x in rep.lines if x.check == "vm.mem_profiling")
    assert line.status == "warn" and "current->alloc_tag" in line.consequence

    r = capture(Options(sites=["xas_alloc"], sample=1, during=lambda: workloads.tmpfs_write(16)))
    p = r.payload
    assert p["backend"] in TRACEPOINT_FAMILY
    # the kernel did allocate at the site (the probe counted it) ...
    assert p["total_calls"] > 0
    # ... but allocinfo's counters did not move, and no event carried a tag
    after = {r.site.tag: r.calls for r in read_allocinfo().records}
    xas = [k for k in after if k.endswith("func:xas_alloc")]
    assert xas and all(after[k] == before.get(k) for k in xas)
    assert p["tag_mode"] == "function-name"
    assert p["sites"][0]["tags_seen"] == []
    assert PROFILING_OFF_NOTE in p["notes"]
