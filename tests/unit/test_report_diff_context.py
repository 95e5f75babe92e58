"""``report --diff A.json B.json`` on two ``context`` results: compared tag by tag (the ``-n``
biggest tags both hold, or ``--tag``), each with a differential flame graph and a caller
share-change table; tags only in B listed as new (with the callers that appeared), only in A
as gone. Results are built here from planted sample sums by the verb's own payload builder
(collector/context.py ``build_payload``, as tests/support/synth_context.py does), so the
shares and intervals compared are exactly what a capture would have written."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from report_samples import HOST, who_calls_result
from support.synth_context import _ADDR, KSYMS, RATE, TAGS, points

from allocscope.collector import context, context_payload
from allocscope.collector.flame_diff import ShareRow, compare_results, newcombe_interval
from allocscope.collector.result import Result, read_result
from allocscope.collector.site import Site
from allocscope.reports.format import bytes_compact

GONE = Site("mm/vmalloc.c", 400, "vmap_gone")
ALL_TAGS = (*TAGS, GONE)


def tag_name(s: Site) -> str:
    return f"{s.file}:{s.line} func:{s.function}"


def write(path: Path, plan: dict[int, dict[str, int]], **opts: Any) -> Path:
    """``plan``: index into ALL_TAGS -> caller -> sample points (64 bytes per allocation)."""
    tag_addr = {0x10 + i: t for i, t in enumerate(ALL_TAGS)}
    samples = [
        context.RawSample(
            0x10 + i, True, (_ADDR[caller], _ADDR["entry_SYSCALL_64"]), 0, 0, points(n, 64)
        )
        for i, callers in plan.items()
        for caller, n in callers.items()
    ]
    hits = sum(s.sums.hits for s in samples)
    nbytes = int(sum(s.sums.bytes for s in samples))
    raw = context.RawCapture(samples, tag_addr, [hits * 50, 0, 0], [nbytes, 0, 0], hits=hits)
    payload = context_payload.build_payload(
        raw,
        KSYMS,
        context.Options(duration=3.0, callers=5, **opts),
        epochs=[context.Epoch(RATE, 3.0, hits * 50, nbytes, hits)],
        duration=3.0,
        backend="raw_tracepoint",
        tag_mode="exact-tag",
        charge_source="btf",
    ).to_dict()
    Result("context", HOST, 1_700_000_000.0, 3.0, {"duration": 3.0}, payload).write(str(path))
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Tag 0 (biggest): caller_two grows from 20% to 70% of the calls. Tag 1: unchanged.
    Tag 2: only in B (new; caller_three and caller_one). GONE: only in A."""
    a = write(
        tmp_path / "ctx-a.json",
        {
            0: {"caller_one": 800, "caller_two": 200},
            1: {"caller_two": 300},
            3: {"caller_three": 40},
        },
    )
    b = write(
        tmp_path / "ctx-b.json",
        {
            0: {"caller_one": 300, "caller_two": 700},
            1: {"caller_two": 300},
            2: {"caller_three": 90, "caller_one": 30},
        },
    )
    return a, b


def report(cli: Any, *args: str) -> tuple[int, str, str]:
    rc, out, err = cli("report", "--diff", *args)
    return rc, out, err


