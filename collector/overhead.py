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
:class:`Snapshot` s, so toggled windows (``ab --toggle``) never race with a map clear.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.allocinfo import PROC_ALLOCINFO, read_allocinfo
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.site import canonical_function
from allocscope.errors import AllocscopeError, CapabilityError, InputError
from allocscope.probes.loader import captured_stderr

# Index order of the ``counters`` map in probes/oncpu.bpf.c.
COUNTERS: tuple[str, ...] = (
    "samples",
    "idle",
    "user",
    "kernel",
    "lost_stack_full",
    "lost_stack_collision",
    "lost_stack_other",
    "lost_counts_full",
    "kmem_cache_alloc",
    "kmalloc",
    "mm_page_alloc",
    "pages",
)

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

PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES = 0, 0
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0


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
class Snapshot:
    """Cumulative BPF map contents at one instant."""

    t: float
    counters: dict[str, int]
    stacks: dict[int, int]
    exact: dict[str, Any] | None = None


@dataclass(slots=True)
class Window:
    """What happened between two snapshots."""

    seconds: float
    counters: dict[str, int]
    stacks: dict[int, int]
    exact: dict[str, Any] | None = None


def diff_snapshots(a: Snapshot, b: Snapshot) -> Window:
    counters = {k: b.counters.get(k, 0) - a.counters.get(k, 0) for k in b.counters}
    stacks = {}
    for sid, n in b.stacks.items():
        d = n - a.stacks.get(sid, 0)
        if d > 0:
            stacks[sid] = d
    exact = None
    if a.exact is not None and b.exact is not None:
        hist = [y - x for x, y in zip(a.exact["hist"], b.exact["hist"], strict=True)]
        exact = {
            "function": b.exact["function"],
            "calls": b.exact["calls"] - a.exact["calls"],
            "total_ns": b.exact["total_ns"] - a.exact["total_ns"],
            "hist": hist,
        }
    return Window(b.t - a.t, counters, stacks, exact)


