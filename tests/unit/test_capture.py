"""The capture runner's rules, checked with real signals and real child processes (no BPF:
the probe is any context manager, so the order of events is observable)."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import AbstractContextManager
from types import TracebackType

import psutil
import pytest

from allocscope.collector.capture import Capture
from allocscope.errors import AllocscopeError


class FakeProbe(AbstractContextManager["FakeProbe"]):
    """Records when it was closed, and whether the workload child was still alive then."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __enter__(self) -> FakeProbe:
        self.log.append("attach")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.log.append("detach")


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_durations_are_refused_in_one_place(duration: float) -> None:
    with pytest.raises(AllocscopeError, match="omit -d to run until Ctrl-C"):
        Capture("who-calls", duration=duration)


def test_unknown_workload_and_dead_pid_are_refused() -> None:
    with pytest.raises(AllocscopeError, match="unknown workload"):
        Capture("overhead", duration=1, workload="fork-bomb")
    with pytest.raises(AllocscopeError, match="no process 999999999"):
        Capture("who-calls", duration=1, pid=999_999_999)


def test_window_times_the_duration_and_builds_the_result() -> None:
    log: list[str] = []
    cap = Capture("overhead", duration=0.3, labels={"role": "pilot"})
    with cap:
        cap.hold(FakeProbe(log))
        with cap.window(on_start=lambda: log.append("start")) as w:
            cap.wait(w)
        log.append("read")
    assert log == ["attach", "start", "read", "detach"]
    assert 0.3 <= w.seconds < 5 and not w.interrupted
    r = cap.result({"x": 1}, {"y": 2})
    assert r.kind == "overhead" and r.duration == w.seconds and r.start == w.start
    assert r.settings == {"x": 1, "interrupted": False} and r.payload == {"y": 2}
    assert r.host.labels == {"role": "pilot"}


def test_sigterm_ends_the_window_marks_the_result_and_detaches() -> None:
    log: list[str] = []
    cap = Capture("top-live", duration=None)  # until interrupted
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    with cap:
        cap.hold(FakeProbe(log))
        timer.start()
        with cap.window() as w:
            cap.wait(w)
        log.append("read after the interrupt")
    timer.join()
    assert w.interrupted and w.signal == signal.SIGTERM
    assert log == ["attach", "read after the interrupt", "detach"]
    assert cap.result({}, {}).settings["interrupted"] is True
    # the handler is gone again: SIGTERM's disposition is back to what it was
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


def test_workload_child_runs_in_the_window_and_is_gone_before_probes_close() -> None:
    seen: dict[str, object] = {}

    class Probe(FakeProbe):
        def __exit__(self, *exc: object) -> None:
            child = seen["child"]
            assert isinstance(child, int)
            seen["alive_at_detach"] = psutil.pid_exists(child) and (
                psutil.Process(child).status() != psutil.STATUS_ZOMBIE
            )

    with Capture("overhead", duration=1.0, workload="open-close") as cap:
        cap.hold(Probe([]))
        with cap.window() as w:
            child = w.child
            assert child is not None and child.pid is not None
            seen["child"] = child.pid
            time.sleep(0.2)
            seen["alive_in_window"] = child.is_alive()
            cap.wait(w)
        assert child is not None  # the window's __exit__ may swallow: mypy forgets the narrowing
        seen["alive_after_window"] = child.is_alive()  # maps are read while it runs
    assert seen["alive_in_window"] is True
    assert seen["alive_at_detach"] is False
    assert not child.is_alive()


def test_an_error_inside_the_window_still_detaches_and_stops_the_child() -> None:
    log: list[str] = []
    cap = Capture("who-calls", duration=5.0, workload="open-close")
    with pytest.raises(RuntimeError, match="boom"), cap:
        cap.hold(FakeProbe(log))
        with cap.window() as w:
            raise RuntimeError("boom")
    assert log == ["attach", "detach"]
    assert w.child is not None and not w.child.is_alive()


def test_the_workload_child_outlives_a_window_longer_than_the_duration() -> None:
    """ab --toggle's windows take longer than -d (sysctl writes and map reads fall between
    them): the child runs until the capture stops it, not for -d seconds (a child given -d
    left the last 5 of 12 windows without a page allocation on the 7.3 VM)."""
    alive: list[bool] = []
    with Capture("ab-toggle", duration=0.3, workload="open-close") as cap, cap.window() as w:
        time.sleep(1.5)
        alive.append(w.child is not None and w.child.is_alive())
    assert alive == [True]
    assert cap.last_window is not None and cap.last_window.child is not None
    assert not cap.last_window.child.is_alive()  # and the capture's end stopped it


def test_done_ends_the_wait_early() -> None:
    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    with Capture("who-calls", duration=None) as cap, cap.window() as w:
        cap.wait(w, done=flag.is_set)
    assert 0.2 <= w.seconds < 5 and not w.interrupted


def test_the_window_clock_starts_once_the_workload_loop_runs() -> None:
    """A child's set-up (here a 0.5 s delay standing in for mounts under emulation) is not
    part of the window: the clock starts when the workload reports its loop running."""
    from allocscope.collector import workloads

    t0 = time.monotonic()
    child = workloads.start("open-close", 2.0, delay=0.5, wait_ready=10.0)
    try:
        assert time.monotonic() - t0 >= 0.5 and child.is_alive()
    finally:
        workloads.stop(child)
