"""Rendering of ``allocscope doctor``: one screen, one line per check.

Presentation only: the lines and their words come from :mod:`allocscope.collector.doctor`.
"""

from __future__ import annotations

import textwrap
from typing import Any

from tabulate import tabulate

from allocscope.collector.doctor import DoctorReport

_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def render_doctor(report: DoctorReport, *, width: int = 100) -> str:
    """The table plus a one-line verdict. ``consequence`` and ``fix`` share a column so the
    table stays within a terminal; a line that is ok has neither."""
    rows: list[list[Any]] = []
    for ln in report.lines:
        advice = ""
        if ln.consequence:
            advice = ln.consequence + (f"\nfix: {ln.fix}" if ln.fix else "")
        elif ln.fix:
            advice = f"fix: {ln.fix}"
        rows.append([ln.check, _MARK.get(ln.status, ln.status), ln.value, advice])
    value_w = 28
    advice_w = max(36, width - 18 - 8 - value_w - 6)  # widths + the 2-space gaps
    table = tabulate(
        rows,
        headers=["check", "status", "value", "consequence / fix"],
        tablefmt="simple",
        maxcolwidths=[18, 6, value_w, advice_w],
    )
    counts = {s: sum(1 for ln in report.lines if ln.status == s) for s in ("ok", "warn", "fail")}
    verdict = f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail: {report.summary}"
    return f"{table}\n\n{textwrap.fill(verdict, width=max(60, width))}\n"


def doctor_json(report: DoctorReport) -> dict[str, Any]:
    return report.to_dict()
