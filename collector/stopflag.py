"""A stop request a signal handler can raise: no locks on the handler's side.

``threading.Event`` is not safe to ``set()`` from a signal handler. Python runs the handler in
the main thread between bytecodes, and ``Event.wait()`` holds its condition's plain (non
re-entrant) lock on the way in and out of the wait. A SIGTERM that lands there makes the
handler's ``set()`` wait for a lock its own thread holds, forever. The agent hit this: CI,
2026-12-07, ``collect`` ignored a SIGTERM sent just after its first "stored" line, which is
exactly when it enters its wait (tests/unit/test_collect_agent.py).

Here the handler only assigns a bool and writes one byte to a non-blocking pipe (both
async-signal-safe), and :meth:`StopFlag.wait` is a ``select()`` on that pipe: a request made
before the wait finds a readable pipe, and one made during it wakes the ``select()``.
"""

from __future__ import annotations

import os
import select


class StopFlag:
    """``set()`` from anywhere, including a signal handler; ``wait()`` from one thread."""

    def __init__(self) -> None:
        self._set = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)

    def set(self) -> None:
        self._set = True
        if self._w < 0:
            return
        try:
            os.write(self._w, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is already pending

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until :meth:`set`; True if set."""
        if not self._set and timeout > 0 and self._r >= 0:
            select.select([self._r], [], [], timeout)
        return self._set

    def close(self) -> None:
        """Release the pipe (the agent's run is over); later waits return at once."""
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1
