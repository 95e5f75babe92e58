"""The ``allocscope report`` page: one self-contained HTML file that works offline.

CSS and JS (``report.css``, ``report.js`` next to this module) are inlined once; charts are
static SVG from :mod:`allocscope.reports.svg` and :mod:`allocscope.reports.flamegraph`, so
the page shows everything with scripting off, and the script only adds flame-graph zoom and
search and table sorting. Nothing is fetched from the network.

All text that came from data (host names, file and function names, labels, result payloads)
passes through :func:`~allocscope.reports.svg.esc`, which also redacts raw kernel addresses.

This module assembles the page (head, inputs, navigation, notes, script); the sections come
from one module per input kind: :mod:`.html_allocinfo` (snapshots), :mod:`.html_fleet` (results
ingested into a store) and :mod:`.html_results` (result files), all built from
:mod:`.html_parts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from allocscope.collector.report_model import ReportData
from allocscope.reports import html_allocinfo, html_diff, html_fleet, html_results, svg
from allocscope.reports.format import utc_datetime
from allocscope.reports.html_parts import DASH, Block, section
from allocscope.reports.svg import esc


def asset(name: str) -> str:
    return resources.files("allocscope.reports").joinpath(name).read_text(encoding="utf-8")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("allocscope")
    except Exception:  # noqa: BLE001 - a missing dist-info must not break a report
        return "dev"


def _nav(sections: Sequence[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in sections)
    return f"<nav>{links}</nav>"


def render_report(data: ReportData) -> str:
    """The whole page as one string."""
    order = [s for s, _ in data.subsystem_totals]
    if data.trend is not None:
        order += [s for s in data.trend.subsystems if s not in order]
    colors = svg.color_map(order + ["other subsystems"])
    blocks: list[Block] = [
        *html_allocinfo.sections(data, colors),
        *html_fleet.sections(data),
        *html_diff.sections(data),
        *html_results.sections(data),
    ]
    if not blocks:
        nothing = "<p>No allocinfo snapshots and no results were given.</p>"
        blocks.append(("empty", "Nothing", section("empty", "Nothing to show", nothing)))
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
    sources = "".join(f"<li>{esc(s)}</li>" for s in data.sources)
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="allocscope report">',
            f"<title>{esc(data.title)}</title><style>{asset('report.css')}</style></head><body>",
            f'<header><h1>{esc(data.title)}</h1><p class="meta">Generated '
            f"{esc(utc_datetime(data.generated_at, DASH))} by allocscope {esc(_version())}. "
            "Self-contained: "
            "works offline; hover any bar or frame for exact values.</p>",
            f'<details class="sources"><summary>inputs</summary><ul>{sources}</ul></details>',
            _nav([(i, t) for i, t, _ in blocks]),
            "</header><main>",
            (
                f'<section id="notes" class="notes"><h2>Notes</h2><ul>{notes}</ul></section>'
                if notes
                else ""
            ),
            "".join(h for _, _, h in blocks),
            '</main><pre id="selftest-out" hidden></pre>',
            f"<script>{_script_safe(asset('report.js'))}</script></body></html>\n",
        ]
    )


def _script_safe(js: str) -> str:
    """Inline JS must not contain ``</script`` (it would end the element early)."""
    return js.replace("</script", "<\\/script")
