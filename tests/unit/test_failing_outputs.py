"""Every writer against every way an output path can fail, as a user runs it (a subprocess).

Each verb with ``-o`` (found in the CLI's own parsers: a new one fails
:func:`test_every_output_verb_is_covered` until it is listed here) is pointed at a directory, a
path under a missing directory, ``''``, a read-only tmpfs, a read-only bind mount, ``/proc``,
``/sys``, a ``/dev/null`` device node, a link and a tiny full tmpfs. The store writers (``collect``,
``ingest``) get a read-only and a full store. The contract:

* no ``Traceback``; exit 2; one error line that names the path and says why;
* nothing changed at the target (``/dev/null`` is still the device, the link still a link,
  the file it points to untouched) and no temp file left in its directory;
* the live captures (who-calls, overhead) refuse a bad path *before* capturing (nothing on
  stdout); on the full disk, where the write itself fails after the window, the whole result
  is still printed on stdout as JSON: a full disk loses nothing.
* ``collect`` spools what it cannot store (exit 0, "spooled"), ``ingest`` refuses.

Needs root (it mounts three small tmpfs instances, unmounted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, need
from report_samples import overhead_result

from allocscope.cli import VERBS, build_parser
from allocscope.collector.atomic import TEMP_RE

GOOD_ALLOCINFO = (
    "allocinfo - version: 1.0\n"
    "#     <size>  <calls> <tag info>\n"
    "    23363584    40562 lib/xarray.c:376 func:xas_alloc\n"
    "        4096        1 mm/shmem.c:1800 func:shmem_alloc_inode\n"
)
VICTIM = "the file a link at the output name points to\n"


@dataclass(frozen=True)
class Places:
    """Where outputs fail: a scratch directory and three small tmpfs mounts."""

    tmp: Path
    ro: Path  # tmpfs mounted read-only
    robind: Path  # a directory of the scratch filesystem, bind-mounted read-only
    full: Path  # tmpfs whose every block is taken
    victim: Path
    null: Path  # a private /dev/null (the same device): a regression must not clobber the real one


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    need(os.geteuid() == 0, "needs root (mounts a full and a read-only tmpfs)")
    base = tmp_path_factory.mktemp("outputs")
    ro, robind, full, src = base / "ro", base / "robind", base / "full", base / "bindsrc"
    for d in (ro, robind, full, src):
        d.mkdir()
    mounted: list[Path] = []
    try:
        _mount("-t", "tmpfs", "-o", "ro,size=256k", "allocscope-test-ro", str(ro))
        mounted.append(ro)
        _mount("--bind", str(src), str(robind))
        mounted.append(robind)
        _mount("-o", "remount,bind,ro", str(robind))
        _mount("-t", "tmpfs", "-o", "size=256k,mode=1777", "allocscope-test-full", str(full))
        mounted.append(full)
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # every block, so any non-empty write fails
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        victim = base / "victim"
        victim.write_text(VICTIM)
        null = base / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
        yield Places(base, ro, robind, full, victim, null)
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=False)


# target name -> the -o path; where a temp file could be left (None: nowhere we can list)
TARGETS: dict[str, Callable[[Places], str]] = {
    "directory": lambda p: str(p.tmp),
    "missing-parent": lambda p: str(p.tmp / "no" / "such" / "out"),
    "empty": lambda p: "",
    "read-only-tmpfs": lambda p: str(p.ro / "out"),
    "read-only-bind": lambda p: str(p.robind / "out"),
    "proc": lambda p: "/proc/allocscope-out",
    "sys": lambda p: "/sys/kernel/allocscope-out",
    "dev-null": lambda p: str(p.null),
    "link": lambda p: str(p.tmp / "link-out"),
    "full-disk": lambda p: str(p.full / "out"),
}
WHY = {
    "directory": "is a directory",
    "missing-parent": "no such directory",
    "empty": "an output file needs a name",
    "read-only-tmpfs": "Read-only file system",
    "read-only-bind": "Read-only file system",
    "proc": "pseudo filesystem",
    "sys": "",  # sysfs says EACCES even to root
    "dev-null": "not a regular file",
    "link": "is a symbolic link",
    "full-disk": "No space left on device",
}

# verb -> argv given the -o path and the inputs; live captures run a short built-in workload
OFFLINE: dict[str, Callable[[str, dict[str, str]], list[str]]] = {
    "snapshot": lambda o, i: ["snapshot", "--file", i["allocinfo"], "-o", o],
    "report": lambda o, i: ["report", "--file", i["allocinfo"], "-o", o],
    "export": lambda o, i: ["export", "--prometheus", "--file", i["allocinfo"], "-o", o],
    "ab": lambda o, i: ["ab", "--pilot", i["overhead"], "--control", i["overhead"], "-o", o],
}
LIVE: dict[str, Callable[[str, dict[str, str]], list[str]]] = {
    "who-calls": lambda o, i: [
        "who-calls",
        "alloc_empty_file",
        "-d",
        "1",
        "--workload",
        "open-close",
        "-o",
        o,
    ],
    "overhead": lambda o, i: ["overhead", "-d", "1", "--workload", "open-close", "-o", o],
    "top": lambda o, i: ["top", "--live", "1", "--workload", "open-close", "--no-frees", "-o", o],
    "context": lambda o, i: ["context", "-d", "1", "--workload", "open-close", "-o", o],
    "lifespan": lambda o, i: ["lifespan", "-d", "1", "--workload", "open-close", "-o", o],
    "leaks": lambda o, i: ["leaks", "-d", "1", "--workload", "leak-pipes", "-o", o],
}
KIND = {
    "who-calls": "who-calls",
    "context": "context",
    "overhead": "overhead",
    "lifespan": "lifespan",
    "leaks": "lifespan",
    "top": "top-live",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this tree's allocscope, wherever cwd is
    return subprocess.run(
        [sys.executable, "-m", "allocscope", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _output_verbs() -> set[str]:
    """The verbs whose parser has ``-o``, read from the CLI itself."""
    found = set()
    for verb, _module, _help in VERBS:
        parser = build_parser(verb)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices[verb]
                if any("-o" in a.option_strings for a in sub._actions):
                    found.add(verb)
    return found


def test_every_output_verb_is_covered() -> None:
    """A verb that gains ``-o`` without a row here fails."""
    assert _output_verbs() == set(OFFLINE) | set(LIVE)


@pytest.fixture(scope="module")
def inputs(places: Places) -> dict[str, str]:
    good = places.tmp / "good.txt"
    good.write_text(GOOD_ALLOCINFO)
    return {
        "allocinfo": str(good),
        "overhead": str(overhead_result(places.tmp / "overhead.json")),
    }


def _state(places: Places, target: str, path: str) -> object:
    """What must not change at the target."""
    if target == "link":
        link = Path(path)
        if not link.is_symlink():
            link.symlink_to(places.victim)
        return (os.readlink(link), places.victim.read_text())
    if target == "dev-null":
        st = os.lstat(path)
        return (stat.S_ISCHR(st.st_mode), st.st_rdev, st.st_size)
    if target == "directory":
        return stat.S_ISDIR(os.lstat(path).st_mode)
    return os.path.lexists(path)


def _temps(path: str) -> list[str]:
    directory = os.path.dirname(os.path.abspath(path)) if path else "."
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [n for n in names if TEMP_RE.match(n)]


def _check_refusal(r: subprocess.CompletedProcess[str], target: str, path: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-1000:])
    errors = [ln for ln in r.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 1, r.stderr[-1000:]
    line = errors[0]
    if target == "empty":
        assert "''" in line
    else:
        assert line.startswith(f"allocscope: error: {path}: "), line
    assert WHY[target] in line, line


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("verb", sorted(OFFLINE))
def test_offline_writers(places: Places, inputs: dict[str, str], verb: str, target: str) -> None:
    path = TARGETS[target](places)
    before = _state(places, target, path)
    r = _run(*OFFLINE[verb](path, inputs))
    _check_refusal(r, target, path)
    assert _state(places, target, path) == before
    assert _temps(path) == [], "a temp file was left behind"


@pytest.mark.usefixtures("live")
@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("verb", sorted(LIVE))
def test_live_writers(places: Places, inputs: dict[str, str], verb: str, target: str) -> None:
    path = TARGETS[target](places)
    before = _state(places, target, path)
    r = _run(*LIVE[verb](path, inputs))
    _check_refusal(r, target, path)
    assert _state(places, target, path) == before
    assert _temps(path) == [], "a temp file was left behind"
    if target != "full-disk":
        assert r.stdout == "", "refused after capturing: the path is checked first"
        return
    # the window ran and the write failed: the capture is on stdout, whole
    assert "the whole result is on stdout as JSON" in r.stderr
    start = r.stdout.index("\n{") + 1 if not r.stdout.startswith("{") else 0
    doc = json.loads(r.stdout[start:])
    assert doc["kind"] == KIND[verb]
    assert doc["payload"], doc
    if verb == "who-calls":
        assert doc["payload"]["total_calls"] > 0


def _store_argv(verb: str, store: str, inputs: dict[str, str], spool: str) -> list[str]:
    if verb == "collect":
        return ["collect", "--store", store, "--once", "--file", inputs["allocinfo"]] + [
            "--spool",
            spool,
        ]
    return ["ingest", "--store", store, inputs["overhead"]]


def test_a_store_that_is_a_file_is_named_as_such(places: Places, inputs: dict[str, str]) -> None:
    store = places.tmp / "store-file"
    store.write_text("not a store\n")
    r = _run("ingest", "--store", str(store), inputs["overhead"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"allocscope: error: {store}: not a directory (a store is a directory)\n"


@pytest.mark.parametrize("where", ["read-only-tmpfs", "read-only-bind", "full-disk"])
@pytest.mark.parametrize("verb", ["collect", "ingest"])
def test_store_writers(places: Places, inputs: dict[str, str], verb: str, where: str) -> None:
    root = {"read-only-tmpfs": places.ro, "read-only-bind": places.robind}.get(where, places.full)
    store = str(root / f"store-{verb}")
    spool = places.tmp / f"spool-{verb}-{where}"
    r = _run(*_store_argv(verb, store, inputs, str(spool)))
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    leftovers = [
        os.path.join(d, n)
        for d, _dirs, names in os.walk(root)
        for n in names
        if TEMP_RE.match(n) or n.endswith(".parquet")
    ]
    assert leftovers == [], "nothing half-written stays in the store"
    if verb == "collect":  # the agent keeps what it cannot store
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("spooled "), r.stdout
        assert re.search(rf"\({re.escape(store)}[:/]", r.stdout), r.stdout
        assert len(list(spool.glob("*.parquet"))) == 1
        return
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("allocscope: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"allocscope: error: {store}"), r.stderr
    assert WHY[where] in errors[0], errors[0]
