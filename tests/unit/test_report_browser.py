"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``).

Three checks: the inlined script runs without errors (it marks ``<html data-js-ready>``;
any uncaught error sets ``data-js-error`` and Chromium logs it); its flame-graph zoom and
search work (the ``#selftest`` fragment makes the page exercise them and report in
``#selftest-out``, together with each chart's position on the page); and the charts really
render (a screenshot, decoded with zlib, has ink where each chart is). The screenshot is kept
in the test's tmp dir and copied to ``out/test-report-browser.png``.

Locally a missing Chromium skips; with CI=true it fails (conftest.need).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, need
from report_samples import (
    ingest_results,
    make_store,
    overhead_result,
    read_png,
    region_stats,
    who_calls_result,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1400


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    need(os.access(CHROMIUM, os.X_OK), "chromium not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="allocscope-chromium-") as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from allocscope.cli import main

    d = tmp_path_factory.mktemp("browser")
    store = make_store(d / "store", hosts=6, sites=40, snapshots=4)
    ingest_results(store, d)
    wc = who_calls_result(d / "wc.json", evil=True)
    oh = overhead_result(d / "oh.json")
    out = d / "report.html"
    rc = main(["report", "--store", str(store), "--result", str(wc), str(oh), "-o", str(out)])
    assert rc == 0
    return out


def console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)
    ]


def test_script_runs_and_flame_graph_zoom_and_search_work(report: Path) -> None:
    proc = chromium(report.as_uri() + "#selftest", "--dump-dom", f"--window-size={WIDTH},3000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert console_errors(proc.stderr) == []
    root = re.search(r"<html[^>]*>", dom)
    assert root is not None
    assert 'data-js-ready="1"' in root.group(0), "report.js did not finish initialising"
    assert "data-js-error" not in root.group(0), root.group(0)
    m = re.search(r'<pre id="selftest-out"[^>]*>(.*?)</pre>', dom, re.S)
    assert m and m.group(1).strip(), "self-test produced no output"
    st = json.loads(html.unescape(m.group(1)))
    assert st["flames"] == 2  # the store's merged who-calls and the --result one
    z = st["zoom"]
    # The clicked frame now spans the whole graph; frames outside it are hidden.
    assert z["width"] == pytest.approx(z["inner"] - 0.5, abs=0.05)
    assert z["hidden"] > 0
    # Searching the frame's own name matches at least that frame's share.
    assert st["search"]["matched"] >= st["search"]["expected"] - 1e-9
    for fig in (
        "chart-subsystems",
        "chart-bars",
        "chart-trend",
        "chart-groups",
        "chart-fleet-overhead",
        "flame-0",
        "flame-1",
    ):
        assert fig in st["regions"], f"{fig} missing from the page"


def test_screenshot_shows_the_charts(report: Path, tmp_path: Path) -> None:
    proc = chromium(report.as_uri() + "#selftest", "--dump-dom", f"--window-size={WIDTH},3000")
    m = re.search(r'<pre id="selftest-out"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m, proc.stderr[-2000:]
    regions = json.loads(html.unescape(m.group(1)))["regions"]
    height = min(12000, max(y + h for x, y, w, h in regions.values()) + 40)
    shot = tmp_path / "report.png"
    proc = chromium(report.as_uri(), f"--screenshot={shot}", f"--window-size={WIDTH},{height}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    keep = REPO / "out" / "test-report-browser.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)
    png = read_png(shot)
    assert png[0] == WIDTH
    for name in (
        "chart-subsystems",
        "chart-bars",
        "chart-trend",
        "chart-groups",
        "chart-fleet-overhead",
        "flame-0",
        "flame-1",
    ):
        x, y, w, h = regions[name]
        assert w > 200 and h > 50, (name, regions[name])
        total, ink, colours = region_stats(png, x, y, w, h)
        assert total > 0
        assert ink / total > 0.02, f"{name} looks blank: {ink}/{total} non-white pixels"
        assert colours >= 4, f"{name} has only {colours} colours"
    # The flame graph is mostly frames: much more ink than a sparse line chart.
    x, y, w, h = regions["flame-0"]
    total, ink, colours = region_stats(png, x, y, w, h)
    assert colours >= 8
    # A strip of page margin right of the charts stays blank: the check can tell blank apart.
    total, ink, _ = region_stats(png, WIDTH - 30, 0, 20, height)
    assert ink / total < 0.2
