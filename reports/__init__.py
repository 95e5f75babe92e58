"""The presentation layer: finished data in, text out (terminal tables, JSON, CSV, HTML, SVG).

Nothing here measures or decides: every number was computed by :mod:`allocscope.collector`
(rollups, diffs, result payloads, report data), and reports only lay it out. Reports never
load BPF or import :mod:`allocscope.probes` (an import-linter contract), and only the CLI
imports reports, so each output format can change without touching capture or analysis.

Where things are:

* :mod:`.format`: every number, share and time as text, one name per behaviour;
* :mod:`.terminal` (control characters made visible) and :mod:`.table` (the shared table);
* one module per verb's terminal output: :mod:`.allocinfo` (``top``, ``diff``),
  :mod:`.who_calls`, :mod:`.overhead` (``overhead``, ``ab``), :mod:`.doctor`, :mod:`.query`,
  :mod:`.prometheus` (``export``);
* the HTML report: :mod:`.html` (the page) with its sections in :mod:`.html_allocinfo`,
  :mod:`.html_fleet` and :mod:`.html_results`, built from :mod:`.html_parts`, and the charts
  in :mod:`.svg` and :mod:`.flamegraph` (``report.css`` and ``report.js`` are inlined).
"""
