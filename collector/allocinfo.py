"""Reading ``/proc/allocinfo``: the text formats 1.0, 1.1 and 2.0, and the kernel's quirks.

The format (mm/alloc_tag.c)::

    allocinfo - version: 2.0
    #     <size>  <calls> <tag info>
           45056       11 mm/memory.c:6939 func:__pud_alloc accurate:no
           4096         1 drivers/foo/bar.c:12 [foo] func:foo_probe

Quirks handled on purpose: the trailing space the kernel prints; counters that are
transiently negative (per-CPU sums read without locking); ``key:value`` extras after the
function (2.0 prints ``accurate:no``; unknown keys are kept, not rejected); indented per-NUMA
sub-lines (``nid0 <bytes> <calls>``, a proposed format) attached to the tag above; ``#``
comments and the ``...`` of hand-made excerpts; a truncated last line (reading while modules
load). Anything else is an :class:`InputError` naming file and line, or, with
``lenient=True``, a counted warning.

Version 1.1 is not upstream: it is what kernels carrying David Wang's "lib/alloc_tag: Add
accumulative call counter for memory allocation profiling" (linux-mm, v1 2024-06-17, v2
2024-09-13, CONFIG_MEM_ALLOC_PROFILING_ACCUMULATIVE_CALL_COUNTER) print: one more unsigned
64-bit number after the tag, the calls made since boot (freed ones included)::

    allocinfo - version: 1.1
    #     <size>  <calls> <tag info> <accumulative calls>
           45056       11 mm/memory.c:6939 func:__pud_alloc 1290

v2 prints the 1.1 header even with the option off, and then no column. The number is kept as
the :data:`CUMULATIVE_KEY` extra (a decimal string, like the other extras, so it survives a
snapshot's ``extras`` column and the store unchanged, and a u64 needs no int64); it is read as
the last token of a line, in any version, when that token is all digits. The compiled
scanner declines such lines (a bare number is not ``key:value``): 1.1 takes the pure-Python
fast path.
"""

from __future__ import annotations

import gc
import gzip
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

try:  # the compiled fast path (collector/_allocinfo_scan.c), built by `pip install`
    # "as": an explicit re-export, the module tests and bench-parse swap out
    from allocscope.collector import _allocinfo_scan as _allocinfo_scan
except ImportError:  # no compiler at install time: the pure-Python paths below still work
    _allocinfo_scan = None  # type: ignore[assignment]

from allocscope.collector.host import HostMetadata
from allocscope.collector.site import Site
from allocscope.errors import InputError

PROC_ALLOCINFO = "/proc/allocinfo"
KNOWN_VERSIONS = ("1.0", "1.1", "2.0")
# The extras key holding a 1.1 line's accumulative calls (see the module docstring).
CUMULATIVE_KEY = "cumulative_calls"

