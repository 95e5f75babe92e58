"""``allocscope doctor``: what this host can do, what that means, and how to fix the rest.

:func:`gather_facts` collects raw facts (most by trying: see ``probes/capabilities.py``);
:func:`diagnose` turns them into one line per check -- status ``ok``/``warn``/``fail``, the
observed value, the *consequence* for allocscope's verbs, and the *fix*. Keeping the two
apart makes every decision testable with hand-made facts, without root or BPF.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from allocscope.collector.exact_tags import profiling_off_short, tags_need_profiling
from allocscope.probes import capabilities as caps
from allocscope.probes.capabilities import (
    AllocinfoState,
    BTFState,
    CheckResult,
    KallsymsState,
    Privileges,
)
from allocscope.probes.headers import HeaderTree
from allocscope.probes.loader import error_line

OK, WARN, FAIL = "ok", "warn", "fail"
BPF_ATTACH_TYPES = ("tracepoint", "raw_tracepoint", "kprobe", "fentry")


@dataclass(frozen=True, slots=True)
class BootCacheState:
    """The per-boot cache of verdicts and BTF facts (collector/boot_cache.py) as doctor
    found and left it."""

    path: str | None
    status: str  # "loaded" | "absent" | "refreshed" | why it was ignored
    verdicts: dict[str, CheckResult]
    btf_cached: bool
    save_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "verdicts": {k: v.to_dict() for k, v in sorted(self.verdicts.items())},
            "btf_cached": self.btf_cached,
            "save_error": self.save_error,
        }


def update_boot_cache(
    attach: dict[str, CheckResult] | None, *, refresh: bool = False
) -> BootCacheState:
    """Load this boot's cache, record doctor's attach attempts in it (a kernel-wide refusal
    there spares every later who-calls a compile), make sure the BTF facts are in it, and
    save. ``refresh`` forgets every earlier verdict first, so who-calls tries again what
    doctor did not settle."""
    from allocscope.collector import boot_cache

    cache = boot_cache.load()
    status = cache.status
    if refresh:
        cache.verdicts.clear()
        cache.btf = None
        cache.dirty = True
        status = "refreshed" if status in ("loaded", "absent") else f"refreshed ({status})"
    if attach is not None:
        boot_cache.seed_from_attach_types(cache, attach)
    cache.btf_facts()
    error = cache.save() if cache.identity is not None and cache.path is not None else None
    return BootCacheState(cache.path, status, dict(cache.verdicts), cache.btf is not None, error)


@dataclass
class Facts:
    """Everything doctor looked at, JSON-able through :meth:`to_dict`."""

    kernel_release: str
    allocinfo: AllocinfoState
    mem_profiling: str | None
    mem_profiling_writable: bool
    mem_profiling_compressed: bool
    btf: BTFState
    attach: dict[str, CheckResult]
    headers: HeaderTree | None
    headers_error: str | None
    lockdown: str
    privileges: Privileges
    tracefs: str | None
    kallsyms: KallsymsState
    bcc: str | None  # version, or None
    bcc_error: str | None = None
    compile_seconds: float = 0.0
    parser: str = "python"  # allocinfo text parser: "compiled" or "python"
    tracefs_mount: str | None = None  # in the mount table, even when we cannot read it
    boot_cache: BootCacheState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "allocinfo": self.allocinfo.to_dict(),
            "mem_profiling": {
                "value": self.mem_profiling,
                "writable": self.mem_profiling_writable,
                "compressed": self.mem_profiling_compressed,
            },
            "btf": self.btf.to_dict(),
            "attach": {k: v.to_dict() for k, v in self.attach.items()},
            "headers": (asdict(self.headers) if self.headers else None),
            "headers_error": self.headers_error,
            "lockdown": self.lockdown,
            "privileges": self.privileges.to_dict(),
            "tracefs": self.tracefs,
            "tracefs_mount": self.tracefs_mount,
            "kallsyms": self.kallsyms.to_dict(),
            "bcc": self.bcc,
            "bcc_error": self.bcc_error,
            "compile_seconds": round(self.compile_seconds, 3),
            "parser": self.parser,
            "boot_cache": self.boot_cache.to_dict() if self.boot_cache else None,
        }


@dataclass(frozen=True, slots=True)
class DoctorLine:
    check: str
    status: str  # ok | warn | fail
    value: str
    consequence: str = ""
    fix: str = ""


@dataclass
class DoctorReport:
    lines: list[DoctorLine]
    facts: Facts
    usable: bool
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """Non-zero only when nothing useful can run: no BPF at all and no allocinfo."""
        return 0 if self.usable else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "summary": self.summary,
            "checks": [asdict(ln) for ln in self.lines],
            "status": {ln.check: ln.status for ln in self.lines},
            "facts": self.facts.to_dict(),
        }


def gather_facts(*, try_bpf: bool = True, refresh: bool = False) -> Facts:
    """Read and try everything (about one BCC compile plus a few milliseconds); record what
    was found in this boot's cache (``refresh``: after forgetting what it held)."""
    from allocscope.collector.allocinfo import scanner
    from allocscope.collector.host import mem_profiling_state
    from allocscope.probes.headers import resolve_headers

    value, writable, compressed = mem_profiling_state()
    bcc_version: str | None = None
    bcc_error: str | None = None
    try:
        from allocscope.probes.loader import import_bcc

        bcc_version = str(getattr(import_bcc(), "__version__", "unknown"))
    except Exception as e:  # noqa: BLE001 - any import failure is the fact we report
        bcc_error = str(e)
    if try_bpf:
        attach = caps.attach_types()
    else:
        attach = {k: CheckResult(False, "not tried (--no-bpf)") for k in caps.ATTACH_TYPES}
    compile_s = attach.get("_compile", CheckResult(False, "")).seconds
    attach = {k: v for k, v in attach.items() if not k.startswith("_")}
    cache_state = update_boot_cache(attach if try_bpf else None, refresh=refresh)
    headers: HeaderTree | None = None
    headers_error: str | None = None
    try:
        # Building the private header tree needs root (it lives under /var/cache).
        headers = resolve_headers(build=os.geteuid() == 0)
    except Exception as e:  # noqa: BLE001
        headers_error = str(e)
    return Facts(
        kernel_release=caps.kernel_release(),
        allocinfo=caps.allocinfo_state(),
        mem_profiling=value,
        mem_profiling_writable=writable,
        mem_profiling_compressed=compressed,
        btf=caps.btf_state(),
        attach=attach,
        headers=headers,
        headers_error=headers_error,
        lockdown=caps.lockdown_mode(),
        privileges=caps.privileges(),
        tracefs=caps.tracefs_path(),
        tracefs_mount=caps.tracefs_mountpoint(),
        kallsyms=caps.kallsyms_state(),
        bcc=bcc_version,
        bcc_error=bcc_error,
        compile_seconds=compile_s,
        parser=scanner(),
        boot_cache=cache_state,
    )


