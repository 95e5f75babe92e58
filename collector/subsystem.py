"""Source path -> subsystem (net, mm, fs/ext4, drivers/scsi, ...).

The talk's dashboards group a machine's allocations "by subsystem"; the mapping is data
(``subsystems.toml`` next to this module, documented in docs/design/allocinfo.md) so a user
can override it.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import cast

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
        """Rules from TOML ``text``; every wrong key, kind or type is an :class:`InputError`
        naming ``source`` and the rule, because ``str(5)`` silently becomes a path glob."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(source, None, f"bad TOML: {e}") from None
        except RecursionError:  # tomllib recurses per nested array/table
            raise InputError(source, None, "bad TOML: nested too deeply") from None
        unknown = sorted(set(data) - {"rule", "replace_defaults"})
        if unknown:
            raise InputError(source, None, f"unknown key {unknown[0]!r} (rule, replace_defaults)")
        replace = data.get("replace_defaults", False)
        if not isinstance(replace, bool):
            raise InputError(source, None, "`replace_defaults` must be true or false")
        items: object = data.get("rule", [])
        if not isinstance(items, list):
            raise InputError(source, None, "`rule` must be an array of tables ([[rule]])")
        rules: list[Rule] = []
        for n, item in enumerate(cast("list[object]", items), 1):
            rules.extend(_rules_of(item, source, n))
        return rules, replace

    @classmethod
    def load(cls, override_path: str | None = None) -> SubsystemMap:
        rules = list(_default_rules())
        if override_path:
            user, replace = cls.parse_rules(_read_utf8(override_path), override_path)
            rules = user if replace else user + rules
        return cls(rules)


_RULE_KEYS = {"path": True, "subsystem": True, "function": False}  # key -> required


def _rules_of(item: object, source: str, n: int) -> list[Rule]:
    """The compiled rule(s) of ``[[rule]]`` number ``n`` (a brace glob gives several)."""
    where = f"rule #{n}"
    if not isinstance(item, dict):
        raise InputError(source, None, f"{where} must be a table with `path` and `subsystem`")
    table = cast("dict[str, object]", item)
    for key in table:
        if key not in _RULE_KEYS:
            raise InputError(
                source, None, f"{where}: unknown key {key!r} (path, subsystem, function)"
            )
    for key, required in _RULE_KEYS.items():
        value = table.get(key)
        if value is None and not required:
            continue
        if value is None:
            raise InputError(source, None, f"{where} needs `path` and `subsystem`")
        if not isinstance(value, str) or not value:
            raise InputError(
                source, None, f"{where}: `{key}` must be a non-empty string, not {value!r}"
            )
    path, subsystem = cast(str, table["path"]), cast(str, table["subsystem"])
    function = cast("str | None", table.get("function"))
    return [
        Rule(re.compile(glob_regex(pat, capture=True)), function, subsystem)
        for pat in _expand_braces(path)
    ]


def _read_utf8(path: str) -> str:
    """The override file's text; bytes that are not UTF-8 (TOML requires it) are an
    :class:`InputError` at their line, not a UnicodeDecodeError traceback."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(path, None, f"cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(
            path, line, f"not UTF-8 (byte 0x{raw[e.start]:02x}); TOML files must be UTF-8"
        ) from None


@lru_cache(maxsize=1)
def _default_rules() -> tuple[Rule, ...]:
    text = resources.files("allocscope.collector").joinpath("subsystems.toml").read_text()
    rules, _ = SubsystemMap.parse_rules(text, "subsystems.toml")
    return tuple(rules)


@lru_cache(maxsize=1)
def default_map() -> SubsystemMap:
    return SubsystemMap.load()
