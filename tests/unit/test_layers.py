"""The flow rule (probes -> collector -> reports, the CLI on top) is a check, not prose.

``[tool.importlinter]`` in pyproject.toml states it; ``scripts/lint`` runs ``lint-imports``.
These tests prove the contracts bite: a copy of the package with one upward import added must
fail them, and the unmodified copy must pass (so a failure is the planted import's doing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_package(tmp: Path) -> Path:
    """allocscope/ with its symlinked layers dereferenced, plus the contracts."""
    shutil.copytree(
        REPO / "allocscope",
        tmp / "allocscope",
        symlinks=False,
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    shutil.copy(REPO / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _plant(root: Path, module: str, line: str) -> None:
    path = root / "allocscope" / (module.replace(".", "/") + ".py")
    text = path.read_text()
    # after the module docstring and __future__ import, where a real import would go
    marker = "from __future__ import annotations\n"
    assert marker in text, path
    path.write_text(text.replace(marker, marker + line + "\n", 1))


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_package(tmp_path_factory.mktemp("layers-clean"))


def test_contracts_hold_on_the_tree(clean_copy: Path) -> None:
    r = _lint(clean_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("probes.loader", "import allocscope.collector.site", "layers"),
        ("collector.rollup", "import allocscope.reports.table", "layers"),
        ("collector.rollup", "import allocscope.cli.common", "layers"),
        ("reports.table", "import allocscope.probes.loader", "never load BPF"),
        ("errors", "import allocscope.collector.site", "errors is a leaf"),
    ],
)
def test_an_upward_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    root = _copy_package(tmp_path)
    _plant(root, module, line)
    r = _lint(root)
    assert r.returncode != 0, f"{line} in {module} passed the contracts:\n{r.stdout}"
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), r.stdout
