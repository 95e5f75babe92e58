"""C versus Python: the constants both sides of a probe must agree on.

The BPF programs (``probes/*.bpf.c``) and their Python readers index the same maps: counter
slots (``CNT_*``), sources (``SRC_*``), histogram slots, map sizes and defaults. Nothing ties
them at run time -- a drift silently reads the wrong counter -- so this test parses the C
``#define``s (and simple enums) and compares them with the Python mirrors. The mirrors may live
in ``probes/<name>.py`` or in the collector module; each is looked up in a short list of
candidate modules, first hit wins. ``probes/sampler.bpf.h`` is read as the program "sampler": its
fixed-point constants are mirrored by ``collector/byte_sampling.py``, which undoes its weights.

It also checks the conventions of ``probes/allocscope.bpf.h``: every program includes it, the
map helpers copied into programs (BCC rewrites map calls only in the compiled file) match the
reference text in the header, code that reads a program's own maps and is copied between
programs (``current_tag()`` and ``struct tag_info`` in the three tag readers) is the same in each,
switches are tested with ``#if`` (not ``#ifdef``), and every file starts with the SPDX line
and indents with tabs.
"""

from __future__ import annotations

import ast
import importlib
import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

PROBES = Path(__file__).resolve().parents[2] / "probes"
HEADER = "allocscope.bpf.h"
SAMPLER_HEADER = "sampler.bpf.h"  # read as program "sampler"
SPDX = "// SPDX-License-Identifier: GPL-2.0"

# Where each Python mirror lives: the program's Python half, probes/<name>.py (one home each).
CANDIDATES = {
    "kmem_sites": ("allocscope.probes.kmem_sites",),
    "oncpu": ("allocscope.probes.oncpu",),
    "alloc_latency": ("allocscope.probes.alloc_latency",),
    "who_calls": ("allocscope.probes.who_calls",),
    "lifespan": ("allocscope.probes.lifespan",),
    "context": ("allocscope.probes.context",),
    # sampler.bpf.h's estimators live in the collector (probes never import collector)
    "sampler": ("allocscope.collector.byte_sampling",),
}

# C index name -> the Python name at that index.
KMEM_SOURCES = {
    "SRC_KMALLOC": "kmalloc",
    "SRC_CACHE": "kmem_cache_alloc",
    "SRC_PAGE": "mm_page_alloc",
}
KMEM_COUNTERS = {
    "CNT_ALLOC": "alloc_events",
    "CNT_FREE": "free_events",
    "CNT_SITES_FULL": "sites_full",
    "CNT_LIVE_FULL": "live_full",
    "CNT_STALE_PTR": "stale_ptr",
    "CNT_FREE_UNMATCHED": "free_unmatched",
    "CNT_STACK_SAMPLES": "stack_samples",
    "CNT_STACK_FAIL": "stack_fail",
    "CNT_STACKS_FULL": "stacks_full",
}
ONCPU_COUNTERS = {
    "CNT_SAMPLES": "samples",
    "CNT_IDLE": "idle",
    "CNT_USER": "user",
    "CNT_KERNEL": "kernel",
    "CNT_STACK_FULL": "lost_stack_full",
    "CNT_STACK_COLLIDE": "lost_stack_collision",
    "CNT_STACK_OTHER": "lost_stack_other",
    "CNT_COUNTS_FULL": "lost_counts_full",
    "CNT_CACHE_ALLOC": "kmem_cache_alloc",
    "CNT_KMALLOC": "kmalloc",
    "CNT_PAGE_ALLOC": "mm_page_alloc",
    "CNT_PAGES": "pages",
}
LIFESPAN_COUNTERS = {
    "CNT_ALLOC": "alloc_events",
    "CNT_ALLOC_KEPT": "alloc_kept",
    "CNT_TRACKED": "tracked",
    "CNT_FREE": "free_events",
    "CNT_FREE_KEPT": "free_kept",
    "CNT_FREE_MATCHED": "free_matched",
    "CNT_MISSED_FREE": "missed_free",
    "CNT_TRACK_FULL": "track_full",
    "CNT_LIVES_FULL": "lives_full",
    "CNT_STACK_FAIL": "stack_fail",
    "CNT_ADDR_SUMS_FULL": "addr_sums_full",
}
CONTEXT_SOURCES = {"SRC_KMALLOC": "kmalloc", "SRC_CACHE": "kmem_cache_alloc", "SRC_PAGE": "page"}
LATENCY_STATS = {"STAT_CALLS": "calls", "STAT_NS": "total_ns"}

