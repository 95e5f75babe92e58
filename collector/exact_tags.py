"""When exact allocinfo tags can be read from a probe, and what to say when they cannot.

who-calls (and context, built on the same probe) name the exact allocinfo tag of each
allocation by reading ``current->alloc_tag`` at the kmem tracepoints. The kernel only sets that
pointer while profiling is enabled: ``alloc_hooks()`` (include/linux/alloc_tag.h, since 6.10)
saves and restores ``current->alloc_tag`` inside ``if (mem_alloc_profiling_enabled())``, a
static key that ``vm.mem_profiling=0`` turns off. With profiling compiled in but the sysctl at
0 the probe reads NULL on every event, so sites fall back to being matched by function name
(every allocinfo line of the function, not the one tag). This module is the one place that
says so: ``doctor``, ``who-calls`` and ``context`` print :func:`profiling_off_note`.
"""

from __future__ import annotations

from allocscope.collector.host import MEM_PROFILING_SYSCTL, read_text

PROFILING_OFF_NOTE = (
    "vm.mem_profiling=0: the kernel does not set current->alloc_tag while profiling is off, "
    "so exact allocinfo tags need vm.mem_profiling=1; sites are matched by function name "
    "instead (sysctl -w vm.mem_profiling=1)"
)
# The same, for a table cell (doctor's consequence column).
PROFILING_OFF_SHORT = "exact tags need it (current->alloc_tag unset): sites matched by function"


def profiling_off(value: str | None = None, *, read: bool = True) -> bool:
    """True when profiling is compiled in (the sysctl exists) and switched off.

    ``value`` is the sysctl's text when the caller has it (host metadata, doctor's facts);
    otherwise it is read now, unless ``read`` is False.
    """
    if value is None and read:
        value = read_text(MEM_PROFILING_SYSCTL)
    return value is not None and value.strip() in ("0", "[0]")


def profiling_off_note(value: str | None = None, *, read: bool = True) -> str | None:
    """:data:`PROFILING_OFF_NOTE` when :func:`profiling_off`, else None: a result's note."""
    return PROFILING_OFF_NOTE if profiling_off(value, read=read) else None
