"""Typed result contracts: a frozen dataclass per payload block is the check, the type and the doc.

A result file is read back by ``ab``, ``report`` and fleet ``ingest`` on other machines, often
long after it was written, so it is checked at the door: every field a type declares must be
present (unless optional) with its JSON type, and a payload that does not match its ``kind`` is
refused (a who-calls payload labelled ``overhead`` used to be ingested as a row of NULLs). Errors
name the field path (``payload.sites[2].total_calls: expected an integer, got 'x'``), on one line;
``Result.from_dict`` adds the file.

This module is the engine: :class:`Contract` derives ``from_dict``/``to_dict`` and the
``docs/schemas.md`` tables from a dataclass's annotations and its fields' metadata
(:func:`req`/:func:`opt`), so the reference, the check and the type cannot drift apart. The
payload types themselves live in :mod:`allocscope.collector.payloads`.

Rules the engine applies to every field:

* JSON types come from the annotation: ``int`` (not ``bool``), ``float`` (int or float, finite:
  NaN and infinities are refused), ``str``, ``bool``, ``tuple[X, ...]`` (an array),
  ``dict[str, X]`` (an object), a nested :class:`Contract`, ``Any``; ``X | None`` on a required
  field means JSON ``null`` is allowed.
* ``opt(..., default=None)``: the key may be absent (read as ``None``, not written when
  ``None``); with ``nullable=True`` it may also be ``null`` and is always written.
  ``opt(..., default=<value>)``: absent reads as the default; always written.
* ``nonneg=True``: a count, size or time, refused when negative.
* Keys a type does not declare are kept, in order, in ``extra`` (producers add context; ingest
  stores the whole payload), and only their nesting depth is bounded (:data:`MAX_DEPTH`).
* ``to_dict`` writes declared fields in declaration order, then ``extra``: the producers' JSON,
  byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

MAX_DEPTH = 32  # payloads nest 4-5 levels; anything deeper is not ours

C = TypeVar("C", bound="Contract")
_ABSENT: Any = object()


class ContractError(ValueError):
    """A value does not match its contract; ``path`` says where."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def req(doc: str, *, nonneg: bool = False, flatten: bool = False) -> Any:
    """A required field. ``flatten``: a nested contract whose keys sit in this object's own."""
    return field(metadata={"doc": doc, "nonneg": nonneg, "flatten": flatten})


