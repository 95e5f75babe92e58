"""Host metadata: the contract every result, snapshot and store row carries.

A number from one host means nothing without the kernel it came from, whether profiling was
on, and which boot it belongs to (allocinfo counters reset at boot), so every verb records
the same :class:`HostMetadata`.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

MEM_PROFILING_SYSCTL = "/proc/sys/vm/mem_profiling"
VMSTAT = "/proc/vmstat"
# Pages of per-page metadata -- struct page (the memmap) plus page_ext -- allocated after boot
# and at boot (memblock). "mm: report per-page metadata information" (Linux 6.11) added them
# as nr_memmap/nr_memmap_boot; later kernels print nr_memmap_pages/nr_memmap_boot_pages.
MEMMAP_COUNTERS = (("nr_memmap_pages", "nr_memmap"), ("nr_memmap_boot_pages", "nr_memmap_boot"))


def read_text(path: str) -> str | None:
    """Contents of a small /proc or /sys file, or None when it is absent or unreadable."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU model name: ab results from different CPU models should not be mixed silently."""
    text = read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_profiling_state() -> tuple[str | None, bool, bool]:
    """(value of ``vm.mem_profiling``, writable?, compressed mode?).

    The value is None when the kernel lacks CONFIG_MEM_ALLOC_PROFILING. The sysctl becomes
    read-only when the kernel was booted with ``never`` (page_ext not allocated), and
    compressed mode (tag references in page flags, no page_ext) is chosen on the command line.
    """
    value = read_text(MEM_PROFILING_SYSCTL)
    writable = value is not None and os.access(MEM_PROFILING_SYSCTL, os.W_OK)
    if value is not None:
        try:
            writable = writable and bool(os.stat(MEM_PROFILING_SYSCTL).st_mode & 0o222)
        except OSError:
            writable = False
    cmdline = read_text("/proc/cmdline") or ""
    compressed = any(
        tok.startswith("sysctl.vm.mem_profiling=") and "compressed" in tok
        for tok in cmdline.split()
    )
    return value, writable, compressed


def read_memmap(path: str = VMSTAT) -> tuple[int, int] | None:
    """(runtime, boot) bytes of struct page plus page_ext, from /proc/vmstat; None before 6.11.

    Allocation profiling's page_ext (one tag reference per page, 8 bytes with
    CONFIG_MEM_ALLOC_PROFILING) is in these counters, so profiling's per-page memory is the
    difference between a host that has it and one that does not (``ab``), beside allocinfo's
    own ``mm/page_ext.c func:alloc_page_ext`` tag.
    """
    text = read_text(path)
    if text is None:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("nr_memmap"):
            try:
                values[name] = int(value)
            except ValueError:
                continue
    got = [next((values[n] for n in names if n in values), None) for names in MEMMAP_COUNTERS]
    if got[0] is None or got[1] is None:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    return got[0] * page, got[1] * page


@dataclass(slots=True)
class HostMetadata:
    """Who, what kernel, which boot, how big, profiling on or off, and user labels."""

    hostname: str
    kernel_release: str
    boot_id: str
    boot_time: float
    cpus: int
    cpu_model: str
    memory_bytes: int
    mem_profiling: str | None
    mem_profiling_writable: bool = False
    mem_profiling_compressed: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    # struct page + page_ext from /proc/vmstat (read_memmap): after boot / at boot; None
    # when the kernel does not report them (before 6.11) or the result predates them
    memmap_bytes: int | None = None
    memmap_boot_bytes: int | None = None

    @property
    def memmap_total_bytes(self) -> int | None:
        if self.memmap_bytes is None or self.memmap_boot_bytes is None:
            return None
        return self.memmap_bytes + self.memmap_boot_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostMetadata:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = {"hostname", "kernel_release"} - known.keys()
        if missing:
            raise ValueError(f"host metadata lacks {', '.join(sorted(missing))}")
        known.setdefault("boot_id", "")
        known.setdefault("boot_time", 0.0)
        known.setdefault("cpus", 0)
        known.setdefault("cpu_model", "unknown")
        known.setdefault("memory_bytes", 0)
        known.setdefault("mem_profiling", None)
        known["labels"] = {str(k): str(v) for k, v in (known.get("labels") or {}).items()}
        for k in ("memmap_bytes", "memmap_boot_bytes"):  # a figure or nothing, never garbage
            v = known.get(k)
            if v is not None and (type(v) is not int or v < 0):
                raise ValueError(f"host metadata {k} is not a byte count: {v!r}")
        return cls(**known)

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.boot_time) if self.boot_time else 0.0


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``["group=pilot", "rack=a1"]`` -> dict; a label without ``=`` is a usage error."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def collect_host_metadata(labels: dict[str, str] | None = None) -> HostMetadata:
    """Read this host's metadata now (cheap: a few /proc reads)."""
    value, writable, compressed = mem_profiling_state()
    memmap = read_memmap()
    return HostMetadata(
        hostname=socket.gethostname(),
        kernel_release=platform.release(),
        boot_id=read_text("/proc/sys/kernel/random/boot_id") or "",
        boot_time=float(psutil.boot_time()),
        cpus=psutil.cpu_count(logical=True) or os.cpu_count() or 0,
        cpu_model=cpu_model(),
        memory_bytes=int(psutil.virtual_memory().total),
        mem_profiling=value,
        mem_profiling_writable=writable,
        mem_profiling_compressed=compressed,
        labels=dict(labels or {}),
        memmap_bytes=memmap[0] if memmap else None,
        memmap_boot_bytes=memmap[1] if memmap else None,
    )
