"""Host metadata, result files, atomic writes, subsystems, kallsyms: the shared contracts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from allocscope.collector.atomic import write_text_atomic
from allocscope.collector.host import HostMetadata, collect_host_metadata, parse_labels
from allocscope.collector.kallsyms import Kallsyms
from allocscope.collector.result import Result, read_result
from allocscope.collector.subsystem import SubsystemMap, default_map
from allocscope.errors import InputError


def test_host_metadata_roundtrip() -> None:
    h = collect_host_metadata({"group": "pilot"})
    assert h.hostname and h.kernel_release and h.cpus >= 1 and h.memory_bytes > 0
    assert h.boot_time > 0 and h.uptime > 0
    again = HostMetadata.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h
    with pytest.raises(ValueError):
        HostMetadata.from_dict({"hostname": "x"})


def test_parse_labels() -> None:
    assert parse_labels(["group=pilot", "rack = a1"]) == {"group": "pilot", "rack": "a1"}
    with pytest.raises(ValueError):
        parse_labels(["nolabel"])


def test_result_roundtrip_and_errors(tmp_path: Path) -> None:
    payload = {"site": "xas_alloc", "total_calls": 0, "callers": []}
    r = Result("who-calls", collect_host_metadata(), 1.0, 2.5, {"sample": 1}, payload)
    p = tmp_path / "r.json"
    r.write(str(p))
    back = read_result(str(p), expect_kind="who-calls")
    assert back.to_dict() == r.to_dict()
    with pytest.raises(InputError, match="expected 'overhead'"):
        read_result(str(p), expect_kind="overhead")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1,\n "kind": ')
    with pytest.raises(InputError, match=r"bad\.json:2: bad JSON"):
        read_result(str(bad))
    newer = tmp_path / "newer.json"
    d = r.to_dict()
    d["schema"] = 99
    newer.write_text(json.dumps(d))
    with pytest.raises(InputError, match="newer"):
        read_result(str(newer))
    with pytest.raises(InputError, match="no such file"):
        read_result(str(tmp_path / "missing.json"))


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.txt"
    write_text_atomic(str(p), "one", make_parents=True)
    write_text_atomic(str(p), "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]


def test_atomic_write_failure_keeps_old(tmp_path: Path) -> None:
    from allocscope.collector.atomic import write_atomic

    p = tmp_path / "f.txt"
    p.write_text("old")

    def boom(f: BinaryIO) -> None:
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(str(p), boom)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize(
    ("file", "function", "expected"),
    [
        ("net/core/sock.c", "sk_alloc", "net"),
        ("drivers/net/ethernet/intel/ice/ice_txrx.c", "ice_alloc_rx_bufs", "net"),
        ("drivers/scsi/scsi_lib.c", "scsi_mq_init_request", "drivers/scsi"),
        ("drivers/virtio/virtio_ring.c", "vring_alloc_queue", "drivers/virtio"),
        ("mm/slub.c", "alloc_slab_page", "mm"),
        ("fs/ext4/super.c", "ext4_alloc_inode", "fs/ext4"),
        ("fs/dcache.c", "__d_alloc", "fs"),
        ("block/blk-mq.c", "blk_mq_alloc_rqs", "block"),
        ("kernel/fork.c", "dup_task_struct", "kernel"),
        ("kernel/bpf/syscall.c", "x", "bpf"),
        ("include/linux/mm.h", "pagetable_alloc", "mm"),
        ("include/net/sock.h", "x", "net"),
        ("include/linux/something.h", "x", "include"),
        ("lib/xarray.c", "xas_alloc", "lib"),
        ("arch/x86/mm/pgtable.c", "pte_alloc_one", "arch"),
    ],
)
def test_default_subsystems(file: str, function: str, expected: str) -> None:
    assert default_map().classify(file, function) == expected


def test_subsystem_override(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[[rule]]\npath = "lib/xarray.c"\nsubsystem = "mm"\n')
    m = SubsystemMap.load(str(p))
    assert m.classify("lib/xarray.c") == "mm"
    assert m.classify("net/x.c") == "net"  # defaults still apply after the override
    p.write_text('replace_defaults = true\n[[rule]]\npath = "**"\nsubsystem = "all"\n')
    assert SubsystemMap.load(str(p)).classify("net/x.c") == "all"
    p.write_text("[[rule]\n")
    with pytest.raises(InputError, match="bad TOML"):
        SubsystemMap.load(str(p))


def test_kallsyms_from_file(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81000100 t xas_alloc\n"
        "ffffffff81000180 t xas_alloc.constprop.0\n"
        "ffffffff81000200 T xas_create\n"
        "ffffffff81000300 D some_data\n"
        "ffffffffc0000000 t foo_probe\t[foo]\n"
    )
    k = Kallsyms.load(str(p))
    r = k.resolve(0xFFFFFFFF81000105)
    assert r is not None and r.name == "xas_alloc" and r.offset == 5
    assert k.function_at(0xFFFFFFFF81000190) == "xas_alloc"
    assert k.ranges("xas_alloc") == [
        (0xFFFFFFFF81000100, 0xFFFFFFFF81000180),
        (0xFFFFFFFF81000180, 0xFFFFFFFF81000200),
    ]
    m = k.resolve(0xFFFFFFFFC0000010)
    assert m is not None and m.module == "foo" and str(m) == "foo_probe+0x10 [foo]"
    assert k.resolve(0x10) is None


def test_kallsyms_restricted(tmp_path: Path) -> None:
    from allocscope.errors import CapabilityError

    p = tmp_path / "kallsyms"
    p.write_text("0000000000000000 T _stext\n0000000000000000 t xas_alloc\n")
    with pytest.raises(CapabilityError, match="kptr_restrict"):
        Kallsyms.load(str(p))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(start="yesterday"), "result.start: expected a finite number"),
        (lambda d: d.update(start=-5), "times must not be negative"),
        (lambda d: d.update(duration=float("nan")), "result.duration: expected a finite number"),
        (
            lambda d: d.update(kind="overhead"),
            "payload.seconds: missing (this looks like a 'who-calls'",
        ),
        (lambda d: d["payload"]["callers"].append({"caller": 3}), "payload.callers[0].caller"),
        (lambda d: d["payload"].update(extra=_deep(100)), "nested deeper than"),
        (lambda d: d.update(payload=[]), "result.payload: expected an object"),
    ],
)
def test_result_fields_are_validated_with_their_path(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    payload = {"site": "xas_alloc", "total_calls": 0, "callers": []}
    d = Result("who-calls", collect_host_metadata(), 1.0, 2.5, {}, payload).to_dict()
    edit(d)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d, allow_nan=True))
    with pytest.raises(InputError) as e:
        read_result(str(p))
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def _deep(n: int) -> object:
    v: object = 1
    for _ in range(n):
        v = {"x": v}
    return v


def test_json_nested_past_the_parser_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_result(str(p))


def test_schemas_doc_is_generated_from_the_contracts() -> None:
    from allocscope.collector.contracts import markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "schemas.md").read_text()
    assert doc == markdown(), "run scripts/gen-schemas"


@pytest.mark.parametrize("number", ["1" + "0" * 400, "-" + "9" * 30, "9" * 5000])
def test_json_numbers_beyond_u64_are_one_line(tmp_path: Path, number: str) -> None:
    """10**400 parses as a Python int and used to raise OverflowError at float(duration)."""
    p = tmp_path / "huge.json"
    p.write_text(
        '{"schema": 1, "kind": "overhead", "host": {}, "start": 0, "duration": ' + number + "}"
    )
    with pytest.raises(InputError, match=r"huge.json: bad JSON: number out of range|digits"):
        read_result(str(p))