def attribute(
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


HIST_SLOTS = 64 * 16  # alloc_latency.bpf.c's histogram: 64 octaves x 16 sub-slots


# --- the profiling memory overhead ---------------------------------------------------------

PROFILING_MEMORY_FUNCS = {"alloc_page_ext": "page_ext", "alloc_slab_obj_exts": "slab_obj_ext"}


def profiling_memory(path: str | None = None) -> dict[str, Any]:
    """Memory the profiling itself uses, from allocinfo's own lines, or why it is unknown.

    page_ext (``mm/page_ext.c func:alloc_page_ext``) is shared with other page_ext users
    (page_owner, idle tracking), so it is an upper bound when those are enabled too.
    """
    if path is None and not os.path.exists(PROC_ALLOCINFO):
        return {
            "status": "unknown",
            "reason": "no /proc/allocinfo (kernel without CONFIG_MEM_ALLOC_PROFILING)",
        }
    try:
        snap = read_allocinfo(path)
    except InputError as e:
        return {"status": "unknown", "reason": e.reason if path is None else str(e)}
    except OSError as e:
        return {"status": "unknown", "reason": f"cannot read allocinfo: {e}"}
    out: dict[str, Any] = {
        "status": "known",
        "source": snap.source,
        "allocinfo_version": snap.version,
        "page_ext_bytes": 0,
        "slab_obj_ext_bytes": 0,
        "lines": [],
    }
    for r in snap.records:
        what = PROFILING_MEMORY_FUNCS.get(r.site.function)
        if what is None:
            continue
        out[f"{what}_bytes"] += r.bytes
        out["lines"].append(
            {
                "site": r.site.key,
                "function": r.site.function,
                "bytes": r.bytes,
                "calls": r.calls,
                "accurate": r.accurate,
            }
        )
    out["total_bytes"] = out["page_ext_bytes"] + out["slab_obj_ext_bytes"]
    return out


# --- the live sampler ----------------------------------------------------------------------


@dataclass
class SamplerSettings:
    frequency: int = 99
    cpus: list[int] | None = None
    pid: int | None = None
    stack_storage: int = 16384
    exact_function: str | None = None  # set = also time this function with fentry/fexit


@dataclass
class Sampler:
    """The probes of one measurement: sampling + tracepoint counters (+ fexit timing).

    Use as a context manager; :meth:`snapshot` reads cumulative counts at any time.
    """

    settings: SamplerSettings
    event: str = ""
    event_type: int = -1
    event_config: int = -1
    backends: list[str] = field(default_factory=list)
    _probe: Any = None
    _exact: Any = None
    _ksyms: Kallsyms | None = None
    _frames: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def __enter__(self) -> Sampler:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        from allocscope.probes.loader import Probe

        s = self.settings
        ncpu = os.cpu_count() or 1
        defines: dict[str, int | str | bool] = {
            "FILTER_TGID": s.pid or 0,
            "FILTER_CPUS": 1 if s.cpus else 0,
            "MAX_CPUS": max(ncpu, max(s.cpus or [0]) + 1),
            "STACK_STORAGE": s.stack_storage,
        }
        if s.pid is not None and not os.path.exists(f"/proc/{s.pid}"):
            raise AllocscopeError(f"-p {s.pid}: no such process")
        with captured_stderr():  # kernel headers make clang print pages of harmless warnings
            self._probe = Probe("oncpu", defines)
        if s.cpus:
            ok = self._probe["cpu_ok"]
            for cpu in s.cpus:
                ok[ok.Key(cpu)] = ok.Leaf(1)
        for tp, fn in (
            ("kmem_cache_alloc", "count_cache_alloc"),
            ("kmalloc", "count_kmalloc"),
            ("mm_page_alloc", "count_page_alloc"),
        ):
            self._probe.attach_raw_tracepoint(tp, fn)
        if s.exact_function:
            self._open_exact(s.exact_function)
        if s.frequency > 0:  # 0: tracepoint counters only (bench-overhead's split of costs)
            self._attach_sampling()
        self.backends = sorted(
            {a.backend for a in self._probe.attachments}
            | ({"fentry"} if self._exact is not None else set())
        )
        # Loaded after the programs so their bpf_prog_* symbols resolve (profiler samples).
        self._ksyms = Kallsyms.load()

    def _attach_sampling(self) -> None:
        freq = self.settings.frequency
        try:
            with captured_stderr():  # libbcc prints perf_event_open's failure itself
                self._probe.attach_perf_event(
                    PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES, "on_sample", sample_freq=freq
                )
            self.event, self.event_type = "cpu-cycles", PERF_TYPE_HARDWARE
            self.event_config = PERF_COUNT_HW_CPU_CYCLES
            return
        except Exception:  # noqa: BLE001 - BCC raises bare Exception; no PMU (VMs, emulation)
            pass
        try:
            self._probe.attach_perf_event(
                PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, "on_sample", sample_freq=freq
            )
        except Exception as e:  # noqa: BLE001
            raise CapabilityError(f"cannot open a cpu-clock perf event: {e}") from None
        self.event, self.event_type = "cpu-clock", PERF_TYPE_SOFTWARE
        self.event_config = PERF_COUNT_SW_CPU_CLOCK

    def _open_exact(self, function: str) -> None:
        from allocscope.probes.loader import Probe

        s = self.settings
        defines: dict[str, int | str | bool] = {
            "FUNC": function,
            "FILTER_TGID": s.pid or 0,
            "FILTER_CPUS": 1 if s.cpus else 0,
            "MAX_CPUS": max(os.cpu_count() or 1, max(s.cpus or [0]) + 1),
        }
        # KFUNC_PROBE programs are attached by BCC itself when the object loads.
        try:
            with captured_stderr():  # the verifier/attach log of a refused fentry is noise here
                self._exact = Probe("alloc_latency", defines)
        except CapabilityError as e:
            raise CapabilityError(
                f"--exact needs fentry/fexit on {function} (BTF + BPF trampolines), which this "
                f"kernel refused; run without --exact to use sampling only ({e})"
            ) from None
        if s.cpus:
            ok = self._exact["cpu_ok"]
            for cpu in s.cpus:
                ok[ok.Key(cpu)] = ok.Leaf(1)

    def snapshot(self) -> Snapshot:
        if self._probe is None:
            raise RuntimeError("sampler not open")
        t = time.monotonic()
        counters = dict(
            zip(COUNTERS, _percpu_sums(self._probe["counters"], len(COUNTERS)), strict=True)
        )
        stacks = {_int(k): _int(v) for k, v in _items(self._probe["stack_counts"])}
        exact = None
        if self._exact is not None:
            st = _percpu_sums(self._exact["stats"], 2)
            exact = {
                "function": self.settings.exact_function,
                "calls": st[0],
                "total_ns": st[1],
                "hist": _percpu_sums(self._exact["hist"], HIST_SLOTS),
            }
        return Snapshot(t, counters, stacks, exact)

    def period_cpus(self) -> int | None:
        """CPUs whose every sample we keep (for the measured period), None with -p."""
        if self.settings.pid:
            return None
        return len(self.settings.cpus) if self.settings.cpus else len(online_cpus())

    def frames(self, stackid: int) -> tuple[str, ...]:
        """Function names of a kernel stack, leaf first (cached: stack ids are stable)."""
        got = self._frames.get(stackid)
        if got is not None:
            return got
        if self._probe is None or self._ksyms is None:
            return ()
        try:
            addrs = list(self._probe["stack_traces"].walk(stackid))
        except KeyError:
            addrs = []
        names = tuple(self._name(a) for a in addrs)
        self._frames[stackid] = names
        return names

    def _name(self, addr: int) -> str:
        assert self._ksyms is not None
        r = self._ksyms.resolve(addr)
        if r is None:
            return "[unknown]"
        if r.module == "bpf":
            return r.name  # bpf_prog_<tag>_<name>, bpf_trampoline_<id>: kept as they are
        return canonical_function(r.name)

    def close(self) -> None:
        for p in (self._exact, self._probe):
            if p is not None:
                p.close()
        self._exact = self._probe = None


def _items(table: Any) -> list[tuple[Any, Any]]:
    """All entries of a BPF map, in one batched syscall where the kernel allows."""
    try:
        return list(table.items_lookup_batch())
    except Exception:  # noqa: BLE001 - no batch ops on this kernel/map type
        return list(table.items())


def _percpu_sums(table: Any, size: int) -> list[int]:
    """A per-CPU array summed over CPUs, index by index."""
    out = [0] * size
    for k, v in _items(table):
        i = _int(k)
        if 0 <= i < size:
            out[i] = sum(_int(x) for x in v)
    return out


def _int(x: Any) -> int:
    """BCC hands back ctypes scalars or plain ints depending on the read path."""
    return int(x.value) if hasattr(x, "value") else int(x)


def online_cpus() -> list[int]:
    """CPUs the perf events were opened on (BCC opens one per online CPU)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def parse_cpus(text: str) -> list[int]:
    """``-C 0,2-3`` -> [0, 2, 3]."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if a < 0 or b < a:
                raise ValueError
            cpus.update(range(a, b + 1))
    except ValueError:
        raise ValueError(f"not a CPU list: {text!r} (examples: 0, 0-3, 0,2,4-7)") from None
    if not cpus:
        raise ValueError(f"not a CPU list: {text!r}")
    online = os.cpu_count() or 1
    bad = [c for c in cpus if c >= online]
    if bad:
        raise ValueError(f"CPU {bad[0]} does not exist (this host has {online})")
    return sorted(cpus)


# --- one whole capture ---------------------------------------------------------------------


def run_overhead(
    settings: SamplerSettings,
    duration: float | None,
    functions: list[AllocFunction],
    labels: dict[str, str] | None = None,
    workload: str | None = None,
    allocinfo_path: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> Any:
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
        first = sampler.snapshot()
        with cap.window(on_start=on_start) as w:
            cap.wait(w)
        last = sampler.snapshot()
        window = diff_snapshots(first, last)
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
