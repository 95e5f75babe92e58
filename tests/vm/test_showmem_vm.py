"""show_mem's "Memory allocations" block against the same kernel's /proc/allocinfo.

Run inside a guest:
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_showmem_vm.py -q

sysrq-m makes the kernel print the block now; allocinfo is read right after, so each listed
tag must be there with the printed size (3 significant digits) give or take what the guest
allocated in between (a few per cent at most for these boot-time tags).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.showmem import ROUNDING_KEY, parse_kernel_log


def test_sysrq_m_block_matches_allocinfo(allocinfo_path: Path, tmp_path: Path) -> None:
    Path("/proc/sys/kernel/sysrq").write_text("1\n")
    subprocess.run(["dmesg", "-C"], check=True)
    Path("/proc/sysrq-trigger").write_text("m\n")
    log = subprocess.run(["dmesg"], check=True, capture_output=True).stdout
    full = read_allocinfo(str(allocinfo_path))
    saved = tmp_path / "dmesg.txt"
    saved.write_bytes(log)

    oom = read_allocinfo(str(saved))  # the same dispatch top --file and diff use
    assert oom.version == "show_mem" and oom.partial
    assert 1 <= len(oom.records) <= 10
    assert parse_kernel_log(log, "dmesg").records == oom.records

    by_tag = {r.site.tag: r for r in full.records}
    ranked = sorted(full.records, key=lambda r: r.bytes, reverse=True)
    top20 = {r.site.tag for r in ranked[:20]}
    for rec in oom.records:
        live = by_tag.get(rec.site.tag)
        assert live is not None, f"{rec.site.tag} is not in allocinfo"
        slack = int(rec.extras.get(ROUNDING_KEY, 0)) + max(rec.bytes // 50, 64 << 10)
        assert abs(live.bytes - rec.bytes) <= slack, (rec.site.tag, rec.bytes, live.bytes)
        assert rec.site.tag in top20, f"{rec.site.tag} listed but not among allocinfo's top 20"
