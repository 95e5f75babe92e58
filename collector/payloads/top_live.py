"""The ``top-live`` payload: per-function bytes and calls from the kmem tracepoints.

Field order is the order ``LiveCapture.to_payload`` has always written them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from allocscope.collector.contracts import Contract, opt, req


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSiteRow(Contract):
    """One allocating function."""

    function: str = req("function name")
    module: str = req("module, empty for the core kernel")
    bytes: int = req("live or allocated bytes, per bytes_kind")
    calls: int = req("allocation events", nonneg=True)
    extras: dict[str, Any] = req("source, alloc_bytes, ...")


@dataclass(frozen=True, slots=True, kw_only=True)
class TopLivePayload(Contract):
    """top --live: per-function bytes and calls from the kmem tracepoints."""

    KIND: ClassVar[str] = "top-live"

    bytes_kind: str = req("live | allocated")
    backend: str | None = opt("hooks used")
    events: int | None = opt("events seen", nonneg=True)
    lost: dict[str, int] = opt("events not accounted for, by reason", default={}, nonneg=True)
    counters: dict[str, int] = opt("the probe's counters", default={})
    interrupted: bool | None = opt("stopped early")
    sites: tuple[LiveSiteRow, ...] = req("biggest first")
