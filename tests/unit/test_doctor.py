"""doctor's decisions from hand-made facts, its rendering, and the fact readers (no root)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from allocscope.collector.doctor import (
    DoctorLine,
    Facts,
    diagnose,
    short_reason,
)
from allocscope.probes import capabilities as caps
from allocscope.probes.capabilities import (
    AllocinfoState,
    BTFState,
    CheckResult,
    KallsymsState,
    Privileges,
)
from allocscope.probes.headers import HeaderTree
from allocscope.reports.doctor import render_doctor

KPROBE_FAIL = (
    "Failed to attach BPF program 'check_kprobe' to kprobe 'vfs_read' (create_probe_event: "
    "open(/sys/kernel/debug/tracing/kprobe_events): No such file or directory)"
)


def facts(**over: object) -> Facts:
    """A healthy profiling host (like the 7.3 VM); tests break one thing at a time."""
    base = Facts(
        kernel_release="7.3.4-allocprof",
        allocinfo=AllocinfoState(True, True, "2.0", "version 2.0"),
        mem_profiling="1",
        mem_profiling_writable=True,
        mem_profiling_compressed=False,
        btf=BTFState(True, True, 32, "ok"),
        attach={k: CheckResult(True, "loaded and attached") for k in caps.ATTACH_TYPES},
        headers=HeaderTree("kheaders", None, "7.3.4", True, "kheaders"),
        headers_error=None,
        lockdown="none",
        privileges=Privileges(True, True, True, True, (1 << 40) - 1),
        tracefs="/sys/kernel/tracing",
        kallsyms=KallsymsState(0, True),
        bcc="0.26.0",
        parser="compiled",
    )
    return replace(base, **over)  # type: ignore[arg-type]


def status(f: Facts) -> dict[str, str]:
    return {ln.check: ln.status for ln in diagnose(f).lines}


def test_healthy_host_all_ok() -> None:
    r = diagnose(facts())
    assert {ln.status for ln in r.lines} == {"ok"}
    assert r.usable and r.exit_code == 0
    assert "who-calls via fentry" in r.summary
    assert all(ln.consequence == "" and ln.fix == "" for ln in r.lines)


def test_pure_python_parser_is_a_warning_with_the_fix() -> None:
    r = diagnose(facts(parser="python"))
    line = next(ln for ln in r.lines if ln.check == "allocinfo parser")
    assert line.status == "warn" and "python3-dev" in line.fix
    assert r.usable


def test_this_dev_machine_shape() -> None:
    """No allocinfo, no kprobes/fentry/PMU, mismatched headers: usable via tracepoints."""
    attach = dict(facts().attach)
    attach["kprobe"] = CheckResult(False, KPROBE_FAIL)
    attach["fentry"] = CheckResult(False, "Need super-user privileges to run (bpf: ...)")
    attach["perf_event_hw_cycles"] = CheckResult(
        False, "Failed to attach BPF to perf event (perf_event_open failed: No such file)"
    )
    f = facts(
        allocinfo=AllocinfoState(False, False, None, "/proc/allocinfo absent"),
        mem_profiling=None,
        mem_profiling_writable=False,
        attach=attach,
        headers=HeaderTree("nearest", "/x", "6.1.0-57-amd64", False, "nearest"),
    )
    r = diagnose(f)
    st = {ln.check: ln.status for ln in r.lines}
    assert st["allocinfo"] == "warn" and st["vm.mem_profiling"] == "warn"
    assert st["bpf kprobe"] == "warn" and st["bpf fentry"] == "warn"
    assert st["perf hw cycles"] == "warn" and st["perf cpu-clock"] == "ok"
    assert st["kernel headers"] == "warn"
    assert r.usable and r.exit_code == 0
    assert "who-calls via tracepoint" in r.summary and "top --live" in r.summary
    kp = next(ln for ln in r.lines if ln.check == "bpf kprobe")
    assert "kprobe_events" in kp.value and kp.consequence and kp.fix
    for ln in r.lines:  # every non-ok line says what it means and what to do
        if ln.status != "ok":
            assert ln.consequence and ln.fix, ln


def test_nothing_useful_exits_nonzero() -> None:
    f = facts(
        allocinfo=AllocinfoState(False, False, None, "absent"),
        mem_profiling=None,
        attach={k: CheckResult(False, "not tried: not root") for k in caps.ATTACH_TYPES},
        privileges=Privileges(False, False, False, False, 0),
    )
    r = diagnose(f)
    assert not r.usable and r.exit_code == 1
    assert "nothing useful" in r.summary
    assert status(f)["privileges"] == "fail"


def test_allocinfo_alone_is_usable() -> None:
    f = facts(attach={k: CheckResult(False, "not tried") for k in caps.ATTACH_TYPES})
    r = diagnose(f)
    assert r.usable and r.exit_code == 0


def test_bpf_alone_is_usable() -> None:
    f = facts(allocinfo=AllocinfoState(False, False, None, "absent"), mem_profiling=None)
    assert diagnose(f).usable


@pytest.mark.parametrize(
    ("over", "check", "want"),
    [
        ({"mem_profiling": "0"}, "vm.mem_profiling", "warn"),
        ({"mem_profiling": "1", "mem_profiling_writable": False}, "vm.mem_profiling", "warn"),
        ({"allocinfo": AllocinfoState(True, True, "3.0", "version 3.0")}, "allocinfo", "warn"),
        ({"allocinfo": AllocinfoState(True, False, None, "EACCES")}, "allocinfo", "fail"),
        ({"btf": BTFState(False, False, None, "absent")}, "BTF", "warn"),
        ({"lockdown": "integrity"}, "lockdown", "ok"),
        ({"lockdown": "confidentiality"}, "lockdown", "fail"),
        ({"tracefs": None}, "tracefs", "fail"),
        ({"kallsyms": KallsymsState(2, False)}, "kallsyms", "fail"),
        ({"bcc": None, "bcc_error": "no bcc"}, "BCC", "fail"),
        ({"headers": HeaderTree("none", None, "", False, "none")}, "kernel headers", "fail"),
        ({"kernel_release": "6.1.0-57-amd64"}, "kernel", "warn"),
        ({"privileges": Privileges(False, True, True, False, 3 << 38)}, "privileges", "ok"),
        ({"privileges": Privileges(False, True, False, False, 1 << 39)}, "privileges", "fail"),
    ],
)
def test_single_problem(over: dict[str, object], check: str, want: str) -> None:
    assert status(facts(**over))[check] == want


def test_mem_profiling_fix_depends_on_writability() -> None:
    w = next(
        ln for ln in diagnose(facts(mem_profiling="0")).lines if ln.check == "vm.mem_profiling"
    )
    ro = next(
        ln
        for ln in diagnose(facts(mem_profiling="0", mem_profiling_writable=False)).lines
        if ln.check == "vm.mem_profiling"
    )
    assert "sysctl -w" in w.fix and "boot" in ro.fix


def test_short_reason() -> None:
    assert short_reason(KPROBE_FAIL) == "no kprobe_events"
    assert short_reason("not tried: not root") == "not tried: not root"
    assert (
        short_reason("Failed to load BPF program x: Invalid argument (details)")
        == "Failed to load BPF program x: Invalid argument"
    )


def test_render_and_json() -> None:
    r = diagnose(facts(mem_profiling="0"))
    text = render_doctor(r, width=100)
    for ln in r.lines:
        assert ln.check in text
    assert "WARN" in text and "fix: sysctl -w vm.mem_profiling=1" in text
    assert max(len(x) for x in text.splitlines()) <= 100
    data = json.loads(json.dumps(r.to_dict()))
    assert data["status"]["vm.mem_profiling"] == "warn"
    assert data["facts"]["attach"]["fentry"]["ok"] is True
    assert data["facts"]["allocinfo"]["version"] == "2.0"
    assert data["usable"] is True


# --- the fact readers, on files the test writes ----------------------------------------------


def test_privileges_from_status(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("Name:\tx\nCapEff:\t000000c000000000\n")  # CAP_PERFMON (38) + CAP_BPF (39)
    pr = caps.privileges(str(p))
    assert pr.cap_bpf and pr.cap_perfmon and not pr.cap_sys_admin
    p.write_text("CapEff:\t0000000000200000\n")  # CAP_SYS_ADMIN (21) only
    pr = caps.privileges(str(p))
    assert pr.cap_sys_admin and not pr.cap_bpf


def test_lockdown_mode(tmp_path: Path) -> None:
    p = tmp_path / "lockdown"
    assert caps.lockdown_mode(str(p)) == "none"  # absent
    p.write_text("none [integrity] confidentiality\n")
    assert caps.lockdown_mode(str(p)) == "integrity"


def test_allocinfo_state(tmp_path: Path) -> None:
    p = tmp_path / "allocinfo"
    assert not caps.allocinfo_state(str(p)).present
    p.write_text("allocinfo - version: 1.0\n#     <size>  <calls> <tag info>\n")
    assert caps.allocinfo_state(str(p)).version == "1.0"
    p.write_text("something else\n")
    st = caps.allocinfo_state(str(p))
    assert st.present and st.version is None


def test_doctor_cli_without_bpf(cli: Callable[..., tuple[int, str, str]]) -> None:
    rc, out, _ = cli("doctor", "--no-bpf", "--json")
    data = json.loads(out)
    assert {c["check"] for c in data["checks"]} >= {
        "kernel",
        "allocinfo",
        "BTF",
        "lockdown",
        "privileges",
        "bpf tracepoint",
    }
    assert all(c["status"] in ("ok", "warn", "fail") for c in data["checks"])
    assert data["facts"]["attach"]["tracepoint"]["detail"].startswith("not tried")
    assert rc == (0 if data["usable"] else 1)
    rc2, text, _ = cli("doctor", "--no-bpf")
    assert rc2 == rc and "consequence" in text


def test_doctor_help_has_examples(cli: Callable[..., tuple[int, str, str]]) -> None:
    with pytest.raises(SystemExit):
        cli("doctor", "--help")


def _line(f: Facts, check: str) -> DoctorLine:
    return next(ln for ln in diagnose(f).lines if ln.check == check)


def test_tracefs_mounted_but_unreadable_is_not_not_mounted() -> None:
    ln = _line(facts(tracefs=None, tracefs_mount="/sys/kernel/tracing"), "tracefs")
    assert ln.status == "fail" and "not mounted" not in ln.value
    assert ln.value == "mounted at /sys/kernel/tracing, not readable by this user"
    assert "root" in ln.fix and "mount" not in ln.fix
    gone = _line(facts(tracefs=None, tracefs_mount=None), "tracefs")
    assert gone.value == "not mounted" and gone.fix.startswith("mount -t tracefs")


@pytest.mark.parametrize(
    ("state", "why", "fix"),
    [
        # kptr_restrict already 0: the gate is perf_event_paranoid or CAP_SYSLOG
        (KallsymsState(0, False, 2, False), "perf_event_paranoid=2", "perf_event_paranoid=1"),
        (KallsymsState(1, False, 2, False), "only with CAP_SYSLOG", "run as root"),
        (KallsymsState(2, False, 2, True), "root included", "kptr_restrict=1"),
    ],
)
def test_kallsyms_names_the_real_gate(state: KallsymsState, why: str, fix: str) -> None:
    ln = _line(facts(kallsyms=state), "kallsyms")
    assert ln.status == "fail" and why in ln.value and fix in ln.fix
    if state.kptr_restrict == 0:
        assert "kptr_restrict=0" not in ln.fix  # it is 0 already
    if state.kptr_restrict == 2:
        assert "run as root" not in ln.fix  # root does not help
    assert "allocinfo verbs need no symbols" in ln.consequence


def test_unprivileged_attach_rows_name_privileges_not_configs() -> None:
    f = facts(
        attach={k: CheckResult(False, "not tried: not root") for k in caps.ATTACH_TYPES},
        privileges=Privileges(False, False, False, False, 0),
    )
    rows = [ln for ln in diagnose(f).lines if ln.check.startswith(("bpf ", "perf "))]
    assert len(rows) == len(caps.ATTACH_TYPES)
    for ln in rows:
        assert "CONFIG_" not in ln.fix and "root" in ln.fix and "privileges" in ln.fix, ln
    # privileged failures keep the kernel-config fix
    f = facts(attach={**facts().attach, "kprobe": CheckResult(False, KPROBE_FAIL)})
    assert "CONFIG_KPROBES" in _line(f, "bpf kprobe").fix


def test_profiling_off_says_exact_tags_need_it() -> None:
    """Compiled in, sysctl 0: doctor says exact tags need vm.mem_profiling=1 (6.14+ does not
    set current->alloc_tag then) and that who-calls matches by function name instead; before
    6.14 the kernel sets it anyway, and doctor says tags are still read."""
    from allocscope.collector.exact_tags import (
        PROFILING_OFF_NOTE,
        PROFILING_OFF_TAGGED_NOTE,
        profiling_off,
        profiling_off_note,
        tags_need_profiling,
    )

    rep = diagnose(facts(mem_profiling="0", kernel_release="7.3.4-allocprof"))
    line = next(x for x in rep.lines if x.check == "vm.mem_profiling")
    assert "current->alloc_tag unset" in line.consequence and "function" in line.consequence
    assert "by function name: vm.mem_profiling=0" in rep.summary
    old = diagnose(facts(mem_profiling="0", kernel_release="6.12.117-allocprof-btf"))
    line = next(x for x in old.lines if x.check == "vm.mem_profiling")
    assert "exact tags still read" in line.consequence and "function name" not in old.summary
    on = diagnose(facts(mem_profiling="1", kernel_release="7.3.4"))
    assert "function name" not in on.summary
    assert "alloc_tag" not in next(x for x in on.lines if x.check == "vm.mem_profiling").consequence
    # the shared message: only for "compiled in and off"; the kernel or the capture decides
    assert profiling_off("0") and profiling_off("[0]") and not profiling_off("1")
    assert not profiling_off(None, read=False)  # absent: not compiled in, nothing to switch on
    assert tags_need_profiling("6.14.0") and tags_need_profiling("7.3.4-allocprof")
    assert not tags_need_profiling("6.12.117-allocprof-btf") and tags_need_profiling("weird")
    assert profiling_off_note("0", release="7.3.4") == PROFILING_OFF_NOTE
    assert profiling_off_note("0", release="6.12.1") == PROFILING_OFF_TAGGED_NOTE
    assert profiling_off_note("0", release="6.12.1", tags_seen=False) == PROFILING_OFF_NOTE
    assert profiling_off_note("0", release="7.3.4", tags_seen=True) == PROFILING_OFF_TAGGED_NOTE
    assert "vm.mem_profiling=1" in PROFILING_OFF_NOTE and "function name" in PROFILING_OFF_NOTE
    assert profiling_off_note("1") is None
