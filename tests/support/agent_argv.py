"""The command lines the live tests start the fleet agent and planted-leak children with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def collect_argv(
    d: Path, interval: str, *flags: str, count: int | None = None, store: Path | None = None
) -> list[str]:
    """``allocscope collect`` into ``d/store`` (or ``store``) with its spool in ``d/spool``,
    no jitter, plus ``flags``."""
    argv = [sys.executable, "-m", "allocscope", "collect", "--store", str(store or d / "store")]
    argv += ["--spool", str(d / "spool"), "--interval", interval, "--jitter", "0"]
    if count is not None:
        argv += ["--count", str(count)]
    return argv + list(flags)


def python_child(code: str) -> subprocess.Popen[str]:
    """``code`` in a child interpreter that imports allocscope from this tree, with its
    stdin and stdout piped (the tests drive it line by line)."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
