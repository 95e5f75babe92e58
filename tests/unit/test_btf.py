"""The raw-BTF reader: a hand-made blob (no kernel needed) and the running kernel's BTF."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from allocscope.probes import btf as btfmod
from allocscope.probes.btf import (
    BTF,
    KIND_ENUM,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    BTFError,
)


class BlobBuilder:
    """Builds a little-endian BTF blob type by type, the way pahole lays one out."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(
        self,
        kind: int,
        name: str,
        size_or_type: int,
        vlen: int = 0,
        kind_flag: bool = False,
        tail: bytes = b"",
    ) -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + tail
        self.count += 1
        return self.count

    def int_(self, name: str, size: int) -> int:
        return self.add(KIND_INT, name, size, tail=struct.pack("<I", size * 8))

    def struct_(
        self,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        *,
        union: bool = False,
        kind_flag: bool = False,
    ) -> int:
        tail = b"".join(struct.pack("<III", self.s(n), t, off) for n, t, off in members)
        return self.add(
            KIND_UNION if union else KIND_STRUCT, name, size, len(members), kind_flag, tail
        )

    def blob(self) -> bytes:
        hdr = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return hdr + bytes(self.types) + bytes(self.strings)


def synthetic() -> bytes:
    b = BlobBuilder()
    u32 = b.int_("unsigned int", 4)  # 1
    ptr = b.add(KIND_PTR, "", 3)  # 2: -> struct list_head (id 3, defined next)
    b.struct_("list_head", 16, [("next", ptr, 0), ("prev", ptr, 64)])  # 3
    # Kinds with tails that the reader must skip correctly.
    b.add(
        KIND_ENUM,
        "colour",
        4,
        2,
        tail=struct.pack("<Ii", b.s("RED"), 0) + struct.pack("<Ii", b.s("GREEN"), 1),
    )  # 4
    proto = b.add(
        KIND_FUNC_PROTO,
        "",
        u32,
        2,
        tail=struct.pack("<II", b.s("a"), u32) + struct.pack("<II", 0, ptr),
    )  # 5
    b.add(KIND_FUNC, "do_thing", proto)  # 6
    td = b.add(KIND_TYPEDEF, "u32_t", u32)  # 7
    # An anonymous union holding `size`, as kernels do with unions of counters.
    anon = b.struct_("", 8, [("size", td, 0), ("raw", u32, 32)], union=True)  # 8
    inner = b.struct_("inner", 8, [("lineno", u32, 0), ("col", u32, 32)])  # 9
    b.struct_(
        "kmem_cache",
        64,
        [
            ("flags", u32, 0),
            ("min_partial", u32, 32),
            ("", anon, 64),
            ("object_size", u32, 128),
            ("ct", inner, 192),
        ],
    )  # 10
    # kind_flag: offsets carry bitfield sizes in their top byte.
    b.struct_(
        "bits",
        8,
        [("a", u32, (3 << 24) | 0), ("b", u32, (5 << 24) | 3), ("c", u32, (0 << 24) | 32)],
        kind_flag=True,
    )  # 11
    b.add(7, "kmem_cache", 0)  # 12: a forward declaration with the same name (FWD)
    # A raw tracepoint's typedef: btf_trace_foo -> PTR -> FUNC_PROTO(void *, list_head *,
    # const unsigned int), as the kernel describes every raw tracepoint.
    void_ptr = b.add(KIND_PTR, "", 0)  # 13
    cu32 = b.add(10, "", u32)  # 14: CONST
    proto2 = b.add(
        KIND_FUNC_PROTO,
        "",
        0,
        3,
        tail=struct.pack("<II", b.s("__data"), void_ptr)
        + struct.pack("<II", 0, ptr)
        + struct.pack("<II", 0, cu32),
    )  # 15
    fptr = b.add(KIND_PTR, "", proto2)  # 16
    b.add(KIND_TYPEDEF, "btf_trace_foo", fptr)  # 17
    return b.blob()


def test_synthetic_offsets() -> None:
    t = BTF.parse(synthetic())
    assert t.member_offset("list_head", "next") == 0
    assert t.member_offset("list_head", "prev") == 8
    assert t.member_offset("kmem_cache", "size") == 8  # through the anonymous union
    assert t.member_offset("kmem_cache", "object_size") == 16
    assert t.member_offset("kmem_cache", "ct.col") == 28  # dotted path
    assert t.type_size(t.member("kmem_cache", "size").type_id) == 4  # through the typedef
    assert t.type(6).name == "do_thing"  # FUNC after FUNC_PROTO: tails skipped right


