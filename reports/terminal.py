"""Text that is safe to put on a root user's terminal.

Anyone chooses their own process name (``prctl(PR_SET_NAME)``), and allocinfo files, result
files and snapshots come from other machines. Printed raw, an ESC sequence in any of them
recolours the terminal, sets its title or worse, and a newline breaks a table's rows. As ``ps``
does, every C0/C1 control character and DEL becomes a visible escape (``\\x1b``), so nothing is
hidden and nothing is interpreted.

Two layers use it: :func:`printable` for one value (every table cell goes through it, so a
newline in a name cannot break a row), and :class:`SafeStream`, which the CLI puts around
stdout and stderr for the whole run (so a message nobody thought of cannot carry an escape
either; it keeps newline and tab, which the output's own layout uses). JSON already escapes
control characters by its own rules (``\\u001b``), so the stream layer never alters it.
"""

from __future__ import annotations

import re
from typing import TextIO

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def printable(text: str) -> str:
    """``text`` with every control character (newline and tab too) shown as ``\\xNN``."""
    return _CONTROL.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Like :func:`printable` but keeps newline and tab (a whole message or table)."""
    return _CONTROL_BUT_LAYOUT.sub(_escape, text)


class SafeStream:
    """A text stream wrapper that neutralises control characters on their way out."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable_lines(text))
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
