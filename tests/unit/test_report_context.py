"""report: the context and lifespan sections, from result files and from a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import synth
from support.synth import FleetSpec, host_metadata
from support.synth_context import TAGS, context_result, lifespan_result

from allocscope.collector.payloads import ContextPayload


def test_result_sections(tmp_path: Path, cli: Any) -> None:
    host = host_metadata(0, 0, FleetSpec())
    ctx, life = (
        context_result(0, host, synth.START, 60.0),
        lifespan_result(0, host, synth.START, 60.0),
    )
    ctx.write(str(tmp_path / "c.json"))
    life.write(str(tmp_path / "l.json"))
    out = tmp_path / "r.html"
    rc, _, err = cli(
        "report",
        "--result",
        str(tmp_path / "c.json"),
        "--result",
        str(tmp_path / "l.json"),
        "-o",
        str(out),
    )
    assert rc == 0, err
    html = out.read_text()
    assert "allocinfo with callers" in html
    p = ctx.typed(ContextPayload, "c.json")
    for j, t in enumerate(p.tags):  # a callers table and a flame graph per top tag
        assert f"callers of <code>{t.tag}</code>" in html
        assert f"flame-context-0-{j}" in html
    assert "lifespans of " in html and "leaks: outstanding" in html
    # the leaked caller is in the leaks table, the others are not
    leaks = html.split("leaks: outstanding", 1)[1]
    assert "caller_one" in leaks and "caller_two" not in leaks


def test_store_sections(tmp_path: Path, cli: Any) -> None:
    synth.populate(str(tmp_path / "s"), FleetSpec(hosts=4, sites=5, snapshots=2), str(tmp_path))
    out = tmp_path / "f.html"
    rc, _, err = cli("report", "--store", str(tmp_path / "s"), "-o", str(out))
    assert rc == 0, err
    html = out.read_text()
    fleet = html.split('id="fleet-context"', 1)[1].split("</section>", 1)[0]
    for t in TAGS:
        assert t.tag in fleet
    assert "caller_one" in fleet and "flame-fleet-context-0" in fleet
    assert "charged vs uncharged bytes per subsystem" in fleet
    life = html.split('id="fleet-lifespan"', 1)[1].split("</section>", 1)[0]
    assert "lifespan distributions per tag" in life and "caller_one" in life
