"""The allocinfo ioctl's ABI as this module lays it out, and its behaviour where it is absent.

The real calls are proven in tests/vm/test_allocinfo_vm.py on the 7.3 kernel.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from allocscope.collector import allocinfo_ioctl as aio
from allocscope.collector.allocinfo import AllocRecord, query_tags
from allocscope.collector.site import Site
from allocscope.errors import CapabilityError


def test_struct_sizes_follow_the_uapi_header() -> None:
    assert ctypes.sizeof(aio._Tag) == 3 * 64 + 8
    assert ctypes.sizeof(aio._Counter) == 24  # u64, u64, u8 aligned(8)
    assert ctypes.sizeof(aio._TagData) == 224
    assert ctypes.sizeof(aio._FilterSizes) == 8 + 200 + 3 * 8
    assert ctypes.sizeof(aio._GetAtSizes) == 8 + 232 + 224
    assert ctypes.sizeof(aio._GetAtNames) == 8 + 208 + 224
    assert ctypes.sizeof(aio._GetAtPlain) == 8 + 224


def test_ioctl_numbers() -> None:
    # _IOR(0xA6, 0, 8), _IOR(0xA6, 2, 224), _IOWR(0xA6, 1, 464)
    assert aio.IOC_CONTENT_ID == (2 << 30) | (8 << 16) | (0xA6 << 8) | 0
    assert aio.IOC_GET_NEXT == (2 << 30) | (224 << 16) | (0xA6 << 8) | 2
    assert aio.ioc_get_at(aio._GetAtSizes) == (3 << 30) | (464 << 16) | (0xA6 << 8) | 1


def test_record_conversion_signed_and_accuracy() -> None:
    d = aio._TagData()
    d.tag.filename = b"lib/xarray.c"
    d.tag.function = b"xas_alloc"
    d.tag.lineno = 378
    d.counter.bytes = (1 << 64) - 4096  # -4096 as the kernel's u64
    d.counter.calls = 3
    d.counter.accurate = 0
    rec = aio._record(d)
    assert rec == AllocRecord(
        Site("lib/xarray.c", 378, "xas_alloc", ""), -4096, 3, {"accurate": "no"}
    )
    d.counter.accurate = 1
    assert aio._record(d).accurate


def test_long_names_keep_their_tail() -> None:
    name = "x" * 70 + "_tail"
    assert aio._tail(name) == name.encode()[-63:]
    assert aio._tail("short") == b"short"


def test_filter_matches_exactly() -> None:
    rec = AllocRecord(Site("lib/xarray.c", 378, "xas_alloc"), 4096, 1)
    assert aio.TagFilter(function="xas_alloc").matches(rec)
    assert not aio.TagFilter(function="xas_alloc_x").matches(rec)
    assert aio.TagFilter(module="", min_bytes=4096, max_bytes=4096).matches(rec)
    assert not aio.TagFilter(inaccurate=True).matches(rec)


def test_missing_ioctl_is_a_capability_error(tmp_path: Path) -> None:
    plain = tmp_path / "allocinfo"
    plain.write_text("allocinfo - version: 2.0\n")
    with pytest.raises(CapabilityError, match="ioctl"):
        query_tags(str(plain), function="xas_alloc")  # a regular file: ENOTTY
    with pytest.raises(CapabilityError, match="not present"):
        query_tags(str(tmp_path / "absent"))
