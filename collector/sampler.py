"""The probes of one overhead measurement, composed: on-CPU sampling + kmem call counters
(``probes/oncpu.py``) and, with ``--exact``, fexit timing (``probes/alloc_latency.py``).

This is collector code, not a probe half, for one reason: it turns sampled stack addresses
into function names with :class:`~allocscope.collector.kallsyms.Kallsyms` and
:func:`~allocscope.collector.site.canonical_function`, which the probes layer may not import.
Everything kernel-facing (``-D`` flags, hooks, map layouts, the perf-event fallback) stays in
the two probe halves; this module only chooses what to open, in which order, and reads both
halves at the same instant into one :class:`CounterSample`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from allocscope.collector import boot_cache
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.site import canonical_function
from allocscope.errors import AllocscopeError, CapabilityError
from allocscope.probes.alloc_latency import LatencyProbe, LatencySettings, LatencyTotals
from allocscope.probes.capabilities import CheckResult
from allocscope.probes.filters import EventFilter
from allocscope.probes.oncpu import (
    DEFAULT_FREQUENCY,
    DEFAULT_STACK_STORAGE,
    OncpuProbe,
    OncpuSettings,
    online_cpus,
)


@dataclass
class SamplerSettings:
    """What the user asked to measure (``overhead``/``ab --toggle`` flags)."""

    frequency: int = DEFAULT_FREQUENCY  # 0 = tracepoint counters only, no stack sampling
    cpus: list[int] | None = None
    pid: int | None = None
    stack_storage: int = DEFAULT_STACK_STORAGE
    exact_function: str | None = None  # set = also time this function with fentry/fexit

    @property
    def filter(self) -> EventFilter:
        return EventFilter(self.pid, tuple(self.cpus) if self.cpus else None)


@dataclass(frozen=True, slots=True)
class CounterSample:
    """Cumulative counts of every probe at one instant (``t``: monotonic seconds); a window
    is the difference of two (:func:`allocscope.collector.overhead.diff_samples`)."""

    t: float
    counters: dict[str, int]
    stacks: dict[int, int]
    exact: LatencyTotals | None = None


@dataclass
class Sampler:
    """The probes of one measurement. Use as a context manager; :meth:`sample` reads
    cumulative counts at any time, :meth:`frames` names a sampled stack."""

    settings: SamplerSettings
    event: str = ""
    event_type: int = -1
    event_config: int = -1
    backends: list[str] = field(default_factory=list)
    _oncpu: OncpuProbe | None = None
    _exact: LatencyProbe | None = None
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
        s = self.settings
        if s.pid is not None and not os.path.exists(f"/proc/{s.pid}"):
            raise AllocscopeError(f"-p {s.pid}: no such process")
        boot = boot_cache.load() if s.exact_function else None
        if boot is not None and s.exact_function:
            # A kernel that refused fentry earlier this boot refuses it again: say so before
            # compiling two programs (seconds; ~20 s under emulation) to hear it.
            refused = boot.verdicts.get("fentry")
            if refused is not None and not refused.ok:
                raise CapabilityError(
                    f"--exact needs fentry/fexit on {s.exact_function}, which this kernel "
                    f"refused earlier this boot ({refused.detail}); run without --exact to use "
                    "sampling only (`allocscope doctor --refresh` tries fentry again)"
                )
        self._oncpu = OncpuProbe(OncpuSettings(s.filter, s.stack_storage))
        self._oncpu.attach_counters()
        if s.exact_function:
            try:
                self._exact = LatencyProbe(LatencySettings(s.exact_function, s.filter))
            except CapabilityError as e:
                if boot is not None:
                    failed = CheckResult(False, str(e))
                    boot_cache.record_attempt(boot, "fentry", [s.exact_function], failed)
                    boot.save()
                raise
        if s.frequency > 0:  # 0: tracepoint counters only (bench-overhead's split of costs)
            ev = self._oncpu.attach_sampling(s.frequency)
            self.event, self.event_type, self.event_config = ev.name, ev.type, ev.config
        self.backends = sorted(
            self._oncpu.backends | ({"fentry"} if self._exact is not None else set())
        )
        # Loaded after the programs so their bpf_prog_* symbols resolve (profiler samples).
        self._ksyms = Kallsyms.load()

    def sample(self) -> CounterSample:
        if self._oncpu is None:
            raise RuntimeError("sampler not open")
        t = time.monotonic()
        counts = self._oncpu.read()
        exact = self._exact.read() if self._exact is not None else None
        return CounterSample(t, counts.counters, counts.stacks, exact)

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
        if self._oncpu is None or self._ksyms is None:
            return ()
        names = tuple(self._name(a) for a in self._oncpu.stack(stackid))
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
        for p in (self._exact, self._oncpu):
            if p is not None:
                p.close()
        self._exact = self._oncpu = None


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
