"""Switching the allocinfo parser between its compiled and pure-Python fast paths in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from allocscope.collector import allocinfo


@contextmanager
def python_only() -> Iterator[None]:
    """Parse as a host without the compiled scanner would (no C compiler at install)."""
    saved = allocinfo._allocinfo_scan
    allocinfo._allocinfo_scan = None  # type: ignore[assignment]
    try:
        yield
    finally:
        allocinfo._allocinfo_scan = saved
