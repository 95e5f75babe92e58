"""What allocation profiling costs on this host: CPU share and CPU ns per call of the allocators.

The measurement (``probes/oncpu.bpf.c``) samples kernel stacks with a perf event and counts the
kmem tracepoints over the same window, with the same CPU/process filter. From those:

* inclusive share of a function = samples with the function anywhere on the stack / busy samples
  (busy = not the idle task), self share = samples with it as the leaf;
* calls/s = tracepoint events / seconds, the tracepoint chosen by what the function allocates
  (``mm_page_alloc`` for the page allocator, ``kmem_cache_alloc``/``kmalloc`` for slab);
* estimated CPU ns per call = inclusive samples x sampling period / calls.

Samples whose stack runs through BPF code (``bpf_trace_run*``, ``__bpf_trace_*``, ``bpf_prog_*``)
are our own tracepoint counters: they are reported as ``profiler`` samples and left out of the
allocator figures, so the tool does not bill its own ~40 ns/event to the allocator.

Allocator names differ per kernel (``__alloc_pages_nodemask`` before 5.13, ``__alloc_pages``,
``__alloc_pages_noprof`` from 6.10, ``__alloc_frozen_pages_noprof`` from 6.15), so the list is
resolved against kallsyms and absent names are reported as absent rather than as zero cost.

Counters in the BPF maps are cumulative; a window is the difference of two
:class:`~allocscope.collector.sampler.CounterSample` s, so toggled windows (``ab --toggle``)
never race with a map clear.

The probes themselves live in ``probes/oncpu.py`` and ``probes/alloc_latency.py``, composed by
``collector/sampler.py``; the profiler's own memory is ``collector/profiling_memory.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from allocscope.collector.profiling_memory import profiling_memory
from allocscope.collector.sampler import CounterSample, Sampler, SamplerSettings
from allocscope.errors import CapabilityError

if TYPE_CHECKING:
    from allocscope.collector.result import Result

# Which kmem tracepoints count the calls of a function of each kind.
KIND_TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "page": ("mm_page_alloc",),
    "kmem_cache": ("kmem_cache_alloc",),
    "kmalloc": ("kmalloc",),
    "slab": ("kmem_cache_alloc", "kmalloc"),
    "any": ("mm_page_alloc", "kmem_cache_alloc", "kmalloc"),
    "other": (),
}

# (name, kind): every allocator entry point and profiling hook across 5.x .. 7.x; each kernel
# has a subset. Order is the table order.
DEFAULT_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("__alloc_pages_nodemask", "page"),
    ("__alloc_pages", "page"),
    ("__alloc_pages_noprof", "page"),
    ("__alloc_frozen_pages_noprof", "page"),
    ("get_page_from_freelist", "page"),
    ("__alloc_pages_slowpath", "page"),
    ("__pgalloc_tag_add", "page"),
    ("kmem_cache_alloc", "kmem_cache"),
    ("kmem_cache_alloc_noprof", "kmem_cache"),
    ("kmem_cache_alloc_lru_noprof", "kmem_cache"),
    ("kmem_cache_alloc_node_noprof", "kmem_cache"),
    ("__kmalloc", "kmalloc"),
    ("__kmalloc_noprof", "kmalloc"),
    ("__kmalloc_node_noprof", "kmalloc"),
    ("__kmalloc_cache_noprof", "kmalloc"),
    ("__kmalloc_cache_node_noprof", "kmalloc"),
    ("__kmalloc_node_track_caller_noprof", "kmalloc"),
    ("kmalloc_trace_noprof", "kmalloc"),
    ("kmalloc_node_trace_noprof", "kmalloc"),
    ("___slab_alloc", "slab"),
    ("__alloc_tagging_slab_alloc_hook", "slab"),
    ("alloc_tag_add", "any"),
)

# Aggregate rows: a sample counts once if any function of these kinds is on its stack.
GROUPS: dict[str, tuple[str, ...]] = {
    "[page allocator]": ("page",),
    "[slab allocator]": ("kmem_cache", "kmalloc", "slab"),
}
GROUP_KIND = {"[page allocator]": "page", "[slab allocator]": "slab"}

# Candidates for --exact (fexit timing), most specific first: the core every page allocation
# goes through on that kernel.
EXACT_CANDIDATES = (
    "__alloc_frozen_pages_noprof",
    "__alloc_pages_noprof",
    "__alloc_pages",
    "__alloc_pages_nodemask",
)


def is_profiler_frame(name: str) -> bool:
    """A frame of BPF machinery: our own tracepoint counters or fentry programs.

    ``bpf_trampoline_*`` is not one: with ``--exact`` the allocator body runs *under* the
    trampoline, and those samples are the allocator's.
    """
    return (
        name.startswith("bpf_prog_")
        or name.startswith("bpf_trace_run")
        or name.startswith("__bpf_trace_")
    )


def in_profiler(frames: tuple[str, ...], targets: set[str]) -> bool:
    """True when the sample was taken in BPF code running leafward of every allocator frame
    (our counters inside kmem_cache_alloc, our fentry programs): time the allocator spends
    only because we are watching it."""
    for name in frames:
        if name in targets:
            return False
        if is_profiler_frame(name):
            return True
    return False


@dataclass(frozen=True, slots=True)
class AllocFunction:
    """An allocator function to account, and whether this kernel has it."""

    name: str
    kind: str
    present: bool

    @property
    def tracepoints(self) -> tuple[str, ...]:
        return KIND_TRACEPOINTS[self.kind]


def parse_function_arg(text: str) -> tuple[str, str]:
    """``--function NAME[:KIND]``; KIND picks the tracepoint that counts its calls."""
    name, _, kind = text.partition(":")
    name = name.strip()
    kind = kind.strip() or _guess_kind(name)
    if not name:
        raise ValueError(f"--function {text!r}: empty name")
    if kind not in KIND_TRACEPOINTS:
        raise ValueError(f"--function {text!r}: kind must be one of {', '.join(KIND_TRACEPOINTS)}")
    return name, kind


def _guess_kind(name: str) -> str:
    if "kmalloc" in name:
        return "kmalloc"
    if "kmem_cache" in name:
        return "kmem_cache"
    if "slab" in name:
        return "slab"
    if "page" in name or "folio" in name:
        return "page"
    return "other"


def resolve_functions(
    present: Callable[[str], bool], extra: Iterable[tuple[str, str]] = ()
) -> list[AllocFunction]:
    """The default allocator list plus ``extra``, each marked present/absent on this kernel."""
    seen: set[str] = set()
    out: list[AllocFunction] = []
    for name, kind in [*DEFAULT_FUNCTIONS, *extra]:
        if name in seen:
            out = [AllocFunction(f.name, kind, f.present) if f.name == name else f for f in out]
            continue
        seen.add(name)
        out.append(AllocFunction(name, kind, present(name)))
    return out


def exact_target(present: Callable[[str], bool], wanted: str | None = None) -> str:
    """The function ``--exact`` times: ``wanted``, or this kernel's page-allocator core."""
    if wanted:
        if not present(wanted):
            raise CapabilityError(f"--exact-function {wanted}: not in /proc/kallsyms")
        return wanted
    for name in EXACT_CANDIDATES:
        if present(name):
            return name
    raise CapabilityError("no page allocator entry point found in /proc/kallsyms for --exact")