def _kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def short_reason(detail: str) -> str:
    """The most telling part of a failed attempt's error, for one table cell."""
    return error_line(detail, short=True)


def _kernel_line(f: Facts) -> DoctorLine:
    if _kernel_version(f.kernel_release) < (6, 10):
        return DoctorLine(
            "kernel",
            WARN,
            f.kernel_release,
            "older than 6.10: no memory allocation profiling",
            "use Linux 6.10+ built with CONFIG_MEM_ALLOC_PROFILING=y",
        )
    return DoctorLine("kernel", OK, f.kernel_release)


def _allocinfo_line(f: Facts) -> DoctorLine:
    a = f.allocinfo
    if not a.present:
        return DoctorLine(
            "allocinfo",
            WARN,
            "absent",
            "top/snapshot need --file; use top --live",
            "Linux 6.10+ with CONFIG_MEM_ALLOC_PROFILING=y",
        )
    if not a.readable:
        return DoctorLine("allocinfo", FAIL, a.detail, "cannot read /proc/allocinfo", "run as root")
    if a.version is None:
        return DoctorLine(
            "allocinfo",
            WARN,
            a.detail,
            "header not recognised; parsed leniently",
            "report the header to allocscope",
        )
    if a.version not in ("1.0", "2.0"):
        return DoctorLine(
            "allocinfo",
            WARN,
            f"version {a.version}",
            "newer than 2.0: read as 2.0",
            "upgrade allocscope",
        )
    return DoctorLine("allocinfo", OK, f"version {a.version}")