# (program, C define, Python name): scalar settings whose C default must equal Python's.
SCALARS = (
    ("kmem_sites", "SRC_PAGE", "SRC_PAGE"),
    ("kmem_sites", "SITES_MAX", "DEFAULT_SITES_MAX"),
    ("kmem_sites", "LIVE_MAX", "DEFAULT_LIVE_MAX"),
    ("kmem_sites", "PAGE_STACK_SAMPLE", "DEFAULT_PAGE_STACK_SAMPLE"),
    ("kmem_sites", "PAGE_STACK_DEPTH", "PAGE_STACK_DEPTH"),
    ("kmem_sites", "NR_ORDERS", "NR_ORDERS"),
    ("kmem_sites", "ADDR_SHIFT", "DEFAULT_ADDR_SHIFT"),
    ("oncpu", "STACK_STORAGE", "DEFAULT_STACK_STORAGE"),
    ("alloc_latency", "HIST_SLOTS", "HIST_SLOTS"),
    ("alloc_latency", "SUB_BITS", "SUB_BITS"),
    ("alloc_latency", "START_MAX", "DEFAULT_START_MAX"),
    ("who_calls", "MAX_SITES", "MAX_SITES"),
    ("lifespan", "SRC_PAGE", "SRC_PAGE"),
    ("lifespan", "SAMPLE_RATE", "DEFAULT_SAMPLE_RATE"),
    ("lifespan", "PAGE_SAMPLE_RATE", "DEFAULT_PAGE_RATE"),
    ("lifespan", "ADDR_SHIFT", "DEFAULT_ADDR_SHIFT"),
    ("lifespan", "TRACK_MAX", "DEFAULT_TRACK_MAX"),
    ("lifespan", "LIVES_MAX", "DEFAULT_LIVES_MAX"),
    ("lifespan", "ADDR_SUMS_MAX", "DEFAULT_ADDR_SUMS_MAX"),
    ("lifespan", "STACK_ENTRIES", "DEFAULT_STACK_ENTRIES"),
    ("lifespan", "STACK_DEPTH", "STACK_DEPTH"),
    ("lifespan", "NR_SLOTS", "NR_SLOTS"),
    ("lifespan", "LIFE_SHIFT", "LIFE_SHIFT"),
    ("context", "SRC_PAGE", "SRC_PAGE"),
    ("context", "CHARGED_NO", "CHARGED_NO"),
    ("context", "CHARGED_YES", "CHARGED_YES"),
    ("context", "CHARGED_UNKNOWN", "CHARGED_UNKNOWN"),
    ("context", "STACK_ENTRIES", "DEFAULT_STACK_ENTRIES"),
    ("context", "STACK_DEPTH", "DEFAULT_STACK_DEPTH"),
    ("context", "SAMPLE_ENTRIES", "DEFAULT_SAMPLE_ENTRIES"),
    ("context", "TAGS_MAX", "DEFAULT_TAGS_MAX"),
    ("sampler", "SAMPLER_FRAC_BITS", "SAMPLER_FRAC_BITS"),
    ("sampler", "SAMPLER_RATE_MAX", "SAMPLER_RATE_MAX"),
    ("sampler", "SAMPLER_W2_SHIFT", "SAMPLER_W2_SHIFT"),
)

# (program, C prefix, C count define, C->Python mapping, Python tuple name)
INDEXES = (
    ("kmem_sites", "SRC_", "NR_SOURCES", KMEM_SOURCES, "SOURCES"),
    ("kmem_sites", "CNT_", "NR_COUNTERS", KMEM_COUNTERS, "COUNTERS"),
    ("oncpu", "CNT_", "NR_COUNTERS", ONCPU_COUNTERS, "COUNTERS"),
    ("alloc_latency", "STAT_", "NR_STATS", LATENCY_STATS, "STATS"),
    ("lifespan", "SRC_", "NR_SOURCES", KMEM_SOURCES, "SOURCES"),
    ("lifespan", "CNT_", "NR_COUNTERS", LIFESPAN_COUNTERS, "COUNTERS"),
    ("context", "SRC_", "NR_SOURCES", CONTEXT_SOURCES, "SOURCES"),
)

# Map helpers BCC forces to be copied into each program that uses them (see the header).
HELPER_COPIES = {
    "allocscope_count": ("kmem_sites", "oncpu", "lifespan"),
    "allocscope_wanted": ("oncpu", "alloc_latency"),
}

