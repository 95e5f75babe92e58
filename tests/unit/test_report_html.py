"""``allocscope report``: what the page contains for each input, computed independently.

Expected numbers come from reading the same inputs another way (the allocinfo parser, pyarrow
over the store files), never from constants.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from conftest import Cli
from report_samples import EVIL, ingest_results, make_store, overhead_result, who_calls_result

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.collector.containers import container_kind
from allocscope.collector.report_data import gather
from allocscope.collector.rollup import container_group
from allocscope.collector.subsystem import default_map
from allocscope.reports.format import bytes_compact
from allocscope.reports.html import render_report

FIXTURE = "allocinfo-6.12-tmpfs-write.txt"


def text_of(page: str) -> str:
    """Visible-ish text: tags stripped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}".*?</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(0)


def assert_self_contained(page: str) -> None:
    assert page.count("<script>") == 1 and page.count("<style>") == 1
    assert "<script src" not in page and "<link" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


def test_file_report_matches_the_allocinfo_parser(
    cli: Cli, fixtures_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "host.html"
    rc, _out, err = cli("report", "--file", str(fixtures_dir / FIXTURE), "-o", str(out), "-n", "5")
    assert rc == 0, err
    page = out.read_text()
    assert_self_contained(page)
    snap = read_allocinfo(str(fixtures_dir / FIXTURE))
    top = sorted(snap.records, key=lambda r: -r.bytes)[:5]
    sites = section(page, "top-sites")
    rows = re.findall(r"<tr>(.*?)</tr>", sites.split("<tbody>")[1], re.S)
    assert len(rows) == 5
    for rec, row in zip(top, rows, strict=True):
        assert html.escape(rec.site.key) in row and f'data-v="{rec.bytes}"' in row
    # Subsystem chart: the largest subsystem and its bytes, as the subsystem map says
    # (container tags, slab pages, are their own group: not mm's memory).
    by_sub: dict[str, int] = defaultdict(int)
    m = default_map()
    for r in snap.records:
        kind = container_kind(r.site)
        key = container_group(kind) if kind else m.classify(r.site.file, r.site.function)
        by_sub[key] += r.bytes
    biggest, nbytes = max(by_sub.items(), key=lambda kv: kv[1])
    chart = section(page, "subsystems")
    assert f"{biggest}: {bytes_compact(nbytes)}" in html.unescape(chart)
    # One snapshot: no trend, no changes, no groups.
    for absent in ('id="trend"', 'id="top-changes"', 'id="groups"'):
        assert absent not in page


def test_two_files_are_two_snapshots_with_changes(fixtures_dir: Path) -> None:
    a, b = str(fixtures_dir / FIXTURE), str(fixtures_dir / "allocinfo-7.3-boot.txt")
    data = gather(title="t", files=[a, b], top_n=10)
    assert len(data.hosts) == 1 and data.hosts[0].snapshots == 2
    assert data.bars is not None and data.bars.columns == [Path(a).name, Path(b).name]
    assert data.trend is not None and len(data.trend.times) == 2
    # Changes by line-free key, computed here from the two parses.
    first: defaultdict[str, int] = defaultdict(int)
    last: defaultdict[str, int] = defaultdict(int)
    for r in read_allocinfo(a).records:
        first[r.site.loose_key] += r.bytes
    for r in read_allocinfo(b).records:
        last[r.site.loose_key] += r.bytes
    deltas = {k: last[k] - first[k] for k in set(first) | set(last) if last[k] != first[k]}
    want = sorted(deltas.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:10]
    assert [c.delta_bytes for c in data.top_changes] == [d for _k, d in want]


def test_store_report_hosts_groups_trend_and_sites(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", hosts=6, sites=30, snapshots=3)
    data = gather(title="fleet", store=str(store), top_n=5)
    table = ds.dataset(str(store / "allocinfo"), format="parquet", partitioning="hive").to_table()
    hosts = sorted(set(table["hostname"].to_pylist()))
    assert [h.hostname for h in data.hosts] == hosts
    assert all(h.snapshots == 3 for h in data.hosts)
    assert {h.labels["group"] for h in data.hosts} == {"pilot", "control"}
    # Top site: sum over each host's latest snapshot, computed with pyarrow.
    latest = table.group_by("hostname").aggregate([("taken_at", "max")])
    per_site: dict[str, int] = defaultdict(int)
    last_t = dict(
        zip(latest["hostname"].to_pylist(), latest["taken_at_max"].to_pylist(), strict=True)
    )
    for h, t, k, b in zip(
        table["hostname"].to_pylist(),
        table["taken_at"].to_pylist(),
        table["site_key"].to_pylist(),
        table["bytes"].to_pylist(),
        strict=True,
    ):
        if t == last_t[h]:
            per_site[k] += b
    want = sorted(per_site.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(s.site_key, s.bytes) for s in data.top_sites] == want
    # Pilot vs control: mean of per-host latest totals in each group.
    groups = data.groups
    assert groups is not None
    tot = {h.hostname: h.bytes for h in data.hosts}
    pilot = [tot[h] for h in groups.pilot_hosts]
    control = [tot[h] for h in groups.control_hosts]
    assert groups.total.pilot_mean == pytest.approx(sum(pilot) / len(pilot))
    assert groups.total.control_mean == pytest.approx(sum(control) / len(control))
    # Trend: one point per collection round, each the mean over all hosts.
    assert data.trend is not None and len(data.trend.times) == 3
    first_t = table.group_by("hostname").aggregate([("taken_at", "min")])
    t0 = dict(
        zip(first_t["hostname"].to_pylist(), first_t["taken_at_min"].to_pylist(), strict=True)
    )
    round0: dict[str, float] = defaultdict(float)
    for h, t, sub, b in zip(
        table["hostname"].to_pylist(),
        table["taken_at"].to_pylist(),
        table["subsystem"].to_pylist(),
        table["bytes"].to_pylist(),
        strict=True,
    ):
        if t == t0[h]:
            round0[sub] += b / len(hosts)
    for sub, values in data.trend.values.items():
        if sub != "other subsystems":
            assert values[0] == pytest.approx(round0[sub])
    page = render_report(data)
    assert_self_contained(page)
    for sid in ("hosts", "subsystems", "trend", "groups", "top-sites", "top-changes"):
        assert f'<section id="{sid}"' in page
    assert page.count('class="bar"') == 6  # one stacked bar per host


def test_store_ignores_snapshots_without_a_hosts_commit_row(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", hosts=2, sites=10, snapshots=2)
    hosts_files = sorted((store / "hosts").rglob("*.parquet"))
    hosts_files[-1].unlink()  # a crash after the allocinfo write, before the commit row
    data = gather(title="t", store=str(store))
    assert sum(h.snapshots for h in data.hosts) == 3


def test_store_without_hosts_dataset_reads_labels_from_snapshot_files(tmp_path: Path) -> None:
    """Snapshot files (``allocscope snapshot`` output) copied into the layout by hand."""
    import pyarrow.parquet as pq
    from support.synth import FleetSpec, fleet

    store = tmp_path / "store"
    day = store / "allocinfo" / "dt=2026-11-29"
    day.mkdir(parents=True)
    for host, taken, table in fleet(FleetSpec(hosts=4, sites=10, snapshots=2)):
        pq.write_table(table, day / f"part-{host.hostname}-{int(taken)}.parquet")
    data = gather(title="t", store=str(store))
    assert len(data.hosts) == 4 and data.groups is not None
    assert all(h.labels.get("group") in ("pilot", "control") for h in data.hosts)


def test_who_calls_result_flame_graph_and_callers(cli: Cli, tmp_path: Path) -> None:
    wc = who_calls_result(tmp_path / "wc.json", evil=True)
    out = tmp_path / "wc.html"
    rc, _o, err = cli("report", "--result", str(wc), "-o", str(out))
    assert rc == 0, err
    page = out.read_text()
    assert_self_contained(page)
    payload = json.loads(wc.read_text())["payload"]
    # Every caller row is in the table, with its share as a percentage.
    body = section(page, "result-0")
    for c in payload["callers"] + payload["other"]:
        assert html.escape(c["caller"]) in body
        assert f'data-v="{c["share"]!r}"' in body
    # The flame graph has one frame per distinct (prefix) path, all stacks together.
    frames = re.findall(r'<g class="f"', body)
    prefixes = {
        ";".join(s.split(";")[:i])
        for s in payload["folded"]
        for i in range(1, len(s.split(";")) + 1)
    }
    assert 0 < len(frames) <= len(prefixes) + 1
    total = sum(payload["folded"].values())
    assert f'data-total="{total}"' in body
    # Hostile names are escaped; raw kernel addresses never reach the page.
    assert EVIL not in page and html.escape(EVIL) in page
    assert "ffffffff81234567" not in page


def test_overhead_result_functions_table(tmp_path: Path) -> None:
    oh = overhead_result(tmp_path / "oh.json")
    data = gather(title="t", results=[str(oh)])
    page = render_report(data)
    payload = json.loads(oh.read_text())["payload"]
    body = section(page, "result-0")
    present = [f for f in payload["functions"] if f["present"]]
    assert present
    for f in present:
        assert html.escape(f["function"]) in body
        if f["inclusive_share"] is not None:
            assert f'data-v="{f["inclusive_share"]!r}"' in body
    absent = [f["function"] for f in payload["functions"] if not f["present"]]
    assert "Not in this kernel" in body and absent[0] in body
    assert 'id="chart-overhead-0"' in body


def test_unknown_payload_shapes_render_generically(tmp_path: Path) -> None:
    from report_samples import HOST

    from allocscope.collector.result import Result

    p = tmp_path / "ab.json"
    Result(
        kind="ab",
        host=HOST,
        start=1.0,
        duration=2.0,
        payload={
            "comparisons": [],
            "verdicts": [],
            "verdict": "pilot spends +41%",
            "rows": [{"function": "f<1>", "ratio": 1.41}],
            "nested": {"deep": {"x": 1}},
        },
    ).write(str(p))
    page = render_report(gather(title="t", results=[str(p)]))
    t = text_of(section(page, "result-0"))
    assert "pilot spends +41%" in t and "f<1>" in t and "1.410" in t


def test_stdout_and_errors(cli: Cli, tmp_path: Path) -> None:
    rc, _o, err = cli("report", "-o", str(tmp_path / "x.html"))
    assert rc == 2 and "nothing to report" in err
    rc, _o, err = cli("report", "--file", str(tmp_path / "missing.txt"), "-o", "-")
    assert rc == 2 and "missing.txt: no such file" in err and "Traceback" not in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1,\n "kind": ')
    rc, _o, err = cli("report", "--result", str(bad), "-o", "-")
    assert rc == 2 and f"{bad}:2:" in err
    badtxt = tmp_path / "bad.txt"
    badtxt.write_text("allocinfo - version: 1.0\n  12 1 mm/x.c:1 func:f\nnonsense line\n\n")
    rc, _o, err = cli("report", "--file", str(badtxt), "-o", "-")
    assert rc == 2 and f"{badtxt}:3:" in err
    rc, _o, err = cli("report", "--store", str(tmp_path), "-o", "-")
    assert rc == 2 and "no allocinfo snapshots" in err
    wc = who_calls_result(tmp_path / "wc.json")
    rc, out, err = cli("report", "--result", str(wc), "-o", "-")
    assert rc == 0 and out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert not list(tmp_path.glob("*.html"))


def test_store_results_are_merged_across_hosts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    paths = ingest_results(store, tmp_path)
    data = gather(title="t", store=str(store))  # a store with results only
    assert not data.hosts
    (fc,) = data.fleet_callers
    payloads = [json.loads(p.read_text())["payload"] for p in paths if p.name.startswith("wc")]
    assert fc.site == "xas_alloc" and fc.results == 4 and fc.hosts == 4
    assert fc.total_calls == sum(p["total_calls"] for p in payloads)
    want_calls: dict[str, int] = defaultdict(int)
    for p in payloads:
        for c in p["callers"]:
            want_calls[c["caller"]] += c["calls"]
    assert {c["caller"]: c["calls"] for c in fc.callers} == want_calls
    assert sum(fc.folded.values()) == sum(sum(p["folded"].values()) for p in payloads)
    fo = data.fleet_overhead
    assert fo is not None and fo.hosts == 4 and fo.grouped
    ohs = [json.loads(p.read_text())["payload"] for p in paths if p.name.startswith("oh")]
    row = next(r for r in fo.rows if r["function"] == "__alloc_pages_noprof")

    def ns(i: int) -> float:
        row = next(f for f in ohs[i]["functions"] if f["function"] == "__alloc_pages_noprof")
        return float(row["ns_per_call"])

    assert row["pilot_ns_per_call"] == pytest.approx((ns(0) + ns(2)) / 2)  # median of two
    assert row["control_ns_per_call"] == pytest.approx((ns(1) + ns(3)) / 2)
    assert row["ns_per_call_ratio"] == pytest.approx(
        row["pilot_ns_per_call"] / row["control_ns_per_call"]
    )
    page = render_report(data)
    for sid in ("fleet-callers", "fleet-overhead"):
        assert f'<section id="{sid}"' in page
    assert 'id="flame-fleet-0"' in page and 'id="chart-fleet-overhead"' in page


def test_snapshot_parquet_file_carries_its_host_and_labels(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    from report_samples import HOST

    from allocscope.collector.snapshot import write_snapshot

    snap = read_allocinfo(str(fixtures_dir / FIXTURE))
    snap.taken_at = 1_700_000_500.0
    path = tmp_path / "snap.parquet"
    write_snapshot(str(path), snap, HOST)
    data = gather(title="t", files=[str(path)], top_n=3)
    (host,) = data.hosts
    assert host.hostname == HOST.hostname and host.labels == HOST.labels
    assert host.kernel_release == HOST.kernel_release
    assert host.last_t == pytest.approx(snap.taken_at)
    assert host.bytes == snap.total_bytes and host.sites == len(snap.records)


def test_characters_invalid_in_xml_never_reach_the_page(tmp_path: Path) -> None:
    """A name from a result file may hold any code point; the page stays well-formed."""
    import xml.etree.ElementTree as ET

    wc = who_calls_result(tmp_path / "wc.json")
    data = gather(title="t\x00itle", results=[str(wc)])
    payload = data.results[0].result.payload
    bad = "sh\x01mem\x1b[31m\ud800\ufffe\x85"
    payload["callers"][0]["caller"] = bad
    payload["folded"][f"{bad};xas_alloc"] = 7
    page = render_report(data)
    page.encode("utf-8")  # a lone surrogate would fail the write of the report
    invalid = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
    assert not invalid.search(page)
    shown = html.unescape(page)
    assert "sh\\x01mem\\x1b[31m\\ud800\\ufffe\\x85" in shown and "t\\x00itle" in shown
    charts = re.findall(r"<svg\b.*?</svg>", page, re.S)
    assert len(charts) >= 2  # the caller-share chart and the flame graph
    for chart in charts:
        ET.fromstring(chart)  # raises on a character XML forbids