def test_synthetic_bitfields() -> None:
    t = BTF.parse(synthetic())
    a, b, c = (t.member("bits", n) for n in "abc")
    assert (a.bit_offset, a.bitfield_size) == (0, 3)
    assert (b.bit_offset, b.bitfield_size) == (3, 5)
    assert (c.bit_offset, c.bitfield_size, c.offset) == (32, 0, 4)
    with pytest.raises(BTFError, match="bitfield"):
        t.member_offset("bits", "b")
    assert t.member_offset("bits", "c") == 4


def test_synthetic_errors() -> None:
    blob = synthetic()
    t = BTF.parse(blob)
    with pytest.raises(BTFError, match="no struct"):
        t.struct("task_struct")
    with pytest.raises(BTFError, match="no member"):
        t.member_offset("kmem_cache", "nope")
    with pytest.raises(BTFError, match="not a struct"):
        t.member_offset("kmem_cache", "flags.x")
    with pytest.raises(BTFError, match="magic"):
        BTF.parse(b"\0" * 32)
    with pytest.raises(BTFError):
        BTF.parse(blob[:40])  # header promises more than there is
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 24 + 4, 30 << 24)  # type 1 gets an unknown kind
    with pytest.raises(BTFError, match="unknown BTF kind"):
        BTF.parse(bytes(bad))


def test_big_endian_blob() -> None:
    """The reader honours the blob's byte order (BTF of a big-endian target)."""
    le = synthetic()
    t_le = BTF.parse(le)
    # Re-encode every u32 of header (after magic/version/flags) and type section as BE.
    hdr = struct.unpack_from("<HBBIIIII", le, 0)
    type_len, str_len = hdr[5], hdr[7]
    types = le[24 : 24 + type_len]
    words = struct.unpack(f"<{type_len // 4}I", types)
    be = (
        struct.pack(">HBBIIIII", *hdr)
        + struct.pack(f">{len(words)}I", *words)
        + le[24 + type_len : 24 + type_len + str_len]
    )
    t_be = BTF.parse(be)
    assert t_be.member_offset("kmem_cache", "size") == t_le.member_offset("kmem_cache", "size")


@pytest.fixture(scope="module")
def vmlinux() -> BTF:
    t = btfmod.vmlinux()
    if t is None:
        pytest.skip(f"{btfmod.VMLINUX_BTF} absent or unreadable")
    return t


