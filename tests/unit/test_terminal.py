"""No control character from input reaches the terminal; JSON keeps its own escaping."""

from __future__ import annotations

import json
from pathlib import Path

from allocscope.reports.table import render
from allocscope.reports.terminal import printable, printable_lines

EVIL = "mm/e\x1b]0;pwned\x07vil.c:12 func:bad\x1b[31mred\x9b2J"


def _evil_file(tmp_path: Path) -> Path:
    p = tmp_path / "evil.txt"
    p.write_text(f"# allocinfo - version: 1.0\n#     <size>  <calls> <tag info>\n 4096 1 {EVIL}\n")
    return p


def test_printable_escapes_c0_c1_and_del() -> None:
    assert printable("a\x1bb\nc\td\x7fe\x9bf") == "a\\x1bb\\x0ac\\x09d\\x7fe\\x9bf"
    assert printable_lines("a\x1bb\nc\td") == "a\\x1bb\nc\td"


def test_a_newline_in_a_process_name_cannot_break_a_row() -> None:
    text = render(["pid", "comm"], [[1, "evil\nfake row"], [2, "ok"]])
    assert len(text.splitlines()) == 4  # header, rule, two rows


def test_top_table_carries_no_escape(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = cli("top", "--file", str(_evil_file(tmp_path)))
    assert rc == 0, err
    assert "\x1b" not in out + err and "\x07" not in out and "\x9b" not in out
    assert "\\x1b]0;pwned" in out  # shown, not hidden


def test_json_escapes_by_its_own_rules(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = cli("top", "--file", str(_evil_file(tmp_path)), "--json")
    assert rc == 0 and "\x1b" not in out
    doc = json.loads(out)
    assert doc["sites"][0]["file"] == EVIL.split(":")[0]  # the data itself, unaltered


def test_error_messages_are_guarded_too(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad\x1b[2J.txt"
    p.write_text("not allocinfo\x1b[31m\n")
    rc, out, err = cli("top", "--file", str(p))
    assert rc != 0 and "\x1b" not in err and "Traceback" not in err
