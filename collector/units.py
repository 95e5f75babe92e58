"""Parsing the sizes and durations users type (``64K``, ``5m``).

Printing numbers is the reports' job (:mod:`allocscope.reports.format`); the one exception,
:func:`human_bytes`, is for collector log lines.
"""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_size(text: str) -> int:
    """``10M`` -> 10485760. Units are binary (K=1024), as in the kernel's own tools."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64K, 10M, 1.5G)")
    return int(float(m[1]) * _MULT[m[2].lower()])


def parse_duration(text: str) -> float:
    """``5m`` -> 300.0 seconds; a bare number is seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30, 30s, 5m, 1h)")
    return float(m[1]) * _DUR_MULT[m[2]]


def human_bytes(n: float) -> str:
    """1536 -> ``1.5K``, for the collector's own log lines (the agent's ``rss=``).

    Reports format through :mod:`allocscope.reports.format`; collector cannot import reports,
    so this one formatter stays here, printing the same text as ``format.bytes_short``
    (``tests/unit/test_format.py`` compares the two at every boundary).
    """
    if not math.isfinite(n):
        return str(float(n))
    v = float(abs(n))
    for unit in ("", "K", "M", "G", "T", "P", "E"):
        if v < 1024 or unit == "E":
            text = str(int(v)) if unit == "" else f"{v:.1f}{unit}"
            return text if text == "0" or n >= 0 else "-" + text
        v /= 1024
    raise AssertionError("unreachable")
