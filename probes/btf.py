"""A small reader of the kernel's raw BTF (``/sys/kernel/btf/vmlinux``): struct member offsets.

Why: allocscope compiles its probes against whatever headers exist, and on many hosts those
are the *nearest* distribution headers, not the running kernel's. A probe that reads
``s->size`` of ``struct kmem_cache`` through mismatched headers reads garbage. The running
kernel describes its own types in BTF, so we read the offset there and pass it to the probe
as a ``-D`` macro. No external tool (bpftool, pahole) is needed.

The format (``include/uapi/linux/btf.h``)::

    struct btf_header { u16 magic=0xeB9F; u8 version; u8 flags; u32 hdr_len;
                        u32 type_off, type_len, str_off, str_len; }   /* offsets after hdr */
    struct btf_type   { u32 name_off; u32 info; u32 size_or_type; }  /* + kind-specific tail */
    info: vlen = bits 0-15, kind = bits 24-28, kind_flag = bit 31

Type ids start at 1 (0 is ``void``) in section order. Struct/union members are
``{name_off, type, offset}``; ``offset`` is a bit offset, except when the struct's
``kind_flag`` is set: then bits 0-23 are the bit offset and bits 24-31 the bitfield size.
Enum members are ``{name_off, s32 val}`` (ENUM64: ``{name_off, val_lo32, val_hi32}``); their
names are global in C, so they are kept in one table (:meth:`BTF.enum_value`): that is how a
probe learns a bit number such as ``___GFP_ACCOUNT_BIT`` from the running kernel.
Only what member and enumerator lookup need is decoded; every other kind is skipped by its
known size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# Kind numbers from include/uapi/linux/btf.h.
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte btf_type, as (fixed, per-vlen-entry).
_TAIL: dict[int, tuple[int, int]] = {
    0: (0, 0),
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})


class BTFError(ValueError):
    """The blob is not BTF, is truncated, or lacks the asked-for type/member."""


@dataclass(frozen=True, slots=True)
class Member:
    """One struct/union member. ``bit_offset`` is from the start of the containing struct."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0  # 0 = not a bitfield

    @property
    def offset(self) -> int:
        """Byte offset (the byte holding the first bit, for bitfields)."""
        return self.bit_offset // 8


@dataclass(frozen=True, slots=True)
class BTFType:
    type_id: int
    kind: int
    name: str
    size_or_type: int  # byte size for INT/STRUCT/UNION/ENUM..., referenced id for PTR/TYPEDEF...
    members: tuple[Member, ...] = ()


