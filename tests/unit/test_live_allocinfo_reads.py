"""The agent and who-calls read this host's allocinfo through ``read_live`` (the 7.3+ ioctl for
exact filters, bracketed by CONTENT_ID, the text elsewhere); files given by the user are read
as they are. ``read_live`` is faked: what it does is tests/unit/test_allocinfo_live.py's."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from allocscope.collector import agent as agent_mod
from allocscope.collector import who_calls as wc
from allocscope.collector.allocinfo import AllocinfoSnapshot, parse_allocinfo_text
from allocscope.collector.allocinfo_live import LiveFilter
from allocscope.collector.site import Site
from allocscope.collector.store import Store
from allocscope.errors import AllocscopeError

TEXT = (
    "allocinfo - version: 2.0\n#     <size>  <calls> <tag info>\n"
    "  8192  2 lib/xarray.c:378 func:xas_alloc\n"
    "  4096  1 fs/file_table.c:200 func:alloc_empty_file\n"
)


class FakeReadLive:
    """Stands in for ``read_live``: records each filter, answers with a parsed text."""

    def __init__(self, consistent: bool | None = True, fail: bool = False) -> None:
        self.filters: list[LiveFilter | None] = []
        self.consistent = consistent
        self.fail = fail

    def __call__(self, flt: LiveFilter | None = None, **kw: Any) -> AllocinfoSnapshot:
        self.filters.append(flt)
        if self.fail:
            raise AllocscopeError("/proc/allocinfo: read failed")
        snap = parse_allocinfo_text(TEXT, "/proc/allocinfo")
        snap.consistent = self.consistent
        if self.consistent is False:
            snap.warnings.append("/proc/allocinfo: the set of tags changed during each of 3 reads")
        return snap


@pytest.fixture
def proc_allocinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in /proc/allocinfo, so "present on this host" holds."""
    p = tmp_path / "allocinfo"
    p.write_text(TEXT)
    monkeypatch.setattr(wc, "PROC_ALLOCINFO", str(p))
    return p


@pytest.mark.parametrize(
    ("sites", "expect"),
    [
        (["xas_alloc"], LiveFilter(functions=("xas_alloc",))),
        (["xas_alloc,alloc_empty_file"], LiveFilter(functions=("xas_alloc", "alloc_empty_file"))),
        (["xas_alloc.constprop.0"], LiveFilter(functions=("xas_alloc",))),  # clone: canonical
        (["lib/xarray.c:378 func:xas_alloc"], LiveFilter(functions=("xas_alloc",))),
        (["lib/xarray.c:378", "lib/xarray.c"], LiveFilter(files=("lib/xarray.c",))),
        (["xas_alloc", "lib/xarray.c:378"], None),  # a mix: a product would miss lines
        (["not a site!"], None),  # resolve_sites reports it
        ([], None),
    ],
)
def test_resolution_filter(sites: list[str], expect: LiveFilter | None) -> None:
    assert wc.resolution_filter(sites) == expect


def _target(function: str) -> wc.SiteTarget:
    return wc.SiteTarget(1, function, [], [], label=function)


def test_join_filter_names_the_targets_unless_exact_tags_are_read() -> None:
    targets = [_target("xas_alloc"), _target("alloc_empty_file"), _target("xas_alloc")]
    assert wc.join_filter(targets, read_tag=False) == LiveFilter(
        functions=("xas_alloc", "alloc_empty_file")
    )
    # an exact tag may be any caller's alloc_hooks tag: the whole text
    assert wc.join_filter(targets, read_tag=True) is None
    assert wc.join_filter([], read_tag=False) is None


def test_resolution_reads_this_host_through_read_live(
    proc_allocinfo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeReadLive()
    monkeypatch.setattr(wc, "read_live", fake)
    snap = wc.allocinfo_for_resolution(wc.Options(sites=["xas_alloc"]))
    assert snap is not None and fake.filters == [LiveFilter(functions=("xas_alloc",))]
    site = next(r.site for r in snap.records if r.site.function == "xas_alloc")
    assert site == Site("lib/xarray.c", 378, "xas_alloc", "")


def test_a_given_file_is_read_as_it_is(
    proc_allocinfo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeReadLive()
    monkeypatch.setattr(wc, "read_live", fake)
    saved = tmp_path / "saved.txt"
    saved.write_text(TEXT)
    opts = wc.Options(sites=["xas_alloc"], allocinfo_file=str(saved))
    snap = wc.allocinfo_for_resolution(opts)
    assert snap is not None and snap.source == str(saved)
    assert wc._allocinfo_now(opts) is None  # a file is the "after" snapshot, read once
    assert fake.filters == []


def test_join_reads_use_the_filter_and_fall_back_to_no_join(
    proc_allocinfo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeReadLive()
    monkeypatch.setattr(wc, "read_live", fake)
    flt = LiveFilter(functions=("xas_alloc",))
    snap = wc._allocinfo_now(wc.Options(sites=["xas_alloc"]), flt)
    assert snap is not None and fake.filters == [flt]
    monkeypatch.setattr(wc, "read_live", FakeReadLive(fail=True))
    assert wc._allocinfo_now(wc.Options(sites=["xas_alloc"]), flt) is None


def test_no_allocinfo_no_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeReadLive()
    monkeypatch.setattr(wc, "read_live", fake)
    monkeypatch.setattr(wc, "PROC_ALLOCINFO", str(tmp_path / "absent"))
    opts = wc.Options(sites=["xas_alloc"])
    assert wc.allocinfo_for_resolution(opts) is None and wc._allocinfo_now(opts) is None
    assert fake.filters == []


def _agent(tmp_path: Path, file: str | None) -> tuple[agent_mod.Agent, io.StringIO]:
    cfg = agent_mod.AgentConfig(
        store=str(tmp_path / "store"), file=file, spool=str(tmp_path / "spool")
    )
    out = io.StringIO()
    return agent_mod.Agent(cfg, out=out), out


@pytest.mark.parametrize("consistent", [True, None, False])
def test_agent_reads_this_host_through_read_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consistent: bool | None
) -> None:
    fake = FakeReadLive(consistent)
    monkeypatch.setattr(agent_mod, "read_live", fake)
    agent, out = _agent(tmp_path, None)
    agent.take()
    assert fake.filters == [None]  # every tag: a snapshot is whole
    assert Store(str(tmp_path / "store")).read("allocinfo").num_rows == 2
    said = "the set of tags changed" in out.getvalue()
    assert said == (consistent is False)  # a read that never settled is said, and kept


def test_agent_reads_a_given_file_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeReadLive()
    monkeypatch.setattr(agent_mod, "read_live", fake)
    saved = tmp_path / "saved.txt"
    saved.write_text(TEXT)
    agent, _ = _agent(tmp_path, str(saved))
    agent.take()
    assert fake.filters == []
    assert Store(str(tmp_path / "store")).read("allocinfo").num_rows == 2