# Code that reads a map the program defines, so it cannot live in a header either, and that
# has no reference copy there: every program's copy must equal the others' (first = model).
SHARED_COPIES = {
    "current_tag": ("who_calls", "context", "lifespan"),
    "struct tag_info": ("who_calls", "context", "lifespan"),
}

# Settings that name something (no numeric default possible) or guard a header: the only
# names #ifdef/#ifndef-without-default may test.
PRESENCE_ONLY = {"FENTRY_TARGET", "FUNC", "ALLOCSCOPE_BPF_H", "ALLOCSCOPE_SAMPLER_BPF_H"}


# --- the C side ----------------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])[ \t]*(.*)$", re.M)
_ENUM = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.S)
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_OPS: dict[type, Callable[..., int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def strip_comments(text: str) -> str:
    # Keep line structure (comments may span lines) so #define lines stay whole.
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n") + " ", text)


def c_defines(text: str) -> dict[str, list[str]]:
    """Every object-like ``#define NAME value`` and enum constant: name -> raw values seen."""
    out: dict[str, list[str]] = {}
    code = strip_comments(text)
    for name, value in _DEFINE.findall(code):
        out.setdefault(name, []).append(value.strip())
    for body in _ENUM.findall(code):
        nxt = "0"
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, value = (p.strip() for p in item.partition("="))
            value = value or nxt
            out.setdefault(name, []).append(value)
            nxt = f"({value}) + 1"
    return out


def _eval(node: ast.AST, env: Mapping[str, list[str]], depth: int) -> int:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env, depth)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, env, depth), _eval(node.right, env, depth))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand, env, depth))
    if isinstance(node, ast.Name) and node.id in env and depth < 16:
        return c_value(env, node.id, depth + 1)
    raise ValueError(f"not a constant expression: {ast.dump(node)}")


def c_value(env: Mapping[str, list[str]], name: str, depth: int = 0) -> int:
    """The one integer value of ``name`` (all its #defines must agree)."""
    if name not in env:
        raise KeyError(f"no #define {name}")
    values = set()
    for raw in env[name]:
        expr = _INT_SUFFIX.sub(r"\1", raw).replace("/", "//")
        values.add(_eval(ast.parse(expr, mode="eval"), env, depth))
    if len(values) != 1:
        raise ValueError(f"{name} has several values: {sorted(values)}")
    return values.pop()


def c_function(text: str, name: str) -> str | None:
    """The text of ``static ... name(...) { ... }`` up to its closing brace at column 0."""
    m = re.search(rf"^static [^\n]*\b{name}\(.*?^}}$", text, re.M | re.S)
    return m.group(0) if m else None


def c_struct(text: str, name: str) -> str | None:
    """The text of ``struct name { ... };`` (a definition at column 0)."""
    m = re.search(rf"^struct {name} {{.*?^}};$", text, re.M | re.S)
    return m.group(0) if m else None


def shared_copy(text: str, item: str) -> str | None:
    """A function (``name``) or a struct (``struct name``) copied between programs."""
    if item.startswith("struct "):
        return c_struct(text, item.removeprefix("struct "))
    return c_function(text, item)


def header_reference(header: str, name: str) -> str | None:
    """A helper's reference copy from the header's doc comment (lines ``' *\\t...'``)."""
    lines = [ln[3:] if ln.startswith(" *\t") else ln[2:] for ln in header.splitlines()]
    return c_function("\n".join(lines), name)


def read_programs() -> dict[str, str]:
    texts = {p.name.removesuffix(".bpf.c"): p.read_text() for p in PROBES.glob("*.bpf.c")}
    texts[HEADER] = (PROBES / HEADER).read_text()
    texts["sampler"] = (PROBES / SAMPLER_HEADER).read_text()
    return texts


# --- the Python side -----------------------------------------------------------------------


def python_value(program: str, name: str) -> Any:
    """``name`` from the first candidate module of ``program`` that has it."""
    tried = []
    for modname in CANDIDATES[program]:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise  # the module exists but is broken: say so
            tried.append(f"{modname} (absent)")
            continue
        if hasattr(module, name):
            return getattr(module, name)
        tried.append(modname)
    raise LookupError(f"{name} not found in {', '.join(tried)}")


PythonLookup = Callable[[str, str], Any]


# --- the comparison ------------------------------------------------------------------------


