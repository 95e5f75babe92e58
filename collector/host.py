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
    )
