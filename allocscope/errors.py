"""User-facing errors.

Every failure a kernel engineer can cause (a bad file, a missing capability, a bad flag value)
is raised as :class:`AllocscopeError`; the CLI prints its message on one line and exits non-zero,
never a traceback.
"""

from __future__ import annotations


class AllocscopeError(Exception):
    """An error whose message is complete and fit to show as one line."""

    exit_code = 2


class InputError(AllocscopeError):
    """Bad input data, located at ``path:lineno`` so the user can open the exact line."""

    def __init__(self, path: str, lineno: int | None, message: str) -> None:
        self.path = path
        self.lineno = lineno
        self.reason = message
        where = f"{path}:{lineno}" if lineno is not None else path
        super().__init__(f"{where}: {message}")


class CapabilityError(AllocscopeError):
    """The running kernel or our privileges cannot do what was asked; the message says the fix."""

    exit_code = 3
