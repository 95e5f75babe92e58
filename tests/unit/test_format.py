"""reports/format.py: every formatter's text at its boundaries, one expected string per case."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from conftest import REPO

from allocscope.collector.units import human_bytes
from allocscope.reports import format as fmt

BIG = 2**63 - 1  # the largest value a u64 counter read as s64 can hold

BYTES_SHORT = [
    (0, "0"),
    (1, "1"),
    (999, "999"),
    (1000, "1000"),
    (1023, "1023"),
    (1023.9, "1023"),  # under 1 KiB: whole bytes, truncated
    (1024, "1.0K"),
    (1536, "1.5K"),
    (100 * 1024, "100.0K"),
    (153600, "150.0K"),
    ((1 << 20) - 1, "1024.0K"),  # 1023.999K rounds up in its own unit
    (1 << 20, "1.0M"),
    (-(2 << 20), "-2.0M"),
    (-4096, "-4.0K"),
    (-0.4, "0"),  # no "-0"
    (1 << 40, "1.0T"),
    (1 << 50, "1.0P"),
    (BIG, "8.0E"),
    (-BIG, "-8.0E"),
    (1 << 70, "1024.0E"),  # past the last unit: it stays in E
]


@pytest.mark.parametrize(("n", "text"), BYTES_SHORT)
def test_bytes_short(n: float, text: str) -> None:
    assert fmt.bytes_short(n) == text


@pytest.mark.parametrize(("n", "_text"), BYTES_SHORT)
def test_collector_log_bytes_match_the_reports(n: float, _text: str) -> None:
    """collector.units.human_bytes is the collector's copy for log lines: same text."""
    assert human_bytes(n) == fmt.bytes_short(n)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1023, "1023"),
        (12.6, "13"),  # under 1 KiB rounded: medians and means are fractional
        (-0.4, "0"),
        (1024, "1.0K"),
        (1536, "1.5K"),
        (99 * 1024, "99.0K"),
        (100 * 1024, "100K"),  # from 100 of a unit on: no decimal
        (153600, "150K"),
        (1023 * 1024, "1023K"),
        (-(2 << 20), "-2.0M"),
        (-(200 << 20), "-200M"),
        (1 << 50, "1.0P"),
        (BIG, "8.0E"),
    ],
)
def test_bytes_compact(n: float, text: str) -> None:
    assert fmt.bytes_compact(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (999.9, "999"),
        (1000, "1.0k"),
        (1023, "1.0k"),
        (1024, "1.0k"),
        (12_345_678, "12.3M"),
        (-1500, "-1.5k"),
        (10**9, "1.0G"),
        (10**12, "1.0T"),
        (BIG, "9.2E"),
    ],
)
def test_count_short(n: float, text: str) -> None:
    assert fmt.count_short(n) == text


@pytest.mark.parametrize("f", [fmt.bytes_short, fmt.bytes_compact, fmt.count_short, human_bytes])
def test_non_finite_is_spelled_out(f: object) -> None:
    assert callable(f)
    assert f(math.nan) == "nan"
    assert f(math.inf) == "inf"
    assert f(-math.inf) == "-inf"


def test_exact_numbers() -> None:
    assert fmt.count_exact(0) == "0"
    assert fmt.count_exact(999) == "999"
    assert fmt.count_exact(1000) == "1,000"
    assert fmt.count_exact(12_345_678) == "12,345,678"
    assert fmt.count_exact(-1000) == "-1,000"
    assert fmt.count_exact(2.5) == "2"  # rounded half to even
    assert fmt.count_exact(BIG) == "9,223,372,036,854,775,807"
    assert fmt.count_exact(None) == "-"
    assert fmt.count_exact(None, missing="\u2014") == "\u2014"
    assert fmt.decimal(1234.56, 1) == "1,234.6"
    assert fmt.decimal(0.5) == "0"
    assert fmt.decimal(-1234.5, 2) == "-1,234.50"
    assert fmt.decimal(None, 1) == "-"
    assert fmt.decimal(math.nan, 1) == "nan"
    assert fmt.integer(12_345_678) == "12345678"
    assert fmt.integer(-2.7) == "-2"
    assert fmt.integer(BIG) == "9223372036854775807"
    assert fmt.significant(0.000123456) == "0.0001235"
    assert fmt.significant(123456.0) == "1.235e+05"
    assert fmt.significant(0.5) == "0.5"
    assert fmt.ratio(1.41) == "1.410"
    assert fmt.ratio(0) == "0.000"


def test_signed() -> None:
    assert fmt.signed(fmt.bytes_short, 1536) == "+1.5K"
    assert fmt.signed(fmt.bytes_short, -4096) == "-4.0K"
    assert fmt.signed(fmt.bytes_short, 0) == "0"
    assert fmt.signed(fmt.integer, 4096) == "+4096"
    assert fmt.signed(fmt.integer, -4096) == "-4096"
    assert fmt.signed(fmt.count_short, -12_345_678) == "-12.3M"
    assert fmt.signed(fmt.bytes_compact, 100 * 1024) == "+100K"


def test_percentages() -> None:
    assert fmt.pct(0) == "0.0%"
    assert fmt.pct(0.123) == "12.3%"
    assert fmt.pct(0.12345, 2) == "12.35%"
    assert fmt.pct(1) == "100.0%"
    assert fmt.pct(-0.05) == "-5.0%"
    assert fmt.pct(None) == "-"
    assert fmt.pct(None, missing="\u2014") == "\u2014"
    assert fmt.pct_of(1, 8) == "12.5%"
    assert fmt.pct_of(0, 8) == "0.0%"
    assert fmt.pct_of(5, 0) == ""  # a share of nothing is blank
    assert fmt.pct_of(-1, 4) == "-25.0%"
    assert fmt.pct_change(1.41) == "+41.0%"
    assert fmt.pct_change(0.9) == "-10.0%"
    assert fmt.pct_change(1) == "+0.0%"
    assert fmt.pct_change(None) == "-"


def test_times() -> None:
    t = 1_796_420_316.0  # 2026-12-04 21:38:36 UTC
    assert fmt.utc_datetime(t) == "2026-12-04 21:38:36 UTC"
    assert fmt.utc_datetime(0) == "-"  # 0 is the results' "not known"
    assert fmt.utc_datetime(0, missing="\u2014") == "\u2014"
    assert fmt.utc_tick(t, 3 * 86400) == "12-04"
    assert fmt.utc_tick(t, 86400) == "12-04 21:38"
    assert fmt.utc_tick(t, 86399) == "21:38"
    assert fmt.utc_tick(t, 120) == "21:38"
    assert fmt.utc_tick(t, 119) == "21:38:36"
    assert fmt.duration(12.34) == "12.3 s"
    assert fmt.duration(0) == "0.0 s"
    assert fmt.duration(0.05) == "0.1 s"


def test_reports_define_no_formatters_of_their_own() -> None:
    """format.py is the one home: no other reports module defines a fmt_*/human_*/_pct."""
    reports = REPO / "reports"
    found = []
    for path in sorted(reports.glob("*.py")):
        if path.name == "format.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and (
                node.name.startswith(("fmt_", "human_", "_fmt"))
                or node.name in ("_pct", "_num", "_signed_pct", "fmt_time")
            ):
                found.append(f"{Path(path).name}:{node.lineno} {node.name}")
    assert not found, found
