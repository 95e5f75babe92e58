"""Reading this host's allocinfo now: the ioctl where it helps, and proof of a consistent read.

Two things the text alone cannot give (Linux 7.3+, ``include/uapi/linux/alloc_tag.h``):

* **Filtered reads.** A question about a few tags (``top --function xas_alloc``, the
  who-calls join, a ``--path`` or ``--module`` without wildcards, ``-m 10M``) asks the kernel
  for exactly those tags with ``ALLOCINFO_IOC_GET_AT``/``GET_NEXT`` instead of formatting and
  parsing ~3,000 lines. Globs the kernel cannot evaluate (``kmalloc*``, ``fs/**``) go through
  the text; so does everything on kernels without the ioctl (6.10-7.2), silently.
* **Consistency.** ``ALLOCINFO_IOC_CONTENT_ID`` changes when a module load or unload changes
  the set of tags. A read (text or ioctl) bracketed by two equal ids saw one set; otherwise it
  is repeated, up to :data:`RETRIES` times, and a read that never settles is returned marked
  (``consistent=False`` and a warning) rather than dropped: a snapshot taken while modules
  churn is still the best there is.

Timings are in ``scripts/bench-ioctl`` (text vs ioctl, filtered and full, in the 7.3 guest).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocscope.collector.allocinfo import (
    PROC_ALLOCINFO,
    AllocinfoSnapshot,
    AllocRecord,
    read_allocinfo,
)
from allocscope.errors import AllocscopeError

if TYPE_CHECKING:
    from allocscope.collector.allocinfo_ioctl import AllocinfoIoctl

RETRIES = 3
_GLOB = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """What the caller will keep anyway; exact values can be pushed into the kernel."""

    functions: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    min_bytes: int | None = None

    def kernel_side(self) -> list[dict[str, object]] | None:
        """One ioctl filter per (function, file, module) combination, or None when a glob
        (or nothing) asks for the whole text anyway."""
        names = (*self.functions, *self.files, *self.modules)
        if any(_GLOB & set(n) for n in names):
            return None
        if not self.functions and not self.files and self.min_bytes is None:
            return None  # modules alone select too much to be worth ~3,000 ioctls
        combos: list[dict[str, object]] = [{}]
        for key, values in (
            ("function", self.functions),
            ("file", self.files),
            ("module", tuple("" if m == "vmlinux" else m for m in self.modules)),
        ):
            if values:
                combos = [{**c, key: v} for c in combos for v in values]
        if self.min_bytes is not None:
            combos = [{**c, "min_bytes": self.min_bytes} for c in combos]
        return combos if len(combos) <= 64 else None


def _open_ioctl(path: str) -> AllocinfoIoctl | None:
    """``path`` opened for its ioctls when the kernel answers CONTENT_ID, else None."""
    from allocscope.collector.allocinfo_ioctl import AllocinfoIoctl

    try:
        dev = AllocinfoIoctl(path)
    except AllocscopeError:  # absent or unreadable: the text read reports it
        return None
    try:
        dev.content_id()
    except AllocscopeError:  # no ioctl (Linux < 7.3, or a regular file): ENOTTY
        dev.close()
        return None
    return dev


def read_live(
    flt: LiveFilter | None = None,
    *,
    path: str = PROC_ALLOCINFO,
    lenient: bool = False,
    retries: int = RETRIES,
) -> AllocinfoSnapshot:
    """This host's allocinfo now: through the ioctl for an exact filter, else the text;
    bracketed by CONTENT_ID where the kernel has it (see the module docstring)."""
    dev = _open_ioctl(path)
    combos = flt.kernel_side() if flt is not None and dev is not None else None
    try:
        snap: AllocinfoSnapshot | None = None
        for attempt in range(max(1, retries)):
            before = dev.content_id() if dev is not None else None
            snap = _read_once(path, combos, lenient)
            if dev is None:
                return snap
            if dev.content_id() == before:
                snap.consistent = True
                snap.read_attempts = attempt + 1
                return snap
        assert snap is not None
        snap.consistent = False
        snap.read_attempts = max(1, retries)
        snap.warnings.append(
            f"{path}: the set of tags changed during each of {max(1, retries)} reads "
            "(modules loading or unloading): this read may mix two sets"
        )
        return snap
    finally:
        if dev is not None:
            dev.close()


def _read_once(
    path: str, combos: Sequence[dict[str, object]] | None, lenient: bool
) -> AllocinfoSnapshot:
    if combos is None:
        return read_allocinfo(path, lenient=lenient)
    from allocscope.collector.allocinfo_ioctl import query_tags

    seen: set[str] = set()
    records: list[AllocRecord] = []
    for c in combos:
        for rec in query_tags(path, retries=1, **c):  # type: ignore[arg-type]
            if rec.site.tag not in seen:
                seen.add(rec.site.tag)
                records.append(rec)
    snap = AllocinfoSnapshot(
        version=_text_version(path),
        records=records,
        source=f"{path} (ioctl)",
        taken_at=time.time(),
    )
    snap.via = "ioctl"
    return snap


def _text_version(path: str) -> str | None:
    """The text's version line (one short read), so ioctl reads name their format too."""
    try:
        with open(path, "rb") as f:
            head = f.readline().decode("ascii", errors="replace")
    except OSError:
        return None
    _, _, version = head.partition("version:")
    return version.strip() or None
