"""A context result (or the store's latest context interval) as node_exporter textfile metrics.

Per tag: ``allocscope_context_calls_per_second``, ``allocscope_context_bytes_per_second``
(estimated from the byte sampler over the window) and ``allocscope_context_charged_share``
(share of its bytes charged to a memory cgroup; absent when the kernel cannot tell).
Cardinality is bounded the way allocinfo's export bounds it: the top N tags by bytes/s keep
their own series and everything else is summed into one ``tag="other"`` series, so the rates
still add up to the host's total; labels are ``tag`` and ``subsystem`` (plus ``--label``s,
checked by :func:`allocscope.reports.prometheus.check_extra_labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from allocscope.errors import AllocscopeError
from allocscope.reports.prometheus import check_extra_labels, escape_label

OTHER = "other"
CONTEXT_LABELS = ("tag", "subsystem")


@dataclass(frozen=True, slots=True)
class TagRate:
    tag: str
    subsystem: str
    calls_per_s: float
    bytes_per_s: float
    charged_bytes_per_s: float | None  # None: the charge is unknown for this tag


def _other(rest: Sequence[TagRate]) -> TagRate:
    known = [r for r in rest if r.charged_bytes_per_s is not None]
    return TagRate(
        OTHER,
        OTHER,
        sum(r.calls_per_s for r in rest),
        sum(r.bytes_per_s for r in rest),
        sum(r.charged_bytes_per_s or 0.0 for r in known) if known else None,
    )


def _sample_value(x: float) -> str:
    """A sample value as the text format wants it: a Go-parsable float (repr: no loss)."""
    return repr(float(x))


def render_context(
    rows: Sequence[TagRate],
    *,
    window_s: float,
    top: int = 20,
    extra_labels: dict[str, str] | None = None,
) -> str:
    extra_labels = extra_labels or {}
    check_extra_labels(extra_labels)
    for k in extra_labels:
        if k in CONTEXT_LABELS:
            raise AllocscopeError(f"--label {k!r}: every context series already has this label")
    ranked = sorted(rows, key=lambda r: (-r.bytes_per_s, r.tag))
    kept = ranked[: max(0, top)]
    rest = ranked[max(0, top) :]
    if rest:
        kept = [*kept, _other(rest)]
    extra = "".join(f',{k}="{escape_label(v)}"' for k, v in sorted(extra_labels.items()))

    def labels(r: TagRate) -> str:
        return f'tag="{escape_label(r.tag)}",subsystem="{escape_label(r.subsystem)}"{extra}'

    out: list[str] = []
    metrics: tuple[tuple[str, str, Callable[[TagRate], float]], ...] = (
        (
            "allocscope_context_calls_per_second",
            "Allocation calls per second through this tag (byte-sampled estimate).",
            lambda r: r.calls_per_s,
        ),
        (
            "allocscope_context_bytes_per_second",
            "Bytes allocated per second through this tag (byte-sampled estimate).",
            lambda r: r.bytes_per_s,
        ),
    )
    for name, help_, value in metrics:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.extend(f"{name}{{{labels(r)}}} {_sample_value(value(r))}" for r in kept)
    name = "allocscope_context_charged_share"
    out.append(f"# HELP {name} Share of this tag's allocated bytes charged to a memory cgroup.")
    out.append(f"# TYPE {name} gauge")
    for r in kept:
        if r.charged_bytes_per_s is not None and r.bytes_per_s > 0:
            share = r.charged_bytes_per_s / r.bytes_per_s
            out.append(f"{name}{{{labels(r)}}} {_sample_value(share)}")
    tail = extra.lstrip(",")
    brace = f"{{{tail}}}" if tail else ""
    for name, help_, v in (
        ("allocscope_context_window_seconds", "Seconds the rates were measured over.", window_s),
        ("allocscope_context_tags", "Tags seen in the window.", float(len(rows))),
        (
            "allocscope_context_omitted_tags",
            'Tags summed into the tag="other" series by the top-N cut.',
            float(len(rest)),
        ),
    ):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.append(f"{name}{brace} {_sample_value(v)}")
    return "\n".join(out) + "\n"
