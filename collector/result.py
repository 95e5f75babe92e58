"""The result file: one JSON document per capture, read by ``ingest``, ``ab`` and ``report``.

Layout (``schema`` is bumped on any incompatible change; readers refuse newer majors)::

    {"schema": 1, "kind": "who-calls" | "overhead" | "top-live" | ...,
     "host": {HostMetadata}, "start": <unix time>, "duration": <seconds>,
     "settings": {...what was asked...}, "payload": {...kind-specific...}}

Captures interrupted by Ctrl-C are still written, with ``settings.interrupted = true``.

``payload`` stays the JSON object as written or read (what ingest stores, byte for byte, and
what the HTML report walks generically); :meth:`Result.typed` gives the checked, typed view
(:mod:`allocscope.collector.payloads`), so every consumer that reads a field by name is
type-checked by mypy against the one contract instead of indexing a dict by string.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from allocscope.collector import payloads
from allocscope.collector.atomic import write_text_atomic
from allocscope.collector.contracts import ContractError
from allocscope.collector.host import HostMetadata
from allocscope.errors import InputError

RESULT_SCHEMA = 1
KINDS = tuple(payloads.PAYLOADS)
P = TypeVar("P", bound=payloads.Payload)


@dataclass(slots=True)
class Result:
    kind: str
    host: HostMetadata
    start: float
    duration: float
    settings: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    schema: int = RESULT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "kind": self.kind,
            "host": self.host.to_dict(),
            "start": self.start,
            "duration": self.duration,
            "settings": self.settings,
            "payload": self.payload,
        }

    @classmethod
    def of(
        cls,
        payload: payloads.Payload,
        host: HostMetadata,
        start: float,
        duration: float,
        settings: dict[str, Any] | None = None,
    ) -> Result:
        """A result of the kind ``payload``'s type is the payload of."""
        return cls(payload.KIND, host, start, duration, dict(settings or {}), payload.to_dict())

    def typed(self, cls: type[P], path: str = "<result>") -> P:
        """The payload as ``cls`` (checked); :class:`InputError` naming ``path`` if this result
        is another kind or its payload does not hold (one built in memory is checked too)."""
        if self.kind != cls.KIND:
            raise InputError(path, None, f"is a {self.kind!r} result, expected {cls.KIND!r}")
        try:
            return cast(P, cls.from_dict(self.payload, "payload"))
        except ContractError as e:
            raise InputError(path, None, str(e)) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def write(self, path: str) -> None:
        """Write atomically: a crash leaves the old file or the whole new one."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, path: str = "<result>") -> Result:
        """Validate every field the types declare (collector/payloads/) and the kind/payload
        match; anything wrong is one :class:`InputError` naming ``path`` and the field path."""
        if not isinstance(data, dict):
            raise InputError(path, None, "not a result file (top level is not a JSON object)")
        for key in ("schema", "kind", "host", "start", "duration", "payload"):
            if key not in data:
                raise InputError(path, None, f"not a result file (no {key!r} field)")
        if not isinstance(data["schema"], int) or data["schema"] > RESULT_SCHEMA:
            raise InputError(
                path,
                None,
                f"result schema {data['schema']!r} is newer than this allocscope "
                f"understands ({RESULT_SCHEMA}); upgrade allocscope",
            )
        if data["kind"] not in KINDS:
            raise InputError(path, None, f"unknown result kind {data['kind']!r}")
        try:
            payloads.ResultEnvelope.from_dict(data, "result")
            payloads.parse_payload(data["kind"], data["payload"])
        except ContractError as e:
            raise InputError(path, None, str(e)) from None
        try:
            host = HostMetadata.from_dict(data["host"])
        except (TypeError, ValueError, AttributeError) as e:
            raise InputError(path, None, f"result.host: bad host metadata: {e}") from None
        return cls(
            kind=data["kind"],
            host=host,
            start=float(data["start"]),
            duration=float(data["duration"]),
            settings=dict(data.get("settings") or {}),
            payload=data["payload"],
            schema=data["schema"],
        )


_INT_LIMIT = 1 << 64  # every count and size a result holds fits a u64


def _bounded_int(text: str) -> int:
    """JSON integers beyond u64 are refused while parsing: Python would read them exactly,
    and the first ``float()`` (start, duration, shares) would raise OverflowError."""
    value = int(text)
    if abs(value) >= _INT_LIMIT:
        raise ValueError(f"number out of range: {text[:20]}{'...' if len(text) > 20 else ''}")
    return value


def read_result(path: str, expect_kind: str | None = None) -> Result:
    """Read and validate a result file; errors name the file (and line, for bad JSON)."""
    try:
        with open(path) as f:
            data = json.load(f, parse_int=_bounded_int)
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"bad JSON: {e.msg}") from None
    except ValueError as e:  # _bounded_int, or more digits than int() converts
        raise InputError(path, None, f"bad JSON: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(path, None, "JSON nested too deeply to be a result file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, str(e)) from None
    result = Result.from_dict(data, path)
    if expect_kind is not None and result.kind != expect_kind:
        raise InputError(path, None, f"is a {result.kind!r} result, expected {expect_kind!r}")
    return result


def now() -> float:
    return time.time()
