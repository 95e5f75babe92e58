"""The installed layout: one ``allocscope`` package whose layers are the card's top-level folders.

``probes/``, ``collector/`` and ``reports/`` are generic names; installed as top-level packages
they would collide with anything else in site-packages. ``allocscope/`` is the real package root
and reaches them through committed relative symlinks, so an import name is a real path. These
tests pin that layout, that every BPF program ships as package data, and that BPF C stays in
``.bpf.c`` files rather than in Python strings.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import os
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {
    "probes": "allocscope.probes",
    "collector": "allocscope.collector",
    "reports": "allocscope.reports",
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _site_dirs() -> list[Path]:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(d).resolve() for d in dirs if d]


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_layer_is_a_relative_symlink_to_the_card_folder(folder: str) -> None:
    link = REPO / "allocscope" / folder
    assert link.is_symlink(), f"{link} must be a committed symlink"
    assert os.readlink(link) == f"../{folder}", "relative, so any checkout works"
    module = importlib.import_module(FOLDERS[folder])
    (location,) = module.__path__
    assert Path(location) == link, "the import name must be the path through allocscope/"
    assert Path(location).resolve() == REPO / folder


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_no_generic_top_level_packages_installed(name: str) -> None:
    """``import probes`` must not find something allocscope put into site-packages."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    places = [Path(p).resolve() for p in (spec.submodule_search_locations or [])]
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        places.append(Path(spec.origin).resolve())
    site_dirs = _site_dirs()
    assert not any(_under(p, site_dirs) for p in places), f"top-level {name!r} at {places}"


def test_packages_are_found_not_listed() -> None:
    """No package-dir mapping and no hand-kept package list: setuptools finds allocscope*."""
    assert "package-dir" not in SETUPTOOLS
    assert SETUPTOOLS["packages"] == {"find": {"include": ["allocscope*"]}}


def test_version_typed_marker_and_dash_m() -> None:
    import allocscope

    assert re.fullmatch(r"\d+\.\d+\.\d+", allocscope.__version__)
    assert importlib.metadata.version("allocscope") == allocscope.__version__
    assert (REPO / "allocscope" / "py.typed").is_file()
    r = subprocess.run(
        [sys.executable, "-m", "allocscope", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "usage: allocscope" in r.stdout, r.stderr


def _package_data_patterns(package: str) -> list[str]:
    return list(SETUPTOOLS.get("package-data", {}).get(package, []))


def _subpackages() -> list[str]:
    """Every package under allocscope/, through the symlinks (as setuptools walks them)."""
    out = []
    for d, _dirs, files in os.walk(REPO / "allocscope", followlinks=True):
        rel = Path(d).relative_to(REPO)
        if "__init__.py" in files and "__pycache__" not in rel.parts:
            out.append(".".join(rel.parts))
    return sorted(out)


def test_bpf_programs_are_package_data() -> None:
    programs = sorted(p.name for p in (REPO / "probes").glob("*.bpf.c"))
    assert programs, "no probes/*.bpf.c found"
    patterns = _package_data_patterns("allocscope.probes")
    root = importlib.resources.files("allocscope.probes")
    for name in programs:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), (name, patterns)
        assert root.joinpath(name).is_file(), f"importlib.resources cannot find {name}"


# Files that are data, not code: each must be covered by its package's package-data patterns.
DATA_SUFFIXES = (".bpf.c", ".h", ".toml", ".sql", ".js", ".css", ".json", ".html")


def test_data_files_are_package_data() -> None:
    missing = []
    packages = _subpackages()
    assert "allocscope.collector.queries" in packages and "allocscope.cli" in packages
    for package in packages:
        folder = REPO / Path(*package.split("."))
        patterns = _package_data_patterns(package)
        root = importlib.resources.files(package)
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(DATA_SUFFIXES):
                continue
            if not any(fnmatch.fnmatch(path.name, pat) for pat in patterns):
                missing.append(f"{path.relative_to(REPO)} (package-data of {package}: {patterns})")
            assert root.joinpath(path.name).is_file()
    assert not missing, "not installed as package data:\n" + "\n".join(missing)


def test_console_script_installed() -> None:
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="allocscope")
    assert entry.value == "allocscope.cli:entry"
    assert callable(entry.load())
    script = Path(sys.executable).parent / "allocscope"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing: run scripts/setup"


# BPF C written into Python: map/probe macro calls and stack helpers, or kernel includes.
# (Spelled in pieces so that a plain grep for those names over *.py finds only real offenders.)
BPF_C = re.compile(
    r"\b(BPF_(HA"
    r"SH|ARRAY|PERCPU_ARRAY|PERCPU_HASH|HISTOGRAM|STACK_TR"
    r"ACE|PERF_OUTPUT|RINGBUF_OUTPUT)"
    r"|(RAW_)?TRACEPOINT_PR"
    r"OBE|KFUNC_PROBE|bpf_get_st"
    r"ack(id)?)\s*\("
    r"|#include\s*<(linux|uapi|net)/"
)


def test_no_bpf_c_inside_python() -> None:
    offenders = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if BPF_C.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, "BPF C belongs in probes/*.bpf.c:\n" + "\n".join(offenders)


def test_bpf_c_detector_catches_embedded_programs() -> None:
    """The check above must be able to fail: it recognises what embedded C looks like."""
    assert BPF_C.search('prog = "BPF_HA' + 'SH(counts, u64, u64);"')
    assert BPF_C.search("    int id = bpf_get_st" + "ackid(ctx, &stacks, 0);")
    assert BPF_C.search("TRACEPOINT_PR" + "OBE(kmem, kmalloc) {")
    assert BPF_C.search("#include <linux/sched.h>")
    assert not BPF_C.search("BCC attaches ``TRACEPOINT_PR" + "OBE`` functions by name")
    assert not BPF_C.search(r'r"bpf_prog_.*|bpf_get_st' r'ack.*",')


def test_test_fixtures_are_not_installed() -> None:
    """The synthetic-fleet generator is a test fixture: it lives in tests/support/ (tests and
    scripts/bench-store import it from there), never in the installed package."""
    assert (REPO / "tests" / "support" / "synth.py").is_file()
    assert importlib.util.find_spec("allocscope.collector.synth") is None
    installed = {p.name for p in (REPO / "collector").glob("*.py")}
    assert "synth.py" not in installed