def opt(doc: str, *, default: Any = None, nullable: bool = False, nonneg: bool = False) -> Any:
    """An optional field (see the module docstring for how absent, null and default interact).
    A list or dict default is stored as a tuple or a fresh dict."""
    meta = {"doc": doc, "optional": True, "nullable": nullable, "nonneg": nonneg}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Spec:
    """One declared field, resolved once per class."""

    name: str
    hint: Any
    doc: str
    optional: bool
    nullable: bool
    nonneg: bool
    flatten: bool
    default: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Contract:
    """Base of every payload type: ``from_dict``/``to_dict`` derived from the annotations."""

    KIND: ClassVar[str] = ""  # the result kind a top-level payload type is the payload of

    extra: dict[str, Any] = field(default_factory=dict, compare=True, repr=False)

    @classmethod
    def from_dict(cls: type[C], data: Any, path: str = "payload") -> C:
        """Validate ``data`` against this type; :class:`ContractError` names the field path."""
        return _decode_contract(cls, data, path, 0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, declared fields in order then ``extra``."""
        out: dict[str, Any] = {}
        for s in specs(type(self)):
            v = getattr(self, s.name)
            if s.flatten:
                assert isinstance(v, Contract)
                out.update(v.to_dict())
                continue
            if v is None and s.optional and not s.nullable:
                continue
            out[s.name] = _encode(v)
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out


_SPECS: dict[type[Contract], tuple[Spec, ...]] = {}


def specs(cls: type[Contract]) -> tuple[Spec, ...]:
    """The declared fields of ``cls`` (``extra`` excluded), in declaration order (cached)."""
    known = _SPECS.get(cls)
    if known is None:
        known = _SPECS[cls] = _resolve(cls)
    return known


def _resolve(cls: type[Contract]) -> tuple[Spec, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        m = f.metadata
        if "doc" not in m:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with req() or opt()")
        default: Any = _ABSENT
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        out.append(
            Spec(
                f.name,
                hints[f.name],
                m["doc"],
                bool(m.get("optional")),
                bool(m.get("nullable")) or (not m.get("optional") and _has_none(hints[f.name])),
                bool(m.get("nonneg")),
                bool(m.get("flatten")),
                default,
            )
        )
    return tuple(out)


def _has_none(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _strip_none(hint: Any) -> Any:
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_contract(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Contract)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    text = repr(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _decode_contract(cls: type[C], data: Any, path: str, depth: int) -> C:
    if depth > MAX_DEPTH:
        raise ContractError(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict):
        raise ContractError(path, f"expected an object, got {_show(data)}")
    kwargs: dict[str, Any] = {}
    own: set[str] = set()
    flat: Spec | None = None
    for s in specs(cls):
        if s.flatten:
            flat = s
            continue
        own.add(s.name)
        p = f"{path}.{s.name}"
        if s.name not in data:
            if not s.optional:
                raise ContractError(p, "missing")
            d = s.default
            kwargs[s.name] = d() if callable(d) else d
            continue
        v = data[s.name]
        if v is None:
            if s.nullable:
                kwargs[s.name] = None
                continue
            raise ContractError(p, f"expected {_what(_strip_none(s.hint))}, got null")
        kwargs[s.name] = _decode(_strip_none(s.hint), v, p, depth + 1, s.nonneg)
    rest = {k: v for k, v in data.items() if k not in own}
    if flat is not None:
        kwargs[flat.name] = _decode_contract(flat.hint, rest, path, depth)
        rest = {}
    for k, v in rest.items():
        _bounded(v, f"{path}.{k}", depth + 1)
    return cls(extra=rest, **kwargs)


_SCALARS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: (
        "a finite number",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    ),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
}


def _what(hint: Any) -> str:
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return "an array"
    if origin is dict or _is_contract(hint):
        return "an object"
    return "any value"


def _decode(hint: Any, v: Any, path: str, depth: int, nonneg: bool = False) -> Any:
    if depth > MAX_DEPTH:
        raise ContractError(path, f"nested deeper than {MAX_DEPTH} levels")
    if v is None and _has_none(hint):
        return None
    hint = _strip_none(hint)
    if hint is Any:
        _bounded(v, path, depth)
        return v
    if hint in _SCALARS:
        what, ok = _SCALARS[hint]
        if not ok(v):
            raise ContractError(path, f"expected {what}, got {_show(v)}")
        if nonneg and isinstance(v, (int, float)) and v < 0:
            raise ContractError(path, f"must not be negative, got {_show(v)}")
        return v
    if _is_contract(hint):
        return _decode_contract(hint, v, path, depth)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        if not isinstance(v, list):
            raise ContractError(path, f"expected an array, got {_show(v)}")
        return tuple(
            _decode(args[0], x, f"{path}[{i}]", depth + 1, nonneg) for i, x in enumerate(v)
        )
    if origin is dict:
        if not isinstance(v, dict):
            raise ContractError(path, f"expected an object, got {_show(v)}")
        return {k: _decode(args[1], x, f"{path}.{k}", depth + 1, nonneg) for k, x in v.items()}
    raise TypeError(f"{path}: unsupported contract type {hint!r}")


def _bounded(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ContractError(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _bounded(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _bounded(v, f"{path}[{i}]", depth + 1)


def _encode(v: Any) -> Any:
    if isinstance(v, Contract):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    return v


# --- the reference, from the types ---------------------------------------------------------


def type_name(hint: Any) -> str:
    """The JSON type of an annotation, as the schema tables write it."""
    hint = _strip_none(hint)
    if hint in _SCALARS:
        return {int: "integer", float: "number", str: "string", bool: "boolean"}[hint]
    if _is_contract(hint):
        return "object"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        return f"array of {type_name(args[0])}"
    if origin is dict:
        return "object" if args[1] is Any else f"object of {type_name(args[1])}"
    return "any"


def doc_of(cls: type[Contract]) -> str:
    """A type's doc line: the first paragraph of its docstring."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def rows(cls: type[Contract], path: str = "") -> list[str]:
    """Markdown table rows for every field of ``cls``, nested blocks expanded."""
    out: list[str] = []
    for s in specs(cls):
        inner = _strip_none(s.hint)
        if s.flatten:
            out.append(f"| `{path or '.'}` | | | and every field of `{inner.__name__}` |")
            continue
        p = f"{path}.{s.name}" if path else s.name
        flags = [x for x, on in (("optional", s.optional), ("nullable", s.nullable)) if on]
        if s.nonneg:
            flags.append(">= 0")
        if s.optional and s.default is not _ABSENT and s.default is not None:
            d = s.default() if callable(s.default) else s.default
            flags.append(f"default `{json.dumps(_encode(d))}`")
        doc = s.doc.replace("|", "\\|")
        out.append(f"| `{p}` | {type_name(s.hint)} | {', '.join(flags)} | {doc} |")
        if _is_contract(inner):
            out += rows(inner, p)
        elif typing.get_origin(inner) is tuple and _is_contract(typing.get_args(inner)[0]):
            out += rows(typing.get_args(inner)[0], p + "[]")
    return out
