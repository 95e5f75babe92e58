"""Counted-once totals: allocinfo's container tags versus the objects inside them.

allocinfo tags memory twice in two places, so its plain sum is not memory:

* **slab pages.** SLUB takes pages for a cache under the tag
  ``mm/slub.c:… func:alloc_slab_page``; every object later carved from them is tagged again at
  its own caller with the cache's object size (``alloc_tagging_slab_alloc_hook``, mm/slub.c,
  Linux 6.10). A leak report on linux-mm showed 29 GiB on both lines at once.
* **per-CPU chunk pages.** ``pcpu_alloc_pages`` (mm/percpu-vm.c) populates dynamic chunks
  under its own tag (every CPU's unit), and each ``alloc_percpu()`` is tagged again at its
  caller with its size, one CPU's copy (``pcpu_alloc_tag_alloc_hook``, mm/percpu.c, 6.10).
  The first chunk comes from memblock before profiling starts and is not tagged at all. In
  the test guests at boot the tag holds 24 KiB (7.3) and 0 (6.12): small, but a host that
  makes per-CPU counters by the million (cgroups, BPF per-CPU maps) grows it.

Both are *containers*: their bytes hold other tags' objects plus free slots and fragmentation.
Every other tag (page allocations, vmalloc, large kmalloc, the objects themselves) is counted
once, at its caller. So:

* ``memory_bytes`` (counted once) = the object tags + each container's *overhead*;
* a container's overhead = its pages minus the objects in them (free slots, partial slabs).
  On a live host the objects come from the kernel's own figure: ``/proc/slabinfo``
  (active objects × the per-object footprint ``pagesperslab × 4096 / objperslab``, which is
  ``s->size`` up to alignment, the size the tags use). For a saved file that figure is
  unknown: the overhead is ``None`` and ``memory_bytes`` is the object tags alone, a lower
  bound that is off by the free space in slabs (2-5% of slab pages in the test guests).
* per-CPU overhead is always ``None``: no kernel counter splits the dynamic chunks' pages
  into used and free (``Percpu:`` in /proc/meminfo includes the untagged first chunk).

Measured in the 7.3 guest at boot (2026-12-04): ``alloc_slab_page`` 6.94 MB against
``Slab: 8272 kB`` in /proc/meminfo (the tag is ``accurate:no``: slabs made before profiling
started are missing) and 6.89 MB of active objects in /proc/slabinfo; in 6.12, 6.04 MB
against 7276 kB and 6.14 MB.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.allocinfo import AllocRecord
from allocscope.collector.site import Site, canonical_function

PROC_SLABINFO = "/proc/slabinfo"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# kind -> (file basename, function) of the tags that hold other tags' objects
CONTAINERS: dict[str, tuple[str, str]] = {
    "slab": ("mm/slub.c", "alloc_slab_page"),
    "percpu": ("mm/percpu-vm.c", "pcpu_alloc_pages"),
}
LABELS = {"slab": "slab pages", "percpu": "per-CPU chunk pages"}
# the container functions, for a cheap first look at many rows (:func:`may_be_container`)
CONTAINER_FUNCTIONS = tuple(function for _, function in CONTAINERS.values())


def container_kind(site: Site) -> str | None:
    """``"slab"`` or ``"percpu"`` for a container tag, else None (an object tag)."""
    fn = canonical_function(site.function)
    for kind, (path, function) in CONTAINERS.items():
        if fn == function and (site.file == path or site.file.endswith("/" + path)):
            return kind
    return None


def may_be_container(function: str) -> bool:
    """False for a function that cannot be a container tag's: lets a table of many rows
    (a store part) send only its few candidates to :func:`container_kind`, which decides."""
    return any(fn in function for fn in CONTAINER_FUNCTIONS)


@dataclass(slots=True)
class Container:
    """One kind of container: its tags' bytes and calls, the objects inside when a kernel
    counter says so, and the difference (free slots, fragmentation)."""

    kind: str
    bytes: int = 0
    calls: int = 0
    tags: int = 0
    objects_bytes: int | None = None
    source: str = "unknown"  # where objects_bytes came from

    @property
    def overhead_bytes(self) -> int | None:
        if self.objects_bytes is None:
            return None
        return max(0, self.bytes - self.objects_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "calls": self.calls,
            "tags": self.tags,
            "objects_bytes": self.objects_bytes,
            "overhead_bytes": self.overhead_bytes,
            "objects_source": self.source,
        }


@dataclass(slots=True)
class CountedTotals:
    """The plain sums (the kernel's numbers, unchanged) and memory counted once."""

    bytes: int = 0  # plain sum of every tag
    calls: int = 0
    object_bytes: int = 0  # every tag that is not a container
    containers: dict[str, Container] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        """Objects once, plus the containers' known overhead (a lower bound without it)."""
        return self.object_bytes + sum(c.overhead_bytes or 0 for c in self.containers.values())

    @property
    def exact(self) -> bool:
        """True when every container present has a known overhead."""
        return all(c.overhead_bytes is not None for c in self.containers.values() if c.bytes)

    def to_dict(self) -> dict[str, Any]:
        return {kind: c.to_dict() for kind, c in self.containers.items()}

    def totals_dict(self) -> dict[str, Any]:
        """The plain sums, memory counted once and the containers, as top's JSON ``totals``
        has them (diff, snapshot metadata and the report use the same keys)."""
        return {
            "bytes": self.bytes,
            "calls": self.calls,
            "memory_bytes": self.memory_bytes,
            "memory_exact": self.exact,
            "containers": self.to_dict(),
        }

    def container_bytes(self, kind: str) -> int:
        c = self.containers.get(kind)
        return c.bytes if c is not None else 0

    def overhead_bytes(self, kind: str) -> int | None:
        c = self.containers.get(kind)
        return c.overhead_bytes if c is not None else None


def recorded_slab_objects(totals: Any) -> int | None:
    """The slab object figure a :meth:`CountedTotals.totals_dict` recorded (a snapshot's
    metadata), or None when it had none or the document is not one."""
    try:
        got = totals["containers"]["slab"]["objects_bytes"]
    except (KeyError, TypeError):
        return None
    return got if isinstance(got, int) and not isinstance(got, bool) and got >= 0 else None


def counted_once(
    records: Iterable[AllocRecord],
    *,
    slab_objects_bytes: int | None = None,
    others: tuple[int, int] = (0, 0),
) -> CountedTotals:
    """Split ``records`` into containers and objects; ``slab_objects_bytes`` is the kernel's
    own object figure (:func:`slab_objects_bytes`) when the records are this host's, now.
    ``others`` is (bytes, calls) of tags left out of ``records`` because they are known
    not to be containers (:func:`may_be_container` said so)."""
    t = CountedTotals(containers={k: Container(k) for k in CONTAINERS})
    t.bytes, t.calls = others
    t.object_bytes = others[0]
    for rec in records:
        t.bytes += rec.bytes
        t.calls += rec.calls
        kind = container_kind(rec.site)
        if kind is None:
            t.object_bytes += rec.bytes
            continue
        c = t.containers[kind]
        c.bytes += rec.bytes
        c.calls += rec.calls
        c.tags += 1
    if slab_objects_bytes is not None:
        slab = t.containers["slab"]
        slab.objects_bytes = slab_objects_bytes
        slab.source = PROC_SLABINFO
    return t


def slab_objects_bytes(path: str = PROC_SLABINFO) -> int | None:
    """Bytes of the objects in use in every slab cache, from ``/proc/slabinfo``, or None
    when it cannot be read (it is root-only, and absent on some SLOB-era kernels)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        if line.startswith(("slabinfo", "#")) or not line.strip():
            continue
        f = line.split()
        try:
            active, objsize, per_slab, pages = int(f[1]), int(f[3]), int(f[4]), int(f[5])
        except (IndexError, ValueError):
            return None
        footprint = pages * PAGE_SIZE // per_slab if per_slab > 0 else objsize
        total += active * max(objsize, footprint)
    return total
