"""probes/ shared mechanics without BPF: tracefs format parsing, map helpers, one-line errors."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allocscope.errors import CapabilityError
from allocscope.probes import maps, tracefs
from allocscope.probes.loader import error_line

DATA = Path(__file__).resolve().parents[1] / "data"
KMALLOC_FORMAT = DATA / "kmem-kmalloc-6.18.format"  # /sys/kernel/tracing/events/kmem/kmalloc


def test_real_kmalloc_format_offsets() -> None:
    offs = tracefs.parse_format(KMALLOC_FORMAT.read_text(), str(KMALLOC_FORMAT))
    assert offs == {
        "common_type": 0,
        "common_flags": 2,
        "common_preempt_count": 3,
        "common_pid": 4,
        "call_site": 8,
        "ptr": 16,
        "bytes_req": 24,
        "bytes_alloc": 32,
        "gfp_flags": 40,
        "node": 48,
    }


def test_array_and_data_loc_fields() -> None:
    text = (
        "name: x\nformat:\n"
        "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
        "\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:1;\n"
    )
    assert tracefs.parse_format(text, "f") == {"comm": 8, "name": 24}


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("format:\n\tfield:unsigned long call_site;\tsize:8;\n", "bad.format:2: unreadable"),
        ("format:\n\tfield:int x;\toffset:eight;\tsize:4;\n", "bad.format:2: unreadable"),
        ("format:\n\tfield:;\toffset:8;\tsize:8;\n", "bad.format:2: unreadable"),
        ("name: kmalloc\nID: 1\n", "bad.format: no field lines"),
    ],
)
def test_malformed_format_is_one_line_error(text: str, expect: str) -> None:
    with pytest.raises(CapabilityError) as e:
        tracefs.parse_format(text, "bad.format")
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


def test_field_offsets_tries_each_mount_and_names_missing_fields(tmp_path: Path) -> None:
    root = tmp_path / "tracing"
    (root / "events" / "kmem" / "kmalloc").mkdir(parents=True)
    (root / "events" / "kmem" / "kmalloc" / "format").write_text(KMALLOC_FORMAT.read_text())
    roots = (str(tmp_path / "absent"), str(root))
    assert tracefs.offsets_of("kmem", "kmalloc", ["ptr"], roots) == {"ptr": 16}
    with pytest.raises(CapabilityError, match=r"kmem:kmalloc has no field 'objcg'"):
        tracefs.offsets_of("kmem", "kmalloc", ["ptr", "objcg"], roots)
    with pytest.raises(CapabilityError, match=r"kmem:kfree has no format file"):
        tracefs.field_offsets("kmem", "kfree", roots)
    assert tracefs.mount_point((str(tmp_path / "absent"), str(root))) == str(root)
    assert tracefs.mount_point((str(tmp_path / "absent"),)) is None


def test_traceable_and_kprobes(tmp_path: Path) -> None:
    (tmp_path / "available_filter_functions").write_text("vfs_read\nfoo_init [foo]\n\n")
    assert tracefs.traceable("vfs_read", str(tmp_path)) is True
    assert tracefs.traceable("foo_init", str(tmp_path)) is True
    assert tracefs.traceable("xas_alloc", str(tmp_path)) is False
    assert tracefs.traceable("vfs_read", str(tmp_path / "absent")) is None
    assert tracefs.kprobes_configured(str(tmp_path)) is (Path(tracefs.KPROBES_DEBUGFS).exists())
    (tmp_path / "kprobe_events").write_text("")
    assert tracefs.kprobes_configured(str(tmp_path)) is True


# --- maps: fake BCC tables (the mechanics, not BCC itself; see tests/live for a real map) ----


class Scalar:
    def __init__(self, v: int) -> None:
        self.value = v


class PerCpuArray:
    """A per-CPU array: ``items()`` gives (key, [one value per CPU]); batch reads optional."""

    def __init__(self, rows: list[list[int]], batch: bool) -> None:
        self.rows, self.batch, self.batch_calls = rows, batch, 0

    def items_lookup_batch(self) -> Any:
        self.batch_calls += 1
        if not self.batch:
            raise Exception("BPF_MAP_LOOKUP_BATCH has failed: Invalid argument")
        yield from ((i, row) for i, row in enumerate(self.rows))

    def items(self) -> list[tuple[Any, Any]]:
        return [(Scalar(i), [Scalar(x) for x in row]) for i, row in enumerate(self.rows)]


@pytest.mark.parametrize("batch", [True, False])
def test_percpu_sums(batch: bool) -> None:
    t = PerCpuArray([[1, 2], [0, 0], [5, 7]], batch)
    assert maps.percpu_sums(t, 3) == [3, 0, 12]
    assert maps.percpu_sums(t, 5) == [3, 0, 12, 0, 0]  # slots the map lacks read 0
    assert maps.percpu_sums(t, 2) == [3, 0]  # and indexes past size are ignored
    assert t.batch_calls == 3


@dataclass
class Counts:
    calls: int
    bytes: int


@dataclass
class CStruct:
    calls: int
    bytes: int
    other: int = 99


def test_sum_struct_and_array_structs() -> None:
    per_cpu = [CStruct(1, 10), CStruct(2, 20)]
    assert maps.sum_struct(per_cpu, Counts) == Counts(3, 30)
    assert maps.sum_struct(CStruct(4, 5), Counts) == Counts(4, 5)  # one slot

    class Array:
        def Key(self, i: int) -> int:  # noqa: N802 - BCC's spelling
            return i

        def __getitem__(self, i: int) -> list[CStruct]:
            return [CStruct(i, 1), CStruct(i, 2)]

    assert maps.array_structs(Array(), [1, 3], Counts) == {1: Counts(2, 3), 3: Counts(6, 3)}


class Hash:
    def __init__(self, keys: list[int]) -> None:
        self.d = dict.fromkeys(keys, 0)
        self.vanish: set[int] = set()

    def keys(self) -> list[int]:
        return list(self.d)

    def __delitem__(self, k: int) -> None:
        if k in self.vanish:  # deleted by someone else between the walk and the delete
            raise KeyError(k)
        del self.d[k]


def test_drain_hash_deletes_at_most_limit() -> None:
    h = Hash([1, 2, 3, 4])
    h.vanish = {2}
    assert maps.drain_hash(h, 3) == 2
    assert list(h.d) == [2, 4]


class Stacks:
    """A BCC stack-trace table: ``Key``, and entries whose ``ip`` has the map's own depth."""

    DEPTH = 4
    Key = ctypes.c_int

    class Entry(ctypes.Structure):
        _fields_ = [("ip", ctypes.c_ulonglong * 4)]

    def __init__(self) -> None:
        self.lookups = 0

    def __getitem__(self, key: ctypes.c_int) -> Stacks.Entry:
        self.lookups += 1
        sid = key.value
        if sid == 7:
            raise KeyError(sid)
        if sid == 9:  # a full stack: every slot used, no terminating zero
            return self.Entry((ctypes.c_ulonglong * 4)(*(0x90 + i for i in range(self.DEPTH))))
        return self.Entry((ctypes.c_ulonglong * 4)(0x10 + sid, 0x20 + sid))


