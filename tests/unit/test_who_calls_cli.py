"""who-calls without BPF: argument handling, site resolution, result building, rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocscope.collector.allocinfo import parse_allocinfo
from allocscope.collector.attribution import build_skip_rules
from allocscope.collector.host import collect_host_metadata
from allocscope.collector.kallsyms import Kallsyms, Symbol
from allocscope.collector.payloads import AllocCounts, WhoCallsPayload
from allocscope.collector.result import Result, read_result
from allocscope.collector.site import Site
from allocscope.collector.who_calls import (
    AutoSampler,
    Epoch,
    Options,
    RawCapture,
    auto_sample_rate,
    resolve_sites,
)
from allocscope.collector.who_calls_payload import allocinfo_join, build_payload
from allocscope.errors import AllocscopeError
from allocscope.probes.who_calls import Sample, SiteCounts, backend_candidates, site_of_macro
from allocscope.reports import who_calls as report

BASE = 0xFFFFFFFF81000000
FUNCS = [
    "kmem_cache_alloc_lru_noprof",
    "xas_alloc",
    "xas_create",
    "xas_store",
    "shmem_add_to_page_cache",
    "shmem_get_folio_gfp",
    "add_to_swap_cache",
    "__read_swap_cache_async",
    "xas_alloc.constprop.0",
    "vfs_write",
    "zzz_end",
]
ADDR = {name: BASE + 0x1000 * i for i, name in enumerate(FUNCS)}
ALLOCINFO = """allocinfo - version: 1.0
#     <size>  <calls> <tag info>
    23363584    40562 lib/xarray.c:376 func:xas_alloc
        4096        1 mm/shmem.c:1800 func:shmem_alloc_inode
