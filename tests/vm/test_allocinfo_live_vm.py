"""Live allocinfo reads on the real kernels: the ioctl path equals the text path (7.3), the
CONTENT_ID bracket forces a retry when the id changes, and 6.12 falls back to the text.

Run inside a guest:
    ../shared/kernel/vmrun -- .venv/bin/python -m pytest tests/vm/test_allocinfo_live_vm.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from allocscope.collector import allocinfo_ioctl as aio
from allocscope.collector.allocinfo_live import LiveFilter, read_live

# Boot-time tags whose counters do not move while the test runs (set up once, never freed)
STILL = ("alloc_large_system_hash", "alloc_page_ext", "__kernfs_new_node")


def test_ioctl_read_equals_text_read(allocinfo_path: Path, kernel_version: tuple[int, ...]) -> None:
    flt = LiveFilter(functions=STILL)
    fast = read_live(flt, path=str(allocinfo_path))
    text = read_live(None, path=str(allocinfo_path))
    wanted = [r for r in text.records if r.site.function in STILL]
    if kernel_version >= (7, 3):
        assert fast.via == "ioctl" and fast.consistent is True
        assert fast.version == text.version == "2.0"
    else:
        assert fast.via == "text" and fast.consistent is None  # no ioctl on 6.12
        return
    key = lambda r: r.site.tag  # noqa: E731
    assert sorted(map(key, fast.records)) == sorted(map(key, wanted))
    by_tag = {r.site.tag: r for r in wanted}
    for rec in fast.records:
        twin = by_tag[rec.site.tag]
        assert (rec.bytes, rec.calls, rec.accurate) == (twin.bytes, twin.calls, twin.accurate)


def test_content_id_change_forces_a_retry(
    allocinfo_path: Path, kernel_version: tuple[int, ...], monkeypatch: Any
) -> None:
    if kernel_version < (7, 3):
        assert read_live(None, path=str(allocinfo_path)).consistent is None
        return
    real = aio.AllocinfoIoctl.content_id
    calls = {"n": 0}

    def one_module_load(dev: aio.AllocinfoIoctl) -> int:
        """The kernel's own id, bumped once after the first read, as a module load does."""
        calls["n"] += 1
        return real(dev) + (1 if calls["n"] >= 3 else 0)

    monkeypatch.setattr(aio.AllocinfoIoctl, "content_id", one_module_load)
    snap = read_live(None, path=str(allocinfo_path))
    assert snap.consistent is True and snap.read_attempts == 2
    assert len(snap.records) > 1000


def test_top_with_an_exact_function_goes_through_the_ioctl(
    cli: Any, kernel_version: tuple[int, ...]
) -> None:
    rc, out, err = cli("top", "--function", "xas_alloc", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["sites"] and all(s["function"] == "xas_alloc" for s in doc["sites"])
    assert doc["source"].endswith("(ioctl)") == (kernel_version >= (7, 3))