def test_stack_addresses_and_cache() -> None:
    t = Stacks()
    assert maps.stack_addresses(t, 1) == (0x11, 0x21)
    assert maps.stack_addresses(t, 9) == (0x90, 0x91, 0x92, 0x93)  # no read past the end
    assert maps.stack_addresses(t, 7) == ()  # evicted
    assert maps.stack_addresses(t, -14) == ()  # -EFAULT from the stack-id helper
    get = maps.cached_stacks(t)
    assert get(2) == get(2) == (0x12, 0x22) and get(7) == ()
    assert t.lookups == 3 + 2  # one lookup per distinct id (negative ids never look up)


def test_as_int() -> None:
    assert maps.as_int(Scalar(5)) == 5 and maps.as_int(6) == 6


# --- one-line errors ---------------------------------------------------------------------


def test_error_line_full_and_short() -> None:
    eperm = Exception("Need super-user privileges to run\nsecond line")
    assert error_line(eperm) == "the kernel refused the program (EPERM)"
    assert error_line(eperm, short=True) == "EPERM from the kernel"
    assert error_line(error_line(eperm), short=True) == "EPERM from the kernel"
    kp = Exception("Failed to attach BPF program b'check_kprobe' to kprobe b'vfs_read'")
    chatter = (
        "warning: x\ncreate_probe_event: open(/sys/kernel/tracing/kprobe_events): No such file"
    )
    full = error_line(kp, chatter)
    assert full.startswith("Failed to attach BPF program 'check_kprobe'") and "\n" not in full
    assert full.endswith(
        "(create_probe_event: open(/sys/kernel/tracing/kprobe_events): No such file)"
    )
    assert error_line(full, short=True) == "no kprobe_events"
    compile_fail = Exception("Failed to compile BPF module b'/x/who_calls.bpf.c'")
    clang = "/x/who_calls.bpf.c:3:1: error: unknown type name 'u99'\n1 error generated."
    assert "error: unknown type name 'u99'" in error_line(compile_fail, clang)
    assert error_line(Exception()) == "Exception"
    assert error_line("x" * 500, limit=40) == "x" * 40
    assert error_line("not tried: not root (no CAP_BPF)", short=True) == (
        "not tried: not root (no CAP_BPF)"
    )


# --- who_calls settings -> -D --------------------------------------------------------------


def test_who_calls_defines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from allocscope.probes import who_calls

    events = tmp_path / "events" / "kmem"
    for ev in ("kmalloc", "kmem_cache_alloc"):
        (events / ev).mkdir(parents=True)
        (events / ev / "format").write_text(KMALLOC_FORMAT.read_text())
    real = tracefs.offsets_of
    monkeypatch.setattr(
        tracefs, "offsets_of", lambda c, e, f: real(c, e, f, roots=(str(tmp_path),))
    )
    site = who_calls.SiteRanges(1, "xas_alloc", [(0x100, 0x180)], ["xas_alloc"])
    d = who_calls.WhoCallsSettings("tracepoint", [site], pid=7, comm="kworker").defines()
    assert d["BACKEND_TP"] == 1 and d["FILTER_TGID"] == 7
    assert (d["TP_KM_CALL_SITE"], d["TP_KM_BYTES"]) == (8, 32)
    assert d["FILTER_COMM0"] == f"0x{int.from_bytes(b'kworker', 'little'):x}ULL"
    assert d["SITE_OF(a)"] == "(((a)>=0x100ULL&&(a)<0x180ULL)?1:0)"
    assert "READ_ALLOC_TAG" not in d
    fentry = who_calls.WhoCallsSettings("fentry", [site], read_tag=True).defines()
    assert fentry["FENTRY_TARGET"] == "xas_alloc" and "READ_ALLOC_TAG" not in fentry
