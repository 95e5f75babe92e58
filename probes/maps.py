"""Reading BCC maps, once: per-CPU sums, batch reads, draining a hash, stack walks.

Every probe's Python half reads its maps through these, so each mechanic (and each of its
kernel-version fallbacks) exists once and returns plain ints and tuples, never BCC objects.

Costs, in ``bpf()`` syscalls (BCC adds Python work per entry on top). Measured on the 2-CPU
development VM (6.18, other jobs running) with kmem_sites' ``sites`` per-CPU hash holding 10 000
entries: batched read 50 ms, per-entry read 257 ms, drain 251 ms; its 9-slot ``counters``
array summed 46 us batched versus 72 us with BCC's ``sum(Key(i))`` per slot.

* :func:`items` reads a whole map with ``BPF_MAP_LOOKUP_BATCH`` (Linux 5.6+): one syscall per
  buffer of entries instead of two per entry (``get_next_key`` + ``lookup``). It falls back to
  the per-entry walk where the kernel or map type has no batch ops.
* :func:`percpu_sums` sums a per-CPU array map of u64 counters: one batch read for all
  indexes; each value is ``possible CPUs`` slots, summed in Python.
* :func:`drain_hash` deletes the keys present when it starts (one syscall per key to walk,
  one per key to delete), never BCC's ``clear()``, which restarts its walk on every
  concurrent insert and, with a probe attached, can loop forever.
* :func:`take` reads and deletes a hash's entries (``BPF_MAP_LOOKUP_AND_DELETE_BATCH``,
  Linux 5.6+, or a read and then :func:`drain_hash` of the keys read): a map that a long-lived
  reader empties at each read stays bounded. An update through a pointer a probe looked up
  just before the delete can be lost (the program adds to the copy being freed).
* :func:`stack_addresses` is one lookup per stack id; callers cache by id (ids are stable
  until the stack map is cleared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    T = TypeVar("T", bound=DataclassInstance)
else:
    T = TypeVar("T")


def as_int(x: Any) -> int:
    """A map key or value as an int: BCC hands back ctypes scalars or plain ints depending on
    the read path (batch reads give ``c_ulong``, ``table[k]`` gives a ``Leaf``)."""
    return int(x.value) if hasattr(x, "value") else int(x)


def items(table: Any) -> list[tuple[Any, Any]]:
    """Every (key, value) of a BPF map, batched where the kernel allows (see the module note).

    ``BPF_MAP_LOOKUP_BATCH`` is not atomic either: entries inserted or deleted meanwhile may
    or may not be seen, as with the per-entry walk.
    """
    try:
        return list(table.items_lookup_batch())
    except Exception:  # noqa: BLE001 - BCC raises bare Exception: no batch ops here
        return list(table.items())


def cpu_values(per_cpu: Any) -> Sequence[Any]:
    """The per-CPU slots of one per-CPU map value (a single value is one slot)."""
    return per_cpu if hasattr(per_cpu, "__len__") else [per_cpu]


def percpu_sums(table: Any, size: int) -> list[int]:
    """A per-CPU array map of integers summed over CPUs, index by index (``size`` slots;
    indexes the map does not return read 0)."""
    out = [0] * size
    for k, v in items(table):
        i = as_int(k)
        if 0 <= i < size:
            out[i] = sum(as_int(x) for x in cpu_values(v))
    return out


def sum_struct(per_cpu: Any, cls: type[T]) -> T:
    """Sum a per-CPU struct value field by field into the dataclass ``cls``, whose field names
    are the C struct's members (all integers)."""
    cpus = cpu_values(per_cpu)
    sums = {f.name: sum(int(getattr(c, f.name)) for c in cpus) for f in dataclasses.fields(cls)}
    return cls(**sums)


def array_structs(table: Any, indexes: Iterable[int], cls: type[T]) -> dict[int, T]:
    """Per-CPU struct array entries at ``indexes``, each summed into ``cls`` (one lookup each)."""
    return {i: sum_struct(table[table.Key(i)], cls) for i in indexes}


def zero_array(table: Any) -> None:
    """Set every entry of an array (per-CPU: on every CPU) to zero."""
    for i in range(len(table)):
        table[table.Key(i)] = table.Leaf()


def drain_hash(table: Any, limit: int) -> int:
    """Delete the keys present now, at most ``limit`` (bounds the time against a probe that
    keeps inserting); returns how many were deleted. See the module note on ``clear()``."""
    keys = []
    for i, k in enumerate(table.keys()):
        if i >= limit:
            break
        keys.append(k)
    deleted = 0
    for k in keys:
        try:
            del table[k]
            deleted += 1
        except KeyError:
            pass
    return deleted


def take(table: Any) -> list[tuple[Any, Any]]:
    """Every (key, value) of a hash, deleted as read (see the module note)."""
    try:
        return list(table.items_lookup_and_delete_batch())
    except Exception:  # noqa: BLE001 - BCC raises bare Exception: no batch ops here
        got = list(table.items())
        for k, _ in got:
            try:
                del table[k]
            except KeyError:
                pass
        return got


def stack_addresses(table: Any, stackid: int) -> tuple[int, ...]:
    """The return addresses of a stack-trace map entry, innermost first; () for a negative
    id (the stack-id helper failed) or an id no longer in the map.

    Read from the entry's own ``ip`` array, not with BCC's ``walk()``: the walker assumes
    127 frames, so a full stack in a map of fewer frames per entry (context and lifespan keep
    32) raised IndexError past its end (a CI run lost three live tests to it).
    """
    if stackid < 0:
        return ()
    try:
        entry = table[table.Key(stackid)]
    except KeyError:
        return ()
    out = []
    for a in entry.ip:
        if not a:
            break
        out.append(int(a))
    return tuple(out)


def cached_stacks(table: Any) -> Callable[[int], tuple[int, ...]]:
    """:func:`stack_addresses` with a per-read cache: samples share stack ids."""
    cache: dict[int, tuple[int, ...]] = {}

    def get(stackid: int) -> tuple[int, ...]:
        got = cache.get(stackid)
        if got is None:
            got = cache[stackid] = stack_addresses(table, stackid)
        return got

    return get