def _mem_profiling_line(f: Facts) -> DoctorLine:
    v = f.mem_profiling
    mode = ", compressed" if f.mem_profiling_compressed else ""
    rw = "writable" if f.mem_profiling_writable else "read-only"
    if v is None:
        return DoctorLine(
            "vm.mem_profiling",
            WARN if not f.allocinfo.present else FAIL,
            "absent",
            "no allocation profiling counters",
            "CONFIG_MEM_ALLOC_PROFILING=y",
        )
    value = f"{v} ({rw}{mode})"
    if v == "1":
        if not f.mem_profiling_writable:
            return DoctorLine(
                "vm.mem_profiling",
                WARN,
                value,
                "overhead --toggle cannot switch profiling off",
                "boot without sysctl.vm.mem_profiling=never",
            )
        return DoctorLine("vm.mem_profiling", OK, value)
    fix = (
        "sysctl -w vm.mem_profiling=1"
        if f.mem_profiling_writable
        else "boot with sysctl.vm.mem_profiling=1"
    )
    # The kernel leaves current->alloc_tag unset while profiling is off (collector/exact_tags.py)
    return DoctorLine(
        "vm.mem_profiling",
        WARN,
        value,
        f"profiling off: allocinfo counters do not move; {profiling_off_short(f.kernel_release)}",
        fix,
    )


def _btf_line(f: Facts) -> DoctorLine:
    b = f.btf
    if b.present and b.kmem_cache_size_offset is not None:
        return DoctorLine("BTF", OK, f"kmem_cache.size at +{b.kmem_cache_size_offset}")
    if b.present:
        return DoctorLine(
            "BTF",
            WARN,
            b.detail,
            "slab object sizes via the classic tracepoint (slower)",
            "report this kernel's BTF to allocscope",
        )
    return DoctorLine(
        "BTF",
        WARN,
        "absent",
        "no fentry; slab sizes via the classic tracepoint (slower)",
        "kernel with CONFIG_DEBUG_INFO_BTF=y",
    )


