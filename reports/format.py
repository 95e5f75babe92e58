"""Every number, share and time the reports print: one function per behaviour, one name each.

Why one module: the same quantity used to be spelled by five helpers in four files, two of
them with the same name and different output (``fmt_count`` gave ``12,345,678`` in the HTML
report and ``12.3M`` in the terminal). Here each name has one output, shown in its docstring:

=====================  ===========================  ==========================================
function               example                      used for
=====================  ===========================  ==========================================
:func:`bytes_short`    ``1536 -> 1.5K``             terminal tables and messages
:func:`bytes_compact`  ``153600 -> 150K``           chart labels and HTML cells (narrow)
:func:`count_short`    ``12345678 -> 12.3M``        terminal tables
:func:`count_exact`    ``12345678 -> 12,345,678``   HTML cells, sample and call totals
:func:`decimal`        ``1234.56, 1 -> 1,234.6``    ns per call, means, rates
:func:`significant`    ``0.000123456 -> 0.0001235`` a float of unknown scale
:func:`integer`        ``12345678 -> 12345678``     ``--raw`` tables: exact, no separators
:func:`signed`         ``+1.5K`` / ``-4096``        a change, always with its sign
:func:`ratio`          ``1.41 -> 1.410``            a ratio (pilot/control, on/off)
:func:`pct`            ``0.123 -> 12.3%``           a share given as a fraction
:func:`pct_of`         ``(1, 8) -> 12.5%``          a part of a whole
:func:`pct_change`     ``1.41 -> +41.0%``           a ratio shown as a change
:func:`utc_datetime`   ``2026-12-04 21:38:36 UTC``  a moment
:func:`utc_tick`       ``21:38``                    a time-axis label
:func:`duration`       ``12.34 -> 12.3 s``          a length of time
=====================  ===========================  ==========================================

Byte units are binary (K = 1024), as in the kernel's own tools (``slabtop``, ``/proc/meminfo``);
counts are decimal (k = 1000): counts are not bytes. Non-finite floats print as Python spells
them (``nan``, ``inf``, ``-inf``) rather than as a misleading number. Formatters that take
``None`` return ``missing`` for it: ``-`` by default (plain ASCII for terminals); the HTML
report passes an em dash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

_BINARY_UNITS = ("", "K", "M", "G", "T", "P", "E")
_DECIMAL_UNITS = ("", "k", "M", "G", "T", "P", "E")
MISSING = "-"


def _scaled(n: float, base: float, units: tuple[str, ...], compact: bool) -> str:
    if not math.isfinite(n):
        return str(float(n))
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in units:
        if v < base or unit == units[-1]:
            if unit == "":
                text = f"{v:.0f}" if compact else str(int(v))
            elif compact and v >= 100:
                text = f"{v:.0f}{unit}"
            else:
                text = f"{v:.1f}{unit}"
            return "0" if text == "0" else sign + text
        v /= base
    raise AssertionError("unreachable")


def bytes_short(n: float) -> str:
    """Binary units with one decimal; under 1 KiB the whole number of bytes (truncated).

    ``0 -> 0``, ``1023 -> 1023``, ``1024 -> 1.0K``, ``1536 -> 1.5K``, ``153600 -> 150.0K``,
    ``-2 << 20 -> -2.0M``, ``2**63 - 1 -> 8.0E``. The sign is kept: allocinfo counters and
    diffs can be negative. The collector's log lines print the same text through
    :func:`allocscope.collector.units.human_bytes` (collector cannot import reports).
    """
    return _scaled(n, 1024, _BINARY_UNITS, compact=False)


def bytes_compact(n: float) -> str:
    """Binary units in at most four digits: one decimal under 100, none from 100 on.

    ``0 -> 0``, ``1023 -> 1023``, ``1024 -> 1.0K``, ``1536 -> 1.5K``, ``153600 -> 150K``,
    ``-2 << 20 -> -2.0M``, ``2**63 - 1 -> 8.0E``; under 1 KiB rounded (``12.6 -> 13``), as
    medians and means can be fractional. For chart ticks and bar labels, where width is scarce,
    and HTML cells (their exact value is in the sort key).
    """
    return _scaled(n, 1024, _BINARY_UNITS, compact=True)


def count_short(n: float) -> str:
    """Decimal units (k = 1000) with one decimal; under 1000 the whole number (truncated).

    ``0 -> 0``, ``999 -> 999``, ``1000 -> 1.0k``, ``12345678 -> 12.3M``, ``-1500 -> -1.5k``,
    ``2**63 - 1 -> 9.2E``.
    """
    return _scaled(n, 1000, _DECIMAL_UNITS, compact=False)


def decimal(x: float | None, digits: int = 0, missing: str = MISSING) -> str:
    """Thousands separators and ``digits`` decimals: ``(1234.56, 1) -> 1,234.6``; ``None -> -``."""
    return missing if x is None else f"{x:,.{digits}f}"


def count_exact(n: float | None, missing: str = MISSING) -> str:
    """Every digit, with thousands separators: ``12345678 -> 12,345,678``, ``-1000 -> -1,000``.

    An ``int`` keeps every digit however large (``2**63 - 1 -> 9,223,372,036,854,775,807``;
    through a float it would end in ``808``); a fractional value is rounded (``2.5 -> 2``, half
    to even); ``None -> -``.
    """
    if isinstance(n, int):
        return f"{n:,}"
    return decimal(n, 0, missing)


def significant(x: float) -> str:
    """Four significant digits for a float of unknown scale: ``0.000123456 -> 0.0001235``,
    ``123456.0 -> 1.235e+05``, ``0.5 -> 0.5``."""
    return f"{x:.4g}"


def integer(n: float) -> str:
    """The exact integer, no separators, for ``--raw`` tables: ``12345678 -> 12345678``;
    a float is truncated (``-2.7 -> -2``)."""
    return str(int(n))


def signed(fmt: Callable[[float], str], n: float) -> str:
    """``fmt(n)`` with a ``+`` in front of a positive value, for changes.

    ``signed(bytes_short, 1536) -> +1.5K``, ``signed(bytes_short, -4096) -> -4.0K``,
    ``signed(integer, 0) -> 0``.
    """
    text = fmt(n)
    return f"+{text}" if n > 0 else text


def ratio(x: float) -> str:
    """A ratio with three decimals: ``1.41 -> 1.410``, ``0.5 -> 0.500``."""
    return f"{x:.3f}"


def pct(fraction: float | None, digits: int = 1, missing: str = MISSING) -> str:
    """A fraction as a percentage: ``0.123 -> 12.3%``, ``(0.12345, 2) -> 12.35%``,
    ``1 -> 100.0%``, ``None -> -``."""
    return missing if fraction is None else f"{100 * fraction:.{digits}f}%"


def pct_of(part: float, whole: float, digits: int = 1) -> str:
    """``part`` as a percentage of ``whole``: ``(1, 8) -> 12.5%``; an empty string when
    ``whole`` is 0 (a share of nothing is left blank, not shown as 0% or an error)."""
    if not whole:
        return ""
    return f"{100.0 * part / whole:.{digits}f}%"


def pct_change(ratio: float | None, missing: str = MISSING) -> str:
    """A ratio as a signed change: ``1.41 -> +41.0%``, ``0.9 -> -10.0%``, ``1 -> +0.0%``,
    ``None -> -``."""
    return missing if ratio is None else f"{100 * (ratio - 1):+.1f}%"


def utc_datetime(t: float, missing: str = MISSING) -> str:
    """Unix seconds as ``2026-12-04 21:38:36 UTC``; 0 (the results' "not known") gives
    ``missing``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else missing


def utc_tick(t: float, span: float) -> str:
    """A time-axis label in UTC, as precise as a chart ``span`` seconds wide needs.

    ``span`` >= 3 days: ``12-04``; >= 1 day: ``12-04 21:38``; >= 2 minutes: ``21:38``;
    shorter: ``21:38:36``.
    """
    tm = time.gmtime(t)
    if span >= 3 * 86400:
        return time.strftime("%m-%d", tm)
    if span >= 86400:
        return time.strftime("%m-%d %H:%M", tm)
    return time.strftime("%H:%M", tm) if span >= 120 else time.strftime("%H:%M:%S", tm)


def duration(seconds: float) -> str:
    """A length of time in seconds with one decimal: ``12.34 -> 12.3 s``, ``0 -> 0.0 s``."""
    return f"{seconds:.1f} s"