def bpftool_offsets(struct_name: str) -> dict[str, int]:
    """Member byte offsets of a struct as ``bpftool btf dump ... format raw`` prints them."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", btfmod.VMLINUX_BTF, "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(rf"^\[\d+\] STRUCT '{struct_name}' size=\d+ vlen=(\d+)\n", out, re.M)
    assert m, f"bpftool shows no struct {struct_name}"
    lines = out[m.end() :].splitlines()[: int(m[1])]
    offs = {}
    for line in lines:
        mm = re.match(r"\s+'(\w*)' type_id=\d+ bits_offset=(\d+)", line)
        if mm and mm[1]:
            offs[mm[1]] = int(mm[2]) // 8
    return offs


def test_kmem_cache_offsets_match_bpftool(vmlinux: BTF) -> None:
    offs = btfmod.kmem_cache_offsets()
    assert offs is not None
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (apt-get install bpftool); invariants tested below")
    ref = bpftool_offsets("kmem_cache")
    assert offs["size"] == ref["size"]
    assert offs["object_size"] == ref["object_size"]


def test_vmlinux_invariants(vmlinux: BTF) -> None:
    assert vmlinux.member_offset("list_head", "next") == 0
    assert vmlinux.member_offset("list_head", "prev") == 8
    offs = btfmod.kmem_cache_offsets()
    assert offs is not None
    ks = vmlinux.struct("kmem_cache")
    assert 0 <= offs["size"] < ks.size_or_type and 0 <= offs["object_size"] < ks.size_or_type
    # A struct's (non-union) members are laid out in declaration order.
    ts = vmlinux.struct("task_struct")
    assert ts.kind == KIND_STRUCT
    bit_offsets = [m.bit_offset for m in ts.members]
    assert bit_offsets == sorted(bit_offsets)
    assert vmlinux.member_offset("task_struct", "pid") < vmlinux.member_offset(
        "task_struct", "tgid"
    )


def test_raw_tracepoint_args_synthetic() -> None:
    t = BTF.parse(synthetic())
    assert t.raw_tracepoint_args("foo") == ["struct list_head *", "const unsigned int"]
    assert t.raw_tracepoint_args("bar") is None
    assert t.type_name(5 + 0) == "?"  # an anonymous FUNC_PROTO has no C name
    proto = t.type(5)
    assert [m.name for m in proto.members] == ["a", ""]


def test_raw_tracepoint_args_vmlinux(vmlinux: BTF) -> None:
    args = vmlinux.raw_tracepoint_args("kfree")
    assert args is not None and len(args) >= 2 and args[1].endswith("*")
    page = vmlinux.raw_tracepoint_args("mm_page_alloc")
    assert page is not None and page[0] == "struct page *"


def test_enumerators_synthetic() -> None:
    """ENUM (signed and unsigned) and ENUM64 values are kept by name, first one wins."""
    b = BlobBuilder()
    tail = struct.pack("<Ii", b.s("___GFP_ACCOUNT_BIT"), 22) + struct.pack("<Ii", b.s("NEG"), -3)
    b.add(KIND_ENUM, "", 4, 2, True, tail)
    b.add(KIND_ENUM, "_slab_flag_bits", 4, 1, False, struct.pack("<II", b.s("_SLAB_ACCOUNT"), 13))
    b.add(KIND_ENUM, "", 4, 1, False, struct.pack("<II", b.s("_SLAB_ACCOUNT"), 99))
    b.add(btfmod.KIND_ENUM64, "big", 8, 1, False, struct.pack("<III", b.s("BIG"), 1, 2))
    t = BTF.parse(b.blob())
    assert t.enum_value("___GFP_ACCOUNT_BIT") == 22
    assert t.enum_value("NEG") == -3
    assert t.enum_value("_SLAB_ACCOUNT") == 13  # the first definition
    assert t.enum_value("BIG") == (2 << 32) | 1
    assert t.enum_value("nope") is None
    layout = btfmod.charge_layout(t)
    assert layout.gfp_account == 1 << 22 and layout.slab_account == 1 << 13
    assert layout.cache_flags_off is None  # no struct kmem_cache in this blob


def test_gfp_account_matches_the_tracepoint_format(vmlinux: BTF) -> None:
    """__GFP_ACCOUNT from BTF is the bit the kernel's own kmalloc format prints by that name."""
    from allocscope.probes import tracefs

    root = tracefs.mount_point()
    if root is None:
        pytest.skip("tracefs not mounted")
    with open(f"{root}/events/kmem/kmalloc/format") as f:
        fmt = f.read()
    m = re.search(r"<< \((\d+)\)\)\), \"__GFP_ACCOUNT\"", fmt)
    if m is None:
        pytest.skip("this kernel's kmalloc format does not name __GFP_ACCOUNT")
    layout = btfmod.charge_layout(vmlinux)
    if layout.gfp_account is None:
        pytest.skip("BTF has no ___GFP_ACCOUNT_BIT (kernel < 6.9)")
    assert layout.gfp_account == 1 << int(m[1])
    ks = vmlinux.struct("kmem_cache")
    assert layout.cache_flags_off is not None and layout.cache_flags_size in (4, 8)
    assert 0 <= layout.cache_flags_off < ks.size_or_type


def test_slab_account_matches_bpftool(vmlinux: BTF) -> None:
    """SLAB_ACCOUNT's bit as bpftool reads it from the same BTF (an independent parser)."""
    layout = btfmod.charge_layout(vmlinux)
    if layout.slab_account is None:
        pytest.skip("BTF has no _SLAB_ACCOUNT (kernel < 6.10)")
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (apt-get install bpftool)")
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", btfmod.VMLINUX_BTF, "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"^\s+'_SLAB_ACCOUNT' val=(\d+)$", out, re.M)
    assert m, "bpftool shows no _SLAB_ACCOUNT"
    assert layout.slab_account == 1 << int(m[1])
