"""Shared test policy.

Live-BPF tests need root and a kernel that loads BPF. Outside CI they skip with the reason;
with ``CI=true`` a missing capability is a *failure*, never a skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when ``condition`` is false."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires this capability: {reason}", pytrace=False)
    pytest.skip(reason)


def bpf_problem() -> str | None:
    """Why live BPF tests can't run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) not importable; run ./scripts/setup"
    if not os.path.isdir("/sys/kernel/tracing/events/kmem"):
        return "tracefs not mounted at /sys/kernel/tracing (./scripts/setup mounts it)"
    return None


@pytest.fixture
def live() -> None:
    """Use in every live-BPF test."""
    problem = bpf_problem()
    need(problem is None, problem or "")


@pytest.fixture
def fixtures_dir() -> Path:
    need(FIXTURES.is_dir(), f"fixtures not found at {FIXTURES}")
    return FIXTURES


Cli = Callable[..., tuple[int, str, str]]
"""The :func:`cli` fixture: ``cli(*args)`` -> (exit status, stdout, stderr)."""


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``allocscope ARGS`` in-process; returns (rc, stdout, stderr)."""
    from allocscope.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


sys.path.insert(0, str(REPO / "tests"))
