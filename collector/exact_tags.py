"""When exact allocinfo tags can be read from a probe, and what to say when they cannot.

who-calls (and context, built on the same probe) name the exact allocinfo tag of each
allocation by reading ``current->alloc_tag`` at the kmem tracepoints. Since Linux 6.14
("alloc_tag: avoid current->alloc_tag manipulations when profiling is disabled", commit
07438779313c) ``alloc_hooks()`` (include/linux/alloc_tag.h) sets that pointer only inside
``if (mem_alloc_profiling_enabled())``, a static key ``vm.mem_profiling=0`` turns off: with
profiling compiled in but the sysctl at 0 the probe reads NULL on every event, and sites fall
back to being matched by function name (every allocinfo line of the function, not the one
tag). Before 6.14 the pointer is set whatever the sysctl says (seen in the 6.12.117 guest's
in-kernel headers and by tests/vm/test_exact_tags_vm.py), so tags are still read, but
allocinfo's counters do not move and the join shows no growth.

This module is the one place that says so: ``doctor``, ``who-calls`` and ``context`` print
:func:`profiling_off_note` (with what the capture saw, when it has seen something).
"""

from __future__ import annotations

import platform
import re

from allocscope.collector.host import MEM_PROFILING_SYSCTL, read_text

# The first release whose alloc_hooks() leaves current->alloc_tag alone while profiling is off.
GATED_SINCE = (6, 14)

PROFILING_OFF_NOTE = (
    "vm.mem_profiling=0: the kernel does not set current->alloc_tag while profiling is off "
    "(Linux 6.14+), so exact allocinfo tags need vm.mem_profiling=1; sites are matched by "
    "function name instead (sysctl -w vm.mem_profiling=1)"
)
PROFILING_OFF_TAGGED_NOTE = (
    "vm.mem_profiling=0: this kernel still sets current->alloc_tag (before Linux 6.14), so "
    "exact tags were read, but allocinfo's counters do not move while profiling is off: the "
    "join shows no growth (sysctl -w vm.mem_profiling=1)"
)
# The same, for a table cell (doctor's consequence column).
PROFILING_OFF_SHORT = "exact tags need it (current->alloc_tag unset): sites matched by function"
PROFILING_OFF_TAGGED_SHORT = "exact tags still read (kernel < 6.14 sets current->alloc_tag)"


def profiling_off(value: str | None = None, *, read: bool = True) -> bool:
    """True when profiling is compiled in (the sysctl exists) and switched off.

    ``value`` is the sysctl's text when the caller has it (host metadata, doctor's facts);
    otherwise it is read now, unless ``read`` is False.
    """
    if value is None and read:
        value = read_text(MEM_PROFILING_SYSCTL)
    return value is not None and value.strip() in ("0", "[0]")


def tags_need_profiling(release: str | None = None) -> bool:
    """Does this kernel (``uname -r``; default: the running one) leave current->alloc_tag
    unset while profiling is off? Unparseable releases are taken as recent (yes)."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return m is None or (int(m[1]), int(m[2])) >= GATED_SINCE


def profiling_off_note(
    value: str | None = None,
    *,
    release: str | None = None,
    tags_seen: bool | None = None,
    read: bool = True,
) -> str | None:
    """What a result must say when profiling is compiled in but off, else None.

    ``tags_seen``: whether the capture read any exact tag (None: nothing captured yet, the
    kernel release decides). Tags seen: :data:`PROFILING_OFF_TAGGED_NOTE`; none, or a 6.14+
    kernel: :data:`PROFILING_OFF_NOTE`.
    """
    if not profiling_off(value, read=read):
        return None
    if tags_seen is None:
        tags_seen = not tags_need_profiling(release)
    return PROFILING_OFF_TAGGED_NOTE if tags_seen else PROFILING_OFF_NOTE


def profiling_off_short(release: str | None = None) -> str:
    """Doctor's consequence cell for ``vm.mem_profiling=0`` on this kernel."""
    return PROFILING_OFF_SHORT if tags_need_profiling(release) else PROFILING_OFF_TAGGED_SHORT