def drift(texts: Mapping[str, str], py: PythonLookup = python_value) -> list[str]:
    """Every disagreement between the C texts and the Python mirrors (empty = in sync)."""
    problems: list[str] = []
    env = {name: c_defines(text) for name, text in texts.items()}

    for program, c_name, py_name in SCALARS:
        try:
            c, p = c_value(env[program], c_name), py(program, py_name)
        except (KeyError, ValueError, LookupError) as e:
            problems.append(f"{program}: {c_name} vs {py_name}: {e}")
            continue
        if c != p:
            problems.append(f"{program}.bpf.c {c_name} = {c} but Python {py_name} = {p}")

    for program, prefix, count, mapping, py_name in INDEXES:
        defs = env[program]
        try:
            names = tuple(py(program, py_name))
            n = c_value(defs, count)
        except (KeyError, ValueError, LookupError) as e:
            problems.append(f"{program}: {count} vs {py_name}: {e}")
            continue
        if n != len(names):
            problems.append(f"{program}.bpf.c {count} = {n} but len({py_name}) = {len(names)}")
        c_names = {k for k in defs if k.startswith(prefix) and k != count}
        for extra in sorted(c_names - mapping.keys()):
            problems.append(f"{program}.bpf.c {extra}: not mapped to a {py_name} entry here")
        for c_name, py_entry in mapping.items():
            if c_name not in c_names:
                problems.append(f"{program}.bpf.c has no {c_name} (for {py_entry!r})")
                continue
            idx = c_value(defs, c_name)
            have = names[idx] if 0 <= idx < len(names) else None
            if have != py_entry:
                problems.append(
                    f"{program}.bpf.c {c_name} = {idx}: {py_name}[{idx}] is {have!r}, "
                    f"expected {py_entry!r}"
                )

    for helper, programs in HELPER_COPIES.items():
        ref = header_reference(texts[HEADER], helper)
        if ref is None:
            problems.append(f"{HEADER}: no reference copy of {helper}()")
            continue
        for program in programs:
            copy = c_function(texts[program], helper)
            if copy != ref:
                problems.append(f"{program}.bpf.c {helper}() differs from {HEADER}'s copy")

    for item, (model, *others) in SHARED_COPIES.items():
        ref = shared_copy(texts[model], item)
        if ref is None:
            problems.append(f"{model}.bpf.c: no {item}")
            continue
        for program in others:
            if shared_copy(texts[program], item) != ref:
                problems.append(f"{program}.bpf.c {item} differs from {model}.bpf.c's copy")
    return problems


def style_problems(texts: Mapping[str, str]) -> list[str]:
    problems = []
    for name, text in texts.items():
        header = name in (HEADER, "sampler")
        fname = {HEADER: HEADER, "sampler": SAMPLER_HEADER}.get(name, f"{name}.bpf.c")
        if not text.startswith(SPDX + "\n"):
            problems.append(f"{fname}: first line is not {SPDX!r}")
        if not header and f'#include "{HEADER}"' not in text:
            problems.append(f"{fname}: does not include {HEADER}")
        code = strip_comments(text)
        for m in re.finditer(r"^#\s*(?:el)?if\b.*\bdefined\b|^#\s*ifdef\s+(\w+)", code, re.M):
            if m.group(1) not in PRESENCE_ONLY:
                problems.append(f"{fname}: {m.group(0).strip()!r}: test switches with #if")
        # a default may sit behind a nested presence test (capability_check's CHECK_FENTRY)
        default = r"^#\s*ifndef\s+(\w+)\s*\n(?:#[^\n]*\n){0,4}?#\s*define\s+\1\b"
        defaults = set(re.findall(default, code, re.M))
        for m in re.finditer(r"^#\s*ifndef\s+(\w+)", code, re.M):
            if m.group(1) not in defaults | PRESENCE_ONLY:
                problems.append(f"{fname}: #ifndef {m.group(1)} without a default")
        for i, line in enumerate(code.splitlines(), 1):
            if re.match(r"^ {2,}\S", line):
                problems.append(f"{fname}:{i}: indented with spaces")
    return problems


# --- tests ---------------------------------------------------------------------------------


def test_c_and_python_constants_agree() -> None:
    assert drift(read_programs()) == []


def test_bpf_file_conventions() -> None:
    assert style_problems(read_programs()) == []