"""


def ksyms() -> Kallsyms:
    return Kallsyms([Symbol(a, n, "") for n, a in ADDR.items()])


def stack(*names: str) -> tuple[int, ...]:
    return tuple(ADDR[n] + 0x10 for n in names)


def test_help_ends_with_real_examples(cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as e:
        cli("who-calls", "--help")
    assert e.value.code == 0


def test_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    from allocscope.cli import main

    with pytest.raises(SystemExit):
        main(["who-calls", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "allocscope who-calls xas_alloc -d 30" in out
    for flag in (
        "--sample",
        "--budget",
        "--backend",
        "--skip",
        "--depth",
        "--min-share",
        "--per-process",
        "--folded",
        "--allocinfo",
        "--addresses",
        "--workload",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "args",
    [
        ["--sample", "0"],
        ["--sample", "x"],
        ["--budget", "0"],
        ["--budget", "abc"],
        ["--backend", "uprobe"],
        ["--min-share", "2"],
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from allocscope.cli import main

    with pytest.raises(SystemExit) as e:
        main(["who-calls", "xas_alloc", *args])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_bad_skip_and_workload_are_one_line_errors(cli) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = cli("who-calls", "xas_alloc", "--skip", "(", "-d", "1")
    assert rc == 2 and "--skip '('" in err and "Traceback" not in err
    rc, _, err = cli("who-calls", "xas_alloc", "--workload", "nope", "-d", "1")
    assert rc == 2 and "unknown workload 'nope'" in err
    rc, _, err = cli("who-calls", "shmem_alloc_folio", "--pages", "--backend", "kprobe")
    assert rc == 2 and "--backend does not apply" in err and "Traceback" not in err


def test_resolve_function_and_tag() -> None:
    snap = parse_allocinfo(ALLOCINFO.splitlines(keepends=True), "saved.txt")
    by_name = resolve_sites(["xas_alloc"], ksyms(), None)
    assert by_name[0].function == "xas_alloc" and len(by_name[0].ranges) == 2  # + clone
    assert by_name[0].symbols == ["xas_alloc", "xas_alloc.constprop.0"]
    by_tag = resolve_sites(["lib/xarray.c:376"], ksyms(), snap)
    assert by_tag[0].function == "xas_alloc"
    assert by_tag[0].tag_site == Site("lib/xarray.c", 376, "xas_alloc")
    two = resolve_sites(["xas_alloc,shmem_add_to_page_cache"], ksyms(), None)
    assert [t.index for t in two] == [1, 2]


@pytest.mark.parametrize(
    "site,msg",
    [
        ("no_such_fn", "no function 'no_such_fn'"),
        ("lib/xarray.c:999", "no allocinfo line matches"),
        ("bad site!", "bad SITE"),
    ],
)
def test_resolve_errors(site: str, msg: str) -> None:
    snap = parse_allocinfo(ALLOCINFO.splitlines(keepends=True), "saved.txt")
    with pytest.raises(AllocscopeError, match=msg):
        resolve_sites([site], ksyms(), snap)
    with pytest.raises(AllocscopeError, match="no allocinfo is available"):
        resolve_sites(["lib/xarray.c:376"], ksyms(), None)


def test_site_of_macro_covers_every_range() -> None:
    targets = resolve_sites(["xas_alloc,vfs_write"], ksyms(), None)
    expr = site_of_macro(targets)

    def site_of(a: int) -> int:
        return _eval(expr, a)

    assert site_of(ADDR["xas_alloc"] + 5) == 1
    assert site_of(ADDR["xas_alloc.constprop.0"] + 5) == 1
    assert site_of(ADDR["vfs_write"]) == 2
    assert site_of(ADDR["xas_create"]) == 0


def _eval(expr: str, a: int) -> int:
    """Evaluate the generated C ternary chain in Python (structure: (cond?i:rest))."""
    import re

    expr = expr.replace("(a)", str(a)).replace("ULL", "")
    while "?" in expr:
        m = re.search(r"\(\((\d+)>=(0x[0-9a-f]+)&&\d+<(0x[0-9a-f]+)\)\?(\d+):([^()]*)\)", expr)
        assert m, expr
        val, lo, hi, idx, rest = m.groups()
        res = idx if int(lo, 16) <= int(val) < int(hi, 16) else rest
        expr = expr[: m.start()] + res + expr[m.end() :]
    return int(expr)


def test_auto_sample_rate_holds_the_budget() -> None:
    assert auto_sample_rate(0, 1.0, 0.01) == 1
    assert auto_sample_rate(1000, 1.0, 0.01) == 1  # 2 ms/s of walks < 10 ms/s
    n = auto_sample_rate(1_000_000, 1.0, 0.01)
    assert n == 200 and 1_000_000 / n * 2e-6 <= 0.01


def test_backend_candidates_respects_request() -> None:
    t = resolve_sites(["xas_alloc"], ksyms(), None)
    assert backend_candidates(t, "tracepoint") == [("tracepoint", "requested")]
    auto = [b for b, _ in backend_candidates(t, "auto")]
    assert auto[-2:] == ["raw_tracepoint", "tracepoint"]
    with pytest.raises(AllocscopeError):
        backend_candidates(resolve_sites(["xas_alloc,vfs_write"], ksyms(), None), "fentry")


def _raw(sample_rate_counts: tuple[int, int]) -> RawCapture:
    a, b = sample_rate_counts
    return RawCapture(
        counts={
            1: SiteCounts(calls=1000, bytes=584_000, sampled=a + b + 3, stack_err=2, hash_full=1)
        },
        samples=[
            Sample(
                1,
                stack(
                    "kmem_cache_alloc_lru_noprof",
                    "xas_alloc",
                    "xas_create",
                    "xas_store",
                    "shmem_add_to_page_cache",
                    "shmem_get_folio_gfp",
                ),
                0,
                "",
                0xABC,
                a,
                a * 584,
            ),
            Sample(
                1,
                stack(
                    "kmem_cache_alloc_lru_noprof",
                    "xas_alloc.constprop.0",
                    "xas_store",
                    "add_to_swap_cache",
                    "__read_swap_cache_async",
                ),
                0,
                "",
                0xABC,
                b,
                b * 584,
            ),
        ],
        tags={0xABC: Site("lib/xarray.c", 376, "xas_alloc")},
    )


def _payload(
    raw: RawCapture, sample_rate: int | None, epochs: list[Epoch] | None = None, **opt: object
) -> WhoCallsPayload:
    snap_after = parse_allocinfo(ALLOCINFO.splitlines(keepends=True), "after")
    snap_before = parse_allocinfo(
        ALLOCINFO.replace("23363584    40562", "23000000    40000").splitlines(True), "before"
    )
    targets = resolve_sites(["xas_alloc"], ksyms(), None)
    opts = Options(sites=["xas_alloc"], sample=sample_rate, **opt)  # type: ignore[arg-type]
    return build_payload(
        raw,
        targets,
        ksyms(),
        build_skip_rules(["xas_alloc"]),
        opts,
        backend="raw_tracepoint",
        read_tag=True,
        epochs=epochs or [Epoch(sample_rate or 0)],
        duration=2.0,
        before=snap_before,
        after=snap_after,
        notes=[],
    )


def test_payload_contract_and_join() -> None:
    p = _payload(_raw((90, 10)), 10, min_share=0.2).to_dict()  # the JSON written
    for key in (
        "site",
        "backend",
        "total_calls",
        "lost",
        "callers",
        "sampled",
        "sample_rate",
        "duration",
        "allocinfo",
        "folded",
    ):
        assert key in p
    assert p["site"] == "xas_alloc" and p["total_calls"] == 1000 and p["lost"] == 3
    assert p["sampled"] == 100 and p["sample_rate"] == 10
    callers = {c["caller"]: c for c in p["callers"]}
    top = callers["shmem_add_to_page_cache"]
    assert top["share"] == pytest.approx(0.9) and top["calls"] == 900
    assert top["ci_low"] < 0.9 < top["ci_high"]
    assert top["tag"] == "lib/xarray.c:376 func:xas_alloc"
    assert top["bytes"] == 525_600  # 90% of the counted 584,000 bytes
    assert top["joined_bytes"] == round(23363584 * 0.9)
    assert callers["add_to_swap_cache"]["share"] == pytest.approx(0.1)
    join = p["allocinfo"]
    assert join["match"] == "exact-tag"
    assert join["delta"] == {"bytes": 363584, "calls": 562}
    assert p["other"][0]["callers"] == 1
    folded = p["folded"]
    assert (
        folded[
            "shmem_get_folio_gfp;shmem_add_to_page_cache;xas_store;xas_create;"
            "xas_alloc;kmem_cache_alloc_lru_noprof"
        ]
        == 90
    )


def test_census_reports_exact_counts() -> None:
    raw = _raw((900, 100))
    raw.counts[1].calls = 1000
    top = _payload(raw, 1).callers[0]
    assert top.calls == 900 and top.ci_low == top.ci_high == 0.9


def test_render_table_json_folded_and_result_roundtrip(tmp_path: Path) -> None:
    p = _payload(_raw((90, 10)), 10, min_share=0.2)
    text = report.text(p, {"interrupted": True})
    assert "backend raw_tracepoint" in text and "(interrupted)" in text
    assert "shmem_add_to_page_cache" in text and "other (1 callers < 20.0%)" in text
    assert "lib/xarray.c:376 func:xas_alloc" in text and "0xffffffff" not in text
    assert json.loads(report.json_text(p))["callers"][0]["caller"] == "shmem_add_to_page_cache"
    lines = report.folded(p).splitlines()
    assert lines[0].endswith(" 90") and lines[0].startswith("shmem_get_folio_gfp;")
    out = tmp_path / "r.json"
    Result.of(p, collect_host_metadata({}), 1.0, 2.0, {"interrupted": False}).write(str(out))
    back = read_result(str(out), "who-calls")
    assert back.typed(WhoCallsPayload) == p
    assert back.payload == json.loads(json.dumps(p.to_dict()))


def test_addresses_only_on_request() -> None:
    p = _payload(_raw((90, 10)), 10)
    assert p.callers[0].caller_address is None
    assert "caller_address" not in p.to_dict()["callers"][0]
    assert "0x" not in "".join(p.folded)
    q = _payload(_raw((90, 10)), 10, addresses=True)
    assert (q.callers[0].caller_address or "").startswith("0xffffffff")


def test_auto_sampler_rises_fast_and_falls_slowly() -> None:
    a = AutoSampler(0.01)
    # calibration -> the first sampled epoch, for a quarter of the budget: 2k events/s
    # walked 1 in 2 (1 in 1 would be 0.4% of a CPU, over 0.25%)
    assert a.next_rate(0, 1000, 0.5) == 2
    assert a.next_rate(2, 1000, 1.0) == 1  # then down to the budget's N (1k/s: every stack)
    first = a.next_rate(0, 500_000, 0.5)  # 1M events/s: the budget's N is 200
    assert first == 800
    assert a.next_rate(first, 1_000_000, 1.0) == 400  # halving towards it, one step a period
    assert a.next_rate(400, 1_000_000, 1.0) == 200
    assert a.next_rate(1, 1_000_000, 1.0) == 200  # a burst: up at once
    assert a.next_rate(200, 0, 1.0) == 100  # idle: at most halve per period
    assert a.next_rate(200, 900_000, 1.0) == 200  # within 25%: no new epoch


def test_samples_are_weighted_by_their_epoch() -> None:
    """Caller A sampled 1-in-1 while quiet, caller B 1-in-100 during a burst.

    Raw sample counts say A 50%; the events say B made 100x more calls than its samples.
    """
    raw = RawCapture(
        counts={1: SiteCounts(calls=10_100, bytes=0, sampled=200)},
        samples=[
            Sample(
                1,
                stack("kmem_cache_alloc_lru_noprof", "xas_alloc", "add_to_swap_cache"),
                0,
                "",
                0,
                100,
                0,
                epoch=1,
            ),
            Sample(
                1,
                stack("kmem_cache_alloc_lru_noprof", "xas_alloc", "shmem_add_to_page_cache"),
                0,
                "",
                0,
                100,
                0,
                epoch=2,
            ),
        ],
        tags={},
    )
    p = _payload(raw, None, [Epoch(0, 0.5, 0), Epoch(1, 1.0, 100), Epoch(100, 1.0, 0)]).to_dict()
    by = {c["caller"]: c for c in p["callers"]}
    assert by["shmem_add_to_page_cache"]["share"] == pytest.approx(100 / 101)
    assert by["add_to_swap_cache"]["calls"] == 100
    assert by["add_to_swap_cache"]["ci_low"] < 1 / 101 < by["add_to_swap_cache"]["ci_high"]
    assert p["sample_mode"] == "auto" and p["sample_rate"] == 100
    assert [e["n"] for e in p["sample_epochs"]] == [0, 1, 100]
    assert p["sample_epochs"][-1]["events"] == 10_000


def test_allocinfo_join_modes() -> None:
    snap = parse_allocinfo(ALLOCINFO.splitlines(keepends=True), "saved.txt")
    none = allocinfo_join(None, snap, None, "shmem_add_to_page_cache")
    assert none is not None and none.tags == () and none.after is None
    by_name = allocinfo_join(None, snap, None, "xas_alloc")
    assert by_name is not None and by_name.match == "function-name"
    assert by_name.after == AllocCounts(bytes=23363584, calls=40562) and by_name.delta is None
    line = allocinfo_join(None, snap, Site("lib/xarray.c", 376, "xas_alloc"), "xas_alloc")
    assert line is not None and line.match == "allocinfo-line"
    assert allocinfo_join(None, None, None, "xas_alloc") is None
    p = _payload(_raw((90, 10)), 10)
    assert "allocinfo: no line" not in report.header(p)


def test_allocinfo_file_is_strict_unless_lenient(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A garbage line in --allocinfo is a one-line error naming file:line, before any BPF;
    --lenient skips it and says how many lines it skipped."""
    from allocscope.collector.who_calls import allocinfo_for_resolution

    p = tmp_path / "a.txt"
    p.write_text(ALLOCINFO + "garbage here\n\x00\x01 nonsense 12\n")
    rc, out, err = cli("who-calls", "lib/xarray.c:376", "-d", "0.1", "--allocinfo", str(p))
    assert rc == 2 and out == ""
    assert err.startswith(f"allocscope: error: {p}:5: ") and err.count("\n") == 1, err
    logged: list[str] = []
    opts = Options(sites=["lib/xarray.c:376"], allocinfo_file=str(p), lenient=True)
    snap = allocinfo_for_resolution(opts, logged.append)
    assert snap is not None and len(snap.records) == 2
    assert logged == [f"allocscope: warning: {p}: skipped 2 malformed lines (--lenient)"]
    with pytest.raises(AllocscopeError, match=f"{p}:5: "):
        allocinfo_for_resolution(Options(sites=[], allocinfo_file=str(p)), logged.append)
