"""export --prometheus: textfile format, escaping, the cardinality cut, honest totals."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from allocscope.collector.allocinfo import read_allocinfo
from allocscope.reports.prometheus import SiteSample, escape_label, render

SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
    r'\\[\\"n])*",?)*)\})? (?P<value>-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """A strict reader of the text exposition format: every line must parse."""
    out = []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not exposition format: {line!r}"
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in LABEL.findall(m["labels"] or "")
        }
        out.append((m["name"], labels, float(m["value"])))
    return out


def test_escaping_roundtrip() -> None:
    nasty = 'a"b\\c\nd'
    assert escape_label(nasty) == 'a\\"b\\\\c\\nd'
    s = [SiteSample("drivers/x.c", 7, "f", nasty, "drivers", 10, 1)]
    samples = parse(render(s))
    assert samples[0][1]["module"] == nasty


def test_top_and_min_bytes_cut_keep_totals(fixtures_dir: Path) -> None:
    snap = read_allocinfo(str(fixtures_dir / "allocinfo-7.3-boot.txt"))
    s = [
        SiteSample(r.site.file, r.site.line, r.site.function, r.site.module, "x", r.bytes, r.calls)
        for r in snap.records
    ]
    text = render(s, top=25, min_bytes=1 << 20)
    got = parse(text)
    by = [x for x in got if x[0] == "allocinfo_bytes"]
    assert 0 < len(by) <= 25 and all(v >= 1 << 20 for _, _, v in by)
    assert [v for *_, v in by] == sorted((v for *_, v in by), reverse=True)
    calls = [x for x in got if x[0] == "allocinfo_calls"]
    assert [x[1] for x in calls] == [x[1] for x in by]
    scalar = {n: v for n, labels, v in got if not labels}
    assert scalar["allocinfo_total_bytes"] == snap.total_bytes
    assert (
        scalar["allocinfo_total_bytes"]
        == sum(v for *_, v in by) + scalar["allocinfo_omitted_bytes"]
    )
    assert (
        scalar["allocinfo_sites"]
        == len(snap.records)
        == len(by) + scalar["allocinfo_omitted_sites"]
    )
    assert "# TYPE allocinfo_bytes gauge" in text


def test_cli_file_and_store(tmp_path: Path, fixtures_dir: Path, cli: Any) -> None:
    f = str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt")
    out_file = tmp_path / "allocinfo.prom"
    rc, out, err = cli(
        "export",
        "--prometheus",
        "--file",
        f,
        "--top",
        "10",
        "-o",
        str(out_file),
        "--label",
        "cluster=c1",
    )
    assert rc == 0 and out == ""
    got = parse(out_file.read_text())
    series = [x for x in got if x[0] == "allocinfo_bytes"]
    assert len(series) == 10
    assert set(series[0][1]) == {"file", "line", "function", "module", "subsystem", "cluster"}
    assert all(x[1]["subsystem"] for x in series)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # from the store: the latest snapshot of a host
    rc, _, _ = cli(
        "collect",
        "--store",
        str(tmp_path / "s"),
        "--once",
        "--file",
        f,
        "--spool",
        str(tmp_path / "sp"),
    )
    assert rc == 0
    rc, out2, _ = cli("export", "--prometheus", "--store", str(tmp_path / "s"), "--top", "10")
    assert rc == 0
    a = [(x[1]["file"], x[1]["line"], x[2]) for x in parse(out2) if x[0] == "allocinfo_bytes"]
    b = [(x[1]["file"], x[1]["line"], x[2]) for x in series]
    assert a == b
    rc, _, err = cli("export", "--prometheus", "--store", str(tmp_path / "s"), "--host", "nope")
    assert rc == 2 and "no snapshot of host 'nope'" in err