def test_every_checked_program_exists() -> None:
    texts = read_programs()
    wanted = {p for p, *_ in SCALARS} | {p for p, *_ in INDEXES}
    wanted |= {p for ps in HELPER_COPIES.values() for p in ps}
    wanted |= {p for ps in SHARED_COPIES.values() for p in ps}
    assert wanted <= texts.keys()


@pytest.mark.parametrize(
    ("program", "old", "new", "expect"),
    [
        ("kmem_sites", "#define CNT_STACKS_FULL 8", "#define CNT_STACKS_FULL 7", "CNT_STACKS_FULL"),
        ("kmem_sites", "#define NR_COUNTERS 9", "#define NR_COUNTERS 10", "NR_COUNTERS"),
        ("kmem_sites", "#define SRC_PAGE 2", "#define SRC_PAGE 1", "SRC_PAGE"),
        ("kmem_sites", "#define LIVE_MAX 262144", "#define LIVE_MAX 131072", "LIVE_MAX"),
        ("kmem_sites", "#define CNT_ALLOC 0", "#define CNT_ALLOC 0\n#define CNT_NEW 9", "CNT_NEW"),
        ("oncpu", "#define CNT_PAGES 11", "#define CNT_PAGES 12", "CNT_PAGES"),
        ("oncpu", "#define STACK_STORAGE 16384", "#define STACK_STORAGE 8192", "STACK_STORAGE"),
        ("alloc_latency", "#define HIST_SLOTS (64 * 16)", "#define HIST_SLOTS (64 * 8)", "HIST"),
        ("alloc_latency", "#define STAT_NS 1", "#define STAT_NS 0", "STAT_NS"),
        ("alloc_latency", "#define START_MAX 10240", "#define START_MAX 4096", "START_MAX"),
        ("who_calls", "#define MAX_SITES 8", "#define MAX_SITES 16", "MAX_SITES"),
        ("oncpu", "\t\t*c += by;", "\t\t*c += by + 1;", "allocscope_count"),
        ("alloc_latency", "if (!ok || !*ok)", "if (!ok)", "allocscope_wanted"),
        ("sampler", "#define SAMPLER_W2_SHIFT 16", "#define SAMPLER_W2_SHIFT 15", "W2_SHIFT"),
        ("lifespan", "\tif (addr && !tags.lookup(&addr)) {", "\tif (addr) {", "current_tag"),
        ("context", "\tchar function[64];", "\tchar function[48];", "struct tag_info"),
    ],
)
def test_planted_drift_is_found(program: str, old: str, new: str, expect: str) -> None:
    texts = read_programs()
    assert old in texts[program], f"self-test out of date: {old!r} not in {program}.bpf.c"
    edited = dict(texts, **{program: texts[program].replace(old, new, 1)})
    problems = drift(edited)
    assert any(expect in p for p in problems), problems


def test_planted_python_drift_is_found() -> None:
    def shifted(program: str, name: str) -> Any:
        value = python_value(program, name)
        if (program, name) == ("oncpu", "COUNTERS"):
            return tuple(reversed(value))
        if (program, name) == ("alloc_latency", "HIST_SLOTS"):
            return value + 1
        return value

    problems = drift(read_programs(), shifted)
    assert any("CNT_SAMPLES" in p for p in problems), problems
    assert any("HIST_SLOTS" in p for p in problems), problems


def test_planted_style_drift_is_found() -> None:
    texts = read_programs()
    edited = dict(texts)
    edited["oncpu"] = texts["oncpu"].replace(SPDX + "\n", "", 1)
    edited["kmem_sites"] = texts["kmem_sites"].replace("#if TRACK_FREES", "#ifdef TRACK_FREES", 1)
    edited["who_calls"] = texts["who_calls"].replace("\treturn 0;", "    return 0;", 1)
    problems = style_problems(edited)
    for expect in ("oncpu.bpf.c: first line", "#ifdef TRACK_FREES", "who_calls.bpf.c:"):
        assert any(expect in p for p in problems), (expect, problems)


def test_parser_evaluates_expressions_and_enums() -> None:
    env = c_defines(
        "#define A 4 /* four */\n#define B (A << 2) // sixteen\n#define C 0x10ULL\n"
        "#define F(x) x\nenum { E0, E1 = 5, E2 };\n"
    )
    assert c_value(env, "B") == 16 and c_value(env, "C") == 16
    assert (c_value(env, "E0"), c_value(env, "E1"), c_value(env, "E2")) == (0, 5, 6)
    assert "F" not in env
