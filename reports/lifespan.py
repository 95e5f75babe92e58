"""Presentation of a ``lifespan`` payload: the lifespan table and the leaks view.

Presentation only: every number was computed by :mod:`allocscope.collector.lifespan`.
"""

from __future__ import annotations

from allocscope.collector.payloads import Estimate, LifespanPayload, LifespanRow
from allocscope.reports.format import bytes_short, count_short
from allocscope.reports.table import render
from allocscope.reports.terminal import printable


def ns(v: float) -> str:
    """A time in ns as a short human figure (1.2us, 340ms, 2.1s)."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if v >= scale:
            x = v / scale
            return f"{x:.0f}{unit}" if x >= 100 else f"{x:.3g}{unit}"
    return f"{v:.0f}ns"


def _ci(e: Estimate, fmt: object) -> str:
    f = fmt if callable(fmt) else count_short
    return f"{f(e.value)} [{f(e.low)}-{f(e.high)}]"


def header(p: LifespanPayload) -> str:
    c = p.counters
    lines = [
        f"{p.view}: backend {p.backend}, window {ns(p.window_ns)}, sites by {p.tag_mode}, "
        f"tracking 1 in 2^{p.addr_shift} addresses x byte points every {p.sample_rate} B "
        f"(~1 point per {bytes_short(p.sample_rate << p.addr_shift)}"
        + (
            f"; pages every {p.page_sample_rate} B"
            if p.page_sample_rate and p.page_sample_rate != p.sample_rate
            else ""
        )
        + ")",
        f"  objects tracked: {p.sampled}  freed: {p.freed_sampled}  live at end: "
        f"{p.live_sampled}  missed frees: {p.missed_frees}  of "
        f"{count_short(c.get('alloc_events', 0))} allocations, "
        f"{count_short(c.get('free_events', 0))} frees "
        f"({count_short(c.get('free_filtered', 0))} decided by address alone)",
        f"  frees traced: {', '.join(p.traced_frees)}",
        f"  not traced (missed frees come from these): {'; '.join(p.untraced_frees)}",
    ]
    if p.view == "leaks":
        lines.append(f"  leaks: outstanding allocations older than {ns(p.older_than_ns)}")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(printable(line) for line in lines)


def _who(r: LifespanRow) -> str:
    return r.tag or r.site


def lifespan_table(p: LifespanPayload, top: int | None = 30) -> str:
    rows = p.rows[:top] if top else p.rows
    body = []
    for r in rows:
        life = r.lifespan
        body.append(
            [
                _who(r),
                r.caller,
                r.sampled,
                count_short(r.allocated_calls.value),
                count_short(r.freed_calls.value),
                _ci(r.live_calls, count_short),
                bytes_short(r.live_bytes.value),
                ns(life.mean_ns.value) if life else "-",
                f"{ns(life.p50_ns.value)} [{ns(life.p50_ns.low)}-{ns(life.p50_ns.high)}]"
                if life
                else "-",
                ns(life.p90_ns.value) if life else "-",
                ns(life.p99_ns.value) if life else "-",
            ]
        )
    table = render(
        [
            "site/tag",
            "caller",
            "sampled",
            "alloc calls",
            "freed",
            "live calls [95% CI]",
            "live bytes",
            "mean life",
            "p50 life [CI]",
            "p90",
            "p99",
        ],
        body,
        align=["left", "left"] + ["right"] * 9,
    )
    more = len(p.rows) - len(rows)
    return table + (f"\n({more} more rows; see -n)" if more > 0 else "")


def _oldest(r: LifespanRow) -> str:
    return ns(r.age_hist[-1].low_ns) + "+" if r.age_hist else "-"


def leaks_table(p: LifespanPayload, top: int | None = 10, stacks: int = 1) -> str:
    rows = p.rows[:top] if top else p.rows
    out = []
    body = [
        [
            _who(r),
            r.caller,
            _ci(r.old_bytes, bytes_short),
            _ci(r.old_calls, count_short),
            bytes_short(r.live_bytes.value),
            r.live_sampled,
            _oldest(r),
        ]
        for r in rows
    ]
    out.append(
        render(
            [
                "site/tag",
                "caller",
                "old bytes [95% CI]",
                "old calls [95% CI]",
                "live bytes",
                "sampled",
                "oldest",
            ],
            body,
            align=["left", "left", "right", "right", "right", "right", "right"],
        )
    )
    if stacks:
        for i, r in enumerate(rows[:5], 1):
            for folded, n in list(r.stacks.items())[:stacks]:
                frames = folded.split(";")
                head = f"#{i} {_who(r)} <- {r.caller}: {n} sampled old objects, stack:"
                out.append("\n" + printable(head))
                out += [f"    {printable(f)}" for f in reversed(frames[-12:])]
    more = len(p.rows) - len(rows)
    if more > 0:
        out.append(f"({more} more rows; see -n)")
    return "\n".join(out)


def text(p: LifespanPayload, top: int | None) -> str:
    body = leaks_table(p, top) if p.view == "leaks" else lifespan_table(p, top)
    return header(p) + "\n\n" + body + "\n"
