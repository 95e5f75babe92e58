"""Source path -> subsystem (net, mm, fs/ext4, drivers/scsi, ...).

The talk's dashboards group a machine's allocations "by subsystem"; the mapping is data
(``subsystems.toml`` next to this module, documented in the README) so a user can override it.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from allocscope.errors import InputError


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not m:
        return [pattern]
    out: list[str] = []
    for alt in m[1].split(","):
        out.extend(_expand_braces(pattern[: m.start()] + alt + pattern[m.end() :]))
    return out


def glob_regex(pattern: str, *, capture: bool = False) -> str:
    """Regex text for a source-path glob: ``*`` and ``?`` stay inside one path component,
    ``**`` crosses any number. With ``capture`` each ``*`` is a group, for ``{1}`` in rules."""
    star = "([^/]*)" if capture else "[^/]*"
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(star)
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    path: re.Pattern[str]
    function: str | None
    subsystem: str

    def apply(self, file: str, function: str) -> str | None:
        m = self.path.fullmatch(file)
        if m is None:
            return None
        if self.function is not None and not fnmatch.fnmatchcase(function, self.function):
            return None
        name = self.subsystem
        for i, g in enumerate(m.groups(), 1):
            name = name.replace(f"{{{i}}}", g)
        return name


class SubsystemMap:
    """Ordered rules; first match wins. Results are cached per (file, function)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._cache: dict[tuple[str, str], str] = {}

    def classify(self, file: str, function: str = "") -> str:
        key = (file, function)
        hit = self._cache.get(key)
        if hit is None:
            hit = "other"
            for rule in self.rules:
                got = rule.apply(file, function)
                if got is not None:
                    hit = got
                    break
            self._cache[key] = hit
        return hit

    @staticmethod
    def parse_rules(text: str, source: str) -> tuple[list[Rule], bool]:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(source, None, f"bad TOML: {e}") from None
        rules: list[Rule] = []
        for n, item in enumerate(data.get("rule", []), 1):
            if not isinstance(item, dict) or "path" not in item or "subsystem" not in item:
                raise InputError(source, None, f"rule #{n} needs `path` and `subsystem`")
            for pat in _expand_braces(str(item["path"])):
                rules.append(
                    Rule(
                        re.compile(glob_regex(pat, capture=True)),
                        item.get("function"),
                        str(item["subsystem"]),
                    )
                )
        return rules, bool(data.get("replace_defaults", False))

    @classmethod
    def load(cls, override_path: str | None = None) -> SubsystemMap:
        rules = list(_default_rules())
        if override_path:
            try:
                with open(override_path) as f:
                    text = f.read()
            except OSError as e:
                raise InputError(override_path, None, f"cannot read: {e.strerror}") from None
            user, replace = cls.parse_rules(text, override_path)
            rules = user if replace else user + rules
        return cls(rules)


@lru_cache(maxsize=1)
def _default_rules() -> tuple[Rule, ...]:
    text = resources.files("allocscope.collector").joinpath("subsystems.toml").read_text()
    rules, _ = SubsystemMap.parse_rules(text, "subsystems.toml")
    return tuple(rules)


@lru_cache(maxsize=1)
def default_map() -> SubsystemMap:
    return SubsystemMap.load()