# --- measurement windows -------------------------------------------------------------------


@dataclass(slots=True)
class Window:
    """What happened between two counter samples (``exact``: the shape of
    :func:`exact_payload`'s input)."""

    seconds: float
    counters: dict[str, int]
    stacks: dict[int, int]
    exact: dict[str, Any] | None = None


def diff_samples(a: CounterSample, b: CounterSample) -> Window:
    counters = {k: b.counters.get(k, 0) - a.counters.get(k, 0) for k in b.counters}
    stacks = {}
    for sid, n in b.stacks.items():
        d = n - a.stacks.get(sid, 0)
        if d > 0:
            stacks[sid] = d
    exact = None
    if a.exact is not None and b.exact is not None:
        timed = b.exact.since(a.exact)
        exact = {
            "function": timed.function,
            "calls": timed.calls,
            "total_ns": timed.total_ns,
            "hist": list(timed.hist),
        }
    return Window(b.t - a.t, counters, stacks, exact)


def attribute_samples(
    window: Window, functions: list[AllocFunction], frames_of: Callable[[int], tuple[str, ...]]
) -> dict[str, Any]:
    """Per-function inclusive/self samples, group unions, profiler samples, top self functions."""
    names = {f.name for f in functions if f.present}
    kind_of = {f.name: f.kind for f in functions}
    inclusive = dict.fromkeys(names, 0)
    self_ = dict.fromkeys(names, 0)
    groups = dict.fromkeys(GROUPS, 0)
    group_self = dict.fromkeys(GROUPS, 0)
    profiler = 0
    leaf_counts: dict[str, int] = {}
    for sid, n in window.stacks.items():
        frames = frames_of(sid)
        if not frames:
            continue
        leaf_counts[frames[0]] = leaf_counts.get(frames[0], 0) + n
        if in_profiler(frames, names):
            profiler += n
            continue
        on_stack = names.intersection(frames)
        for name in on_stack:
            inclusive[name] += n
        if frames[0] in names:
            self_[frames[0]] += n
        kinds = {kind_of[name] for name in on_stack}
        for g, gkinds in GROUPS.items():
            if kinds.intersection(gkinds):
                groups[g] += n
                if kind_of.get(frames[0]) in gkinds:
                    group_self[g] += n
    top = sorted(leaf_counts.items(), key=lambda kv: -kv[1])[:15]
    return {
        "inclusive": inclusive,
        "self": self_,
        "groups": groups,
        "group_self": group_self,
        "profiler": profiler,
        "top_self": top,
    }


