"""Hostile-input harness: every verb that reads an input file, run as a user runs it
(``python -m allocscope VERB ...`` in a subprocess) over a generated corpus of bad inputs.

For each (verb slot, corpus case) the contract is the project's rule for bad input: no
``Traceback`` on stderr, a non-zero exit, and one ``allocscope: error:`` line that names the
input. Verbs that take no input file are listed in :data:`NO_INPUT`; a verb in the CLI's table
(``allocscope.cli.VERBS``) that is in neither place fails :func:`test_every_verb_is_covered`,
so a new verb cannot skip the harness. ``ingest`` reports bad files and skips them (exit 1):
for it the naming line may be a report line rather than an ``error:`` line.

who-calls asks for a tag no input has (``nosuch.c:1``), so a file that parses ends in an error
naming it before any BPF is compiled. The cases run concurrently (4 at a time) in one module
fixture: ~200 interpreter starts.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

from allocscope.cli import VERBS

ENV = dict(os.environ, PYTHONPATH=str(REPO))  # this tree's allocscope, from any cwd

# Readable allocinfo with odd content the kernel can print (bytes are %lli: negative is real)
# or that is kept safely (bad UTF-8 replaced, control characters neutralised on output): these
# may succeed, but never with a traceback or a raw control character on the terminal.
MAY_PARSE = {"non-utf8", "control-chars", "negative"}

NO_INPUT = {
    "doctor": "reads only the running kernel",
    "overhead": "reads only the kernel",
    "lifespan": "reads only the kernel (kmem tracepoints)",
    "leaks": "reads only the kernel (kmem tracepoints)",
}

GOOD_ALLOCINFO = (
    "allocinfo - version: 1.0\n"
    "#     <size>  <calls> <tag info>\n"
    "    23363584    40562 lib/xarray.c:376 func:xas_alloc\n"
    "        4096        1 mm/shmem.c:1800 func:shmem_alloc_inode\n"
)


def _text_corpus(snapshot: bytes) -> dict[str, bytes]:
    good = GOOD_ALLOCINFO.encode()
    gz = gzip.compress(good * 50)
    return {
        "empty": b"",
        "binary": bytes(range(256)) * 16,
        "truncated-gzip": gz[: len(gz) // 2],
        "truncated-parquet": snapshot[: len(snapshot) // 2],
        "huge-numbers": good + b"  9" + b"9" * 40 + b"  1 a.c:1 func:f\n",
        "10000-fields": good + b" ".join([b"1"] * 10_000) + b"\n",
        "deep-json": b"[" * 100_000 + b"]" * 100_000,
        "wrong-kind-json": json.dumps({"schema": 1, "kind": "who-calls"}).encode(),
        "non-utf8": good + b"    4096 1 fs/\xff\xfe.c:1 func:f\xff\n",
        "control-chars": good + b"    4096 1 a.c:1 func:\x1b[2J\x00\x07evil\n",
        "negative": good + b"   -4096 1 a.c:2 func:g\n",
    }


def _json_corpus(snapshot: bytes) -> dict[str, bytes]:
    head = {"schema": 1, "kind": "overhead", "host": {}, "start": 0, "duration": 1}
    return {
        "empty": b"",
        "binary": bytes(range(256)) * 16,
        "truncated-parquet": snapshot[: len(snapshot) // 2],
        "allocinfo-text": GOOD_ALLOCINFO.encode(),
        "crlf-truncated": b'{"schema": 1,\r\n "kind": "overhead",\r\n',
        "huge-numbers": json.dumps({**head, "duration": 10**400, "payload": {}}).encode(),
        "inf-nan": b'{"schema": 1, "kind": "overhead", "duration": NaN, "start": Infinity}',
        "10000-fields": json.dumps({f"k{i}": i for i in range(10_000)}).encode(),
        "deep-json": b"[" * 100_000 + b"]" * 100_000,
        "deep-payload": b'{"schema":1,"kind":"overhead","host":{},"start":0,"duration":1,'
        b'"payload":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
        "wrong-kind": json.dumps({**head, "kind": "no-such-kind", "payload": {}}).encode(),
        "wrong-types": json.dumps({**head, "schema": "1", "payload": "x"}).encode(),
        "payload-list": json.dumps({**head, "payload": [1, 2]}).encode(),
        "non-utf8": b'{"schema": 1, "kind": "over\xffhead"}',
        "control-chars": json.dumps({**head, "kind": "\x1b[2J\x00"}).encode(),
        "json-list": b"[1, 2, 3]",
    }


def _toml_corpus() -> dict[str, bytes]:
    return {
        "binary": bytes(range(256)) * 16,
        "non-utf8": b'[[rule]]\npath = "\xff"\nsubsystem = "x"\n',
        "wrong-types": b"[[rule]]\npath = 5\nsubsystem = 6\n",
        "wrong-kind": b'rule = "x"\n',
        "10000-fields": b"[[rule]]\n" + b"".join(b"k%d = 1\n" % i for i in range(10_000)),
        "deep": b"a = " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
        "control-chars": b'[[rule]]\npath = "a"\nsubsystem = "x"\nfunction = "\x1b"\n',
    }


@dataclass(frozen=True)
class Slot:
    """One way a verb reads a file: ``argv(path, tmp)`` runs it on ``path``."""

    verb: str
    name: str
    corpus: str  # text | json | toml | store
    argv: Callable[[str, Path], list[str]]


def _store_with_part(part: str, tmp: Path) -> str:
    """A store whose only allocinfo part is the hostile file (hosts too, for --store users)."""
    root = tmp / "store"
    for ds in ("allocinfo", "hosts"):
        d = root / ds / "dt=2026-01-01"
        d.mkdir(parents=True, exist_ok=True)
        os.link(part, d / "hostile.parquet")
    return str(root)


SLOTS: list[Slot] = [
    Slot("top", "--file", "text", lambda p, t: ["top", "--file", p]),
    Slot(
        "snapshot",
        "--file",
        "text",
        lambda p, t: ["snapshot", "-o", str(t / "o.parquet"), "--file", p],
    ),
    Slot("diff", "A", "text", lambda p, t: ["diff", p, "GOOD"]),
    Slot("diff", "B", "text", lambda p, t: ["diff", "GOOD", p]),
    Slot(
        "who-calls",
        "--allocinfo",
        "text",
        lambda p, t: ["who-calls", "nosuch.c:1", "--allocinfo", p],
    ),
    Slot("ab", "--pilot", "json", lambda p, t: ["ab", "--pilot", p, "--control", p]),
    Slot(
        "collect",
        "--file",
        "text",
        lambda p, t: ["collect", "--store", str(t / "st"), "--once", "--file", p],
    ),
    Slot("ingest", "FILE", "json", lambda p, t: ["ingest", "--store", str(t / "st"), p]),
    Slot(
        "ingest",
        "FILE.parquet",
        "text",
        lambda p, t: ["ingest", "--store", str(t / "st"), _renamed(p, ".parquet")],
    ),
    Slot(
        "query",
        "--store",
        "store",
        lambda p, t: ["query", "--store", _store_with_part(p, t), "top-sites"],
    ),
    Slot("report", "--file", "text", lambda p, t: ["report", "--file", p, "-o", str(t / "r.html")]),
    Slot(
        "report",
        "--result",
        "json",
        lambda p, t: ["report", "--result", p, "-o", str(t / "r.html")],
    ),
    Slot(
        "report",
        "--diff",
        "json",
        lambda p, t: ["report", "--diff", p, p, "-o", str(t / "r.html")],
    ),
    Slot(
        "report",
        "--store",
        "store",
        lambda p, t: ["report", "--store", _store_with_part(p, t), "-o", str(t / "r.html")],
    ),
    Slot("export", "--file", "text", lambda p, t: ["export", "--prometheus", "--file", p]),
    Slot("export", "--result", "json", lambda p, t: ["export", "--prometheus", "--result", p]),
    Slot(
        "export",
        "--store",
        "store",
        lambda p, t: ["export", "--prometheus", "--store", _store_with_part(p, t), "--host", "h"],
    ),
]


def _with_subsystems(args: tuple[str, ...]) -> Callable[[str, Path], list[str]]:
    return lambda p, t: [*args, "--subsystems", p]


SLOTS += [
    Slot(verb, "--subsystems", "toml", _with_subsystems(args))
    for verb, args in (
        ("top", ("top", "--file", "GOOD")),
        ("diff", ("diff", "GOOD", "GOOD")),
        ("snapshot", ("snapshot", "-o", "OUT", "--file", "GOOD")),
        ("export", ("export", "--prometheus", "--file", "GOOD")),
        ("collect", ("collect", "--store", "STORE", "--once", "--file", "GOOD")),
        ("report", ("report", "--file", "GOOD", "-o", "OUT")),
        # --confidence 2 fails after the rules load: a file that parsed ends in an error too
        ("context", ("context", "--confidence", "2")),
    )
]


def _renamed(path: str, suffix: str) -> str:
    new = path + suffix
    os.link(path, new)
    return new


def _corpus(kind: str, snapshot: bytes) -> dict[str, bytes]:
    if kind == "text":
        return _text_corpus(snapshot)
    if kind == "json":
        return _json_corpus(snapshot)
    if kind == "toml":
        return _toml_corpus()
    # a store part: what a crashed or hostile writer could leave
    return {
        "empty": b"",
        "binary": bytes(range(256)) * 16,
        "truncated-parquet": snapshot[: len(snapshot) // 2],
        "json": _json_corpus(snapshot)["wrong-kind"],
    }


def _cases() -> list[tuple[Slot, str]]:
    return [(s, c) for s in SLOTS for c in _corpus(s.corpus, b"PAR1")]


@dataclass
class Outcome:
    path: str
    rc: int
    stdout: str
    stderr: str


def _run(slot: Slot, case: str, data: bytes, tmp: Path, good: Path) -> Outcome:
    tmp.mkdir(parents=True)
    path = tmp / f"hostile-{case}"
    path.write_bytes(data)
    argv = slot.argv(str(path), tmp)
    subst = {"GOOD": str(good), "OUT": str(tmp / "out"), "STORE": str(tmp / "st")}
    argv = [subst.get(a, a) for a in argv]
    r = subprocess.run(
        [sys.executable, "-m", "allocscope", *argv],
        capture_output=True,
        timeout=300,
        cwd=tmp,
        env=ENV,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    named = str(path)
    if slot.name == "FILE.parquet":
        named = argv[-1]
    elif slot.corpus == "store":  # the planted part, wherever the error names it first
        named = str(tmp / "store")
    return Outcome(
        named,
        r.returncode,
        r.stdout.decode("utf-8", "replace"),
        r.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Outcome]:
    base = tmp_path_factory.mktemp("hostile")
    good = base / "good.txt"
    good.write_text(GOOD_ALLOCINFO)
    snap = base / "snap.parquet"
    subprocess.run(
        [sys.executable, "-m", "allocscope", "snapshot", "-o", str(snap), "--file", str(good)],
        check=True,
        capture_output=True,
    )
    snapshot = snap.read_bytes()
    jobs = {}
    with ThreadPoolExecutor(4) as pool:
        for i, slot in enumerate(SLOTS):
            for case, data in _corpus(slot.corpus, snapshot).items():
                tmp = base / f"{i}-{slot.verb}-{case}"
                (tmp / "good.txt").parent.mkdir(parents=True, exist_ok=True)
                tmp.rmdir()
                jobs[(slot.verb, slot.name, case)] = pool.submit(_run, slot, case, data, tmp, good)
    return {k: f.result() for k, f in jobs.items()}


def test_every_verb_is_covered() -> None:
    """A verb added to the CLI without a harness slot (or a NO_INPUT reason) fails here."""
    verbs = {v for v, _m, _h in VERBS}
    covered = {s.verb for s in SLOTS} | set(NO_INPUT)
    assert verbs == covered, f"not in the hostile-input harness: {sorted(verbs - covered)}"


@pytest.mark.parametrize(("verb", "slot", "case"), [(s.verb, s.name, c) for s, c in _cases()])
def test_hostile_input(
    outcomes: dict[tuple[str, str, str], Outcome], verb: str, slot: str, case: str
) -> None:
    o = outcomes[(verb, slot, case)]
    assert "Traceback" not in o.stderr, o.stderr[-2000:]
    if case in MAY_PARSE and o.rc == 0 and slot != "--subsystems":
        assert not any(c in o.stdout + o.stderr for c in "\x1b\x00\x07"), o.stdout[-500:]
        return
    assert o.rc != 0, f"exit 0 on hostile input\n{o.stdout[-500:]}\n{o.stderr[-500:]}"
    if verb == "ingest":
        assert o.path in o.stdout + o.stderr
        return
    lines = o.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("allocscope: error:")]
    assert len(errors) == 1, o.stderr[-1000:]
    assert o.path in errors[0], errors[0]
