"""``ab --toggle``: alternate ``vm.mem_profiling`` on one host and pair adjacent windows.

Host-to-host noise (hardware, tenants, uptime) dwarfs a 40% change in a function that takes a
few percent of CPU, so the cleanest comparison is one host with profiling switched on and off
in alternating windows (A B A B ...), each on window paired with the off window right after it,
as a careful benchmark pairs runs.

The sysctl is a global switch other people rely on: the original value is restored on every
exit path (normal end, error, Ctrl-C, SIGTERM/SIGHUP via :func:`interruptible`), with signals
blocked while the restore writes. SIGKILL (or a crash of the interpreter) runs no handler, so a
small guardian process (:class:`Guardian`) outlives us to do it: it waits on a pipe whose only
writer is this process and, when that pipe closes without the word "restored", writes the
original value back. Only killing both (``kill -9`` of the whole process group) can leave the
sysctl changed.

Kernel semantics worth repeating in the output (Documentation/mm/allocation-profiling.rst):
allocations made while profiling is off are not counted in /proc/allocinfo, and their later
frees are not subtracted either, so allocinfo is inaccurate after any toggling until reboot.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from allocscope.collector.host import MEM_PROFILING_SYSCTL
from allocscope.errors import AllocscopeError, CapabilityError

if TYPE_CHECKING:
    from allocscope.collector.overhead import AllocFunction
    from allocscope.collector.result import Result
    from allocscope.collector.sampler import SamplerSettings

T = TypeVar("T")

SEMANTICS_NOTE = (
    "allocations made while vm.mem_profiling was 0 are not counted in /proc/allocinfo (and "
    "their frees are not subtracted): allocinfo counters are approximate after toggling"
)

_BLOCK = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class Sysctl:
    """``vm.mem_profiling`` (or a stand-in file in tests)."""

    path: str = MEM_PROFILING_SYSCTL
    cmdline_path: str = "/proc/cmdline"

    def read(self) -> str:
        with open(self.path) as f:
            return f.read().strip()

    def write(self, value: str) -> None:
        with open(self.path, "w") as f:
            f.write(value + "\n")

    def check_toggleable(self) -> str:
        """The current value, or a CapabilityError saying why it cannot be toggled."""
        if not os.path.exists(self.path):
            raise CapabilityError(
                f"{self.path} is absent: this kernel has no CONFIG_MEM_ALLOC_PROFILING, so "
                "there is nothing to toggle (compare hosts with `ab --pilot .. --control ..`)"
            )
        try:
            value = self.read()
        except OSError as e:
            raise CapabilityError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            with open(self.cmdline_path) as f:
                cmdline = f.read()
        except OSError:
            cmdline = ""
        if "mem_profiling=never" in cmdline:
            raise CapabilityError(
                "the kernel was booted with sysctl.vm.mem_profiling=never: profiling cannot be "
                "enabled at run time (page_ext was not allocated); reboot without `never`"
            )
        mode = os.stat(self.path).st_mode
        if not mode & 0o222 or not os.access(self.path, os.W_OK):
            raise CapabilityError(
                f"{self.path} is read-only (mode {mode & 0o777:o}): the kernel was booted with "
                "profiling disabled for good (`never`), or you are not root"
            )
        if value not in ("0", "1"):
            raise CapabilityError(f"{self.path} reads {value!r}, expected 0 or 1")
        return value


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP so a restore cannot be interrupted half-way."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCK)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class Restorer:
    """Remembers the original value and puts it back exactly once."""

    sysctl: Sysctl
    original: str
    restored: bool = False
    error: str = ""

    def restore(self) -> None:
        if self.restored:
            return
        with signals_blocked():
            for _ in range(3):
                try:
                    self.sysctl.write(self.original)
                    if self.sysctl.read() == self.original:
                        self.restored = True
                        return
                except OSError as e:
                    self.error = str(e)
                time.sleep(0.05)


class Guardian:
    """A process that restores the sysctl if we die without doing it (SIGKILL, OOM kill).

    Forked once the original value is known. It keeps nothing of ours: every inherited fd but
    its end of the pipe is closed (so it never holds a BPF program, perf event or output temp),
    and it ignores SIGINT/SIGTERM/SIGHUP (a Ctrl-C to the process group must leave it to us to
    restore, and it waits for our word). When the pipe reaches EOF -- we closed it, or the
    kernel did because we died -- it restores unless we said "restored" first. It never
    prints: a guardian that outlives a terminal has nowhere to write.
    """

    _DONE = b"restored"

    def __init__(self, sysctl: Sysctl, original: str) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the guardian
            code = 0
            try:
                for sig in _BLOCK:
                    signal.signal(sig, signal.SIG_IGN)
                os.closerange(3, r)
                os.closerange(r + 1, _max_fd())
                said = b""
                while chunk := os.read(r, 64):
                    said += chunk
                if self._DONE not in said:
                    sysctl.write(original)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(r)
        self._pid = pid
        self._w: int | None = w

    def release(self, restored: bool) -> None:
        """Tell the guardian whether we restored; it restores (again) unless we did."""
        if self._w is None:
            return
        try:
            if restored:
                os.write(self._w, self._DONE)
        finally:
            os.close(self._w)
            self._w = None
            os.waitpid(self._pid, 0)


def _max_fd() -> int:
    n = os.sysconf("SC_OPEN_MAX")
    return n if n > 0 else 4096


@dataclass
class ToggleWindow(Generic[T]):
    state: str  # "1" = profiling on, "0" = off
    begin: T
    end: T


@dataclass
class ToggleRun(Generic[T]):
    original: str
    windows: list[ToggleWindow[T]] = field(default_factory=list)
    restored: bool = False
    interrupted: bool = False
    restore_error: str = ""

    def pairs(self) -> list[tuple[ToggleWindow[T], ToggleWindow[T]]]:
        """(on, off) pairs of adjacent windows, in order; an unpaired last window is dropped."""
        out = []
        ws = self.windows
        for i in range(0, len(ws) - 1, 2):
            a, b = ws[i], ws[i + 1]
            on, off = (a, b) if a.state == "1" else (b, a)
            if on.state == "1" and off.state == "0":
                out.append((on, off))
        return out


def run_toggle(
    sysctl: Sysctl,
    snapshot: Callable[[], T],
    *,
    windows: int,
    period: float,
    sleep: Callable[[float], None] = time.sleep,
    on_window: Callable[[ToggleWindow[T]], None] | None = None,
) -> ToggleRun[T]:
    """Alternate the sysctl 1/0 for ``windows`` windows of ``period`` seconds.

    Run inside :func:`allocscope.probes.loader.interruptible` so SIGTERM arrives as
    KeyboardInterrupt: the run stops, keeps the finished windows and says ``interrupted``.
    Any other exception propagates -- after the original value has been written back.
    """
    if windows < 2:
        raise AllocscopeError("--toggle needs at least 2 windows (duration >= 2 x period)")
    original = sysctl.check_toggleable()
    run: ToggleRun[T] = ToggleRun(original)
    restorer = Restorer(sysctl, original)
    guardian = Guardian(sysctl, original)
    try:
        for i in range(windows):
            state = "1" if i % 2 == 0 else "0"
            sysctl.write(state)
            begin = snapshot()
            sleep(period)
            w = ToggleWindow(state, begin, snapshot())
            run.windows.append(w)
            if on_window is not None:
                on_window(w)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        restorer.restore()
        run.restored = restorer.restored
        run.restore_error = restorer.error
        guardian.release(restorer.restored)
    if not run.restored:
        raise AllocscopeError(
            f"could not restore {sysctl.path} to {original!r}: "
            f"{run.restore_error or 'value did not stick'}; set it by hand"
        )
    return run


# --- the toggle capture (ab --toggle) --------------------------------------------------------


def capture_toggle(
    sysctl: Sysctl,
    settings: SamplerSettings,
    functions: list[AllocFunction],
    *,
    duration: float,
    period: float,
    windows: int,
    workload: str | None = None,
    labels: dict[str, str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> Result:
    """``ab --toggle`` as one capture: the on-CPU sampler runs through ``windows`` windows of
    ``period`` seconds, alternating the sysctl 1/0, and adjacent windows are compared.

    One :class:`~allocscope.collector.capture.Capture` holds the sampler and the workload child
    for the whole run (the child runs until the capture ends, however long compiling or the
    windows take); an interrupt keeps the finished windows and marks the result.
    """
    from allocscope.collector.ab import compare_toggle
    from allocscope.collector.capture import Capture
    from allocscope.collector.overhead import diff_samples
    from allocscope.collector.overhead_payload import window_payload
    from allocscope.collector.payloads import OverheadPayload, ToggleWindowResult
    from allocscope.collector.sampler import CounterSample, Sampler

    cap = Capture(
        "ab-toggle",
        duration=duration,
        workload=workload,
        pid=settings.pid,
        labels=labels,
        verb="ab --toggle",
    )
    window_payloads: list[tuple[str, OverheadPayload]] = []
    with cap:
        sampler = cap.hold(Sampler(settings))
        done: list[ToggleWindow[CounterSample]] = []

        def progress(w: ToggleWindow[CounterSample]) -> None:
            done.append(w)
            log(f"window {len(done)}/{windows} (mem_profiling={w.state}) done")

        # An interrupt before run_toggle's own handler is in place (it catches the rest)
        # leaves this empty run: the sysctl was not written yet.
        run: ToggleRun[CounterSample] = ToggleRun(sysctl.read(), restored=True, interrupted=True)
        with cap.window() as cw:
            run = run_toggle(
                sysctl, sampler.sample, windows=windows, period=period, on_window=progress
            )
            if run.interrupted:
                cw.mark_interrupted()
        event = sampler.event
        # Symbolizing is slow on emulated guests: done after the run, so every window is back
        # to back and the sysctl spends no unmeasured time in one state.
        for w in run.windows:
            window_payloads.append(
                (
                    w.state,
                    window_payload(
                        diff_samples(w.begin, w.end),
                        functions,
                        sampler.frames,
                        settings.frequency,
                        sampler.period_cpus(),
                    ),
                )
            )
    compared = compare_toggle(window_payloads, alpha=alpha, seed=seed)
    payload = dataclasses.replace(
        compared,
        original=run.original,
        restored=run.restored,
        period=period,
        windows=len(window_payloads),
        interrupted=run.interrupted,
        window_results=tuple(
            ToggleWindowResult(index=i, mem_profiling=s, window=p)
            for i, (s, p) in enumerate(window_payloads)
        ),
        notes=(SEMANTICS_NOTE, *compared.sample_notes),
    )
    return cap.result(
        {
            "event": event,
            "frequency": settings.frequency,
            "period": period,
            "duration": duration,
            "windows_planned": windows,
            "cpus": settings.cpus,
            "pid": settings.pid,
            "exact_function": settings.exact_function,
            "functions": [f.name for f in functions if f.present],
            "workload": workload,
            "sysctl": sysctl.path,
        },
        payload.to_dict(),
    )
