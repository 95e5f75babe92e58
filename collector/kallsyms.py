"""Kernel symbolization from ``/proc/kallsyms``.

Used both ways: address -> function (to name call sites and stack frames without printing raw
addresses, which would leak KASLR) and function -> address ranges (to build in-kernel
``call_site`` filters for tracepoints). A function's range ends where the next text symbol
starts; static functions can share a name, so a name maps to a list of ranges.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from allocscope.collector.site import canonical_function
from allocscope.errors import CapabilityError, InputError
from allocscope.probes.capabilities import kallsyms_state

PROC_KALLSYMS = "/proc/kallsyms"
_TEXT_TYPES = frozenset("tTwW")


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


class Kallsyms:
    """A sorted table of text symbols with bisect lookup (O(log n) per address)."""

    _names_sorted: list[str] | None

    def __init__(self, symbols: list[Symbol]) -> None:
        self._names_sorted = None
        symbols = sorted(symbols, key=lambda s: s.address)
        self._symbols = symbols
        self._addrs = [s.address for s in symbols]
        self._by_name: dict[str, list[int]] = {}
        for i, s in enumerate(symbols):
            self._by_name.setdefault(s.name, []).append(i)

    @classmethod
    def load(cls, path: str = PROC_KALLSYMS) -> Kallsyms:
        symbols: list[Symbol] = []
        try:
            with open(path) as f:
                for lineno, line in enumerate(f, 1):
                    parts = line.split()
                    if len(parts) < 3:
                        raise InputError(path, lineno, "not a kallsyms line")
                    if parts[1] not in _TEXT_TYPES:
                        continue
                    module = parts[3].strip("[]") if len(parts) > 3 else ""
                    symbols.append(Symbol(int(parts[0], 16), parts[2], module))
        except FileNotFoundError:
            raise InputError(path, None, "no such file") from None
        except ValueError:
            raise InputError(path, None, "bad address in kallsyms") from None
        if symbols and all(s.address == 0 for s in symbols[:100]):
            raise CapabilityError(hidden_addresses_message(path))
        if not symbols:
            raise InputError(path, None, "no text symbols")
        return cls(symbols)

    def __len__(self) -> int:
        return len(self._symbols)

    def resolve(self, address: int) -> Resolved | None:
        """The function containing ``address``, or None if below the first symbol."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        s = self._symbols[i]
        return Resolved(s.name, address - s.address, s.module)

    def function_at(self, address: int) -> str:
        """Clone-suffix-free function name for an address, ``[unknown]`` if none."""
        r = self.resolve(address)
        return r.function if r else "[unknown]"

    def ranges(self, name: str) -> list[tuple[int, int]]:
        """Half-open ``[start, end)`` ranges of every text symbol named ``name``.

        GCC clones (``name.constprop.0``, ``name.isra.0``, ``name.part.0``) are included:
        code compiled from ``name`` lives there too.
        """
        out: list[tuple[int, int]] = []
        names = [name, *self._clone_names(name)]
        for n in names:
            for i in self._by_name.get(n, []):
                start = self._symbols[i].address
                j = i + 1
                while j < len(self._symbols) and self._symbols[j].address == start:
                    j += 1
                end = self._symbols[j].address if j < len(self._symbols) else start + 4096
                out.append((start, end))
        return sorted(set(out))

    def _clone_names(self, name: str) -> list[str]:
        prefix = name + "."
        i = bisect.bisect_left(sorted_names := self._sorted_names(), prefix)
        out = []
        while i < len(sorted_names) and sorted_names[i].startswith(prefix):
            if canonical_function(sorted_names[i]) == name:
                out.append(sorted_names[i])
            i += 1
        return out

    def _sorted_names(self) -> list[str]:
        if self._names_sorted is None:
            self._names_sorted = sorted(self._by_name)
        return self._names_sorted

    def has(self, name: str) -> bool:
        return name in self._by_name
