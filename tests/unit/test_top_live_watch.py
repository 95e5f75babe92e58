"""``top --live --interval``: one probe for the whole watch, its cumulative maps read each
refresh into the interval view. No BPF: the probe's maps are faked (as in
test_top_live_sites.py), and so is the probe's lifetime to prove it is closed on every path."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from allocscope.collector import boot_cache, top_live
from allocscope.collector import top_live_watch as W
from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.site import Site
from allocscope.collector.top_interval import Watcher
from allocscope.probes import kmem_sites
from allocscope.reports.top_interval import frame_json, frame_table, frame_title


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
class LiveVal:
    call_site: int
    source: int
    bytes: int


class PerCpu:
    """A BCC per-CPU array of u64: ``items()`` gives (index, per-CPU values)."""

    def __init__(self, values: list[int]) -> None:
        self.values = values

    def items(self) -> list[tuple[Value, list[Value]]]:
        return [(Value(i), [Value(v - v // 2), Value(v // 2)]) for i, v in enumerate(self.values)]


class Table:
    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.rows = items

    def items(self) -> list[tuple[Any, Any]]:
        return self.rows


KS = Kallsyms(
    [
        Symbol(0xFFFF_0000_1000, "alloc_empty_file", ""),
        Symbol(0xFFFF_0000_1200, "getname_flags", ""),
        Symbol(0xFFFF_0000_1600, "foo_probe", "foo"),
        Symbol(0xFFFF_0000_1700, "_etext", ""),
    ]
)


class AttachedProbe:
    """A kmem_sites probe still attached: every read sees the sums grow (exact mode)."""

    def __init__(self) -> None:
        self.files = 0  # open+close pairs so far
        self.lost = 0

    def __getitem__(self, name: str) -> Any:
        n = self.files
        if name == "sites":
            return Table(
                [
                    # alloc_empty_file: one struct file per open, freed at close (exact frees)
                    (Key(0xFFFF_0000_1010, 1), Val(n, 256 * n, n, 256 * n)),
                    # getname_flags: one 4 KiB names buffer per open, freed too; one kept
                    (Key(0xFFFF_0000_1210, 1), Val(n, 4096 * n, max(0, n - 1), 4096 * (n - 1))),
                    (Key(0xFFFF_0000_1610, 0), Val(3, 96)),  # a module's, never again
                    (Key(0x9000_0000, 0), Val(1, 8)),  # no symbol: "[unknown]", no address
                ]
            )
        if name == "live":  # sampled mode: one getname_flags buffer still live, of 1 in 32
            return Table([(Value(1), LiveVal(0xFFFF_0000_1210, 1, 4096))])
        if name == "page_orders":
            return PerCpu([0] * kmem_sites.NR_ORDERS)
        if name == "counters":
            values = [0] * len(kmem_sites.COUNTERS)
            values[0], values[1] = 2 * n + 4, 2 * n
            values[kmem_sites.COUNTERS.index("stale_ptr")] = self.lost
            return PerCpu(values)
        raise KeyError(name)


def clock(times: list[float]) -> Any:
    it = iter(times)
    return lambda: next(it)


def test_cumulative_reads_give_each_refresh_its_calls() -> None:
    probe = AttachedProbe()
    reader = W.LiveSitesReader(probe, KS, frees=True, addr_shift=0, backend="raw_tracepoint")
    w = Watcher(reader, by="site", clock=clock([0.0, 1.0, 3.0]))
    probe.files = 10
    first = w.step()
    assert first.seconds == 0.0 and first.source == W.SOURCE and reader.reads == 1
    by = {r.key: r for r in first.rows}
    assert set(by) == {"alloc_empty_file", "getname_flags", "foo_probe [foo]", "[unknown]"}
    assert by["alloc_empty_file"].calls == 10 and by["getname_flags"].bytes == 4096
    probe.files = 60  # 50 opens and closes during the refresh
    second = {r.key: r for r in w.step().rows}
    assert second["alloc_empty_file"].delta_calls == 50
    assert second["alloc_empty_file"].delta_bytes == 0  # every file freed again
    assert second["getname_flags"].delta_calls == 50
    assert second["foo_probe [foo]"].delta_calls == 0
    probe.files = 160
    probe.lost = 7
    third = w.step()
    rows = {r.key: r for r in third.rows}
    assert rows["alloc_empty_file"].delta_calls == 100
    assert rows["alloc_empty_file"].rate(third.seconds) == 0.0
    assert third.sorted_rows("dcalls", 1)[0].key in ("alloc_empty_file", "getname_flags")
    assert third.warnings == ["7 (stale_ptr 7) events lost since the start"]
    assert reader.lost is not None and reader.lost.total == 7 and reader.events == 4 * 160 + 4
    table = frame_title(third, "dcalls") + "\n" + frame_table(third, "dcalls", None)
    assert "+100" in table and "SUBSYSTEM" not in table  # live sites have no files
    assert "warning: 7 (stale_ptr 7) events lost" in table
    assert not re.search(r"0x[0-9a-f]+|ffff", table)  # no kernel address is printed
    doc = frame_json(third, "dcalls", None)
    assert doc["warnings"] and {r["key"] for r in doc["rows"]} == set(rows)


def test_reader_says_what_the_columns_mean() -> None:
    exact = W.LiveSitesReader(AttachedProbe(), KS, frees=True, addr_shift=0)
    sampled = W.LiveSitesReader(AttachedProbe(), KS, frees=True, addr_shift=5)
    allocated = W.LiveSitesReader(AttachedProbe(), KS, frees=False, addr_shift=0)
    assert "live bytes (exact)" in exact.describe()
    assert "1 in 32 addresses" in sampled.describe()
    assert "bytes allocated" in allocated.describe() and allocated.bytes_kind == "allocated"


# --- the probe's lifetime --------------------------------------------------------------------


class FakeProbe(AttachedProbe):
    instances: list[FakeProbe] = []

    def __init__(self, program: str, defines: Any) -> None:
        super().__init__()
        self.closed = False
        FakeProbe.instances.append(self)

    def __enter__(self) -> FakeProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


@pytest.fixture
def fake_bpf(monkeypatch: pytest.MonkeyPatch) -> list[FakeProbe]:
    FakeProbe.instances = []

    class Settings:
        def __init__(self, **kw: Any) -> None:
            pass

        def defines(self) -> dict[str, Any]:
            return {}

    boot = types.SimpleNamespace(btf_facts=lambda: None, save=lambda: None)
    monkeypatch.setattr(W, "Probe", FakeProbe)
    monkeypatch.setattr(top_live, "kallsyms_state", lambda: types.SimpleNamespace(readable=True))
    monkeypatch.setattr(boot_cache, "load", lambda: boot)
    monkeypatch.setattr(Kallsyms, "load", classmethod(lambda cls: KS))
    monkeypatch.setattr(kmem_sites, "KmemSitesSettings", Settings)
    monkeypatch.setattr(kmem_sites, "attach_all", lambda probe, frees: "raw_tracepoint")
    return FakeProbe.instances


def test_one_probe_for_the_watch_closed_when_it_ends(fake_bpf: list[FakeProbe]) -> None:
    said: list[str] = []
    with W.watch_top_live(log=said.append) as reader:
        assert len(fake_bpf) == 1 and not fake_bpf[0].closed
        reader.probe.files = 100
        reader()
        snap = reader()
        live = {r.site.function: r for r in snap.records}
        assert live["getname_flags"].bytes == 32 * 4096  # the sample's estimate
        assert reader.reads == 2 and len(fake_bpf) == 1  # read twice, attached once
    assert fake_bpf[0].closed
    assert "until q or Ctrl-C" in said[0] and "CALLS = allocations" in said[0]


def test_probe_closed_on_an_error(fake_bpf: list[FakeProbe]) -> None:
    with pytest.raises(RuntimeError), W.watch_top_live():
        raise RuntimeError("a refresh failed")
    assert fake_bpf[0].closed


def test_probe_closed_on_ctrl_c_which_ends_the_watch_quietly(fake_bpf: list[FakeProbe]) -> None:
    with W.watch_top_live():
        raise KeyboardInterrupt
    assert fake_bpf[0].closed


def test_hidden_addresses_fail_before_any_probe(
    fake_bpf: list[FakeProbe], monkeypatch: pytest.MonkeyPatch
) -> None:
    from allocscope.errors import CapabilityError

    monkeypatch.setattr(top_live, "kallsyms_state", lambda: types.SimpleNamespace(readable=False))
    with pytest.raises(CapabilityError), W.watch_top_live():
        pass
    assert fake_bpf == []


# --- the CLI -------------------------------------------------------------------------------


class FakeWatch:
    """Stands in for collector/top_live_watch.py: a reader whose sums grow per refresh."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.entered = self.exited = 0
        self.kw: dict[str, Any] = {}
        self.interrupt_at = interrupt_at

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("allocscope.collector.top_live_watch")

        @contextlib.contextmanager
        def watch_top_live(**kw: Any) -> Iterator[Any]:
            self.kw = kw
            self.entered += 1
            n = [0]

            def read() -> AllocinfoSnapshot:
                n[0] += 1
                if n[0] == self.interrupt_at:
                    raise KeyboardInterrupt
                recs = [
                    AllocRecord(Site("", 0, "alloc_empty_file", ""), 256, 100 * n[0]),
                    AllocRecord(Site("", 0, "getname_flags", ""), 4096 * n[0], 100 * n[0]),
                ]
                return AllocinfoSnapshot(None, recs, W.SOURCE)

            try:
                yield read
            finally:
                self.exited += 1

        mod.watch_top_live = watch_top_live  # type: ignore[attr-defined]
        return mod


