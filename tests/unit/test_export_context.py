"""export --prometheus of context rates: a result file and the store's latest interval; the
top-N cut keeps the sums true through tag="other"; promtool accepts the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from support import synth
from support.synth import FleetSpec, host_metadata
from support.synth_context import context_result

from allocscope.collector.payloads import ContextPayload
from allocscope.collector.store import Store


@pytest.fixture
def result_file(tmp_path: Path) -> tuple[str, ContextPayload]:
    res = context_result(0, host_metadata(0, 0, FleetSpec()), synth.START, 60.0)
    path = str(tmp_path / "context.json")
    res.write(path)
    return path, res.typed(ContextPayload, path)


LINE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Sample lines as (name, labels, value); every non-comment line must be one."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not exposition format: {line!r}"
        out.append((m[1], dict(LABEL.findall(m[2] or "")), float(m[3])))
    return out


def series(text: str, name: str) -> dict[str, float]:
    return {lab["tag"]: v for n, lab, v in parse(text) if n == name}


def test_result_rates_and_other(result_file: tuple[str, ContextPayload], cli: Any) -> None:
    path, p = result_file
    rc, out, err = cli("export", "--prometheus", "--result", path, "--top", "1")
    assert rc == 0, err
    bps = series(out, "allocscope_context_bytes_per_second")
    top = max(p.tags, key=lambda t: t.bytes_per_s)
    assert set(bps) == {top.tag, "other"}  # cardinality: top 1 + other
    assert bps[top.tag] == pytest.approx(top.bytes_per_s)
    assert sum(bps.values()) == pytest.approx(sum(t.bytes_per_s for t in p.tags))
    share = series(out, "allocscope_context_charged_share")
    assert share[top.tag] == pytest.approx(top.charged_share)
    omitted = [v for n, _, v in parse(out) if n == "allocscope_context_omitted_tags"]
    assert omitted == [len(p.tags) - 1]


def test_store_latest_interval(tmp_path: Path, cli: Any) -> None:
    synth.populate(str(tmp_path / "s"), FleetSpec(hosts=2, sites=5, snapshots=2), str(tmp_path))
    rows = Store(str(tmp_path / "s")).read("context").to_pylist()
    mine = [r for r in rows if r["hostname"] == "host00001" and r["row_kind"] == "tag"]
    last = max(r["taken_at"] for r in mine)
    want = {r["tag"]: r["calls"] / r["interval_s"] for r in mine if r["taken_at"] == last}
    rc, out, err = cli(
        "export",
        "--prometheus",
        "--store",
        str(tmp_path / "s"),
        "--context",
        "--host",
        "host00001",
    )
    assert rc == 0, err
    assert series(out, "allocscope_context_calls_per_second") == pytest.approx(want)
    rc, _, err = cli(
        "export", "--prometheus", "--store", str(tmp_path / "s"), "--context", "--host", "nope"
    )
    assert rc != 0 and "no context interval of host 'nope'" in err


def test_promtool_accepts_context_metrics(
    result_file: tuple[str, ContextPayload], tmp_path: Path, cli: Any
) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    out_file = tmp_path / "context.prom"
    rc, _, err = cli(
        "export",
        "--prometheus",
        "--result",
        result_file[0],
        "--top",
        "2",
        "-o",
        str(out_file),
        "--label",
        'k=a"b\\c',
    )
    assert rc == 0, err
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=out_file.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr.decode()
    rc, _, err = cli("export", "--prometheus", "--result", result_file[0], "--label", "tag=x")
    assert rc == 2 and "already has this label" in err
