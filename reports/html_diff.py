"""The HTML report's comparison section (``report --diff A.json B.json``): a differential
flame graph of two captures of one site and the table of caller share changes with their
intervals. Input: :class:`~allocscope.collector.flame_diff.StackDiff` (kind-agnostic: folded
stacks and caller rows), so any result kind with a reader there gets this section. A
many-keyed comparison (two context results) draws one graph and table per tag both hold, after
a summary of those tags and the tables of new and gone tags."""

from __future__ import annotations

import os

from allocscope.collector.flame_diff import KeyOnly, ShareChange, StackDiff
from allocscope.collector.report_model import ReportData
from allocscope.reports.flamegraph import render_diff_flamegraph
from allocscope.reports.format import bytes_compact, pct
from allocscope.reports.html_parts import DASH, Block, kv, section, table, td
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
    sign = "+" if v >= 0 or round(v * 100, 2) == 0 else "\u2212"
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


def _graph_and_table(d: StackDiff, graph_id: str) -> str:
    a, b = side_labels(d)
    graph = render_diff_flamegraph(
        ((f.path, f.share_a, f.share_b) for f in d.frames),
        title=f"{d.a.site}: {b} vs {a}",
        labels=(a, b),
        graph_id=graph_id,
    )
    notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in d.notes)
    return graph + changes_table(d) + notes


def _how_to_read(d: StackDiff) -> str:
    a, b = side_labels(d)
    return (
        "<p class='note'>Each capture's stacks are normalised to 100%: a frame is red when its "
        f"share of {esc(b)} is larger than of {esc(a)}, blue when smaller. The table's "
        "interval for each change combines the two captures' own share intervals "
        "(Newcombe's method); a caller one capture does not list counts as 0 there.</p>"
    )


def _head(d: StackDiff) -> str:
    a, b = side_labels(d)
    what = "tags" if d.a.keys or d.b.keys else "site"
    return kv(
        [(what, d.a.site), ("kind", d.a.kind), (f"A = {a}", d.a.source), (f"B = {b}", d.b.source)]
    )


def _callers_text(o: KeyOnly, limit: int = 4) -> str:
    shown = ", ".join(f"{r.key} {pct(r.share, 0)}" for r in o.callers[:limit])
    more = len(o.callers) - limit
    return shown + (f", +{more} more" if more > 0 else "")


def only_table(rows: list[KeyOnly], which: str, side: str) -> str:
    """Tags only one result holds: ``new`` (only in B: the callers that appeared) or
    ``gone`` (only in A: the callers that went away)."""
    cls = "grew" if which == "new" else "shrank"
    body = [
        [
            td(o.key, cls=f"mono {cls}"),
            td(bytes_compact(o.bytes), o.bytes),
            td(pct(o.byte_share, 1), o.byte_share),
            td(f"{o.samples:.0f}", o.samples),
            td(_callers_text(o), cls="mono"),
        ]
        for o in rows
    ]
    callers = "callers that appeared" if which == "new" else "callers that went away"
    return table(
        ["tag", f"bytes in {side}", f"byte share in {side}", "samples", callers],
        body,
        cls=f"diff-{which}",
        caption=f"{which} tags: only in {side}",
    )


def _summary_table(d: StackDiff, idx: int) -> str:
    """One row per compared tag: its bytes on each side and its biggest caller change."""
    a, b = side_labels(d)
    body = []
    for j, p in enumerate(d.parts):
        ba, bb = d.part_stats.get(p.a.site, (0.0, 0.0))
        top = max(p.changes, key=lambda c: c.delta, default=None)
        top = top if top is not None and top.delta > 0 else None
        cls = "grew" if top and top.significant else ""
        body.append(
            [
                f'<td class="mono"><a href="#diff-{idx}-{j}">{esc(p.a.site)}</a></td>',
                td(bytes_compact(ba), ba),
                td(bytes_compact(bb), bb),
                td(top.key + ("" if top.in_a else " (new)") if top else DASH, cls="mono"),
                td(pp(top.delta) if top else DASH, top.delta if top else 0.0, cls),
            ]
        )
    return table(
        ["tag", f"bytes {a}", f"bytes {b}", "caller that grew most", "its change"],
        body,
        cls="diff-tags",
        caption=f"tags in both results, by bytes ({b} minus {a} in each tag's caller shares)",
    )


def _keyed_body(d: StackDiff, idx: int) -> str:
    """A context comparison: the compared tags (summary, then each tag's differential graph
    and caller table), then the tags only one result holds."""
    a, b = side_labels(d)
    out = []
    if d.parts:
        out.append(_summary_table(d, idx))
    else:
        out.append("<p class='empty'>No tag is in both results: nothing to draw.</p>")
    if d.only_b:
        out.append(only_table(d.only_b, "new", b))
    if d.only_a:
        out.append(only_table(d.only_a, "gone", a))
    out.append("".join(f"<p class='note'>{esc(n)}</p>" for n in d.notes))
    for j, p in enumerate(d.parts):
        ba, bb = d.part_stats.get(p.a.site, (0.0, 0.0))
        out.append(
            f'<h3 id="diff-{idx}-{j}">callers of <code>{esc(p.a.site)}</code> '
            f'<span class="note">({esc(bytes_compact(ba))} in {esc(a)}, '
            f"{esc(bytes_compact(bb))} in {esc(b)})</span></h3>"
        )
        out.append(_graph_and_table(p, f"flame-diff-{idx}-{j}"))
    return "".join(out)


def _section(d: StackDiff, idx: int) -> str:
    keyed = bool(d.a.keys or d.b.keys)
    body = _keyed_body(d, idx) if keyed else _graph_and_table(d, f"flame-diff-{idx}")
    return section(
        f"diff-{idx}",
        f"what changed: {d.a.site}",
        _head(d) + _how_to_read(d) + body,
        cls="result kind-diff",
    )
