"""The one capture runner: every live verb (who-calls, top --live, overhead, ab --toggle) runs
its window through :class:`Capture`, so lifetime, interrupts, timing and the result document
follow one set of rules instead of four hand-rolled copies.

A capture is::

    with Capture("who-calls", duration=5, workload="open-close") as cap:
        probe = cap.hold(Probe(...))        # closed on every exit path, first
        with cap.window() as w:             # timing, workload child, Ctrl-C/SIGTERM
            cap.wait(w, tick=adjust)        # until -d, the workload, or an interrupt
        ...read the maps...
    result = cap.result(settings, payload)  # host, wall start, window seconds, interrupted

The rules it owns (each one removed a defect found when the tool was tried as a new user):

* **Validation in one place.** ``duration`` is ``None`` ("until Ctrl-C", stated as such) or
  a positive, finite number of seconds; ``-d 0`` used to print "sampling for ever" and return
  a 0-second result. ``workload`` must be a known name; ``pid`` must be a live process
  (who-calls used to capture nothing, silently, for a pid that did not exist).
* **Probes die first.** Everything given to :meth:`hold` is closed when the ``with`` block
  ends, whatever ends it, so the programs are detached before the result is assembled.
* **The workload child** (:mod:`allocscope.collector.workloads`) starts when the window opens,
  after the probes are attached, runs until the capture stops it (never for ``duration``
  seconds of its own: a window can outlast ``-d``), and is stopped (SIGTERM, SIGKILL after
  10 s) when the capture ends, after the maps are read and before the probes close.
  The child closes every inherited fd above 2 (so it never holds a BPF program or perf fd),
  dies with its parent (``PR_SET_PDEATHSIG``), ignores SIGINT (no traceback on Ctrl-C) and
  mounts only inside its own mount namespace (no tmpfs survives a ``kill -9``).
* **Interrupts.** SIGTERM and SIGHUP behave like Ctrl-C for the whole capture
  (:func:`~allocscope.probes.loader.interruptible`). The window ends early, the maps are still
  read, and the result says ``settings.interrupted``; the CLI exits 128 + the signal (130 for
  SIGINT, 143 for SIGTERM), the same in every verb.
* **Two clocks.** The result's ``start`` is wall time (when, for people and the fleet); its
  ``duration`` is monotonic (how long, immune to NTP steps).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, TypeVar

from allocscope.collector import workloads
from allocscope.collector.host import HostMetadata, collect_host_metadata
from allocscope.collector.result import Result
from allocscope.errors import AllocscopeError
from allocscope.probes.loader import interruptible, interrupting_signal

T = TypeVar("T")

# How long the workload child may run: the capture stops it when it ends (and it dies with
# its parent), so this only bounds a child whose parent vanished without a signal.
UNBOUNDED_WORKLOAD_SECONDS = 24 * 3600.0
TICK_SECONDS = 0.1  # how often wait() checks the deadline and calls tick()
WORKLOAD_READY_S = 30.0  # the longest a workload child's set-up may take


def check_duration(duration: float | None, verb: str) -> None:
    """``None`` (until Ctrl-C) or positive and finite; the one duration rule."""
    if duration is None:
        return
    if not math.isfinite(duration) or duration <= 0:
        raise AllocscopeError(
            f"{verb}: duration must be a positive number of seconds, got {duration:g} "
            "(omit -d to run until Ctrl-C)"
        )


def check_pid(pid: int | None, verb: str) -> None:
    """A ``-p`` filter must name a live process, or the capture would be empty by design."""
    if pid is None:
        return
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        raise AllocscopeError(f"{verb}: no process {pid} (-p needs a running process)")


@dataclass
class Window:
    """The measured window: when it began (wall), how long it lasted (monotonic), and
    whether an interrupt ended it (``signal`` is then SIGINT, SIGTERM or SIGHUP)."""

    start: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    signal: int | None = None
    child: BaseProcess | None = field(default=None, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def mark_interrupted(self) -> None:
        """For loops that catch the interrupt themselves (the toggle run does)."""
        self.interrupted = True
        self.signal = interrupting_signal()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0


class _WindowContext(AbstractContextManager[Window]):
    def __init__(self, cap: Capture, on_start: Callable[[], object] | None) -> None:
        self._cap = cap
        self._on_start = on_start
        self._w = Window()

    def __enter__(self) -> Window:
        w = self._w
        if self._cap.workload is not None:
            # The child runs until the capture stops it, not for -d seconds: a capture's
            # windows can take longer than -d of wall time. ab --toggle runs -d/period windows
            # of `period` s back to back, but writing vm.mem_profiling (static keys patched)
            # and reading the maps between windows are outside them: 0.4-1.9 s per write plus
            # 0.1-0.4 s per read on 7.3 with one emulated vCPU, so 12 windows of 2 s took 41 s,
            # a child given 24 s stopped in window 7, and windows 8-12 saw 7-8 page
            # allocations each (6.12, whose writes take 4-77 ms, ran 30 s: the last 2 starved).
            # The clock starts once the child's set-up (mount namespace, tmpfs) is done and
            # its loop runs: that set-up is not the workload (2+ s under one emulated vCPU).
            w.child = workloads.start(
                self._cap.workload, UNBOUNDED_WORKLOAD_SECONDS, wait_ready=WORKLOAD_READY_S
            )
            # Stopped when the capture ends, before the probes close (LIFO): the maps are
            # read while it still runs, so its clean-up (a tmpfs umount frees every page)
            # never lands in the window's numbers.
            self._cap._stack.callback(workloads.stop, w.child)
        w.start = time.time()
        w._t0 = time.monotonic()
        if self._on_start is not None:
            self._on_start()
        return w

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        w = self._w
        w.seconds = time.monotonic() - w._t0
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            w.mark_interrupted()
        self._cap.last_window = w
        return w.interrupted and exc_type is not None and issubclass(exc_type, KeyboardInterrupt)


class Capture(AbstractContextManager["Capture"]):
    """One live capture; see the module docstring for the rules it enforces."""

    def __init__(
        self,
        kind: str,
        *,
        duration: float | None,
        workload: str | None = None,
        pid: int | None = None,
        labels: dict[str, str] | None = None,
        verb: str | None = None,
    ) -> None:
        self.kind = kind
        self.verb = verb or kind
        check_duration(duration, self.verb)
        if workload is not None:
            workloads.check_name(workload)
        check_pid(pid, self.verb)
        self.duration = duration
        self.workload = workload
        self.pid = pid
        self.labels = labels
        self.host: HostMetadata | None = None
        self.last_window: Window | None = None
        self._stack = ExitStack()

    def __enter__(self) -> Capture:
        self._stack.enter_context(interruptible())
        # before any probe: reading host facts costs ~10 ms and must not fall in the window
        self.host = collect_host_metadata(self.labels)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def hold(self, resource: AbstractContextManager[T]) -> T:
        """Enter ``resource`` (a probe) for the rest of the capture; closed on every path."""
        return self._stack.enter_context(resource)

    def window(self, on_start: Callable[[], object] | None = None) -> _WindowContext:
        """The measured window: ``with cap.window() as w:``. Starts the workload child and
        waits for its loop to run, then starts the clocks, then calls ``on_start`` (tests use
        it to run known work inside the window). Ctrl-C or SIGTERM inside the block ends it
        quietly with ``w.interrupted``; ``w.seconds`` stops when the block ends."""
        return _WindowContext(self, on_start)

    def wait(
        self,
        w: Window,
        *,
        tick: Callable[[float], object] | None = None,
        done: Callable[[], bool] | None = None,
    ) -> None:
        """Block until the duration has passed, ``done()`` is true or an interrupt arrives;
        ``tick(elapsed)`` runs every :data:`TICK_SECONDS` (the auto sampler re-derives its
        rate there). With no duration and no ``done``, waits for Ctrl-C."""
        deadline = math.inf if self.duration is None else self.duration
        while True:
            elapsed = w.elapsed()
            if elapsed >= deadline or (done is not None and done()):
                return
            if tick is not None:
                tick(elapsed)
            time.sleep(max(0.0, min(TICK_SECONDS, deadline - w.elapsed())))

    def result(self, settings: dict[str, Any], payload: dict[str, Any]) -> Result:
        """The Result of the last window: host metadata, wall start, monotonic duration,
        ``settings`` plus ``interrupted``, and ``payload``."""
        w = self.last_window
        if w is None or self.host is None:
            raise RuntimeError("Capture.result() before a window ran")
        return Result(
            kind=self.kind,
            host=self.host,
            start=w.start,
            duration=w.seconds,
            settings={**settings, "interrupted": w.interrupted},
            payload=payload,
        )