def cells(table_html: str) -> list[list[str]]:
    return [
        [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>.*?</td>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", table_html.split("<tbody>")[1])
    ]


def tables(page: str, cls: str) -> list[str]:
    return re.findall(rf'<table class="sortable {cls}">.*?</table>', page, re.S)


def test_tags_compared_by_bytes_and_caller_rows_with_intervals(pair: tuple[Path, Path]) -> None:
    a, b = pair
    ra, rb = read_result(str(a)), read_result(str(b))
    d = compare_results((str(a), ra), (str(b), rb))
    t0, t1, t2 = (tag_name(t) for t in TAGS[:3])
    assert [p.a.site for p in d.parts] == [t0, t1]  # in both, biggest first
    assert [o.key for o in d.only_b] == [t2] and [o.key for o in d.only_a] == [tag_name(GONE)]
    assert [r.key for r in d.only_b[0].callers] == ["caller_three", "caller_one"]
    assert d.only_b[0].callers[0].share == pytest.approx(0.75)
    # tag 0: the rows are the payloads' own call shares and intervals, B minus A (Newcombe)
    ch = {c.key: c for c in d.parts[0].changes}
    assert set(ch) == {"caller_one", "caller_two"}

    def row(res: Result, caller: str) -> ShareRow:
        (tag,) = [t for t in res.payload["tags"] if t["tag"] == t0]
        (c,) = [c for c in tag["callers"] if c["caller"] == caller]
        return ShareRow(caller, c["call_share"], c["call_share_low"], c["call_share_high"])

    two = ch["caller_two"]
    assert (two.share_a, two.share_b) == pytest.approx((0.2, 0.7))
    assert (two.ci_low, two.ci_high) == pytest.approx(
        newcombe_interval(row(ra, "caller_two"), row(rb, "caller_two"))
    )
    assert two.significant and two.delta > 0 and ch["caller_one"].delta < 0
    # tag 1: the same shares on both sides, no significant change
    assert all(not c.significant and c.delta == 0 for c in d.parts[1].changes)
    # the per-tag frames: stacks normalised per tag
    f = {fr.path[-1]: fr for fr in d.parts[0].frames}
    assert f["caller_two"].delta == pytest.approx(0.5)


def test_html_new_and_gone_tags_colours_and_legends(
    cli: Any, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "d.html"
    rc, _o, err = report(cli, str(pair[0]), str(pair[1]), "-o", str(out))
    assert rc == 0, err
    page = out.read_text()
    diff = page[page.index('id="diff-0"') : page.index('id="result-0"')]
    t0, t1, t2 = (tag_name(t) for t in TAGS[:3])
    (summary,) = tables(diff, "diff-tags")
    assert [r[0] for r in cells(summary)] == [t0, t1]
    assert cells(summary)[0][3:] == ["caller_two", "+50.00 pp"]
    (new,) = tables(diff, "diff-new")
    # 120 of B's 1420 sample points, each standing for RATE bytes
    share = f"{120 / 1420 * 100:.1f}%"
    callers = "caller_three 75%, caller_one 25%"
    assert cells(new) == [[t2, bytes_compact(120 * RATE), share, "120", callers]]
    (gone,) = tables(diff, "diff-gone")
    assert [r[0] for r in cells(gone)] == [tag_name(GONE)]
    assert [r[4] for r in cells(gone)] == ["caller_three 100%"]
    assert "only in ctx-b.json" in new and "only in ctx-a.json" in gone
    # one differential graph per compared tag, each with its caller table
    assert diff.count('class="flame-wrap flame-diff"') == 2
    assert len(tables(diff, "diff-changes")) == 2
    g0 = diff[diff.index('id="flame-diff-0-0"') : diff.index('id="flame-diff-0-1"')]
    fills = dict(
        (html.unescape(m[1]), m[2])
        for m in re.finditer(r'<g class="f" [^>]*data-n="([^"]*)".*?fill="([^"]+)"', g0)
    )
    assert fills["caller_two"].startswith("hsl(0,") and fills["caller_one"].startswith("hsl(215,")
    legends = re.findall(r'<div class="fg-legend".*?</div>', diff, re.S)
    assert len(legends) == 2
    keys = [re.findall(r"</i>([^<]+)</span>", lg) for lg in legends]
    assert keys[0] == [
        "shrank 50 pp or more",
        "shrank 25 pp",
        "no change",
        "grew 25 pp",
        "grew 50 pp or more",
    ]
    assert keys[1] == ["no change"]  # tag 1's stacks are the same shape on both sides
    changes = cells(tables(diff, "diff-changes")[0])
    assert [r[0] for r in changes] == ["caller_one", "caller_two"]
    assert changes[1][3] == "+50.00 pp" and changes[1][5] == "yes"


def test_top_n_and_tag_select_tags(cli: Any, pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "d.html"
    rc, _o, err = report(cli, str(pair[0]), str(pair[1]), "-n", "1", "-o", str(out))
    assert rc == 0, err
    page = out.read_text()
    assert [r[0] for r in cells(tables(page, "diff-tags")[0])] == [tag_name(TAGS[0])]
    assert "1 more tag(s) in both results not compared (-n 1)" in page
    # --tag by function: just that tag, and nothing new or gone
    rc, _o, err = report(cli, str(pair[0]), str(pair[1]), "--tag", "d_alloc", "-o", str(out))
    assert rc == 0, err
    page = out.read_text()
    assert [r[0] for r in cells(tables(page, "diff-tags")[0])] == [tag_name(TAGS[1])]
    assert not tables(page, "diff-new") and not tables(page, "diff-gone")
    # --tag naming a tag only one side has: listed as new, no graph
    rc, _o, err = report(
        cli, str(pair[0]), str(pair[1]), "--tag", tag_name(TAGS[2]), "-o", str(out)
    )
    assert rc == 0, err
    page = out.read_text()
    assert len(tables(page, "diff-new")) == 1 and "No tag is in both results" in page


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tag", "no_such_function"], "no tag 'no_such_function'"),
        (["--who-calls"], "compare two results of one kind"),
        (["--by-function"], "every tag (by function)"),
    ],
)
def test_refusals_are_one_line(
    cli: Any, pair: tuple[Path, Path], tmp_path: Path, args: list[str], words: str
) -> None:
    a, b = str(pair[0]), str(pair[1])
    if args == ["--who-calls"]:
        b, args = str(who_calls_result(tmp_path / "wc.json")), []
    elif args == ["--by-function"]:
        b = str(write(tmp_path / "f.json", {0: {"caller_one": 5}}, by="function"))
        args = []
    out = tmp_path / "d.html"
    rc, stdout, err = report(cli, a, b, *args, "-o", str(out))
    assert rc != 0 and stdout == "" and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err


def test_tag_without_diff_is_refused(cli: Any, pair: tuple[Path, Path], tmp_path: Path) -> None:
    rc, _o, err = cli(
        "report", "--result", str(pair[0]), "--tag", "d_alloc", "-o", str(tmp_path / "r.html")
    )
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "--tag" in err
    # nor with two who-calls results (one site each: nothing to choose)
    w1, w2 = (who_calls_result(tmp_path / f"w{i}.json") for i in (1, 2))
    rc, _o, err = report(cli, str(w1), str(w2), "--tag", "x", "-o", str(tmp_path / "w.html"))
    assert rc != 0 and err.strip().splitlines() == [
        "allocscope: error: --diff: --tag is for context results, not who-calls results"
    ]


def test_a_result_cut_by_its_own_limit_is_flagged(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A tag "new" in B may only have been below A's -n: the comparison says so."""
    a = tmp_path / "cut.json"
    res = read_result(str(pair[0]))
    payload = json.loads(json.dumps(res.payload))
    payload["tags_total"] = len(payload["tags"]) + 7
    Result("context", HOST, res.start, res.duration, res.settings, payload).write(str(a))
    d = compare_results((str(a), read_result(str(a))), (str(pair[1]), read_result(str(pair[1]))))
    assert any("left out 7 smaller tag(s)" in n and "new" in n for n in d.notes)


def test_browser_draws_each_tag_red_and_blue(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Headless Chromium (as test_report_browser.py): the script runs without errors and the
    first tag's differential graph has both red (caller_two grew) and blue frames on screen."""
    from report_samples import read_png
    from test_report_browser import WIDTH, chromium, console_errors

    from allocscope.cli import main

    out = tmp_path / "d.html"
    assert main(["report", "--diff", str(pair[0]), str(pair[1]), "-o", str(out)]) == 0
    proc = chromium(out.as_uri() + "#selftest", "--dump-dom", f"--window-size={WIDTH},3000")
    assert proc.returncode == 0 and console_errors(proc.stderr) == [], proc.stderr[-2000:]
    assert 'data-js-ready="1"' in proc.stdout
    m = re.search(r'<pre id="selftest-out"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m is not None
    x, y, w, h = json.loads(html.unescape(m[1]))["regions"]["flame-0"]  # tag 0's graph
    shot = tmp_path / "d.png"
    proc = chromium(out.as_uri(), f"--screenshot={shot}", f"--window-size={WIDTH},{y + h + 40}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    width, _height, bpp, rows_ = read_png(shot)
    red = blue = 0
    for yy in range(y, min(y + h, len(rows_))):
        row = rows_[yy]
        for xx in range(max(0, x), min(width, x + w)):
            r, g, b = row[xx * bpp : xx * bpp + 3]
            red += r > 180 and b < 150 and g < 150
            blue += b > 180 and r < 150
    assert red > 500 and blue > 500, (red, blue)
