"""Every verb's --help points at documentation that exists (the README is a five-minute read
now, so "see README" pointers went stale), and every ``-o`` refuses an empty name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from allocscope.cli import VERBS, main

REPO = Path(__file__).resolve().parents[2]
VERB_NAMES = [v for v, _m, _h in VERBS]


def _help(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_help_points_at_docs_that_exist(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(verb, capsys).split())  # argparse wraps paths across lines
    assert "readme" not in text.lower()
    assert text.endswith(f"full reference: docs/verbs/{verb}.md")
    for path, anchor in re.findall(r"(docs/[\w./-]+\.md)(#[\w-]+)?", text):
        assert (REPO / path).is_file(), f"{verb} --help names {path}, which does not exist"
        if anchor:
            heads = (REPO / path).read_text()
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", heads, re.M)
            }
            assert anchor[1:] in slugs, f"{verb} --help names {path}{anchor}: no such section"


def _output_verbs() -> list[str]:
    import argparse

    from allocscope.cli import build_parser

    out = []
    for verb in VERB_NAMES:
        sub = next(
            a for a in build_parser(verb)._actions if isinstance(a, argparse._SubParsersAction)
        )
        if any("-o" in a.option_strings for a in sub.choices[verb]._actions):
            out.append(verb)
    return out


def test_the_output_verbs_are_found() -> None:
    assert {"ab", "export", "overhead", "report", "snapshot", "who-calls"} <= set(_output_verbs())


@pytest.mark.parametrize("verb", _output_verbs())
def test_empty_output_name_is_refused(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([verb, "-o", ""])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.rstrip().splitlines()[-1] == (
        f"allocscope {verb}: error: argument -o/--output: '': an output file needs a name"
    )
