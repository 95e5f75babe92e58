"""export --prometheus: textfile format, escaping, the cardinality cut, honest totals."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, need

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


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("bad-key", "not a Prometheus label name"),
        ("1abc", "not a Prometheus label name"),
        ('"q', "not a Prometheus label name"),
        ("a b", "not a Prometheus label name"),
        ("__name__", "names starting with '__' are reserved"),
        ("__x", "names starting with '__' are reserved"),
        ("file", "every series already has this label"),
        ("subsystem", "every series already has this label"),
    ],
)
def test_bad_label_names_are_refused(
    tmp_path: Path, fixtures_dir: Path, cli: Cli, key: str, why: str
) -> None:
    """node_exporter drops the whole textfile for one bad name: refuse before writing."""
    f = str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt")
    out_file = tmp_path / "allocinfo.prom"
    rc, out, err = cli(
        "export", "--prometheus", "--file", f, "-o", str(out_file), "--label", f"{key}=v"
    )
    assert rc == 2 and out == "" and not out_file.exists()
    assert err.startswith(f"allocscope: error: --label {key!r}: {why}") and err.count("\n") == 1


def test_label_value_not_utf8_is_refused(cli: Cli, fixtures_dir: Path) -> None:
    f = str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt")
    rc, out, err = cli("export", "--prometheus", "--file", f, "--label", "k=a\udcffb")
    assert rc == 2 and out == "" and "--label 'k': the value is not valid UTF-8" in err


NASTY_VALUES = ['a"b', "back\\slash", "new\nline", "tab\tcr\r", "ünï©ødé", "", "{}=,"]


def test_promtool_accepts_the_output(tmp_path: Path, fixtures_dir: Path, cli: Cli) -> None:
    """The real consumer's parser, not ours: every line of the textfile, nasty label values
    included (node_exporter rejects the whole file for one bad line). CI has promtool
    (Debian package prometheus, installed by scripts/setup)."""
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    f = str(fixtures_dir / "allocinfo-6.12-tmpfs-write.txt")
    out_file = tmp_path / "allocinfo.prom"
    labels = [x for i, v in enumerate(NASTY_VALUES) for x in ("--label", f"k{i}={v}")]
    rc, _, err = cli("export", "--prometheus", "--file", f, "-o", str(out_file), *labels)
    assert rc == 0, err
    # site labels with the same characters, through the renderer directly
    site = tmp_path / "sites.prom"
    samples = [SiteSample(f"f{i}.c", i, v, v, v, 10, 1) for i, v in enumerate(NASTY_VALUES)]
    site.write_text(render(samples))
    for path in (out_file, site):
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=path.read_bytes(),
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode()
    got = {
        k: v
        for name, lab, _ in parse(out_file.read_text())
        for k, v in lab.items()
        if name == "allocinfo_total_bytes"
    }
    # parse_labels strips surrounding whitespace from values (tab/cr included)
    assert got == {f"k{i}": v.strip() for i, v in enumerate(NASTY_VALUES)}


def test_promtool_rejects_what_we_refuse(tmp_path: Path) -> None:
    """The refusal list is the consumer's: promtool fails a textfile with each bad name."""
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    for key in ("bad-key", "1abc", "__name__", "file"):
        text = render([SiteSample("a.c", 1, "f", "", "x", 1, 1)]).replace(
            'subsystem="x"', f'subsystem="x",{key}="v"'
        )
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
        )
        assert check.returncode != 0, key
