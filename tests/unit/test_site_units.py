"""The site contract and unit parsing: what every verb relies on."""

from __future__ import annotations

import pytest

from allocscope.collector.site import Site, SiteQuery, canonical_function
from allocscope.collector.units import human_bytes, parse_duration, parse_size


def test_site_keys() -> None:
    s = Site("lib/xarray.c", 376, "xas_alloc")
    assert s.key == "lib/xarray.c:376"
    assert s.tag == "lib/xarray.c:376 func:xas_alloc"
    assert s.loose_key == "lib/xarray.c:xas_alloc"
    moved = Site("lib/xarray.c", 378, "xas_alloc")
    assert moved.loose_key == s.loose_key and moved.key != s.key
    m = Site("drivers/foo/bar.c", 12, "foo_probe", "foo")
    assert m.key == "drivers/foo/bar.c:12 [foo]"
    assert m.loose_key == "[foo]drivers/foo/bar.c:foo_probe"


@pytest.mark.parametrize(
    ("name", "canon"),
    [
        ("xas_alloc.constprop.0", "xas_alloc"),
        ("getname_flags.part.0", "getname_flags"),
        ("foo.isra.0.cold", "foo"),
        ("plain", "plain"),
        ("a.b", "a.b"),
    ],
)
def test_canonical_function(name: str, canon: str) -> None:
    assert canonical_function(name) == canon


def test_site_query() -> None:
    q = SiteQuery.parse("xas_alloc")
    assert q.matches(Site("lib/xarray.c", 1, "xas_alloc.constprop.0"))
    assert not q.matches(Site("lib/xarray.c", 1, "xas_alloc_foo"))
    q = SiteQuery.parse("lib/xarray.c:376")
    assert q.matches(Site("lib/xarray.c", 376, "xas_alloc"))
    assert not q.matches(Site("lib/xarray.c", 378, "xas_alloc"))
    q = SiteQuery.parse("lib/xarray.c:376 func:xas_alloc")
    assert q.function == "xas_alloc" and q.line == 376
    assert SiteQuery.parse("mm/slub.c").file == "mm/slub.c"
    with pytest.raises(ValueError):
        SiteQuery.parse("not a site!")


def test_units() -> None:
    assert parse_size("10M") == 10 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1.5G") == int(1.5 * (1 << 30))
    assert parse_size("64KiB") == 64 << 10
    with pytest.raises(ValueError):
        parse_size("ten")
    assert parse_duration("5m") == 300.0
    assert parse_duration("30") == 30.0
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("-1")
    assert human_bytes(1536) == "1.5K"
    assert human_bytes(-2 << 20) == "-2.0M"
    assert human_bytes(12) == "12"
