"""The typed result payloads, one frozen dataclass per result kind and block: THE contract.

Producers build these types and write ``to_dict()``; ``Result.from_dict`` checks a file's
envelope and payload with their ``from_dict`` (which is derived from the annotations by
:mod:`allocscope.collector.contracts`), and consumers read typed fields through
``Result.typed(<Payload type>)``. ``docs/schemas.md`` is generated from these types
(``scripts/gen-schemas``); a unit test fails when it drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from allocscope.collector.contracts import Contract, ContractError, doc_of, opt, req, rows
from allocscope.collector.payloads.ab import (
    AbPayload,
    Comparison,
    MemmapComparison,
    PooledRow,
    TogglePayload,
    ToggleWindowResult,
)
from allocscope.collector.payloads.context import (
    ContextCaller,
    ContextPayload,
    ContextTag,
    ContextTotals,
    RateEpoch,
    SampleSums,
)
from allocscope.collector.payloads.lifespan import (
    Estimate,
    HistSlot,
    LifespanPayload,
    LifespanRow,
    LifespanStats,
)
from allocscope.collector.payloads.overhead import (
    ExactTiming,
    FunctionRow,
    HistBucket,
    OverheadPayload,
    ProfilingMemory,
    SampleCounts,
    TopSelfRow,
)
from allocscope.collector.payloads.top_live import LiveSiteRow, TopLivePayload
from allocscope.collector.payloads.who_calls import (
    AllocCounts,
    AllocinfoJoin,
    CallerRow,
    OtherRow,
    SampleEpoch,
    SiteBlock,
    WhoCallsPayload,
)

Payload = (
    WhoCallsPayload
    | OverheadPayload
    | TopLivePayload
    | AbPayload
    | TogglePayload
    | ContextPayload
    | LifespanPayload
)

PAYLOADS: dict[str, type[Payload]] = {
    t.KIND: t
    for t in (
        WhoCallsPayload,
        OverheadPayload,
        TopLivePayload,
        AbPayload,
        TogglePayload,
        ContextPayload,
        LifespanPayload,
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultEnvelope(Contract):
    """The result file: one JSON document per capture or comparison."""

    schema: int = req("bumped on any incompatible change; newer majors are refused")
    kind: str = req(" | ".join(PAYLOADS))
    host: dict[str, Any] = req("host metadata (collector/host.py HostMetadata)")
    start: float = req("unix time the window began", nonneg=True)
    duration: float = req("seconds", nonneg=True)
    settings: dict[str, Any] = opt(
        "what was asked; `interrupted` says the run ended early", default={}
    )
    payload: dict[str, Any] = req("kind-specific: one of the payload types below")


def parse_payload(kind: str, payload: Any, path: str = "payload") -> Payload:
    """The typed payload of a ``kind`` result; a :class:`ContractError` that names the field
    path, and says which kind the payload looks like when it matches another one."""
    cls = PAYLOADS.get(kind)
    if cls is None:
        raise ContractError("kind", f"unknown result kind {kind!r}")
    try:
        return cls.from_dict(payload, path)
    except ContractError as e:
        hint = likely_kind(payload)
        if hint and hint != kind:
            raise ContractError(
                e.path, f"{str(e).split(': ', 1)[1]} (this looks like a {hint!r} payload)"
            ) from None
        raise


def likely_kind(payload: Any) -> str | None:
    """The first kind whose contract ``payload`` satisfies, if any."""
    for kind, cls in PAYLOADS.items():
        try:
            cls.from_dict(payload)
        except ContractError:
            continue
        return kind
    return None


def markdown() -> str:
    """docs/schemas.md: the types above as tables (generated; edit the types)."""
    out = [
        "# Result file schemas",
        "",
        "Generated from the types in `collector/payloads/` by `scripts/gen-schemas`: do not edit",
        "by hand. Every listed field is checked when a result file is read (`ab`, `report`,",
        "`ingest`). Errors name the file and the field path.",
        "",
        "`optional` fields may be absent; `nullable` ones may be `null`; `>= 0` ones are",
        "refused when negative; numbers must be finite. Fields not listed are allowed and kept",
        "(producers add context; ingest stores the whole payload).",
        "",
    ]
    for title, cls in [("The result file", ResultEnvelope)] + [
        (f"Payload of kind `{k}`", v) for k, v in PAYLOADS.items()
    ]:
        out += [
            f"## {title}",
            "",
            f"{doc_of(cls)} (`{cls.__name__}`)",
            "",
            "| field | type | | meaning |",
            "|---|---|---|---|",
            *rows(cls),
            "",
        ]
    return "\n".join(out)


__all__ = [
    "LifespanStats",
    "LifespanRow",
    "LifespanPayload",
    "HistSlot",
    "Estimate",
    "PAYLOADS",
    "AbPayload",
    "AllocCounts",
    "AllocinfoJoin",
    "CallerRow",
    "Comparison",
    "ContextCaller",
    "ContextPayload",
    "ContextTag",
    "ContextTotals",
    "ExactTiming",
    "FunctionRow",
    "HistBucket",
    "LiveSiteRow",
    "MemmapComparison",
    "OtherRow",
    "OverheadPayload",
    "Payload",
    "PooledRow",
    "RateEpoch",
    "SampleSums",
    "ProfilingMemory",
    "ResultEnvelope",
    "SampleCounts",
    "SampleEpoch",
    "SiteBlock",
    "TogglePayload",
    "ToggleWindowResult",
    "TopLivePayload",
    "TopSelfRow",
    "WhoCallsPayload",
    "likely_kind",
    "markdown",
    "parse_payload",
]
