"""Live allocinfo reads: which filters go to the kernel, and the CONTENT_ID retry.

The retry is exercised with a fault-injecting CONTENT_ID (the VM suite does the same against
the 7.3 kernel's real ioctl); the text read underneath is a real file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from allocscope.collector import allocinfo_ioctl as aio
from allocscope.collector.allocinfo_live import LiveFilter, read_live

TEXT = (
    "allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n"
    "  8192  2 lib/xarray.c:378 func:xas_alloc\n"
)


@pytest.mark.parametrize(
    ("flt", "expect"),
    [
        (LiveFilter(functions=("xas_alloc",)), [{"function": "xas_alloc"}]),
        (
            LiveFilter(functions=("a", "b"), modules=("vmlinux",)),
            [{"function": "a", "module": ""}, {"function": "b", "module": ""}],
        ),
        (
            LiveFilter(files=("mm/slub.c",), min_bytes=4096),
            [{"file": "mm/slub.c", "min_bytes": 4096}],
        ),
        (LiveFilter(functions=("kmalloc*",)), None),  # a glob: the kernel cannot evaluate it
        (LiveFilter(files=("fs/**",)), None),
        (LiveFilter(modules=("nfs",)), None),  # a module alone: the text is cheaper
        (LiveFilter(), None),
        (LiveFilter(functions=tuple(f"f{i}" for i in range(65))), None),  # too many walks
    ],
)
def test_kernel_side_filters(flt: LiveFilter, expect: Any) -> None:
    assert flt.kernel_side() == expect


def test_no_ioctl_means_text_and_unchecked(tmp_path: Path) -> None:
    f = tmp_path / "allocinfo"
    f.write_text(TEXT)
    snap = read_live(LiveFilter(functions=("xas_alloc",)), path=str(f))
    assert snap.via == "text" and snap.consistent is None  # a regular file: ENOTTY
    assert [r.site.function for r in snap.records] == ["xas_alloc"]


class FakeIds:
    """CONTENT_ID as a kernel would answer while ``changes`` module loads happen."""

    def __init__(self, values: list[int]) -> None:
        self.values = values
        self.calls = 0

    def __call__(self, *dev: Any) -> int:
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return v


def test_a_changed_content_id_forces_a_retry(tmp_path: Path, monkeypatch: Any) -> None:
    f = tmp_path / "allocinfo"
    f.write_text(TEXT)
    ids = FakeIds([7, 7, 8, 8, 8])  # probe, before #1, after #1 (changed), before/after #2
    monkeypatch.setattr(aio.AllocinfoIoctl, "content_id", ids)
    snap = read_live(None, path=str(f))
    assert snap.consistent is True and snap.read_attempts == 2
    assert ids.calls == 5


def test_a_read_that_never_settles_is_kept_and_marked(tmp_path: Path, monkeypatch: Any) -> None:
    f = tmp_path / "allocinfo"
    f.write_text(TEXT)
    monkeypatch.setattr(aio.AllocinfoIoctl, "content_id", FakeIds(list(range(100))))
    snap = read_live(None, path=str(f), retries=3)
    assert snap.consistent is False and snap.read_attempts == 3
    assert len(snap.records) == 1
    assert "changed during each of 3 reads" in snap.warnings[-1]
