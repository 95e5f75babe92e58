"""A ``--subsystems`` file is user input like any other: every verb that takes one refuses a
bad file with one line naming the file and the line or rule, never a traceback and never by
silently turning ``path = 5`` into the glob ``"5"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from allocscope.collector.subsystem import SubsystemMap
from allocscope.errors import InputError

SAMPLE = "allocinfo - version: 1.0\n     4096        1 lib/xarray.c:378 func:xas_alloc\n"

# (file bytes, expected message tail)
BAD: dict[str, tuple[bytes, str]] = {
    "non-utf8": (b'[[rule]]\npath = "net/\xff*"\nsubsystem = "x"\n', ":2: not UTF-8 (byte 0xff)"),
    "path-int": (b'[[rule]]\npath = 5\nsubsystem = "x"\n', ": rule #1: `path` must be a"),
    "subsystem-list": (
        b'[[rule]]\npath = "a"\nsubsystem = ["x"]\n',
        ": rule #1: `subsystem` must be a",
    ),
    "function-int": (
        b'[[rule]]\npath = "a"\nsubsystem = "x"\n[[rule]]\npath = "b"\nsubsystem = "y"\n'
        b"function = 3\n",
        ": rule #2: `function` must be a",
    ),
    "empty-path": (b'[[rule]]\npath = ""\nsubsystem = "x"\n', ": rule #1: `path` must be a"),
    "rule-table": (b'[rule]\npath = "a"\nsubsystem = "x"\n', ": `rule` must be an array"),
    "rule-string": (b'rule = "a"\n', ": `rule` must be an array"),
    "rule-of-ints": (b"rule = [1]\n", ": rule #1 must be a table"),
    "replace-string": (b'replace_defaults = "yes"\n', ": `replace_defaults` must be true"),
    "unknown-rule-key": (
        b'[[rule]]\npath = "a"\nsubsystem = "x"\nsubsytem = "y"\n',
        ": rule #1: unknown key 'subsytem'",
    ),
    "missing": (b'[[rule]]\npath = "a"\n', ": rule #1 needs `path` and `subsystem`"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_parse_refuses(case: str, tmp_path: Path) -> None:
    data, tail = BAD[case]
    p = tmp_path / "subs.toml"
    p.write_bytes(data)
    with pytest.raises(InputError) as e:
        SubsystemMap.load(str(p))
    assert str(e.value).startswith(f"{p}{tail}")


def test_good_file_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "subs.toml"
    p.write_text(
        'replace_defaults = true\n[[rule]]\npath = "net/{ipv4,ipv6}/*.c"\n'
        'subsystem = "net/{1}"\nfunction = "tcp_*"\n'
    )
    m = SubsystemMap.load(str(p))
    assert m.classify("net/ipv4/tcp.c", "tcp_sendmsg") == "net/tcp"
    assert m.classify("net/ipv4/tcp.c", "udp_sendmsg") == "other"


def _verbs(tmp_path: Path) -> dict[str, list[str]]:
    src = tmp_path / "a.txt"
    src.write_text(SAMPLE)
    return {
        "top": ["top", "--file", str(src)],
        "diff": ["diff", str(src), str(src)],
        "snapshot": ["snapshot", "-o", str(tmp_path / "s.parquet"), "--file", str(src)],
        "export": ["export", "--prometheus", "--file", str(src)],
        "collect": ["collect", "--store", str(tmp_path / "st"), "--once", "--file", str(src)],
        "report": ["report", "--file", str(src), "-o", str(tmp_path / "r.html")],
    }


@pytest.mark.parametrize("verb", ["top", "diff", "snapshot", "export", "collect", "report"])
@pytest.mark.parametrize("case", ["non-utf8", "path-int"])
def test_every_verb_one_line(cli: Any, tmp_path: Path, verb: str, case: str) -> None:
    data, tail = BAD[case]
    p = tmp_path / "subs.toml"
    p.write_bytes(data)
    rc, out, err = cli(*_verbs(tmp_path)[verb], "--subsystems", str(p))
    assert rc == 2, err
    assert err.startswith(f"allocscope: error: {p}{tail}") and err.count("\n") == 1, err
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "r.html").exists()


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "subs.toml"
    p.write_bytes(b"a = " + b"[" * 10_000 + b"]" * 10_000 + b"\n")
    with pytest.raises(InputError, match="nested too deeply"):
        SubsystemMap.load(str(p))
