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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

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


class BTF:
    """Parsed BTF: types by id, struct/union and typedef ids by name.

    Parsing is lazy. :meth:`parse` walks the type section once to record where each type
    starts and which ids carry a struct/union/typedef name (as string offsets, not decoded);
    a type is decoded, names and members included, only when asked for. The live verbs need
    about ten of vmlinux's 126k types, and decoding all of them cost ~1 s of start-up on the
    development VM (the walk alone is ~0.2 s).
    """

    def __init__(
        self,
        data: bytes,
        endian: str,
        strings: bytes,
        offsets: list[int],
        named: dict[int, list[int]],
        typedef_named: dict[int, list[int]],
        func_named: dict[int, list[int]] | None = None,
        enum_ids: list[int] | None = None,
    ) -> None:
        self._data = data
        self._unpack3 = struct.Struct(endian + "III").unpack_from
        self._unpack2 = struct.Struct(endian + "II").unpack_from
        self._strings = strings
        self._offsets = offsets  # index = type id; [0] (void) unused
        self._named = named  # name string offset -> struct/union ids
        self._typedef_named = typedef_named  # name string offset -> typedef ids
        self._func_named = func_named or {}  # name string offset -> FUNC ids
        self._decoded: dict[int, BTFType] = {}
        self._enum_ids = enum_ids or []  # ENUM/ENUM64 type ids, decoded on first enum_value()
        self._enumerators: dict[str, int] | None = None
        self.types = _Types(self)

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
        offsets = [0]
        named: dict[int, list[int]] = {}
        typedef_named: dict[int, list[int]] = {}
        func_named: dict[int, list[int]] = {}
        enum_ids: list[int] = []
        pos = hdr_len + type_off
        end = pos + type_len
        unpack2 = struct.Struct(e + "II").unpack_from
        tails = _TAIL
        while pos < end:
            if pos + 12 > end:
                raise BTFError("truncated btf_type")
            name_off, info = unpack2(data, pos)
            kind = (info >> 24) & 0x1F
            tail = tails.get(kind)
            if tail is None:
                raise BTFError(f"unknown BTF kind {kind} at type id {len(offsets)}")
            tail_end = pos + 12 + tail[0] + tail[1] * (info & 0xFFFF)
            if tail_end > end:
                raise BTFError(f"truncated tail of BTF type id {len(offsets)}")
            if name_off:
                if kind == KIND_STRUCT or kind == KIND_UNION:
                    named.setdefault(name_off, []).append(len(offsets))
                elif kind == KIND_TYPEDEF:
                    typedef_named.setdefault(name_off, []).append(len(offsets))
                elif kind == KIND_FUNC:
                    func_named.setdefault(name_off, []).append(len(offsets))
            if kind == KIND_ENUM or kind == KIND_ENUM64:  # enumerators may sit in unnamed enums
                enum_ids.append(len(offsets))
            offsets.append(pos)
            pos = tail_end
        return cls(data, e, strings, offsets, named, typedef_named, func_named, enum_ids)

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> BTF:
        with open(path, "rb") as f:
            return cls.parse(f.read())

    def __len__(self) -> int:
        """Number of type ids, void (0) included."""
        return len(self._offsets)

    def _name_at(self, off: int) -> str:
        if off == 0:
            return ""
        strings = self._strings
        if off >= len(strings):
            raise BTFError(f"string offset {off} past the string section")
        end = strings.index(b"\0", off)
        return strings[off:end].decode("utf-8", "replace")

    def _offsets_of_name(self, name: str) -> list[int]:
        """Every string-section offset holding exactly ``name``."""
        needle = b"\0" + name.encode() + b"\0"
        out, i = [], self._strings.find(needle)
        while i >= 0:
            out.append(i + 1)
            i = self._strings.find(needle, i + 1)
        return out

    def _ids_named(self, table: dict[int, list[int]], name: str) -> list[int]:
        return sorted(i for off in self._offsets_of_name(name) for i in table.get(off, ()))

    def typedef_id(self, name: str) -> int | None:
        """The first typedef named ``name``, or None."""
        ids = self._ids_named(self._typedef_named, name)
        return ids[0] if ids else None

    def func_id(self, name: str) -> int | None:
        """The BTF id of the function ``name`` (what an fentry program attaches to), or None."""
        ids = self._ids_named(self._func_named, name)
        return ids[0] if ids else None

    def enum_value(self, name: str) -> int | None:
        """The value of enumerator ``name`` (e.g. ``___GFP_ACCOUNT_BIT``), None if absent.

        The first call decodes every enum once (a few thousand in vmlinux, ~20 ms); the
        first definition of a name wins, as C would not allow a second."""
        if self._enumerators is None:
            table: dict[str, int] = {}
            data, unpack2, unpack3 = self._data, self._unpack2, self._unpack3
            for type_id in self._enum_ids:
                pos = self._offsets[type_id]
                _name_off, info, _size = unpack3(data, pos)
                pos += 12
                kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
                for i in range(vlen):
                    if kind == KIND_ENUM:
                        e_name, v = unpack2(data, pos + 8 * i)
                        if signed and v >= 1 << 31:
                            v -= 1 << 32
                    else:
                        e_name, lo, hi = unpack3(data, pos + 12 * i)
                        v = (hi << 32) | lo
                        if signed and v >= 1 << 63:
                            v -= 1 << 64
                    table.setdefault(self._name_at(e_name), v)
            self._enumerators = table
        return self._enumerators.get(name)

    def _decode(self, type_id: int) -> BTFType:
        data, pos = self._data, self._offsets[type_id]
        unpack2, unpack3, name_at = self._unpack2, self._unpack3, self._name_at
        name_off, info, size_or_type = unpack3(data, pos)
        pos += 12
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kind_flag = bool(info >> 31)
        members: tuple[Member, ...] = ()
        if kind == KIND_FUNC_PROTO:  # params kept as members: (name, type, 0)
            members = tuple(
                Member(name_at(p[0]), p[1], 0)
                for p in (unpack2(data, pos + 8 * i) for i in range(vlen))
            )
        elif kind in (KIND_STRUCT, KIND_UNION):
            ms = []
            for i in range(vlen):
                m_name, m_type, m_off = unpack3(data, pos + 12 * i)
                if kind_flag:
                    ms.append(Member(name_at(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                else:
                    ms.append(Member(name_at(m_name), m_type, m_off))
            members = tuple(ms)
        return BTFType(type_id, kind, name_at(name_off), size_or_type, members)

    def type(self, type_id: int) -> BTFType:
        if not 0 < type_id < len(self._offsets):
            raise BTFError(f"no BTF type id {type_id}")
        t = self._decoded.get(type_id)
        if t is None:
            t = self._decoded[type_id] = self._decode(type_id)
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
        ids = self._ids_named(self._named, name)
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
        tid = self.typedef_id(f"btf_trace_{tracepoint}")
        if tid is None:
            return None
        ptr = self.type(self.type(tid).size_or_type)
        if ptr.kind != KIND_PTR:
            return None
        proto = self.type(ptr.size_or_type)
        if proto.kind != KIND_FUNC_PROTO:
            return None
        return [self.type_name(m.type_id) for m in proto.members[1:]]


class _Types(Sequence[BTFType | None]):
    """``btf.types[i]``: the type with id ``i`` (None for 0, void), decoded on access."""

    def __init__(self, btf: BTF) -> None:
        self._btf = btf

    def __len__(self) -> int:
        return len(self._btf)

    @overload
    def __getitem__(self, i: int) -> BTFType | None: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[BTFType | None]: ...
    def __getitem__(self, i: int | slice) -> BTFType | None | Sequence[BTFType | None]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i == 0:
            return None
        return self._btf.type(i)


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