@dataclass
class BTF:
    """Parsed BTF: types by id and struct/union ids by name."""

    types: list[BTFType | None]  # index = type id; [0] is void (None)
    by_name: dict[str, list[int]] = field(default_factory=dict)
    typedefs: dict[str, int] = field(default_factory=dict)
    enumerators: dict[str, int] = field(default_factory=dict)  # first definition wins

    @classmethod
    def parse(cls, data: bytes) -> BTF:
        if len(data) < 24:
            raise BTFError("BTF blob shorter than its header")
        (magic,) = struct.unpack_from("<H", data, 0)
        if magic == BTF_MAGIC:
            e = "<"
        elif struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
            e = ">"
        else:
            raise BTFError(f"bad BTF magic 0x{magic:04x}")
        _m, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            e + "HBBIIIII", data, 0
        )
        if hdr_len < 24 or hdr_len + max(type_off + type_len, str_off + str_len) > len(data):
            raise BTFError("BTF header points past the end of the blob")
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]

        def name_at(off: int) -> str:
            if off == 0:
                return ""
            if off >= len(strings):
                raise BTFError(f"string offset {off} past the string section")
            end = strings.index(b"\0", off)
            return strings[off:end].decode("utf-8", "replace")

        types: list[BTFType | None] = [None]
        by_name: dict[str, list[int]] = {}
        typedefs: dict[str, int] = {}
        enumerators: dict[str, int] = {}
        pos = hdr_len + type_off
        end = pos + type_len
        unpack3 = struct.Struct(e + "III").unpack_from
        unpack2 = struct.Struct(e + "II").unpack_from
        while pos < end:
            if pos + 12 > end:
                raise BTFError("truncated btf_type")
            name_off, info, size_or_type = unpack3(data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = bool(info >> 31)
            if kind not in _TAIL:
                raise BTFError(f"unknown BTF kind {kind} at type id {len(types)}")
            fixed, per = _TAIL[kind]
            tail_end = pos + fixed + per * vlen
            if tail_end > end:
                raise BTFError(f"truncated tail of BTF type id {len(types)}")
            members: tuple[Member, ...] = ()
            if kind == KIND_FUNC_PROTO:  # params kept as members: (name, type, 0)
                members = tuple(
                    Member(name_at(unpack2(data, pos + 8 * i)[0]), unpack2(data, pos + 8 * i)[1], 0)
                    for i in range(vlen)
                )
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack3(data, pos + 12 * i)
                    if kind_flag:
                        ms.append(Member(name_at(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                    else:
                        ms.append(Member(name_at(m_name), m_type, m_off))
                members = tuple(ms)
            if kind == KIND_ENUM:
                signed = kind_flag
                for i in range(vlen):
                    e_name, e_val = unpack2(data, pos + 8 * i)
                    if signed and e_val >= 1 << 31:
                        e_val -= 1 << 32
                    enumerators.setdefault(name_at(e_name), e_val)
            elif kind == KIND_ENUM64:
                for i in range(vlen):
                    e_name, lo, hi = unpack3(data, pos + 12 * i)
                    v = (hi << 32) | lo
                    if kind_flag and v >= 1 << 63:
                        v -= 1 << 64
                    enumerators.setdefault(name_at(e_name), v)
            name = name_at(name_off)
            type_id = len(types)
            types.append(BTFType(type_id, kind, name, size_or_type, members))
            if name and kind in (KIND_STRUCT, KIND_UNION):
                by_name.setdefault(name, []).append(type_id)
            elif name and kind == KIND_TYPEDEF:
                typedefs.setdefault(name, type_id)
            pos = tail_end
        return cls(types, by_name, typedefs, enumerators)

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> BTF:
        with open(path, "rb") as f:
            return cls.parse(f.read())

    def type(self, type_id: int) -> BTFType:
        if not 0 < type_id < len(self.types):
            raise BTFError(f"no BTF type id {type_id}")
        t = self.types[type_id]
        assert t is not None
        return t

    def resolve(self, type_id: int) -> BTFType:
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type."""
        t = self.type(type_id)
        seen = 0
        while t.kind in _MODIFIERS:
            t = self.type(t.size_or_type)
            seen += 1
            if seen > 64:
                raise BTFError(f"modifier loop at BTF type id {type_id}")
        return t

    def struct(self, name: str) -> BTFType:
        """The complete struct (or union) named ``name`` (forward declarations are skipped)."""
        ids = self.by_name.get(name)
        if not ids:
            raise BTFError(f"no struct {name} in BTF")
        # Several definitions can exist (e.g. same name, different modules in split BTF);
        # prefer the one with members.
        best = max((self.type(i) for i in ids), key=lambda t: len(t.members))
        return best

    def member(self, struct_name: str, path: str) -> Member:
        """Member of ``struct struct_name`` by name, offset from the start of the struct.

        ``path`` may be dotted (``"ct.lineno"``) to descend into named members. Members of
        anonymous structs/unions are found as if they were direct members, as in C.
        """
        t = self.struct(struct_name)
        base = 0
        parts = path.split(".")
        for depth, part in enumerate(parts):
            found = _find_member(self, t, part, 0)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {'.'.join(parts[: depth + 1])}")
            m, extra = found
            base += extra + m.bit_offset
            if depth < len(parts) - 1:
                t = self.resolve(m.type_id)
                if t.kind not in (KIND_STRUCT, KIND_UNION):
                    raise BTFError(f"{struct_name}.{'.'.join(parts[: depth + 1])} is not a struct")
            else:
                return Member(m.name, m.type_id, base, m.bitfield_size)
        raise BTFError("empty member path")

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a (non-bitfield) member: what a probe adds to the struct pointer."""
        m = self.member(struct_name, path)
        if m.bitfield_size or m.bit_offset % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield; it has no byte offset")
        return m.offset

    def enum_value(self, name: str) -> int | None:
        """The value of enumerator ``name`` (e.g. ``___GFP_ACCOUNT_BIT``), None if absent."""
        return self.enumerators.get(name)

    def type_size(self, type_id: int) -> int:
        """Byte size of a sized type (int, struct, union, enum, pointer)."""
        t = self.resolve(type_id)
        if t.kind == KIND_PTR:
            return 8
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return t.size_or_type
        raise BTFError(f"BTF type id {type_id} (kind {t.kind}) has no simple size")

    def type_name(self, type_id: int) -> str:
        """C spelling of a type, enough to compare signatures: ``struct kmem_cache *``."""
        if type_id == 0:
            return "void"
        t = self.type(type_id)
        if t.kind == KIND_PTR:
            return self.type_name(t.size_or_type) + " *"
        if t.kind == KIND_CONST:
            return "const " + self.type_name(t.size_or_type)
        if t.kind in (KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG):
            return self.type_name(t.size_or_type)
        prefix = {
            KIND_STRUCT: "struct ",
            KIND_UNION: "union ",
            KIND_ENUM: "enum ",
            KIND_ENUM64: "enum ",
            KIND_FWD: "struct ",
        }.get(t.kind, "")
        return prefix + (t.name or "?")

    def raw_tracepoint_args(self, tracepoint: str) -> list[str] | None:
        """Argument types a raw tracepoint program sees in ``ctx->args[]``, from the kernel's
        ``btf_trace_<tracepoint>`` typedef (its first parameter, ``void *__data``, dropped);
        None when BTF does not describe it."""
        tid = self.typedefs.get(f"btf_trace_{tracepoint}")
        if tid is None:
            return None
        ptr = self.type(self.type(tid).size_or_type)
        if ptr.kind != KIND_PTR:
            return None
        proto = self.type(ptr.size_or_type)
        if proto.kind != KIND_FUNC_PROTO:
            return None
        return [self.type_name(m.type_id) for m in proto.members[1:]]


def _find_member(btf: BTF, t: BTFType, name: str, depth: int) -> tuple[Member, int] | None:
    """(member, bit offset of the anonymous containers it sits in) or None."""
    for m in t.members:
        if m.name == name:
            return m, 0
    if depth > 16:
        return None
    for m in t.members:
        if m.name:
            continue
        inner = btf.resolve(m.type_id)
        if inner.kind in (KIND_STRUCT, KIND_UNION):
            found = _find_member(btf, inner, name, depth + 1)
            if found is not None:
                return found[0], found[1] + m.bit_offset
    return None


@lru_cache(maxsize=1)
def vmlinux() -> BTF | None:
    """The running kernel's BTF, parsed once per process; None when the kernel has none."""
    try:
        return BTF.load(VMLINUX_BTF)
    except (OSError, BTFError):
        return None


def kmem_cache_offsets() -> dict[str, int] | None:
    """``{"size": n, "object_size": m}`` for ``struct kmem_cache``, or None without BTF.

    ``size`` is what one object really occupies in its slab (with alignment, red zones and
    metadata); ``object_size`` what the caller asked for. Both are ``unsigned int``.
    """
    btf = vmlinux()
    if btf is None:
        return None
    try:
        return {
            "size": btf.member_offset("kmem_cache", "size"),
            "object_size": btf.member_offset("kmem_cache", "object_size"),
        }
    except BTFError:
        return None


@dataclass(frozen=True, slots=True)
class ChargeLayout:
    """What a probe needs to tell a memcg-charged allocation, from the running kernel's BTF.

    ``gfp_account`` is the ``__GFP_ACCOUNT`` mask (``1 << ___GFP_ACCOUNT_BIT``: the anonymous
    enum of include/linux/gfp_types.h, v6.9+). ``slab_account`` is ``SLAB_ACCOUNT``
    (``1 << _SLAB_ACCOUNT``, ``enum _slab_flag_bits`` of include/linux/slab.h, v6.10+) and
    ``cache_flags_off`` the byte offset of ``kmem_cache.flags`` (``slab_flags_t``, 32 bits
    wide since v6.10). A kmem_cache_alloc is charged when its gfp has ``__GFP_ACCOUNT`` or
    its cache ``SLAB_ACCOUNT`` (mm/slub.c memcg_slab_post_alloc_hook); kmalloc and pages need
    ``__GFP_ACCOUNT``. Any field is None when BTF does not say.
    """

    gfp_account: int | None
    slab_account: int | None
    cache_flags_off: int | None
    cache_flags_size: int | None


def charge_layout(btf: BTF | None = None) -> ChargeLayout:
    """The running kernel's :class:`ChargeLayout` (all None without BTF)."""
    b = btf if btf is not None else vmlinux()
    if b is None:
        return ChargeLayout(None, None, None, None)
    gfp_bit = b.enum_value("___GFP_ACCOUNT_BIT")
    slab_bit = b.enum_value("_SLAB_ACCOUNT")
    off: int | None = None
    size: int | None = None
    try:
        m = b.member("kmem_cache", "flags")
        if not m.bitfield_size and m.bit_offset % 8 == 0:
            off, size = m.offset, b.type_size(m.type_id)
    except BTFError:
        pass
    return ChargeLayout(
        None if gfp_bit is None or not 0 <= gfp_bit < 64 else 1 << gfp_bit,
        None if slab_bit is None or not 0 <= slab_bit < 64 else 1 << slab_bit,
        off,
        size,
    )
