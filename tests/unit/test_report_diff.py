"""``report --diff A.json B.json``: two who-calls results of one site -> a differential flame
graph (growth red, shrinkage blue, a legend) and caller share changes with Newcombe
intervals; two different sites are refused in one line. Results are generated here (the
report_samples who-calls payload, then a shifted copy)."""

from __future__ import annotations

import copy
import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
from conftest import REPO
from report_samples import HOST, SHMEM, SWAP, read_png, region_stats, who_calls_payload

from allocscope.collector.flame_diff import (
    SIDE_READERS,
    DiffSide,
    ShareRow,
    compare_sides,
    diff_frames,
    newcombe_interval,
)
from allocscope.collector.report_model import ReportData
from allocscope.collector.result import Result
from allocscope.reports.html_diff import sections

XA = "ret_from_fork;kthread;xa_insert;xas_alloc"


def wilson(k: int, n: int, z: float = NormalDist().inv_cdf(0.975)) -> tuple[float, float]:
    """Plain Wilson score interval (no finite-population correction), written out here."""
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return c - h, c + h


def rows(counts: dict[str, int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = sum(counts.values())
    out = []
    for caller, k in counts.items():
        lo, hi = wilson(k, n)
        out.append(
            {
                "site": "xas_alloc",
                "caller": caller,
                "calls": k * 10,
                "samples": k,
                "share": k / n,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return [r for r in out if r["caller"] != "other"], [r for r in out if r["caller"] == "other"]


def write(
    path: Path, folded: dict[str, int], counts: dict[str, int], site: str = "xas_alloc"
) -> Path:
    p = copy.deepcopy(who_calls_payload())
    p["site"] = site
    p["folded"] = folded
    p["callers"], p["other"] = rows(counts)
    Result("who-calls", HOST, 1_700_000_100.0, 30.0, {"sites": [site]}, p).write(str(path))
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A: page cache 900, swap 40, xa_insert 60. B: swap grew to 250 (memory pressure), page
    cache shrank to 700, a new caller (migrate) appeared and xa_insert vanished."""
    a = write(
        tmp_path / "before.json",
        {SHMEM: 900, SWAP: 40, XA: 60},
        {"shmem_add_to_page_cache": 900, "add_to_swap_cache": 40, "xa_insert": 60},
    )
    b = write(
        tmp_path / "after.json",
        {SHMEM: 700, SWAP: 250, "kthread;migrate_pages;xas_alloc": 50},
        {"shmem_add_to_page_cache": 700, "add_to_swap_cache": 250, "migrate_pages": 50},
    )
    return a, b


def report(cli: Any, a: Path, b: Path, out: Path) -> str:
    rc, _o, err = cli("report", "--diff", str(a), str(b), "-o", str(out))
    assert rc == 0, err
    return out.read_text()


def frames_of(page: str) -> dict[str, list[tuple[float, str]]]:
    """frame name -> [(data-delta, fill)] of the differential graph."""
    graph = page[page.index('class="flame-wrap flame-diff"') :]
    graph = graph[: graph.index("</svg>")]
    out: dict[str, list[tuple[float, str]]] = {}
    for m in re.finditer(
        r'<g class="f" [^>]*data-n="([^"]*)" data-delta="([-0-9.]+)">.*?fill="([^"]+)"', graph
    ):
        out.setdefault(html.unescape(m[1]), []).append((float(m[2]), m[3]))
    return out


def test_growth_red_shrinkage_blue_and_a_legend(
    cli: Any, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    page = report(cli, *pair, tmp_path / "d.html")
    f = frames_of(page)
    # swap path: 4% -> 25%: red; page-cache path: 90% -> 70%: blue; xas_store is in both
    (kswapd,) = f["kswapd"]
    assert kswapd[0] == pytest.approx(0.21) and kswapd[1].startswith("hsl(0,")
    (vfs,) = f["vfs_write"]
    assert vfs[0] == pytest.approx(-0.20) and vfs[1].startswith("hsl(215,")
    (gone,) = f["xa_insert"]  # only in A: drawn (mean width), blue
    assert gone[0] == pytest.approx(-0.06) and gone[1].startswith("hsl(215,")
    (new,) = f["migrate_pages"]  # only in B: red
    assert new[0] == pytest.approx(0.05) and new[1].startswith("hsl(0,")
    # the bigger change is the deeper colour (lower lightness)
    light = {k: int(re.findall(r"(\d+)%\)$", v[0][1])[0]) for k, v in f.items() if k != "all"}
    assert light["kswapd"] < light["migrate_pages"]
    # the root is 100% on both sides: no change, neutral
    assert f["all"][0][0] == pytest.approx(0.0) and f["all"][0][1] == "hsl(0,0%,90%)"
    legend = re.search(r'<div class="fg-legend".*?</div>', page, re.S)
    assert legend is not None
    keys = re.findall(
        r'<span class="fg-key"><i style="background:([^"]+)"></i>([^<]+)</span>', legend[0]
    )
    assert [t for _c, t in keys] == [
        "shrank 21 pp or more",
        "shrank 10 pp",
        "no change",
        "grew 10 pp",
        "grew 21 pp or more",
    ]
    assert keys[0][0].startswith("hsl(215,") and keys[-1][0].startswith("hsl(0,")
    assert "after.json minus share in before.json" in legend[0]
    # both results keep their own sections
    assert page.count('class="result kind-who-calls"') == 2


def test_table_of_caller_share_changes_with_newcombe_intervals(
    cli: Any, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    page = report(cli, *pair, tmp_path / "d.html")
    table = re.search(r'<table class="sortable diff-changes">.*?</table>', page, re.S)
    assert table is not None
    body = [
        [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>.*?</td>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", table[0].split("<tbody>")[1])
    ]
    assert [r[0] for r in body] == [
        "add_to_swap_cache",
        "shmem_add_to_page_cache",
        "xa_insert (only in A)",
        "migrate_pages (only in B)",
    ]
    swap = body[0]
    assert swap[1:4] == ["4.0%", "25.0%", "+21.00 pp"] and swap[5] == "yes"
    # the interval, from the two Wilson intervals written out here (Newcombe method 10)
    la, ua = wilson(40, 1000)
    lb, ub = wilson(250, 1000)
    lo = 0.21 - math.hypot(0.25 - lb, ua - 0.04)
    hi = 0.21 + math.hypot(ub - 0.25, 0.04 - la)
    assert swap[4] == f"+{lo * 100:.2f} pp \u2026 +{hi * 100:.2f} pp"
    assert 'class="grew num"' in table[0] and 'class="shrank num"' in table[0]
    # a caller only in B: A's share 0 with the interval of 0 of A's 1000 samples
    mig = body[3]
    assert mig[1] == "0.0%" and mig[2] == "5.0%" and mig[5] == "yes"


def test_no_change_is_not_significant() -> None:
    """The same proportions, k of n in both: the interval straddles 0."""
    a = ShareRow("c", 0.3, *wilson(30, 100))
    lo, hi = newcombe_interval(a, a)
    assert lo < 0 < hi and lo == pytest.approx(-hi)
    # and the frames of identical stacks have zero change everywhere
    assert all(f.delta == 0 for f in diff_frames({"a;b": 3, "a;c": 1}, {"a;b": 30, "a;c": 10}))


def test_two_different_sites_are_refused_in_one_line(cli: Any, tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", {XA: 1}, {"xa_insert": 1})
    b = write(tmp_path / "b.json", {"x;alloc_empty_file": 1}, {"x": 1}, site="alloc_empty_file")
    rc, out, err = cli("report", "--diff", str(a), str(b), "-o", str(tmp_path / "d.html"))
    assert rc != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "same site" in lines[0] and "'xas_alloc'" in lines[0]
    assert not (tmp_path / "d.html").exists()


def test_a_kind_without_stacks_is_refused(cli: Any, tmp_path: Path) -> None:
    from report_samples import overhead_result

    a = write(tmp_path / "a.json", {XA: 1}, {"xa_insert": 1})
    oh = overhead_result(tmp_path / "oh.json")
    rc, _out, err = cli("report", "--diff", str(a), str(oh), "-o", str(tmp_path / "d.html"))
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "no stacks to compare" in err


def test_another_kind_reuses_the_diff_through_its_reader() -> None:
    """A per-tag capture (the coming ``context`` result) only supplies folded stacks and caller
    rows: the comparison and the section are the same code."""

    def side(folded: dict[str, float], share: float, source: str) -> DiffSide:
        lo, hi = wilson(round(share * 200), 200)
        rows = {"f": ShareRow("f", share, lo, hi), "g": ShareRow("g", 1 - share, 1 - hi, 1 - lo)}
        return DiffSide(source, "context", "mm/slub.c:3347", folded, rows, 200.0)

    d = compare_sides(
        side({"f;alloc": 0.8, "g;alloc": 0.2}, 0.8, "x.json"),
        side({"f;alloc": 0.5, "g;alloc": 0.5}, 0.5, "y.json"),
    )
    assert [c.key for c in d.changes] == ["f", "g"] and d.changes[0].significant
    page = "".join(html for _i, _t, html in sections(ReportData("t", 0.0, diffs=[d])))
    assert "fg-legend" in page and "mm/slub.c:3347" in page
    assert "context" not in SIDE_READERS or callable(SIDE_READERS["context"])


def test_browser_draws_red_and_blue(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Headless Chromium (as test_report_browser.py): the script runs, and the screenshot of
    the differential graph has both red and blue frames in it."""
    from test_report_browser import WIDTH, chromium, console_errors

    from allocscope.cli import main

    out = tmp_path / "d.html"
    assert main(["report", "--diff", str(pair[0]), str(pair[1]), "-o", str(out)]) == 0
    proc = chromium(out.as_uri() + "#selftest", "--dump-dom", f"--window-size={WIDTH},2400")
    assert proc.returncode == 0 and console_errors(proc.stderr) == [], proc.stderr[-2000:]
    assert 'data-js-ready="1"' in proc.stdout
    m = re.search(r'<pre id="selftest-out"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m is not None
    x, y, w, h = json.loads(html.unescape(m[1]))["regions"]["flame-0"]  # the diff: first
    shot = tmp_path / "d.png"
    proc = chromium(out.as_uri(), f"--screenshot={shot}", f"--window-size={WIDTH},{y + h + 40}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    keep = REPO / "out" / "test-report-diff-browser.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)
    png = read_png(shot)
    total, ink, _colours = region_stats(png, x, y, w, h)
    assert ink / total > 0.2
    width, _height, bpp, rows_ = png
    red = blue = 0
    for yy in range(y, min(y + h, len(rows_))):
        row = rows_[yy]
        for xx in range(max(0, x), min(width, x + w)):
            r, g, b = row[xx * bpp : xx * bpp + 3]
            red += r > 180 and b < 150 and g < 150
            blue += b > 180 and r < 150
    assert red > 500 and blue > 500, (red, blue)
    assert os.path.getsize(shot) > 0


def test_hostile_names_are_escaped_and_addresses_redacted(cli: Any, tmp_path: Path) -> None:
    from report_samples import EVIL, who_calls_result

    a = who_calls_result(tmp_path / "a.json", evil=True)
    b = who_calls_result(tmp_path / "b.json", evil=True)
    page = report(cli, a, b, tmp_path / "d.html")
    diff = page[page.index('id="diff-0"') : page.index('id="result-0"')]
    assert EVIL not in diff and "<script>alert" not in diff and "&lt;script&gt;" in diff
    assert "0xffffffff81234567" not in diff and "[kernel address]" in diff
