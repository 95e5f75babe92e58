"""allocinfo as node_exporter textfile-collector metrics.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text 0.0.4). Label values
escape backslash, double quote and newline. Cardinality is the real risk (a kernel has ~5,000
tags; a fleet multiplies that), so callers choose a top-N and/or a min-bytes cut, and what the
cut left out is still exported as totals (``allocinfo_omitted_*``) so sums stay true.

One bad line makes node_exporter's textfile collector reject the whole file, so every
allocinfo metric of the host disappears: extra label names are checked against the data model
(``[a-zA-Z_][a-zA-Z0-9_]*``, ``__`` reserved, no clash with the five site labels, which would
give a duplicate label) and values must be encodable UTF-8, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from allocscope.errors import AllocscopeError

SITE_LABELS = ("file", "line", "function", "module", "subsystem")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class SiteSample:
    file: str
    line: int
    function: str
    module: str
    subsystem: str
    bytes: int
    calls: int


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def check_extra_labels(labels: Mapping[str, str]) -> None:
    """Refuse (one line, naming the label) what would make the textfile invalid."""
    for key, value in labels.items():
        if not _LABEL_NAME.fullmatch(key):
            raise AllocscopeError(
                f"--label {key!r}: not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        if key.startswith("__"):
            raise AllocscopeError(f"--label {key!r}: names starting with '__' are reserved")
        if key in SITE_LABELS:
            raise AllocscopeError(
                f"--label {key!r}: every series already has this label ({', '.join(SITE_LABELS)})"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AllocscopeError(f"--label {key!r}: the value is not valid UTF-8") from None


def select(
    samples: Sequence[SiteSample], top: int | None, min_bytes: int | None
) -> tuple[list[SiteSample], list[SiteSample]]:
    """(kept, omitted): largest first, cut by ``min_bytes`` then ``top``."""
    ranked = sorted(samples, key=lambda s: (-s.bytes, s.file, s.line, s.function))
    kept = [s for s in ranked if min_bytes is None or s.bytes >= min_bytes]
    if top is not None:
        kept = kept[: max(0, top)]
    keep_ids = {id(s) for s in kept}
    return kept, [s for s in ranked if id(s) not in keep_ids]


def render(
    samples: Sequence[SiteSample],
    *,
    top: int | None = None,
    min_bytes: int | None = None,
    extra_labels: dict[str, str] | None = None,
) -> str:
    check_extra_labels(extra_labels or {})
    kept, omitted = select(samples, top, min_bytes)
    extra = "".join(f',{k}="{escape_label(v)}"' for k, v in sorted((extra_labels or {}).items()))
    out: list[str] = []

    def labels(s: SiteSample) -> str:
        return (
            f'file="{escape_label(s.file)}",line="{s.line}",'
            f'function="{escape_label(s.function)}",module="{escape_label(s.module)}",'
            f'subsystem="{escape_label(s.subsystem)}"{extra}'
        )

    for name, attr, help_ in (
        (
            "allocinfo_bytes",
            "bytes",
            "Bytes currently allocated at this allocation site (/proc/allocinfo).",
        ),
        ("allocinfo_calls", "calls", "Live allocations at this allocation site (/proc/allocinfo)."),
    ):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.extend(f"{name}{{{labels(s)}}} {getattr(s, attr)}" for s in kept)
    tail = extra.lstrip(",")
    brace = f"{{{tail}}}" if tail else ""
    for name, value, help_ in (
        ("allocinfo_total_bytes", sum(s.bytes for s in samples), "Bytes over all allocinfo sites."),
        ("allocinfo_sites", len(samples), "allocinfo sites (tags) in the read."),
        (
            "allocinfo_omitted_sites",
            len(omitted),
            "Sites left out of allocinfo_bytes by the top-N/min-bytes cut.",
        ),
        (
            "allocinfo_omitted_bytes",
            sum(s.bytes for s in omitted),
            "Bytes of the sites left out by the cut.",
        ),
    ):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.append(f"{name}{brace} {value}")
    return "\n".join(out) + "\n"