_ATTACH_TEXT: dict[str, tuple[str, str, str, str]] = {
    # type: (label, status when failing, consequence, fix)
    "tracepoint": (
        "bpf tracepoint",
        FAIL,
        "no call_site-filtered who-calls backend",
        "CONFIG_BPF_EVENTS=y; mount tracefs",
    ),
    "raw_tracepoint": (
        "bpf raw_tracepoint",
        FAIL,
        "top --live cannot run",
        "Linux 4.17+ with CONFIG_BPF_EVENTS=y",
    ),
    "kprobe": (
        "bpf kprobe",
        WARN,
        "who-calls uses tracepoint + call_site filter",
        "CONFIG_KPROBES=y CONFIG_KPROBE_EVENTS=y",
    ),
    "fentry": (
        "bpf fentry",
        WARN,
        "no fentry backend; kprobe/tracepoint used",
        "BTF + CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    ),
    "perf_event_hw_cycles": (
        "perf hw cycles",
        WARN,
        "overhead samples cpu-clock (time), not cycles",
        "bare metal or a VM with a virtual PMU",
    ),
    "perf_event_cpu_clock": (
        "perf cpu-clock",
        FAIL,
        "overhead cannot sample the CPU",
        "CONFIG_PERF_EVENTS=y; kernel.perf_event_paranoid<=2",
    ),
}


def _privileged(p: Privileges) -> bool:
    """Enough to load and attach BPF (root, CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON)."""
    return p.root or p.cap_sys_admin or (p.cap_bpf and p.cap_perfmon)


NO_PRIVILEGES = "no: not tried: needs root or CAP_BPF+CAP_PERFMON"
PRIVILEGE_FIX = "run as root (sudo allocscope ...): privileges, not a kernel config"


def _attach_lines(f: Facts) -> list[DoctorLine]:
    """One row per attach type. Without privileges nothing was tried, so a row names the
    privilege problem: the kernel configs in the table are the fix only for a privileged
    failure."""
    out = []
    privileged = _privileged(f.privileges)
    for key, (label, bad, consequence, fix) in _ATTACH_TEXT.items():
        r = f.attach.get(key)
        if r is None:
            continue
        where = f" {caps.DEFAULT_FUNCTION}" if key in ("kprobe", "fentry") else ""
        if r.ok:
            out.append(DoctorLine(label, OK, f"attaches{where}"))
        elif not privileged:
            out.append(DoctorLine(label, bad, NO_PRIVILEGES, consequence, PRIVILEGE_FIX))
        else:
            out.append(DoctorLine(label, bad, f"no: {short_reason(r.detail)}", consequence, fix))
    return out


def _headers_line(f: Facts) -> DoctorLine:
    h = f.headers
    if h is None:
        return DoctorLine(
            "kernel headers",
            FAIL,
            f.headers_error or "unknown",
            "no BPF program compiles",
            "./scripts/setup",
        )
    if h.kind == "none":
        return DoctorLine(
            "kernel headers",
            FAIL,
            "none",
            "no BPF program compiles",
            "apt-get install linux-headers-$(uname -r) (./scripts/setup)",
        )
    if h.matches:
        return DoctorLine("kernel headers", OK, f"{h.kind}: {h.release}")
    return DoctorLine(
        "kernel headers",
        WARN,
        f"{h.kind}: {h.release} (mismatch)",
        "struct reads only via BTF offsets",
        "linux-headers-$(uname -r) or CONFIG_IKHEADERS=y",
    )


def _lockdown_line(f: Facts) -> DoctorLine:
    if f.lockdown == "confidentiality":
        return DoctorLine(
            "lockdown",
            FAIL,
            f.lockdown,
            "kprobes, kernel reads, perf and tracefs blocked",
            "boot with lockdown=none",
        )
    return DoctorLine("lockdown", OK, f.lockdown)


def _privileges_line(f: Facts) -> DoctorLine:
    p = f.privileges
    names = [
        n
        for n, has in (
            ("root", p.root),
            ("CAP_BPF", p.cap_bpf),
            ("CAP_PERFMON", p.cap_perfmon),
            ("CAP_SYS_ADMIN", p.cap_sys_admin),
        )
        if has
    ]
    value = "root" if p.root and p.cap_sys_admin else ", ".join(names) or "unprivileged"
    if _privileged(p):
        return DoctorLine("privileges", OK, value)
    return DoctorLine(
        "privileges",
        FAIL,
        value,
        "no BPF: only allocinfo reading works",
        "run as root (sudo allocscope ...)",
    )


def _tracefs_line(f: Facts) -> DoctorLine:
    if f.tracefs:
        return DoctorLine("tracefs", OK, f.tracefs)
    if f.tracefs_mount:
        return DoctorLine(
            "tracefs",
            FAIL,
            f"mounted at {f.tracefs_mount}, not readable by this user",
            "tracepoints cannot attach",
            "run as root (tracefs is root-only)",
        )
    return DoctorLine(
        "tracefs",
        FAIL,
        "not mounted",
        "tracepoints cannot attach",
        "mount -t tracefs tracefs /sys/kernel/tracing",
    )


def _kallsyms_line(f: Facts) -> DoctorLine:
    k = f.kallsyms
    value = f"kptr_restrict={k.kptr_restrict}:"
    if k.readable:
        return DoctorLine("kallsyms", OK, value + " visible")
    why, fix = k.why_hidden()
    return DoctorLine(
        "kallsyms",
        FAIL,
        "hidden: " + why,
        "call sites cannot be named (allocinfo verbs need no symbols)",
        fix,
    )


def _bcc_line(f: Facts) -> DoctorLine:
    if f.bcc is not None:
        return DoctorLine("BCC", OK, f.bcc)
    return DoctorLine(
        "BCC",
        FAIL,
        "not importable",
        "no BPF program can load",
        "apt-get install python3-bpfcc (./scripts/setup)",
    )


def _parser_line(f: Facts) -> DoctorLine:
    if f.parser == "compiled":
        return DoctorLine("allocinfo parser", OK, "compiled scanner")
    return DoctorLine(
        "allocinfo parser",
        WARN,
        "pure Python (the C scanner was not built)",
        "parsing allocinfo costs ~10x more CPU (collect, top, snapshot)",
        "apt-get install build-essential python3-dev; pip install -e . (./scripts/setup)",
    )


def _boot_cache_line(f: Facts) -> list[DoctorLine]:
    """What the live verbs will skip at start-up on this boot, from the cache."""
    c = f.boot_cache
    if c is None or c.path is None:
        return []
    refused = sorted(k for k, v in c.verdicts.items() if not v.ok and ":" not in k)
    what = f"{len(c.verdicts)} verdicts" + (f" (refused: {', '.join(refused)})" if refused else "")
    what += "; BTF facts" if c.btf_cached else ""
    if c.save_error:
        return [
            DoctorLine(
                "boot cache",
                WARN,
                f"not written: {c.save_error}"[:120],
                "every live verb re-learns this boot's verdicts (slower start)",
                f"remove {c.path} (root's own, mode 0600, in a 0700 directory)",
            )
        ]
    if c.status.startswith("ignored") or "(ignored" in c.status:
        return [
            DoctorLine(
                "boot cache",
                WARN,
                c.status[:120],
                "replaced with what doctor found",
            )
        ]
    return [DoctorLine("boot cache", OK, f"{c.path}: {what} ({c.status})")]


def diagnose(f: Facts) -> DoctorReport:
    """Facts -> one line per check, and whether anything useful can run at all."""
    lines = [
        _kernel_line(f),
        _allocinfo_line(f),
        _parser_line(f),
        _mem_profiling_line(f),
        _btf_line(f),
        _bcc_line(f),
        _headers_line(f),
        *_attach_lines(f),
        _lockdown_line(f),
        _privileges_line(f),
        _tracefs_line(f),
        _kallsyms_line(f),
        *_boot_cache_line(f),
    ]
    any_bpf = any(f.attach.get(k, CheckResult(False, "")).ok for k in BPF_ATTACH_TYPES)
    allocinfo_ok = f.allocinfo.present and f.allocinfo.readable
    usable = any_bpf or allocinfo_ok
    can = []
    if allocinfo_ok:
        can.append("read allocinfo (top, snapshot, diff)")
    if f.attach.get("raw_tracepoint", CheckResult(False, "")).ok:
        can.append("trace kmem (top --live)")
    best = next(
        (
            b
            for b in ("fentry", "kprobe", "tracepoint")
            if f.attach.get(b, CheckResult(False, "")).ok
        ),
        None,
    )
    if best:
        # exact tags come from current->alloc_tag, unset while profiling is off
        off = (
            allocinfo_ok
            and f.mem_profiling in ("0", "[0]")
            and tags_need_profiling(f.kernel_release)
        )
        can.append(f"who-calls via {best}" + (" (by function name: vm.mem_profiling=0)" * off))
    summary = (
        ("this host can " + "; ".join(can))
        if can
        else "nothing useful can run here: no BPF attach type works and no /proc/allocinfo"
    )
    return DoctorReport(lines, f, usable, summary)


def run_doctor(*, try_bpf: bool = True, refresh: bool = False) -> DoctorReport:
    return diagnose(gather_facts(try_bpf=try_bpf, refresh=refresh))
