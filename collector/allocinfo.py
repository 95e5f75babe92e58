"""Reading ``/proc/allocinfo``: the text formats 1.0 and 2.0, and the kernel's quirks.

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
"""

from __future__ import annotations

import gc
import gzip
import io
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.errors import InputError
from allocscope.collector.host import HostMetadata
from allocscope.collector.site import Site

PROC_ALLOCINFO = "/proc/allocinfo"
KNOWN_VERSIONS = ("1.0", "2.0")

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


@dataclass(slots=True)
class AllocinfoSnapshot:
    """A whole allocinfo read: its records plus where and when it came from."""

    version: str | None
    records: list[AllocRecord]
    source: str
    taken_at: float = 0.0
    host: HostMetadata | None = None
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0  # malformed lines skipped under lenient=True

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.records)

    @property
    def total_calls(self) -> int:
        return sum(r.calls for r in self.records)


def _parse_extras(text: str, path: str, lineno: int) -> dict[str, str]:
    extras: dict[str, str] = {}
    for tok in text.split():
        key, sep, value = tok.partition(":")
        if not sep or not key:
            raise InputError(path, lineno, f"unexpected field {tok!r} after func: (want key:value)")
        extras[key] = value
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
            extras = _parse_extras(rest, source, lineno) if rest else {}
            records.append(
                AllocRecord(
                    Site(file, int(line), func, module or ""), int(bytes_s), int(calls_s), extras
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


def _extras_of(rest: str) -> dict[str, str]:
    """``" accurate:no k:v"`` -> dict; the fast regex has already validated the shape."""
    return dict(tok.split(":", 1) for tok in rest.split())


def parse_allocinfo_text(
    text: str, source: str = "<allocinfo>", *, lenient: bool = False
) -> AllocinfoSnapshot:
    """Parse a whole allocinfo text; same result as :func:`parse_allocinfo` on its lines.

    Fast path: one ``findall`` over the body validates and splits every line at C speed;
    only when some line is not a plain record (a NUMA sub-line, an excerpt's ``...``, a
    malformed or truncated line) does the line-by-line parser run, to place the error
    or handle the rarity.
    """
    head_end = _header_end(text)
    head, body = text[:head_end], text[head_end:]
    lines = body.count("\n") + (1 if body and not body.endswith("\n") else 0)
    if lines and not _OTHER_BREAKS.intersection(head):
        rows = _FAST.findall(body)
        if len(rows) == lines:
            if head:
                snap = parse_allocinfo(head.splitlines(keepends=True), source, lenient=lenient)
            else:
                snap = AllocinfoSnapshot(None, [], source)
            # Tens of thousands of new objects, none cyclic: the cyclic GC would run dozens
            # of times for nothing (a third of the parse time when measured).
            gc_was_on = gc.isenabled()
            gc.disable()
            try:
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


def _open_text(path: str) -> io.TextIOBase:
    if path == "-":
        data = sys.stdin.buffer.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return io.StringIO(data.decode("utf-8", errors="replace"))
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    # /proc files report size 0 and must be read in one go to get a consistent-ish view.
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115


def read_allocinfo(path: str | None = None, *, lenient: bool = False) -> AllocinfoSnapshot:
    """Read allocinfo from ``path`` (None = the live file, ``-`` = stdin, ``.gz`` ok)."""
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
        with _open_text(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(name, None, "no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(name, None, f"cannot read: {e}") from None
    snap = parse_allocinfo_text(text, name, lenient=lenient)
    snap.taken_at = time.time()
    return snap


def query_tags(path: str = PROC_ALLOCINFO, **filters: Any) -> list[AllocRecord]:
    """Tags matching ``filters`` (function=, file=, line=, module=, inaccurate=, min_bytes=,
    max_bytes=) through the Linux 7.3+ allocinfo ioctl, without reading the whole text.

    Explicit on purpose: :func:`read_allocinfo` (the text) stays the default everywhere.
    Raises :class:`~allocscope.collector.errors.CapabilityError` where the ioctl is missing.
    """
    from allocscope.collector.allocinfo_ioctl import query_tags as _query

    return _query(path, **filters)
