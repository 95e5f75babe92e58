"""Property tests: no input crashes the parser; well-formed lines round-trip exactly.

"Crash" means any exception other than :class:`InputError` (the one-line, located error the
CLI prints). Every way in must also agree on every input -- the compiled scanner (text and
bytes), the pure-Python whole-text fast path, and the line-by-line parser: same records, or
the same error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scanners import python_only

from allocscope.collector.allocinfo import (
    AllocinfoSnapshot,
    parse_allocinfo,
    parse_allocinfo_bytes,
    parse_allocinfo_text,
)
from allocscope.errors import InputError

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
REAL_LINES: list[str] = []
for _name in ("allocinfo-6.12-tmpfs-write.txt", "allocinfo-7.3-boot.txt"):
    _p = FIXTURES / _name
    if _p.is_file():
        REAL_LINES += _p.read_text().splitlines(keepends=True)[:400:7]
# Shapes the fixtures lack (no modules on the VM kernels), so mutations reach them too.
REAL_LINES += [
    "allocinfo - version: 2.0\n",
    "#     <size>  <calls> <tag info>\n",
    "       45056       11 mm/memory.c:6939 func:__pud_alloc accurate:no \n",
    "           0        0 init/main.c:1433 func:do_initcalls \n",
    "        4096        1 drivers/foo/bar.c:12 [foo] func:foo_probe \n",
    "         128        2 net/x/y.c:7 [nf_conntrack] func:nf_ct_alloc accurate:no k:v\n",
    "          nid0     8192        2\n",
    "       -4096       -1 mm/slub.c:1 func:x.constprop.0 \n",
    "...\n",
    # allocinfo 1.1 (accumulative calls after the tag; test_allocinfo_v11.py)
    "allocinfo - version: 1.1\n",
    "       45056       11 mm/memory.c:6939 func:__pud_alloc 1290\n",
    "           8        1 a.c:2 func:g accurate:no 18446744073709551615\n",
]


def outcome(fn: object, *args: object, **kw: object) -> AllocinfoSnapshot | str:
    """The snapshot, or the InputError's message; anything else propagates (= a crash)."""
    try:
        return fn(*args, **kw)  # type: ignore[operator, no-any-return]
    except InputError as e:
        assert "\n" not in str(e), "errors must be one line"
        return f"InputError: {e}"


def check_text(text: str, lenient: bool) -> None:
    slow = outcome(parse_allocinfo, text.splitlines(keepends=True), "h", lenient=lenient)
    assert outcome(parse_allocinfo_text, text, "h", lenient=lenient) == slow
    assert outcome(parse_allocinfo_bytes, text.encode(), "h", lenient=lenient) == slow
    with python_only():
        assert outcome(parse_allocinfo_text, text, "h", lenient=lenient) == slow
        assert outcome(parse_allocinfo_bytes, text.encode(), "h", lenient=lenient) == slow


ALPHABET = st.sampled_from(
    list(" \t\n\r\x0b\x85\u2028:[]#-0123456789abcfmnu._/")
    + ["func:", "nid0", "accurate:no", "allocinfo - version: 2.0", " 18446744073709551616"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(), st.booleans())
@example("allocinfo - version: 2.0\n 1 1 a:1 func:b\x85c\n", False)
@example(" 1 1 a:1 func:b k:v\r\n 1 1 a:1 func:b\n", False)
def test_arbitrary_text_never_crashes(text: str, lenient: bool) -> None:
    check_text(text, lenient)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=80).map("".join), st.booleans())
def test_allocinfo_alphabet_never_crashes(text: str, lenient: bool) -> None:
    check_text(text, lenient)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_bytes_never_crash(data: bytes, lenient: bool) -> None:
    text = data.decode("utf-8", errors="replace")
    check_text(text, lenient)
    # Raw bytes (invalid UTF-8 included) parse as their replacement-decoded text does.
    want = outcome(parse_allocinfo_text, text, "h", lenient=lenient)
    assert outcome(parse_allocinfo_bytes, data, "h", lenient=lenient) == want


MUTANTS = list(" \t:[]-\r\x85\n#x0") + ["func:", "nid0 ", "k:v"]


def mutate(draw: st.DrawFn, line: str) -> str:
    """One edit, half the time right at a field boundary (where parsers go wrong)."""
    if not line:
        return draw(st.sampled_from(MUTANTS))
    marks = [i for i, ch in enumerate(line) if not ch.isalnum()]
    at_boundary: bool = bool(marks) and draw(st.booleans())
    if at_boundary:
        pos = min(len(line) - 1, draw(st.sampled_from(marks)) + draw(st.integers(-1, 1)))
        pos = max(0, pos)
    else:
        pos = draw(st.integers(0, len(line) - 1))
    op = draw(st.sampled_from(["cut", "insert", "delete", "replace"]))
    if op == "cut":
        return line[:pos]
    if op == "delete":
        return line[:pos] + line[pos + 1 :]
    ch = draw(st.sampled_from(MUTANTS))
    if op == "insert":
        return line[:pos] + ch + line[pos:]
    return line[:pos] + ch + line[pos + 1 :]


