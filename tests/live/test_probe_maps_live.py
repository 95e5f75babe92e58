"""probes.maps against real BCC maps: per-CPU sums, struct sums and a hash drain, batched and
per-entry (no hook attached: the values are the ones written here, so every number is known)."""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.fixture
def kmem_probe(live: None) -> Any:
    from allocscope.probes.kmem_sites import KmemSitesSettings
    from allocscope.probes.loader import Probe

    with Probe("kmem_sites", KmemSitesSettings(frees=False, pid=os.getpid()).defines()) as p:
        yield p  # compiled, nothing attached


def _no_batch(table: Any) -> None:
    def fail() -> Any:
        raise Exception("BPF_MAP_LOOKUP_BATCH has failed: Invalid argument")

    table.items_lookup_batch = fail


@pytest.mark.parametrize("batch", [True, False])
def test_percpu_sums_and_struct_sums(kmem_probe: Any, batch: bool) -> None:
    from allocscope.probes import kmem_sites, maps

    counters = kmem_probe["counters"]
    sites = kmem_probe["sites"]
    if not batch:
        _no_batch(counters)
        _no_batch(sites)
    ncpu = counters.total_cpu
    for i in range(len(kmem_sites.COUNTERS)):
        leaf = counters.Leaf()
        for c in range(ncpu):
            leaf[c] = 10 * i + c
        counters[counters.Key(i)] = leaf
    want = [sum(10 * i + c for c in range(ncpu)) for i in range(len(kmem_sites.COUNTERS))]
    assert maps.percpu_sums(counters, len(kmem_sites.COUNTERS)) == want
    assert list(kmem_sites.read_counters(kmem_probe).values()) == want

    for site in (0x1000, 0x2000, 0x3000):
        key = sites.Key()
        key.call_site, key.source = site, 1
        leaf = sites.Leaf()
        for c in range(ncpu):
            leaf[c].calls, leaf[c].bytes = site // 0x1000, 64 * (c + 1)
        sites[key] = leaf
    got = {e.call_site: e for e in kmem_sites.read_sites(kmem_probe)}
    assert sorted(got) == [0x1000, 0x2000, 0x3000]
    assert got[0x2000].totals.calls == 2 * ncpu
    assert got[0x2000].totals.bytes == 64 * ncpu * (ncpu + 1) // 2
    assert got[0x2000].source_name == "kmem_cache_alloc"

    assert maps.drain_hash(sites, 2) == 2
    assert len(kmem_sites.read_sites(kmem_probe)) == 1
    kmem_sites.reset_maps(kmem_probe)
    assert kmem_sites.read_sites(kmem_probe) == []
    assert maps.percpu_sums(counters, len(kmem_sites.COUNTERS)) == [0] * len(want)