@pytest.fixture
def fake_watch(monkeypatch: pytest.MonkeyPatch) -> FakeWatch:
    import allocscope.collector as pkg

    fake = FakeWatch()
    mod = fake.module()
    monkeypatch.setitem(sys.modules, "allocscope.collector.top_live_watch", mod)
    monkeypatch.setattr(pkg, "top_live_watch", mod, raising=False)
    return fake


def test_cli_live_interval_plain_tables(cli: Any, fake_watch: FakeWatch) -> None:
    rc, out, err = cli(
        "top", "--live", "-i", "0.01", "--iterations", "3", "-s", "dcalls", "--no-frees"
    )
    assert rc == 0, err
    assert (fake_watch.entered, fake_watch.exited) == (1, 1)  # one probe, detached at the end
    assert fake_watch.kw["frees"] is False and fake_watch.kw["workload"] is None
    assert out.count("ΔCALLS") == 3 and "refresh 3" in out and W.SOURCE in out
    assert "+100" in out and "SUBSYSTEM" not in out and ":0 func:" not in out


def test_cli_live_interval_json_lines(cli: Any, fake_watch: FakeWatch) -> None:
    rc, out, err = cli(
        "top", "-i", "0.01", "--live", "--iterations", "2", "--json", "--workload", "open-close"
    )
    assert rc == 0, err
    assert fake_watch.kw["workload"] == "open-close"
    docs = [json.loads(line) for line in out.splitlines()]
    rows = {r["key"]: r for r in docs[1]["rows"]}
    assert rows["alloc_empty_file"]["delta_calls"] == 100
    assert rows["getname_flags"]["delta_bytes"] == 4096
    assert docs[1]["totals"]["delta_calls"] == 200


def test_cli_live_interval_ctrl_c_detaches(cli: Any, fake_watch: FakeWatch) -> None:
    fake_watch.interrupt_at = 2
    rc, out, _ = cli("top", "--live", "-i", "0.01", "--iterations", "5")
    assert rc == 130 and out.count("ΔCALLS") == 1
    assert (fake_watch.entered, fake_watch.exited) == (1, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--live"], "--live needs SECONDS"),
        (["--live", "5", "-i", "1"], "--live takes no SECONDS"),
        (["--live", "-i", "1", "--file", "x"], "exclusive"),
        (["--live", "-i", "1", "--csv"], "not --csv"),
    ],
)
def test_cli_live_interval_usage(
    cli: Any, fake_watch: FakeWatch, args: list[str], message: str
) -> None:
    rc, _, err = cli("top", *args)
    assert rc != 0 and message in err and fake_watch.entered == 0
