"""The HTML report's comparison section (``report --diff A.json B.json``): a differential
flame graph of two captures of one site and the table of caller share changes with their
intervals. Input: :class:`~allocscope.collector.flame_diff.StackDiff` (kind-agnostic: folded
stacks and caller rows), so any result kind with a reader there gets this section."""

from __future__ import annotations

import os

from allocscope.collector.flame_diff import ShareChange, StackDiff
from allocscope.collector.report_data import ReportData
from allocscope.reports.flamegraph import render_diff_flamegraph
from allocscope.reports.format import pct
from allocscope.reports.html_parts import Block, kv, section, table, td
from allocscope.reports.svg import esc


def sections(data: ReportData) -> list[Block]:
    return [(f"diff-{i}", f"change: {d.a.site}", _section(d, i)) for i, d in enumerate(data.diffs)]


def side_labels(d: StackDiff) -> tuple[str, str]:
    """Short names for the two captures: the files' base names, or A/B when they clash."""
    a = d.a.label or os.path.basename(d.a.source) or "A"
    b = d.b.label or os.path.basename(d.b.source) or "B"
    return (a, b) if a != b else ("A", "B")


def pp(v: float) -> str:
    """A signed change in percentage points."""
    sign = "+" if v >= 0 else "\u2212"
    return f"{sign}{abs(v) * 100:.2f} pp"


def _row(c: ShareChange) -> list[str]:
    cls = ("grew" if c.delta > 0 else "shrank") if c.significant else ""
    where = "" if c.in_a and c.in_b else (" (only in B)" if c.in_b else " (only in A)")
    return [
        td(c.key + where, cls="mono"),
        td(pct(c.share_a, 1), c.share_a),
        td(pct(c.share_b, 1), c.share_b),
        td(pp(c.delta), c.delta, cls),
        td(f"{pp(c.ci_low)} \u2026 {pp(c.ci_high)}", c.ci_low),
        td("yes" if c.significant else "no"),
    ]


def changes_table(d: StackDiff) -> str:
    a, b = side_labels(d)
    conf = f"{d.confidence * 100:g}%"
    return table(
        ["caller", f"share {a}", f"share {b}", "change", f"{conf} CI of change", "CI excludes 0"],
        [_row(c) for c in d.changes],
        cls="diff-changes",
        caption=f"caller share changes, {b} minus {a} (Newcombe hybrid score interval)",
    )


def _section(d: StackDiff, idx: int) -> str:
    a, b = side_labels(d)
    head = kv(
        [
            ("site", d.a.site),
            ("kind", d.a.kind),
            (f"A = {a}", d.a.source),
            (f"B = {b}", d.b.source),
        ]
    )
    graph = render_diff_flamegraph(
        ((f.path, f.share_a, f.share_b) for f in d.frames),
        title=f"{d.a.site}: {b} vs {a}",
        labels=(a, b),
        graph_id=f"flame-diff-{idx}",
    )
    note = (
        "<p class='note'>Each capture's stacks are normalised to 100%: a frame is red when its "
        f"share of {esc(b)} is larger than of {esc(a)}, blue when smaller. The table's "
        "interval for each change combines the two captures' own share intervals "
        "(Newcombe's method); a caller one capture does not list counts as 0 there.</p>"
    )
    notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in d.notes)
    return section(
        f"diff-{idx}",
        f"what changed: {d.a.site}",
        head + graph + note + changes_table(d) + notes,
        cls="result kind-diff",
    )
