"""Allocation tags from a kernel log: the "Memory allocations" block of ``show_mem()``.

When the OOM killer fires, or on sysrq-m, ``show_mem()`` prints the ten tags holding the most
memory into the kernel log (lib/show_mem.c, since Linux 6.10 with
CONFIG_MEM_ALLOC_PROFILING; the header gained "(profiling is currently turned on|off)" later).
After an OOM that block is often all that is left of allocinfo, so ``top --file`` and ``diff``
read a saved ``dmesg`` or ``journalctl -k`` text as well. A block from the 7.3 guest::

    [   14.784752] Memory allocations (profiling is currently turned on):
    [   14.784977]     6.65 MiB     1079 mm/slub.c:3347 func:alloc_slab_page
    [   14.785031]     5.75 MiB     1472 mm/page_ext.c:270 func:alloc_page_ext

Each line is ``"%12s %8llu %s:%u [%s] func:%s"``: the size went through
``string_get_size(..., STRING_UNITS_2)``, so it has three significant digits (``6.65 MiB`` is
6.645-6.655 MiB, ±0.08%; ``914 KiB`` ±0.05%; below 1 KiB exact); calls are exact. Bytes are
read as the printed value, and the snapshot's warnings say they are rounded. Only ten tags are
printed, so totals are the top ten's, not the machine's.

A log may hold several blocks (several OOMs); the last one is used and a warning names the
line of each. Lines of other kernel messages interleaved in the block end it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from allocscope.collector.allocinfo import AllocinfoSnapshot, AllocRecord
from allocscope.collector.site import Site
from allocscope.errors import InputError

VERSION = "show_mem"
# dmesg "[   14.784977] ", dmesg -T "[Fri Dec  4 22:02:03 2026] ", syslog/journal
# "Dec 04 22:02:03 host kernel: ", a kmsg priority "<4>".
_PREFIX = re.compile(
    r"^(?:<\d+>)?(?:\[[^\]]*\]\s?|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: )?"
    r"(?:\[[^\]]*\]\s?)?"
)
_HEADER = re.compile(r"^Memory allocations(?: \(profiling is currently turned (on|off)\))?:\s*$")
_TAG = re.compile(
    r"^\s*(\d+(?:\.\d+)?) ([KMGTPEZY]i)?B\s+(\d+)\s+(\S+):(\d+)(?:\s+\[([^\]\s]+)\])?"
    r"\s+func:(\S+)\s*$"
)
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50}
_UNITS.update({"Ei": 1 << 60, "Zi": 1 << 70, "Yi": 1 << 80})
S64_MAX = (1 << 63) - 1
ROUNDING_KEY = "show_mem_rounding"  # extras key: bytes the printed size may be off by
MAX_LINE = (1 << 31) - 1


@dataclass(slots=True)
class Block:
    """One "Memory allocations" block: where it starts, profiling state, its tags."""

    line: int
    profiling: str | None  # "on", "off", or None (older kernels do not say)
    records: list[AllocRecord] = field(default_factory=list)


def _strip(line: str) -> str:
    return _PREFIX.sub("", line, count=1)


def looks_like_kernel_log(data: bytes) -> bool:
    """True when ``data`` holds a show_mem block and is not allocinfo (cheap: one search)."""
    return b"Memory allocations" in data and not data.lstrip().startswith(b"allocinfo -")


def parse_blocks(text: str, source: str) -> list[Block]:
    """Every block in ``text``; a malformed line inside a block is an error naming it."""
    blocks: list[Block] = []
    current: Block | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip(raw)
        h = _HEADER.match(line)
        if h:
            current = Block(n, h.group(1))
            blocks.append(current)
            continue
        if current is None:
            continue
        m = _TAG.match(line)
        if m is None:
            if "func:" in line and re.match(r"^\s*\d", line):
                raise InputError(source, n, "malformed show_mem tag line")
            current = None  # another kernel message: the block is over
            continue
        value, unit, calls, path, lineno, module, function = m.groups()
        size = round(float(value) * _UNITS[unit])
        # string_get_size keeps 3 significant digits: half of the last one is the rounding
        decimals = len(value.partition(".")[2])
        rounding = 0 if unit is None else int(0.5 * _UNITS[unit] / 10**decimals)
        if size > S64_MAX or int(calls) > (1 << 64) - 1 or int(lineno) > MAX_LINE:
            raise InputError(source, n, "number out of the range the kernel prints")
        site = Site(path, int(lineno), function, module or "")
        extras = {ROUNDING_KEY: str(rounding)} if rounding else {}
        current.records.append(AllocRecord(site, size, int(calls), extras))
    return blocks


def parse_kernel_log(data: bytes, source: str) -> AllocinfoSnapshot:
    """The last show_mem block of a kernel log as a snapshot (version ``show_mem``)."""
    text = data.decode("utf-8", errors="replace")
    blocks = [b for b in parse_blocks(text, source) if b.records]
    if not blocks:
        raise InputError(
            source,
            None,
            "no allocinfo header and no show_mem 'Memory allocations' block with tags "
            "(expected /proc/allocinfo text, a snapshot, or a kernel log)",
        )
    block = blocks[-1]
    state = f", profiling {block.profiling}" if block.profiling else ""
    warnings = [
        f"{source}:{block.line}: show_mem block{state}: only the top {len(block.records)} "
        "tags, sizes rounded to 3 significant digits by the kernel"
    ]
    if len(blocks) > 1:
        others = ", ".join(str(b.line) for b in blocks[:-1])
        warnings.append(
            f"{source}: {len(blocks)} show_mem blocks; using the last (earlier at {others})"
        )
    return AllocinfoSnapshot(
        version=VERSION,
        records=block.records,
        source=f"{source} (show_mem, line {block.line})",
        warnings=warnings,
        partial=True,
    )