_HEADER = re.compile(r"^allocinfo - version: (\d+\.\d+)\s*$")
_LINE = re.compile(
    r"^\s*(-?\d+)\s+(-?\d+)\s+(\S+):(\d+)(?:\s+\[([^\]\s]+)\])?\s+func:(\S+)((?:\s+\S+)*)\s*$"
)
_NUMA = re.compile(r"^\s+nid(\d+)\s+(-?\d+)\s+(-?\d+)\s*$")
# The fast path: _LINE restricted to spaces/tabs and to well-formed key:value extras, run
# once over a whole text with MULTILINE. Every line it matches, _LINE matches with the same
# groups; since no match can span a newline, "as many matches as lines" proves every line is
# a record (tests/unit/test_allocinfo_hypothesis.py checks both paths agree on any input).
_FAST = re.compile(
    r"^[ \t]*(-?\d+)[ \t]+(-?\d+)[ \t]+(\S+):(\d+)(?:[ \t]+\[([^\]\s]+)\])?[ \t]+func:(\S+)"
    r"((?:[ \t]+[^\s:]+:\S*)*)[ \t]*$",
    re.MULTILINE,
)
# The same with allocinfo 1.1's accumulative calls (a number after the extras), tried only
# when _FAST did not take every line: the optional group costs the common case 15%.
_FAST_CUMULATIVE = re.compile(
    _FAST.pattern.replace(r"[ \t]*$", r"(?:[ \t]+([0-9]+))?[ \t]*$"), re.M
)
# A 1.1 line's accumulative calls: the last token of the text after func:, all digits.
_CUMULATIVE_TAIL = re.compile(r"^(.*)\s+([0-9]+)\s*$", re.DOTALL)
# How far into a file its header lines may reach for the bytes fast path (a real header is
# two lines; a longer one just takes the decoding path).
_HEAD_WINDOW = 4096
# Characters str.splitlines() breaks on besides "\n": a header holding one goes the slow way
# so line numbers stay those of the line-by-line parser.
_OTHER_BREAKS = frozenset("\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(slots=True)
class NumaCount:
    """One per-node sub-line (``nid0 <bytes> <calls>``) under a tag."""

    nid: int
    bytes: int
    calls: int


@dataclass(slots=True)
class AllocRecord:
    """One allocinfo tag: where (site), how much (bytes), how many live (calls), extras."""

    site: Site
    bytes: int
    calls: int
    extras: dict[str, str] = field(default_factory=dict)
    numa: list[NumaCount] = field(default_factory=list)

    @property
    def accurate(self) -> bool:
        """False when the kernel says the counter missed early-boot allocations."""
        return self.extras.get("accurate", "yes") != "no"

    @property
    def cumulative_calls(self) -> int | None:
        """Calls since boot, freed ones included (allocinfo 1.1); None when not printed."""
        v = self.extras.get(CUMULATIVE_KEY)
        return int(v) if v is not None and v.isdigit() else None


def scanner() -> str:
    """Which fast path parses plain allocinfo text here: "compiled" or "python"."""
    return "compiled" if _allocinfo_scan is not None else "python"


@dataclass(slots=True, frozen=True)
class StrColumn:
    """A string column in Arrow's layout: value i is ``data[offsets[i]:offsets[i + 1]]``
    (ASCII; ``offsets`` holds n+1 native int32). Kept as two byte strings so no Python string
    exists until a column is asked for, and then all of it in one C call (:meth:`to_list`)."""

    offsets: bytes
    data: bytes

    def to_list(self) -> list[str]:
        assert _allocinfo_scan is not None  # only the compiled scanner makes these
        return _allocinfo_scan.strings(self.offsets, self.data)


@dataclass(slots=True, frozen=True)
class AllocColumns:
    """One allocinfo body as typed columns, as the compiled scanner split it.

    Numbers are packed native arrays (``nbytes``/``calls`` int64, ``line`` int32, ``accurate``
    uint8); ``extras`` holds each line's extras text as printed (``accurate:no``), empty when
    none. NUMA sub-lines never occur here: text holding them takes the Python path.
    """

    n: int
    nbytes: bytes
    calls: bytes
    line: bytes
    accurate: bytes
    file: StrColumn
    module: StrColumn
    function: StrColumn
    extras: StrColumn

    def numbers(self, name: str) -> list[int]:
        """``nbytes``, ``calls`` or ``line`` as a list of ints (one C-speed call)."""
        raw: bytes = getattr(self, name)
        return memoryview(raw).cast("i" if name == "line" else "q").tolist()

    def records(self) -> list[AllocRecord]:
        """Build the record objects: the expensive step the columns let callers skip."""
        extras_of: dict[str, dict[str, str]] = {}
        out = []
        gc_was_on = gc.isenabled()
        gc.disable()  # ~n*4 new acyclic objects: see parse_allocinfo_text
        try:
            for f, ln, fn, mod, b, c, ex in zip(
                self.file.to_list(),
                self.numbers("line"),
                self.function.to_list(),
                self.module.to_list(),
                self.numbers("nbytes"),
                self.numbers("calls"),
                self.extras.to_list(),
                strict=True,
            ):
                if ex:
                    d = extras_of.get(ex)
                    if d is None:
                        d = extras_of[ex] = _extras_of(ex)
                    extras = dict(d)  # records own their extras (mutable)
                else:
                    extras = {}
                out.append(AllocRecord(Site(f, ln, fn, mod), b, c, extras))
        finally:
            if gc_was_on:
                gc.enable()
        return out


class RecordList(Sequence[AllocRecord]):
    """The records of a columnar parse, built on first use.

    ``len()`` and the totals come from the columns; indexing or iterating builds every
    :class:`AllocRecord` once. Code that can work on columns (the snapshot writer) reads
    :attr:`columns` and never pays for the objects.
    """

    __slots__ = ("columns", "_built")

    def __init__(self, columns: AllocColumns) -> None:
        self.columns = columns
        self._built: list[AllocRecord] | None = None

    def _list(self) -> list[AllocRecord]:
        if self._built is None:
            self._built = self.columns.records()
        return self._built

    def __len__(self) -> int:
        return self.columns.n

    @overload
    def __getitem__(self, i: int) -> AllocRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[AllocRecord]: ...
    def __getitem__(self, i: int | slice) -> AllocRecord | list[AllocRecord]:
        return self._list()[i]

    def __iter__(self) -> Iterator[AllocRecord]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordList({self.columns.n} records)"


@dataclass(slots=True)
class AllocinfoSnapshot:
    """A whole allocinfo read: its records plus where and when it came from."""

    version: str | None
    records: Sequence[AllocRecord]
    source: str
    taken_at: float = 0.0
    host: HostMetadata | None = None
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0  # malformed lines skipped under lenient=True
    # Only some tags are listed (a show_mem block lists the top 10): a tag absent here is
    # unknown, not zero, so diff compares only the tags listed.
    partial: bool = False
    # A live read bracketed by the 7.3+ CONTENT_ID ioctl: True = one consistent set of tags,
    # False = modules changed it during every attempt, None = not checked (file, old kernel).
    consistent: bool | None = None
    read_attempts: int = 1
    via: str = "text"  # or "ioctl" (collector/allocinfo_live.py)
    # /proc/slabinfo's bytes of objects in use when this read was this host's, now (or what a
    # snapshot file recorded): makes the counted-once total exact (collector/containers.py)
    slab_objects_bytes: int | None = None

    @property
    def columns(self) -> AllocColumns | None:
        """The columns behind :attr:`records` when the compiled scanner parsed them."""
        return self.records.columns if isinstance(self.records, RecordList) else None

    @property
    def total_bytes(self) -> int:
        cols = self.columns
        if cols is not None:
            return sum(memoryview(cols.nbytes).cast("q"))
        return sum(r.bytes for r in self.records)

    @property
    def total_calls(self) -> int:
        cols = self.columns
        if cols is not None:
            return sum(memoryview(cols.calls).cast("q"))
        return sum(r.calls for r in self.records)


def _parse_extras(text: str, path: str, lineno: int) -> dict[str, str]:
    extras: dict[str, str] = {}
    for tok in text.split():
        key, sep, value = tok.partition(":")
        if not sep or not key:
            raise InputError(path, lineno, f"unexpected field {tok!r} after func: (want key:value)")
        extras[key] = value
    return extras


# What the kernel can print (lib/alloc_tag.c): bytes and calls are 64-bit counters (a racing
# free can make a sum dip below zero, hence signed), stored as signed 64-bit downstream
# (Parquet int64, DuckDB BIGINT); line numbers are the C `int` of __LINE__. A number past
# these did not come from a kernel, and accepting it would only move the crash to the
# snapshot or report that tries to store it.
# calls is printed unsigned (%llu) though the per-CPU sum can dip below zero just as bytes
# does (a free counted on one CPU before its allocation on another is read): such a sum
# prints as 2^64 - n, and is read back as -n, as the ioctl reader does (allocinfo_ioctl._signed).
_S64_MAX = (1 << 63) - 1
_U64_END = 1 << 64
_U64_MAX = _U64_END - 1  # 1.1's accumulative calls: printed with %llu
_LINE_MAX = (1 << 31) - 1


def _calls(calls_s: str) -> int:
    """A calls field as the signed count it stands for (see above)."""
    calls = int(calls_s)
    return calls - _U64_END if calls > _S64_MAX else calls


def _out_of_range(bytes_s: str, calls_s: str, line_s: str) -> str:
    """Why a line's numbers cannot be a kernel's, or '' when they can."""
    if abs(int(bytes_s)) > _S64_MAX:
        return f"bytes {bytes_s[:24]} is out of range (a signed 64-bit counter)"
    if not -_S64_MAX <= int(calls_s) < _U64_END:
        return f"calls {calls_s[:24]} is out of range (an unsigned 64-bit counter)"
    if not 0 <= int(line_s) <= _LINE_MAX:
        return f"line number {line_s[:24]} is out of range (0 to 2^31-1)"
    return ""


def _split_cumulative(rest: str) -> tuple[str, str | None]:
    """``" accurate:no 1290"`` -> (``" accurate:no"``, ``"1290"``): a 1.1 line's last token
    when it is all ASCII digits (what _FAST's last group takes)."""
    m = _CUMULATIVE_TAIL.match(rest)
    return (m[1], m[2]) if m else (rest, None)


def _with_cumulative(extras: dict[str, str], cumulative: str | None) -> dict[str, str]:
    if cumulative is not None:
        extras[CUMULATIVE_KEY] = str(int(cumulative))  # "007" -> "7", as the kernel prints
    return extras


def parse_allocinfo(
    lines: Iterable[str], source: str = "<allocinfo>", *, lenient: bool = False
) -> AllocinfoSnapshot:
    """Parse allocinfo text. ``source`` names the input in errors (``file:line: why``)."""
    records: list[AllocRecord] = []
    warnings: list[str] = []
    version: str | None = None
    truncated = False
    skipped = 0
    pending_error: InputError | None = None
    match_line = _LINE.match
    lineno = 0
    for lineno, raw in enumerate(lines, 1):
        if pending_error is not None:
            # The bad line was not the last one, so it was not a truncated tail.
            if not lenient:
                raise pending_error
            warnings.append(str(pending_error))
            skipped += 1
            pending_error = None
        m = match_line(raw)
        if m is not None:
            bytes_s, calls_s, file, line, module, func, rest = m.groups()
            cumulative = None
            if rest:
                rest, cumulative = _split_cumulative(rest)
            why = _out_of_range(bytes_s, calls_s, line)
            if not why and cumulative is not None and int(cumulative) > _U64_MAX:
                why = f"accumulative calls {cumulative[:24]} is out of range (a 64-bit counter)"
            if why:
                err = InputError(source, lineno, why)
                if not lenient:
                    raise err
                warnings.append(str(err))
                skipped += 1
                continue
            try:
                extras = _with_cumulative(
                    _parse_extras(rest, source, lineno) if rest else {}, cumulative
                )
            except InputError as bad:
                if not lenient:
                    raise
                warnings.append(str(bad))
                skipped += 1
                continue
            records.append(
                AllocRecord(
                    Site(file, int(line), func, module or ""), int(bytes_s), _calls(calls_s), extras
                )
            )
            continue
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "...":
            continue
        h = _HEADER.match(stripped)
        if h:
            if version is not None and version != h[1]:
                raise InputError(source, lineno, f"second header with version {h[1]}")
            version = h[1]
            if version not in KNOWN_VERSIONS:
                warnings.append(
                    f"{source}:{lineno}: allocinfo version {version} is newer than "
                    f"{KNOWN_VERSIONS[-1]}; reading it as {KNOWN_VERSIONS[-1]}"
                )
            continue
        n = _NUMA.match(raw)
        if n and records:
            records[-1].numa.append(NumaCount(int(n[1]), int(n[2]), int(n[3])))
            continue
        err = InputError(source, lineno, f"not an allocinfo line: {stripped[:80]!r}")
        if raw.endswith("\n"):
            if not lenient:
                raise err
            warnings.append(str(err))
            skipped += 1
        else:
            pending_error = err  # maybe a truncated last line; decided at the next line
    if pending_error is not None and version is None and not records:
        raise pending_error  # nothing else in the input: not a truncated allocinfo, garbage
    if pending_error is not None:
        truncated = True
        warnings.append(
            f"{source}:{lineno}: last line is truncated (file still being written?); ignored"
        )
    if version is None and not records and lineno == 0:
        raise InputError(source, None, "empty input: no allocinfo header or lines")
    return AllocinfoSnapshot(
        version, records, source, truncated=truncated, warnings=warnings, skipped=skipped
    )


def _header_end(text: str) -> int:
    """Offset just past the leading header/comment/blank lines (0 if none)."""
    pos = 0
    for _ in range(64):
        nl = text.find("\n", pos)
        if nl < 0:
            break
        stripped = text[pos:nl].strip()
        if stripped and not stripped.startswith("#") and not _HEADER.match(stripped):
            break
        pos = nl + 1
    return pos


def _scan_body(
    text: str | bytes, head_end: int, source: str, lenient: bool
) -> AllocinfoSnapshot | None:
    """The compiled scanner over ``text[head_end:]``; None when it declines (see the C file)."""
    assert _allocinfo_scan is not None
    got = _allocinfo_scan.scan(text, head_end)
    if got is None:
        return None
    head = text[:head_end]
    snap = _parse_head(head if isinstance(head, str) else head.decode("ascii"), source, lenient)
    n, nbytes, calls, line, accurate = got[:5]
    f_off, f_data, m_off, m_data, fn_off, fn_data, x_off, x_data = got[5:]
    snap.records = RecordList(
        AllocColumns(
            n,
            nbytes,
            calls,
            line,
            accurate,
            StrColumn(f_off, f_data),
            StrColumn(m_off, m_data),
            StrColumn(fn_off, fn_data),
            StrColumn(x_off, x_data),
        )
    )
    return snap


def _parse_head(head: str, source: str, lenient: bool) -> AllocinfoSnapshot:
    """The snapshot shell (version, warnings) from the header lines before the body."""
    if head:
        return parse_allocinfo(head.splitlines(keepends=True), source, lenient=lenient)
    return AllocinfoSnapshot(None, [], source)


def extras_items(rest: str) -> list[tuple[str, str]]:
    """``" accurate:no k:v"`` -> key/value pairs, in order; the shape is already validated
    (by the fast regex or the compiled scanner)."""
    return [(k, v) for k, _, v in (tok.partition(":") for tok in rest.split())]


def _extras_of(rest: str) -> dict[str, str]:
    return dict(extras_items(rest))


def parse_allocinfo_text(
    text: str, source: str = "<allocinfo>", *, lenient: bool = False
) -> AllocinfoSnapshot:
    """Parse a whole allocinfo text; same result as :func:`parse_allocinfo` on its lines.

    Fast paths: the compiled scanner (``_allocinfo_scan.c``) validates the body and splits it
    into columns, leaving record objects to be built when first used (:class:`RecordList`);
    without it, one ``findall`` over the body validates and splits every line at C speed.
    Only when some line is not a plain record (a NUMA sub-line, an excerpt's ``...``, a
    malformed or truncated line) does the line-by-line parser run, to place the error
    or handle the rarity.
    """
    head_end = _header_end(text)
    head = text[:head_end]
    if _OTHER_BREAKS.intersection(head):
        return parse_allocinfo(text.splitlines(keepends=True), source, lenient=lenient)
    if _allocinfo_scan is not None:
        snap = _scan_body(text, head_end, source, lenient)
        if snap is not None:
            return snap
    body = text[head_end:]
    lines = body.count("\n") + (1 if body and not body.endswith("\n") else 0)
    if lines:
        rows = _FAST.findall(body)
        cumulative = len(rows) != lines
        if cumulative:  # allocinfo 1.1, or a line only the line parser can place
            rows = _FAST_CUMULATIVE.findall(body)
        if (
            len(rows) == lines
            and not any(len(b) > 18 or len(c) > 19 or len(ln) > 9 for b, c, _f, ln, *_ in rows)
            and not (cumulative and any(len(r[7]) > 19 for r in rows))
        ):
            snap = _parse_head(head, source, lenient)
            # Tens of thousands of new objects, none cyclic: the cyclic GC would run dozens
            # of times for nothing (a third of the parse time when measured).
            gc_was_on = gc.isenabled()
            gc.disable()
            try:
                if cumulative:
                    snap.records = [
                        AllocRecord(
                            Site(file, int(line), func, module),
                            int(nbytes),
                            int(calls),
                            _with_cumulative(_extras_of(rest) if rest else {}, cum or None),
                        )
                        for nbytes, calls, file, line, module, func, rest, cum in rows
                    ]
                else:
                    snap.records = [
                        AllocRecord(
                            Site(file, int(line), func, module),
                            int(nbytes),
                            int(calls),
                            _extras_of(rest) if rest else {},
                        )
                        for nbytes, calls, file, line, module, func, rest in rows
                    ]
            finally:
                if gc_was_on:
                    gc.enable()
            return snap
    return parse_allocinfo(text.splitlines(keepends=True), source, lenient=lenient)


def parse_allocinfo_bytes(
    data: bytes, source: str = "<allocinfo>", *, lenient: bool = False
) -> AllocinfoSnapshot:
    """Parse allocinfo as read from a file: the compiled scanner reads the bytes themselves,
    so plain ASCII text (what the kernel prints) is never decoded; anything else is decoded
    as UTF-8 (bad bytes replaced) and parsed by :func:`parse_allocinfo_text`."""
    if _allocinfo_scan is not None:
        prefix = data[:_HEAD_WINDOW]
        if prefix.isascii():
            text = prefix.decode("ascii")
            head_end = _header_end(text)
            if not _OTHER_BREAKS.intersection(text[:head_end]):
                snap = _scan_body(data, head_end, source, lenient)
                if snap is not None:
                    return snap
    return parse_allocinfo_text(data.decode("utf-8", errors="replace"), source, lenient=lenient)


def _read_bytes(path: str) -> bytes:
    """The whole input: ``-`` is stdin; gzip is recognised by its magic, not its name."""
    if path == "-":
        data = sys.stdin.buffer.read()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    # /proc files report size 0: read() to EOF in one call gets a consistent-ish view.
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_allocinfo(path: str | None = None, *, lenient: bool = False) -> AllocinfoSnapshot:
    """Read allocinfo from ``path`` (None = the live file, ``-`` = stdin, ``.gz`` ok); a
    kernel log holding a show_mem "Memory allocations" block is read too
    (:mod:`allocscope.collector.showmem`)."""
    path = path or PROC_ALLOCINFO
    name = "<stdin>" if path == "-" else path
    if path == PROC_ALLOCINFO and not os.path.exists(path):
        raise InputError(
            path,
            None,
            "not present: this kernel lacks CONFIG_MEM_ALLOC_PROFILING "
            "(Linux 6.10+); use --file with a saved copy, or `top --live` to trace instead",
        )
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise InputError(name, None, "no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(name, None, f"cannot read: {e}") from None
    from allocscope.collector import showmem

    if showmem.looks_like_kernel_log(data):  # a saved dmesg after an OOM or sysrq-m
        snap = showmem.parse_kernel_log(data, name)
        snap.taken_at = time.time()
        return snap
    snap = parse_allocinfo_bytes(data, name, lenient=lenient)
    snap.taken_at = time.time()
    return snap


def query_tags(path: str = PROC_ALLOCINFO, **filters: Any) -> list[AllocRecord]:
    """Tags matching ``filters`` (function=, file=, line=, module=, inaccurate=, min_bytes=,
    max_bytes=) through the Linux 7.3+ allocinfo ioctl, without reading the whole text.

    Explicit on purpose: :func:`read_allocinfo` (the text) stays the default everywhere.
    Raises :class:`~allocscope.errors.CapabilityError` where the ioctl is missing.
    """
    from allocscope.collector.allocinfo_ioctl import query_tags as _query

    return _query(path, **filters)
