"""The SVG flame graph: tree building, layout geometry, escaping, colours, well-formed SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from allocscope.errors import InputError
from allocscope.reports.flamegraph import (
    build_tree,
    frame_color,
    layout,
    parse_folded,
    render_flamegraph,
)

SVG = "{http://www.w3.org/2000/svg}"
FOLDED = {"a;b;c": 6, "a;b;d": 2, "a;e": 2, "f": 10}


def svg_of(block: str) -> ET.Element:
    m = re.search(r"<svg.*</svg>", block, re.S)
    assert m, "no <svg> in the block"
    return ET.fromstring(m.group(0))  # the SVG must be well-formed XML


def frames_of(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "f"]


def test_parse_folded_sums_duplicates_and_names_bad_lines() -> None:
    assert parse_folded(["a;b 3\n", "# comment\n", "\n", "a;b 2\n", "c 1"]) == {"a;b": 5, "c": 1}
    with pytest.raises(InputError) as e:
        parse_folded(["a;b 3\n", "a;b three\n"], "x.folded")
    assert str(e.value).startswith("x.folded:2:")


def test_tree_values_are_inclusive_counts() -> None:
    t = build_tree(FOLDED)
    assert t.value == 20
    assert t.children["a"].value == 10
    assert t.children["a"].children["b"].value == 8
    assert t.children["a"].children["b"].children["c"].value == 6
    # Non-positive counts cannot be drawn and do not change the total.
    assert build_tree({**FOLDED, "z": 0, "y": -3}).value == 20


def test_layout_children_tile_their_parent_biggest_first() -> None:
    frames = layout(build_tree(FOLDED))
    by_name = {f.name: f for f in frames}
    assert by_name["all"].x == 0 and by_name["all"].w == 1
    # Siblings are adjacent, biggest first (a=10 vs f=10 tie -> by name), inside the parent.
    a, f = by_name["a"], by_name["f"]
    assert (a.x, a.w, f.x, f.w) == (0.0, 0.5, 0.5, 0.5)
    b, e = by_name["b"], by_name["e"]
    assert b.x == a.x and e.x == pytest.approx(b.x + b.w)
    c, d = by_name["c"], by_name["d"]
    assert c.x == b.x and d.x == pytest.approx(c.x + c.w) and d.x + d.w <= b.x + b.w + 1e-12
    assert c.depth == 3 and b.depth == 2 and a.depth == 1
    # Every frame's width is its count over the total.
    for fr in frames:
        assert fr.w == pytest.approx(fr.value / 20)


def test_layout_drops_frames_too_narrow_to_see() -> None:
    folded = {"big": 100_000, "tiny;child": 1}
    names = {f.name for f in layout(build_tree(folded), min_frac=0.001)}
    assert "big" in names and "tiny" not in names and "child" not in names


def test_render_geometry_tooltips_and_data_attributes() -> None:
    block = render_flamegraph(FOLDED, title="t", unit="calls", width=1000)
    root = svg_of(block)
    frames = frames_of(root)
    assert len(frames) == len(layout(build_tree(FOLDED)))
    pad = float(root.get("data-pad") or 0)
    inner = 1000 - 2 * pad
    depths = set()
    for g in frames:
        rect = g.find(f"{SVG}rect")
        title = g.find(f"{SVG}title")
        assert rect is not None and title is not None and title.text
        x, w = float(g.get("data-x") or 0), float(g.get("data-w") or 0)
        assert float(rect.get("x") or 0) == pytest.approx(pad + x * inner, abs=0.01)
        assert float(rect.get("width") or 0) == pytest.approx(max(w * inner - 0.5, 0.1), abs=0.02)
        n = g.get("data-n")
        assert n is not None and n in title.text and "calls" in title.text
        depths.add((int(g.get("data-d") or 0), float(rect.get("y") or 0)))
    # Root at the bottom: deeper frames are drawn higher up.
    ys = [y for _d, y in sorted(depths)]
    assert ys == sorted(ys, reverse=True)
    c = next(g for g in frames if g.get("data-n") == "c")
    title = c.find(f"{SVG}title")
    assert title is not None and "6 calls (30.00%)" in (title.text or "")


def test_render_escapes_names_and_redacts_addresses() -> None:
    evil = 'x<script>alert("1")</script>&'
    block = render_flamegraph({f"{evil};0xffffffff81000000;leaf": 3, "ok": 1}, title="<t>")
    assert "<script>" not in block and "ffffffff81000000" not in block
    root = svg_of(block)
    names = [g.get("data-n") for g in frames_of(root)]
    assert evil in names and "[kernel address]" in names


def test_colours_are_stable_and_name_dependent() -> None:
    assert frame_color("xas_alloc") == frame_color("xas_alloc")
    colours = {frame_color(f"fn_{i}") for i in range(50)}
    assert len(colours) > 20
    assert all(re.fullmatch(r"hsl\(\d+,\d+%,\d+%\)", c) for c in colours)


def test_labels_are_clipped_to_the_frame() -> None:
    long = "a_very_long_function_name_that_cannot_fit_in_a_small_frame"
    block = render_flamegraph({long: 1, "other": 99}, title="t", width=400)
    root = svg_of(block)
    g = next(g for g in frames_of(root) if g.get("data-n") == long)
    text = g.find(f"{SVG}text")
    assert text is not None and (text.text or "") != long


def test_empty_input_renders_a_message_not_an_svg() -> None:
    block = render_flamegraph({}, title="nothing <here>")
    assert "<svg" not in block and "nothing &lt;here&gt;" in block