@st.composite
def mutated_real_text(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.sampled_from(REAL_LINES), min_size=1, max_size=12))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = mutate(draw, lines[i])
    return "".join(lines)


@settings(max_examples=500, deadline=None)
@given(mutated_real_text(), st.booleans())
def test_mutated_real_lines_never_crash(text: str, lenient: bool) -> None:
    check_text(text, lenient)


# ------------------------------------------------------------------ round trip

IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}(\.(constprop|isra)\.[0-9])?", fullmatch=True)
PATH = st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_.\-]{1,10}){0,3}\.[ch]", fullmatch=True)
MODULE = st.one_of(st.just(""), st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True))
KEY = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)
VALUE = st.from_regex(r"[A-Za-z0-9_.:/-]{0,8}", fullmatch=True)
LINE = st.tuples(
    st.integers(-(1 << 40), 1 << 50),
    st.integers(-(1 << 20), 1 << 40),
    PATH,
    st.integers(1, 99999),
    MODULE,
    IDENT,
    st.dictionaries(KEY, VALUE, max_size=3),
)


def render(rec: tuple[int, int, str, int, str, str, dict[str, str]], trailing: str) -> str:
    nbytes, calls, path, line, module, func, extras = rec
    mod = f" [{module}]" if module else ""
    ext = "".join(f" {k}:{v}" for k, v in extras.items())
    return f"{nbytes:12d} {calls:8d} {path}:{line}{mod} func:{func}{ext}{trailing}\n"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(LINE, max_size=20),
    st.sampled_from(["", " ", "  ", "\t"]),
    st.sampled_from(["1.0", "2.0"]),
)
def test_generated_lines_round_trip(
    recs: list[tuple[int, int, str, int, str, str, dict[str, str]]], trailing: str, version: str
) -> None:
    text = f"allocinfo - version: {version}\n#     <size>  <calls> <tag info>\n"
    text += "".join(render(r, trailing) for r in recs)
    fast = parse_allocinfo_text(text, "gen")
    assert fast == parse_allocinfo(text.splitlines(keepends=True), "gen")
    assert fast.version == version and not fast.warnings
    assert [r.accurate for r in fast.records] == [r[6].get("accurate") != "no" for r in recs]
    got = [
        (r.bytes, r.calls, r.site.file, r.site.line, r.site.module, r.site.function, r.extras)
        for r in fast.records
    ]
    assert got == recs
    assert fast.total_bytes == sum(r[0] for r in recs)


def pick(valid: str, *broken: str) -> st.SearchStrategy[str]:
    """Mostly the valid spelling, so a line is usually broken in one field only."""
    return st.sampled_from([valid] * 3 * len(broken) + list(broken))


# Each field of a line, valid or broken in the ways that matter at its boundaries.
FIELD_LINE = st.tuples(
    pick("", " ", "  ", "\t", "\r", "\x85"),
    pick(
        "4096",
        "-4096",
        "0",
        "4x",
        "",
        "-",
        "99999999999999999999",
        "999999999999999999",
        "-1234567890123456789",
        "0000000000000000000042",
    ),
    pick(" ", "\t", "  ", "", "\x0b", "\u2028"),
    pick("11", "-1", "", "x"),
    pick(" ", "\t", ""),
    pick("mm/a.c", "a b.c", "a:b.c", "./include/x.h", "", "mm/a.c:7"),
    pick(":1", ":", ":x", "", ":12 ", ":999999999", ":2147483648", ":-1", ":0007"),
    pick("", " [m]", " [m m]", " []", " [m", " [m]]", "\t[m]", " [m\x85]"),
    pick(" func:x", " func:", " fun:x", " func:x y", "func:x", " func:x:y", " func:x\ty"),
    pick(
        "",
        " k:v",
        " kv",
        " :v",
        " k:",
        " accurate:no",
        " k:v:w",
        "\tk:v",
        " accurate:no accurate:yes",
        " accurate:yes accurate:no",
        " accurate:nope",
    ),
    pick("", " ", "\t", "\r", "  "),
    pick("\n", "", "\r\n"),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(FIELD_LINE.map("".join), min_size=1, max_size=4), st.booleans())
def test_field_level_junk_agrees(lines: list[str], lenient: bool) -> None:
    check_text("allocinfo - version: 2.0\n" + "\n".join(lines), lenient)


@st.composite
def mutated_generated_text(draw: st.DrawFn) -> str:
    recs = draw(st.lists(LINE, min_size=1, max_size=6))
    lines = ["allocinfo - version: 2.0\n"] + [
        render(r, draw(st.sampled_from(["", " "]))) for r in recs
    ]
    i = draw(st.integers(0, len(lines) - 1))
    lines[i] = mutate(draw, lines[i])
    return "".join(lines)


@settings(max_examples=200, deadline=None)
@given(mutated_generated_text(), st.booleans())
def test_mutated_generated_lines_never_crash(text: str, lenient: bool) -> None:
    check_text(text, lenient)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
