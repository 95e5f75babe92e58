"""The allocation *site*: the contract every verb shares.

A site is what an allocinfo line names: ``file:line [module] func:name``. Kernel builds move
lines around, so every site also has a line-free :attr:`Site.loose_key` (file + function) used to
match the same site across kernels (``diff``, fleet queries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# GCC clones (foo.constprop.0, foo.isra.0, foo.part.0, foo.cold) are one function to a human.
_CLONE_SUFFIX = re.compile(r"(\.(constprop|isra|part|cold|lto_priv|llvm)(\.\d+)?)+$")


def canonical_function(name: str) -> str:
    """Strip compiler clone suffixes so ``xas_alloc.constprop.0`` groups with ``xas_alloc``."""
    return _CLONE_SUFFIX.sub("", name)


def exact_key(file: str, line: int, module: str = "") -> str:
    """``file:line``, plus `` [module]`` when there is one (tags are per module)."""
    return f"{file}:{line} [{module}]" if module else f"{file}:{line}"


def line_free_key(file: str, function: str, module: str = "") -> str:
    """``[module]file:function``: the same site across kernel builds that moved its line."""
    return f"[{module}]{file}:{function}" if module else f"{file}:{function}"


@dataclass(frozen=True, slots=True)
class Site:
    """One allocation site, as allocinfo's codetag names it."""

    file: str
    line: int
    function: str
    module: str = ""

    @property
    def key(self) -> str:
        """Exact key, ``file:line``, plus the module when there is one (tags are per module)."""
        return exact_key(self.file, self.line, self.module)

    @property
    def loose_key(self) -> str:
        """Line-free key, ``file:function``: survives line moves between kernel builds."""
        return line_free_key(self.file, self.function, self.module)

    @property
    def tag(self) -> str:
        """The site spelled as allocinfo spells it (``lib/xarray.c:376 func:xas_alloc``)."""
        return f"{self.key} func:{self.function}"

    def to_dict(self) -> dict[str, str | int]:
        """The site's fields as every JSON output spells them."""
        return {
            "file": self.file,
            "line": self.line,
            "module": self.module,
            "function": self.function,
            "key": self.key,
        }

    def __str__(self) -> str:
        return self.tag


@dataclass(frozen=True, slots=True)
class SiteQuery:
    """What a user typed to name a site: a function, ``file:line``, or ``file`` alone.

    Matching is by exact field equality (the function is compared clone-suffix-free) so that
    ``xas_alloc`` never silently matches ``xas_alloc_foo``.
    """

    function: str | None = None
    file: str | None = None
    line: int | None = None

    @classmethod
    def parse(cls, text: str) -> SiteQuery:
        text = text.strip()
        if not text:
            raise ValueError("empty site")
        m = re.fullmatch(r"(?P<file>[^\s:]+):(?P<line>\d+)(?:\s+func:(?P<func>\S+))?", text)
        if m:
            return cls(function=m["func"], file=m["file"], line=int(m["line"]))
        if "/" in text or text.endswith((".c", ".h", ".rs")):
            return cls(file=text)
        if not re.fullmatch(r"[A-Za-z_][\w.]*", text):
            raise ValueError(f"not a function name or file:line: {text!r}")
        return cls(function=canonical_function(text))

    def matches(self, site: Site) -> bool:
        if self.function is not None and canonical_function(site.function) != self.function:
            return False
        if self.file is not None and site.file != self.file:
            return False
        return self.line is None or site.line == self.line

    def __str__(self) -> str:
        if self.file is not None and self.line is not None:
            return f"{self.file}:{self.line}" + (f" func:{self.function}" if self.function else "")
        return self.file or self.function or "?"