def calls_for(kind: str, counters: Mapping[str, int]) -> int | None:
    tps = KIND_TRACEPOINTS[kind]
    if not tps:
        return None
    return sum(counters.get(tp, 0) for tp in tps)


def run_overhead(
    settings: SamplerSettings,
    duration: float | None,
    functions: list[AllocFunction],
    labels: dict[str, str] | None = None,
    workload: str | None = None,
    allocinfo_path: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> Result:
    """Measure for ``duration`` seconds (None = until Ctrl-C/SIGTERM); returns a Result.

    An interrupt ends the window early; the result is still complete for the time measured
    and says ``interrupted``.
    """
    from allocscope.collector.capture import Capture
    from allocscope.collector.overhead_payload import window_payload  # it imports this module
    from allocscope.collector.payloads import ProfilingMemory

    cap = Capture("overhead", duration=duration, workload=workload, pid=settings.pid, labels=labels)
    with cap:
        sampler = cap.hold(Sampler(settings))
        first = sampler.sample()
        with cap.window(on_start=on_start) as w:
            cap.wait(w)
        last = sampler.sample()
        window = diff_samples(first, last)
        payload = window_payload(
            window, functions, sampler.frames, settings.frequency, sampler.period_cpus()
        )
        event, etype, econfig = sampler.event, sampler.event_type, sampler.event_config
        backends = sampler.backends
    payload = dataclasses.replace(
        payload,
        profiling_memory=ProfilingMemory.from_dict(
            profiling_memory(allocinfo_path), "profiling_memory"
        ),
        event=event,
    )
    result_settings: dict[str, Any] = {
        "event": event,
        "event_type": etype,
        "event_config": econfig,
        "frequency": settings.frequency,
        "duration": duration,
        "cpus": settings.cpus,
        "pid": settings.pid,
        "functions": [f.name for f in functions if f.present],
        "functions_absent": [f.name for f in functions if not f.present],
        "exact_function": settings.exact_function,
        "backends": backends,
        "workload": workload,
    }
    return cap.result(result_settings, payload.to_dict())
