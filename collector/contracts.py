"""The result file's payload contracts, defined once: what each kind's payload must hold.

A result file is read back by ``ab``, ``report`` and fleet ``ingest`` on other machines, often
long after it was written, so it is checked at the door: every field listed here must be present
with its JSON type, and a payload that does not match its ``kind`` is refused (a who-calls
payload labelled ``overhead`` used to be ingested as a row of NULLs). Errors name the file and
the field path (``payload.sites[2].total_calls: expected an integer, got "x"``), on one line.

A :class:`Field` tree is the contract; ``docs/schemas.md`` is generated from it
(``scripts/gen-schemas``), so the reference and the check cannot drift apart. Fields not listed
are allowed (producers add context freely); the listed ones are what consumers read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 32  # payloads nest 4-5 levels; anything deeper is not ours


@dataclass(frozen=True)
class Field:
    """One JSON value: ``type`` is one of the names in :data:`CHECKS`."""

    type: str
    doc: str = ""
    optional: bool = False
    nullable: bool = False
    fields: dict[str, Field] = field(default_factory=dict)  # for "object"
    items: Field | None = None  # for "array"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


CHECKS: dict[str, tuple[str, Any]] = {
    "integer": ("an integer", _is_int),
    "number": ("a finite number", _is_number),
    "string": ("a string", lambda v: isinstance(v, str)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "any": ("any value", lambda v: True),
}


class ContractError(ValueError):
    """A value does not match its contract; ``path`` says where."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check(value: Any, spec: Field, path: str, depth: int = 0) -> None:
    """Raise :class:`ContractError` at the first place ``value`` breaks ``spec``."""
    if depth > MAX_DEPTH:
        raise ContractError(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None:
        if spec.nullable or spec.type == "any":
            return
        raise ContractError(path, f"expected {CHECKS[spec.type][0]}, got null")
    what, ok = CHECKS[spec.type]
    if not ok(value):
        raise ContractError(path, f"expected {what}, got {_show(value)}")
    if spec.type == "object":
        for name, sub in spec.fields.items():
            if name not in value:
                if sub.optional:
                    continue
                raise ContractError(f"{path}.{name}", "missing")
            check(value[name], sub, f"{path}.{name}", depth + 1)
        for name, sub in value.items():  # unlisted fields: only their depth is bounded
            if name not in spec.fields:
                _bounded(sub, f"{path}.{name}", depth + 1)
    elif spec.type == "array":
        for i, item in enumerate(value):
            if spec.items is not None:
                check(item, spec.items, f"{path}[{i}]", depth + 1)
            else:
                _bounded(item, f"{path}[{i}]", depth + 1)
    elif spec.type == "any":
        _bounded(value, path, depth)


def _bounded(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ContractError(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _bounded(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _bounded(v, f"{path}[{i}]", depth + 1)


def obj(doc: str = "", optional: bool = False, nullable: bool = False, **fields: Field) -> Field:
    return Field("object", doc, optional, nullable, fields)


def arr(items: Field | None, doc: str = "", optional: bool = False) -> Field:
    return Field("array", doc, optional, items=items)


INT, NUM, STR, BOOL = (Field(t) for t in ("integer", "number", "string", "boolean"))


def f(type_: str, doc: str, *, optional: bool = False, nullable: bool = False) -> Field:
    return Field(type_, doc, optional, nullable)


_COUNTS = obj(
    "allocinfo totals of the tag's line(s)",
    nullable=True,
    bytes=f("integer", "live bytes"),
    calls=f("integer", "live calls"),
)
ALLOCINFO_JOIN = obj(
    "the tag's allocinfo line(s) read before and after the window",
    nullable=True,
    optional=True,
    source=f("string", "where allocinfo was read"),
    match=f("string", "exact-tag | allocinfo-line | function-name | none"),
    tags=arr(STR, "the allocinfo tags joined"),
    before=_COUNTS,
    after=_COUNTS,
    delta=_COUNTS,
)
CALLER_ROW = obj(
    "one caller of a site",
    site=f("string", "the site as the user named it", optional=True),
    caller=f("string", "the attributed caller (function, or a chain with --depth)"),
    calls=f("integer", "estimated calls from this caller during the window"),
    samples=f("integer", "stacks sampled", optional=True),
    share=f("number", "estimated share of the site's calls"),
    ci_low=f("number", "share interval, low end", optional=True),
    ci_high=f("number", "share interval, high end", optional=True),
    bytes=f("integer", "estimated bytes", optional=True),
)
SITE_BLOCK = obj(
    "one site of a who-calls capture",
    site=f("string", "as the user typed it"),
    function=f("string", "clone-free function name"),
    tag=f("string", "allocinfo tag joined", nullable=True, optional=True),
    total_calls=f("integer", "every matching event counted in kernel"),
    total_bytes=f("integer", "bytes of those events", optional=True),
    sampled=f("integer", "events whose stack was walked", optional=True),
    lost=f("integer", "stack_errors + hash_full", optional=True),
    allocinfo=ALLOCINFO_JOIN,
)
WHO_CALLS = obj(
    "who-calls: callers of one or more allocation sites",
    site=f("string", "the sites, comma-separated"),
    sites=arr(SITE_BLOCK, "one block per site", optional=True),
    backend=f("string", "raw_tracepoint | tracepoint | kprobe | fentry", optional=True),
    tag_mode=f("string", "exact-tag | function-name", optional=True),
    total_calls=f("integer", "events over all sites"),
    total_bytes=f("integer", "bytes over all sites", optional=True),
    sampled=f("integer", "stacks sampled", optional=True),
    sample_rate=f("integer", "the last 1-in-N", optional=True),
    sample_mode=f("string", "auto | fixed", optional=True),
    duration=f("number", "seconds captured", optional=True),
    confidence=f("number", "interval confidence level", optional=True),
    callers=arr(CALLER_ROW, "callers of every site, by share"),
    other=arr(obj("callers under --min-share, summed"), "one row per site", optional=True),
    folded=f("object", "folded stack -> samples", optional=True),
    counters=f("object", "map-full, stack-walk and symbolisation counters", optional=True),
    notes=arr(STR, "what the reader must know", optional=True),
)
FUNCTION_ROW = obj(
    "one allocator function",
    function=f("string", "function name"),
    kind=f("string", "slab | page | vmalloc | ..."),
    present=f("boolean", "in this kernel's kallsyms"),
    inclusive_samples=f("integer", "samples with the function on the stack"),
    self_samples=f("integer", "samples with the function as the leaf", optional=True),
    inclusive_share=f("number", "of busy samples", nullable=True),
    calls=f("integer", "calls counted at the tracepoints", nullable=True),
)
OVERHEAD = obj(
    "overhead: CPU spent in the allocators during a window",
    seconds=f("number", "window length"),
    period_ns=f("number", "CPU time one sample stands for", optional=True),
    samples=obj("sample counts by kind", optional=True, total=INT, busy=INT),
    functions=arr(FUNCTION_ROW, "one row per allocator function"),
    event=f("string", "perf event sampled: cpu-cycles | cpu-clock", optional=True),
    profiling_memory=obj("memory the profiling itself uses", optional=True, status=STR),
)
TOP_LIVE = obj(
    "top --live: per-function bytes and calls from the kmem tracepoints",
    bytes_kind=f("string", "live | allocated"),
    backend=f("string", "hooks used", optional=True),
    events=f("integer", "events seen", optional=True),
    lost=f("object", "events not accounted for, by reason", optional=True),
    sites=arr(
        obj(
            "one allocating function",
            function=STR,
            module=STR,
            bytes=INT,
            calls=INT,
            extras=f("object", "source, alloc_bytes, ..."),
        ),
        "biggest first",
    ),
)
COMPARISON = obj(
    "one function x metric comparison",
    function=STR,
    metric=f("string", "", optional=True),
    n_a=f("integer", "", optional=True),
    n_b=f("integer", "", optional=True),
    ratio=f("number", "B over A", nullable=True, optional=True),
    ci_low=f("number", "bootstrap interval", nullable=True, optional=True),
    ci_high=f("number", "bootstrap interval", nullable=True, optional=True),
    significant=f("boolean", "", optional=True),
)
AB = obj(
    "ab: pilot vs control overhead results",
    labels=arr(STR, "the two groups' names", optional=True),
    stat=f("string", "statistic compared", optional=True),
    alpha=f("number", "significance level", optional=True),
    comparisons=arr(COMPARISON, "one row per function and metric"),
    verdicts=f("array", "headline verdicts"),
    notes=arr(STR, "caveats", optional=True),
)
AB_TOGGLE = obj(
    "ab --toggle: profiling on vs off in alternating windows on one host",
    labels=arr(STR, "profiling on, profiling off", optional=True),
    comparisons=arr(
        obj(
            "one function, on vs off",
            function=STR,
            on_ns_per_call=f("number", "profiling on", optional=True, nullable=True),
            off_ns_per_call=f("number", "profiling off", optional=True, nullable=True),
            ratio=f("number", "on over off", optional=True, nullable=True),
        ),
        "paired windows",
    ),
    original=f("string", "vm.mem_profiling before the run", optional=True),
    restored=f("boolean", "put back afterwards", optional=True),
    period=f("number", "window seconds", optional=True),
    windows=f("integer", "windows measured", optional=True),
    interrupted=f("boolean", "stopped early", optional=True),
    window_results=arr(
        obj("one window's overhead payload", mem_profiling=STR), "in order", optional=True
    ),
)

PAYLOADS: dict[str, Field] = {
    "who-calls": WHO_CALLS,
    "overhead": OVERHEAD,
    "top-live": TOP_LIVE,
    "ab": AB,
    "ab-toggle": AB_TOGGLE,
}

RESULT = obj(
    "the result file: one JSON document per capture or comparison",
    schema=f("integer", "bumped on any incompatible change; newer majors are refused"),
    kind=f("string", " | ".join(PAYLOADS)),
    host=f("object", "host metadata (collector/host.py HostMetadata)"),
    start=f("number", "unix time the window began"),
    duration=f("number", "seconds"),
    settings=obj("what was asked; `interrupted` says the run ended early", optional=True),
    payload=f("object", "kind-specific: one of the payload contracts below"),
)


def check_payload(kind: str, payload: Any) -> None:
    """The payload of a ``kind`` result matches its contract (ContractError otherwise)."""
    spec = PAYLOADS.get(kind)
    if spec is None:
        raise ContractError("kind", f"unknown result kind {kind!r}")
    try:
        check(payload, spec, "payload")
    except ContractError as e:
        hint = _likely_kind(payload)
        if hint and hint != kind:
            raise ContractError(
                e.path, f"{str(e).split(': ', 1)[1]} (this looks like a {hint!r} payload)"
            ) from None
        raise


def _likely_kind(payload: Any) -> str | None:
    for kind, spec in PAYLOADS.items():
        try:
            check(payload, spec, "payload")
        except ContractError:
            continue
        return kind
    return None


def markdown() -> str:
    """docs/schemas.md: the contracts above as tables (generated; edit this module)."""
    out = [
        "# Result file schemas",
        "",
        "Generated from `collector/contracts.py` by `scripts/gen-schemas`: do not edit by hand.",
        "Every listed field is checked when a result file is read (`ab`, `report`, `ingest`);",
        "unlisted fields are allowed. Errors name the file and the field path.",
        "",
    ]

    def walk(spec: Field, path: str, rows: list[str]) -> None:
        for name, sub in spec.fields.items():
            p = f"{path}.{name}" if path else name
            t = sub.type
            if sub.type == "array" and sub.items is not None:
                t = f"array of {sub.items.type}"
            flags = ", ".join(
                x for x, on in (("optional", sub.optional), ("nullable", sub.nullable)) if on
            )
            rows.append(f"| `{p}` | {t} | {flags} | {sub.doc} |")
            if sub.type == "object":
                walk(sub, p, rows)
            elif sub.type == "array" and sub.items is not None and sub.items.type == "object":
                walk(sub.items, p + "[]", rows)

    for title, spec in [("The result file", RESULT)] + [
        (f"Payload of kind `{k}`", v) for k, v in PAYLOADS.items()
    ]:
        rows: list[str] = []
        walk(spec, "", rows)
        out += [
            f"## {title}",
            "",
            spec.doc,
            "",
            "| field | type | | meaning |",
            "|---|---|---|---|",
        ]
        out += rows + [""]
    return "\n".join(out)
