"""collector/stopflag.py: a stop request raised from a signal handler never deadlocks.

The agent used ``threading.Event`` and set it from its SIGTERM handler; CI (2026-12-07) saw
``collect`` ignore a SIGTERM sent right after its first snapshot. The child below is the
mechanism, sped up: a 1 ms interval timer whose handler sets the flag while the main thread
waits on it 20,000 times. Run with ``event`` as its argument (threading.Event), it died in 3
of 3 runs here within a second: the handler ran while ``Event.wait`` held its condition's plain
lock, and ``set()`` blocked on it (the traceback ends ``_acquire_restore`` -> handler -> ``set``
-> ``with self._cond``, the next timer ticks nesting handlers until the interpreter gives up).
With StopFlag it finishes. (The Event run is not a test: whether the race hits is luck.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from allocscope.collector.stopflag import StopFlag

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import signal, sys, threading
from allocscope.collector.stopflag import StopFlag
event = sys.argv[1] == "event"
flag = threading.Event() if event else StopFlag()
hits = 0
def handler(signum, frame):
    global hits
    hits += 1
    flag.set()
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
for i in range(20000):
    if event:
        flag.clear()
    else:
        flag._set = False
    flag.wait(0.0001)
signal.setitimer(signal.ITIMER_REAL, 0)
print("done", hits)
"""


def _child(kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, kind],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_set_from_a_signal_handler_during_waits_never_deadlocks() -> None:
    r = _child("flag")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("done ") and int(r.stdout.split()[1]) > 0


def test_a_signal_wakes_a_wait_and_an_earlier_set_is_not_lost() -> None:
    flag = StopFlag()
    old = signal.signal(signal.SIGUSR1, lambda _s, _f: flag.set())
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        assert flag.wait(60) is True
        assert time.monotonic() - t0 < 60  # woken by the signal, not by the timeout
    finally:
        signal.signal(signal.SIGUSR1, old)
    late = StopFlag()
    late.set()  # before anyone waits: the wait returns at once
    assert late.wait(60) and late.is_set()
    late.close()
    late.set()  # after close: no error
    assert late.wait(1)
    flag.close()
