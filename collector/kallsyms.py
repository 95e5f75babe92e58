"""Kernel symbolization from ``/proc/kallsyms``.

Used both ways: address -> function (to name call sites and stack frames without printing raw
addresses, which would leak KASLR) and function -> address ranges (to build in-kernel
``call_site`` filters for tracepoints). A function's range ends where the next text symbol
starts; static functions can share a name, so a name maps to a list of ranges.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from allocscope.collector.site import canonical_function
from allocscope.errors import CapabilityError, InputError
from allocscope.probes.capabilities import kallsyms_state

PROC_KALLSYMS = "/proc/kallsyms"
_TEXT_TYPES = frozenset("tTwW")
# ``address type name[<TAB>[module]]``, one per line (kernel/kallsyms.c s_show).
_LINE = re.compile(r"^([0-9a-fA-F]+)[ \t]+(\S)[ \t]+(\S+)(?:[ \t]+\[([^\]\s]*)\])?[ \t]*$", re.M)


@dataclass(frozen=True, slots=True)
class Symbol:
    address: int
    name: str
    module: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """An address resolved to a function: ``name+offset [module]``."""

    name: str
    offset: int
    module: str

    @property
    def function(self) -> str:
        """The clone-suffix-free function name, for grouping."""
        return canonical_function(self.name)

    def __str__(self) -> str:
        mod = f" [{self.module}]" if self.module else ""
        return f"{self.name}+0x{self.offset:x}{mod}"


def hidden_addresses_message(path: str = PROC_KALLSYMS) -> str:
    """The one explanation (top --live, who-calls, overhead, doctor's reasons) of why
    ``path`` shows zero addresses to this process, its fix, and what still works."""
    why, fix = kallsyms_state().why_hidden()
    return (
        f"{path} shows zero addresses: {why}; fix: {fix}. Without symbols the allocinfo verbs "
        "still work (top, snapshot, diff, export, collect: exact allocinfo tags need none)"
    )


def _chunks(text: str, size: int = 1 << 18) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut after a newline. One regex call
    over 5 MB holds the GIL for 0.1-0.3 s; in pieces, other threads (the capture's workload
    thread in tests, a signal handler's KeyboardInterrupt) run between them."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def read_text(path: str = PROC_KALLSYMS) -> str:
    """The whole of ``path`` (one read: ~5 MB, ~50 ms for /proc/kallsyms)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except OSError as e:
        raise InputError(path, None, e.strerror or str(e)) from None


class Kallsyms:
    """A sorted table of text symbols with bisect lookup (O(log n) per address).

    Kept as three parallel columns, not one object per symbol, and the name index is built
    on first use: every live verb loads the table before it attaches, so its cost is start-up
    latency (0.2 s of the old 0.45 s went to objects and an index most runs never consult).
    """

    def __init__(self, symbols: list[Symbol]) -> None:
        self._set_columns(
            [s.address for s in symbols], [s.name for s in symbols], [s.module for s in symbols]
        )

    def _set_columns(self, addrs: list[int], names: list[str], modules: list[str]) -> None:
        if any(a > b for a, b in zip(addrs, addrs[1:], strict=False)):
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = [addrs[i] for i in order]
            names = [names[i] for i in order]
            modules = [modules[i] for i in order]
        self._addrs, self._names, self._modules = addrs, names, modules
        self._index: dict[str, list[int]] | None = None

    @classmethod
    def _from_columns(cls, addrs: list[int], names: list[str], modules: list[str]) -> Kallsyms:
        k = cls.__new__(cls)
        k._set_columns(addrs, names, modules)
        return k

    @property
    def _by_name(self) -> dict[str, list[int]]:
        if self._index is None:
            index: dict[str, list[int]] = {}
            for i, n in enumerate(self._names):
                index.setdefault(n, []).append(i)
            self._index = index
        return self._index

    @classmethod
    def load(cls, path: str = PROC_KALLSYMS) -> Kallsyms:
        """Every text symbol of ``path``. One ``read`` and one regular-expression pass over
        the whole file instead of a split per line: 0.15 s instead of 0.45 s for the 121k
        lines of the development VM, where every live verb pays it before attaching."""
        return cls.from_text(read_text(path), path)

    @classmethod
    def from_text(cls, text: str, path: str = PROC_KALLSYMS) -> Kallsyms:
        """The table from kallsyms text already read (``path`` names it in errors)."""
        rows = [row for chunk in _chunks(text) for row in _LINE.findall(chunk)]
        if len(rows) != len(text.splitlines()):
            for lineno, line in enumerate(text.splitlines(), 1):
                if not _LINE.fullmatch(line):
                    raise InputError(path, lineno, "not a kallsyms line")
        text_rows = [r for r in rows if r[1] in _TEXT_TYPES]
        try:
            addrs = [int(r[0], 16) for r in text_rows]
        except ValueError:
            raise InputError(path, None, "bad address in kallsyms") from None
        if addrs and not any(addrs[:100]):
            raise CapabilityError(hidden_addresses_message(path))
        if not addrs:
            raise InputError(path, None, "no text symbols")
        return cls._from_columns(addrs, [r[2] for r in text_rows], [r[3] for r in text_rows])

    def __len__(self) -> int:
        return len(self._addrs)

    def resolve(self, address: int) -> Resolved | None:
        """The function containing ``address``, or None if below the first symbol."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        return Resolved(self._names[i], address - self._addrs[i], self._modules[i])

    def function_at(self, address: int) -> str:
        """Clone-suffix-free function name for an address, ``[unknown]`` if none."""
        r = self.resolve(address)
        return r.function if r else "[unknown]"

    def ranges(self, name: str) -> list[tuple[int, int]]:
        """Half-open ``[start, end)`` ranges of every text symbol named ``name``.

        GCC clones (``name.constprop.0``, ``name.isra.0``, ``name.part.0``) are included:
        code compiled from ``name`` lives there too. One pass over the names (~15 ms for
        121k symbols), not an index: who-calls asks this once or twice, before it attaches.
        """
        addrs, prefix = self._addrs, name + "."
        out: list[tuple[int, int]] = []
        for i, n in enumerate(self._names):
            if n == name or (n.startswith(prefix) and canonical_function(n) == name):
                start = addrs[i]
                j = bisect.bisect_right(addrs, start)
                out.append((start, addrs[j] if j < len(addrs) else start + 4096))
        return sorted(set(out))

    def has(self, name: str) -> bool:
        return name in self._by_name


_ANY_LINE = re.compile(r"^([0-9a-fA-F]+) (\S) ", re.M)
_LOOKAHEAD_LINES = 64


def _lines_naming(text: str, name: str) -> list[tuple[int, str, str, str]]:
    """(line end, address, type, symbol) of every line whose symbol is ``name`` or
    ``name.<suffix>``, module lines included (symbol then ends with ``\t[module]``).
    ``str.find`` on the literal name, then the line around it: ~5 ms for 5 MB."""
    out = []
    needle = " " + name
    i = text.find(needle)
    while i >= 0:
        after = i + len(needle)
        if after >= len(text) or text[after] in ".\n\t ":
            start = text.rfind("\n", 0, i) + 1
            end = text.find("\n", after)
            end = len(text) if end < 0 else end
            parts = text[start:end].split(maxsplit=2)
            if len(parts) == 3 and (
                parts[2] == name or parts[2].startswith((name + ".", name + "\t"))
            ):
                out.append((end, parts[0], parts[1], parts[2]))
        i = text.find(needle, after)
    return out


def quick_ranges(text: str, name: str) -> list[tuple[int, int, str]] | None:
    """``(start, end, symbol)`` of ``name`` and its clones, from kallsyms text without
    building the table: what :meth:`Kallsyms.ranges` gives, in ~10 ms instead of ~0.3 s.

    The kernel lists its own symbols sorted by address (scripts/kallsyms sorts them; modules
    and BPF programs follow, in module space), so a function ends where the next text line
    with a higher address starts. Returns None whenever that reasoning does not hold -- the
    name is a module's, the following lines are not ascending, or no end is found within
    :data:`_LOOKAHEAD_LINES` lines -- and the caller then builds the table.
    """
    out: list[tuple[int, int, str]] = []
    for line_end, addr_text, kind, symbol in _lines_naming(text, name):
        if kind not in _TEXT_TYPES:
            continue
        if len(symbol.split()) > 1:
            return None  # a module's function
        if symbol != name and canonical_function(symbol) != name:
            continue
        try:
            start = int(addr_text, 16)
        except ValueError:
            return None
        end = None
        for n, line in enumerate(_ANY_LINE.finditer(text, line_end + 1)):
            addr = int(line[1], 16)
            if addr < start or n >= _LOOKAHEAD_LINES:
                return None
            if addr > start and line[2] in _TEXT_TYPES:
                end = addr
                break
        if end is None:
            return None
        out.append((start, end, symbol))
    return sorted(set(out))


class SymbolTable(Protocol):
    """What site resolution needs: a name's code ranges and an address's symbol."""

    def ranges(self, name: str) -> list[tuple[int, int]]: ...

    def resolve(self, address: int) -> Resolved | None: ...


class EarlySymbols:
    """kallsyms for resolving a few sites before the probe compiles; the whole table later.

    who-calls needs its sites' code ranges before it can compile (they are compiled into the
    filter), and the full table only after the window, to name the sampled stacks. So the
    ranges come from :func:`quick_ranges` on the text (~10 ms) and the table (0.2-0.4 s) is
    parsed on first use, after the window: no longer between command start and attach.
    (Parsing it in a thread while clang runs was tried: on 2 CPUs it slowed the compile by
    more than it saved.) Anything :func:`quick_ranges` cannot vouch for falls back to the
    full table at once. The table read after the probe loaded also names the probe's own
    frames, which a table read before could not.
    """

    def __init__(self, text: str, path: str = PROC_KALLSYMS) -> None:
        self._text, self._path = text, path
        addrs = [m[1] for m, _ in zip(_ANY_LINE.finditer(text), range(100), strict=False)]
        if addrs and not any(int(a, 16) for a in addrs):
            raise CapabilityError(hidden_addresses_message(path))
        self._names: dict[int, str] = {}
        self._full: Kallsyms | None = None

    @classmethod
    def load(cls, path: str = PROC_KALLSYMS) -> EarlySymbols:
        return cls(read_text(path), path)

    def full(self) -> Kallsyms:
        """The whole table (parsed on first use from the text read at start)."""
        if self._full is None:
            self._full = Kallsyms.from_text(self._text, self._path)
        return self._full

    def ranges(self, name: str) -> list[tuple[int, int]]:
        quick = quick_ranges(self._text, name)
        if quick is None:
            return self.full().ranges(name)
        for start, _end, symbol in quick:
            self._names[start] = symbol
        return [(start, end) for start, end, _ in quick]

    def resolve(self, address: int) -> Resolved | None:
        name = self._names.get(address)
        if name is not None:
            return Resolved(name, 0, "")
        return self.full().resolve(address)
