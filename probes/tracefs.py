"""tracefs, read once: where it is mounted, tracepoint record layouts, what ftrace can hook.

Three probes need facts only tracefs has:

* the classic-tracepoint backends read fields of the raw record at byte offsets, and those
  offsets come from ``events/<category>/<event>/format`` (the record layout changes between
  releases: 6.10 added ``accounted`` to kmem:kmalloc, for example), so a wrong parse is a wrong
  number, never a crash -- a malformed line is a one-line :class:`CapabilityError` naming the
  file and line;
* a kprobe or fentry on a ``notrace`` function (all of ``lib/``) fails after a ~10 s compile;
  ``available_filter_functions`` (~60 000 lines, read in ~30 ms) says so in advance;
* kprobes need ``kprobe_events`` (CONFIG_KPROBE_EVENTS).

tracefs is at ``/sys/kernel/tracing`` since Linux 4.1; older setups (and some containers) only
have it under debugfs at ``/sys/kernel/debug/tracing``. Both are tried, in that order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from allocscope.errors import CapabilityError

TRACEFS = "/sys/kernel/tracing"
MOUNT_POINTS = (TRACEFS, "/sys/kernel/debug/tracing")
KPROBES_DEBUGFS = "/sys/kernel/debug/kprobes"

# One field line of a format file, e.g.
#   field:const void * ptr;	offset:16;	size:8;	signed:0;
#   field:__data_loc char[] name;	offset:8;	size:4;	signed:1;
#   field:char comm[16];	offset:8;	size:16;	signed:0;
_FIELD = re.compile(
    r"^\s*field:(?P<decl>[^;]*?)\s*;\s*offset:(?P<offset>\d+)\s*;\s*size:(?P<size>\d+)\s*;"
)
_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\])?\s*$")


def mount_point(candidates: Sequence[str] = MOUNT_POINTS) -> str | None:
    """The first tracefs mount with events visible, or None (not mounted, or no access)."""
    for p in candidates:
        if os.path.isdir(os.path.join(p, "events")):
            return p
    return None


def format_path(category: str, event: str, root: str | None = None) -> str:
    """``<tracefs>/events/<category>/<event>/format`` (the default mount when none is found)."""
    return os.path.join(root or mount_point() or TRACEFS, "events", category, event, "format")


def parse_format(text: str, source: str) -> dict[str, int]:
    """Field name -> byte offset in the record, from a tracefs ``format`` file's text.

    Lines that do not start with ``field:`` (name, ID, print fmt, blank) are skipped; a
    ``field:`` line without ``offset:N; size:N;`` or without a field name raises a one-line
    :class:`CapabilityError` naming ``source`` and the line number.
    """
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("field:"):
            continue
        m = _FIELD.match(line)
        name = _NAME.search(m["decl"]) if m else None
        if m is None or name is None:
            raise CapabilityError(
                f"{source}:{lineno}: unreadable tracepoint field line {line.strip()[:80]!r}"
            )
        out[name[1]] = int(m["offset"])
    if not out:
        raise CapabilityError(f"{source}: no field lines: not a tracepoint format file")
    return out


def field_offsets(category: str, event: str, roots: Sequence[str] = MOUNT_POINTS) -> dict[str, int]:
    """Every field's offset in the ``category:event`` record, from the first mount that has
    its format file. Raises a one-line :class:`CapabilityError` when none has."""
    for root in roots:
        path = os.path.join(root, "events", category, event, "format")
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        return parse_format(text, path)
    raise CapabilityError(
        f"tracepoint {category}:{event} has no format file under {' or '.join(roots)}: "
        "is tracefs mounted? (allocscope doctor)"
    )


def offsets_of(
    category: str, event: str, fields: Iterable[str], roots: Sequence[str] = MOUNT_POINTS
) -> dict[str, int]:
    """The offsets of ``fields`` only; a field this kernel's record lacks is a one-line error."""
    have = field_offsets(category, event, roots)
    out: dict[str, int] = {}
    for name in fields:
        if name not in have:
            raise CapabilityError(
                f"tracepoint {category}:{event} has no field {name!r} on this kernel "
                f"(has: {', '.join(sorted(have))})"
            )
        out[name] = have[name]
    return out


def traceable(function: str, root: str | None = None) -> bool | None:
    """Is ``function`` in ftrace's ``available_filter_functions`` (so not ``notrace``)?

    None when the list is unreadable (no tracefs, or CONFIG_DYNAMIC_FTRACE=n): unknown, not no.
    Lines are ``name`` or ``name [module]``.
    """
    path = os.path.join(root or mount_point() or TRACEFS, "available_filter_functions")
    try:
        with open(path) as f:
            return any(line.split(None, 1)[0] == function for line in f if line.strip())
    except OSError:
        return None


def traceable_all(functions: Sequence[str], root: str | None = None) -> dict[str, bool | None]:
    """:func:`traceable` for several functions with one read of the list (~30 ms)."""
    if not functions:
        return {}
    path = os.path.join(root or mount_point() or TRACEFS, "available_filter_functions")
    wanted = set(functions)
    found: set[str] = set()
    try:
        with open(path) as f:
            for line in f:
                name = line.split(None, 1)[0] if line.strip() else ""
                if name in wanted:
                    found.add(name)
    except OSError:
        return dict.fromkeys(functions)
    return {fn: fn in found for fn in functions}


def kprobes_configured(root: str | None = None) -> bool:
    """Can this kernel create kprobes at all (``kprobe_events`` or debugfs ``kprobes``)?"""
    base = root or mount_point() or TRACEFS
    return os.path.exists(os.path.join(base, "kprobe_events")) or os.path.exists(KPROBES_DEBUGFS)
