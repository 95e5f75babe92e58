"""``top --live`` aggregation without BPF: symbolising and grouping map contents, counters,
and the kmem_sites probe half's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from allocscope.collector import top_live as L
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.probes import kmem_sites


@dataclass
class Key:
    call_site: int
    source: int


@dataclass
class Val:
    calls: int
    bytes: int
    freed_calls: int = 0
    freed_bytes: int = 0


@dataclass
class Value:
    value: int


@dataclass
class StackKey:
    ip: list[int]


class PerCpu:
    """Stands in for a BCC per-CPU array of u64: ``items()`` gives (index, per-CPU values)."""

    def __init__(self, values: list[int]) -> None:
        self.values = values

    def items(self) -> list[tuple[Value, list[Value]]]:
        return [(Value(i), [Value(v - v // 2), Value(v // 2)]) for i, v in enumerate(self.values)]


class FakeProbe:
    def __init__(self, maps: dict[str, Any]) -> None:
        self.maps = maps

    def __getitem__(self, name: str) -> Any:
        return self.maps[name]


class Table:
    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self._items = items

    def items(self) -> list[tuple[Any, Any]]:
        return self._items


KS = Kallsyms(
    [
        Symbol(0x1000, "alloc_empty_file", ""),
        Symbol(0x1100, "getname_flags.part.0", ""),
        Symbol(0x1200, "getname_flags", ""),
        Symbol(0x1300, "shmem_alloc_folio", ""),
        Symbol(0x1400, "__alloc_frozen_pages_noprof", ""),
        Symbol(0x1500, "alloc_pages_mpol", ""),
        Symbol(0x1600, "foo_probe", "foo"),
        Symbol(0x1700, "_etext", ""),
    ]
)


def probe(stacks: list[tuple[list[int], int]] | None = None) -> FakeProbe:
    sites = Table(
        [
            (Key(0x1010, 1), Val(100, 19200, 90, 17280)),  # alloc_empty_file, kmem_cache
            (Key(0x1110, 1), Val(50, 204800, 50, 204800)),  # getname_flags.part.0 ...
            (Key(0x1210, 0), Val(10, 40960, 0, 0)),  # ... and getname_flags: one function
            (Key(0x1610, 0), Val(3, 96)),  # a module's function
            (Key(0, 2), Val(8, 4096 * 10, 1, 4096)),  # pages
            (Key(0x900000, 0), Val(1, 8)),  # far past the last symbol: a BPF/JIT address
        ]
    )
    maps: dict[str, Any] = {"sites": sites, "page_orders": PerCpu([6, 2] + [0] * 14)}
    if stacks is not None:
        maps["page_stacks"] = Table([(StackKey(ip), Value(n)) for ip, n in stacks])
    return FakeProbe(maps)


def test_records_grouped_per_function_live_bytes() -> None:
    recs = {r.site.function: r for r in L.read_records(probe(), KS, frees=True)}  # type: ignore[arg-type]
    f = recs["alloc_empty_file"]
    assert (f.calls, f.bytes) == (100, 19200 - 17280)
    assert f.extras["source"] == "kmem_cache_alloc" and f.extras["freed_calls"] == "90"
    g = recs["getname_flags"]  # clone and plain symbol grouped, both sources listed
    assert g.calls == 60 and g.bytes == 40960 and g.extras["call_sites"] == "2"
    assert g.extras["source"] == "kmem_cache_alloc" and "kmalloc:10" in g.extras["sources"]
    assert recs["foo_probe"].site.module == "foo"
    pages = recs[L.PAGE_SITE]
    assert pages.bytes == 40960 - 4096 and pages.extras["orders"] == "0:6 1:2"
    assert all(r.site.file == "" and r.site.line == 0 for r in recs.values())
    assert recs["[unknown]"].calls == 1 and "_etext" not in recs


def test_records_allocated_bytes_sorted() -> None:
    recs = L.read_records(probe(), KS, frees=False)  # type: ignore[arg-type]
    assert [r.bytes for r in recs] == sorted((r.bytes for r in recs), reverse=True)
    assert "freed_bytes" not in recs[0].extras
    assert sum(r.calls for r in recs) == 100 + 50 + 10 + 3 + 8 + 1


def test_page_callers_skip_allocator_and_bpf_frames() -> None:
    stack = [0x900000, 0x1410, 0x1510, 0x1310, 0x1210]  # [bpf] <- page allocator <- shmem
    recs = {
        r.site.function: r
        for r in L.read_records(
            probe([(stack, 30), ([0x1410, 0x1010], 10)]),  # type: ignore[arg-type]
            KS,
            frees=False,
        )
    }
    extras = recs[L.PAGE_SITE].extras
    assert extras["stack_samples"] == "40"
    assert extras["sampled_callers"] == "shmem_alloc_folio 75%, alloc_empty_file 25%"


def test_page_caller() -> None:
    assert (
        L.page_caller(
            [
                "[bpf]",
                "bpf_trace_run4",
                "__alloc_frozen_pages_noprof",
                "alloc_pages_mpol",
                "folio_alloc_noprof",
                "__filemap_get_folio",
            ]
        )
        == "__filemap_get_folio"
    )
    assert L.page_caller(["__alloc_pages_noprof"]) == "__alloc_pages_noprof"
    assert L.page_caller([]) == "[unknown]"


def test_lost_counts() -> None:
    assert str(L.LostCounts({"sites_full": 0, "live_full": 0})) == "0"
    lost = L.LostCounts({"sites_full": 0, "stale_ptr": 7, "live_full": 2})
    assert lost.total == 9 and str(lost) == "9 (stale_ptr 7, live_full 2)"


def test_probe_defines_use_btf_or_tracepoint_offsets() -> None:
    d = kmem_sites.KmemSitesSettings(frees=True, pid=42).defines()
    assert d["FILTER_TGID"] == 42 and d["TRACK_FREES"] is True
    assert ("KMEM_CACHE_SIZE_OFF" in d) != ("TP_CACHE_BYTES_OFF" in d)


def test_hooks_follow_the_defines() -> None:
    raw: kmem_sites.Defines = {"KMEM_CACHE_SIZE_OFF": 24, "TRACK_PAGES": True}
    assert [h.program for h in kmem_sites.hooks(raw, frees=False)] == [
        "on_kmalloc",
        "on_cache_alloc",
        "on_page_alloc",
    ]
    classic: kmem_sites.Defines = {
        "TP_KMALLOC_BYTES_OFF": 32,
        "TP_CACHE_BYTES_OFF": 32,
        "TRACK_PAGES": False,
    }
    got = kmem_sites.hooks(classic, frees=True)
    assert [(h.backend, h.target) for h in got] == [
        ("tracepoint", "kmem:kmalloc"),
        ("tracepoint", "kmem:kmem_cache_alloc"),
        ("raw_tracepoint", "kfree"),
        ("raw_tracepoint", "kmem_cache_free"),
    ]


def test_source_names() -> None:
    val = kmem_sites.SiteVal(1, 2, 0, 0)
    assert kmem_sites.SiteEntry(0, kmem_sites.SRC_PAGE, val).source_name == "mm_page_alloc"
    assert kmem_sites.SiteEntry(0, 9, val).source_name == "?"
