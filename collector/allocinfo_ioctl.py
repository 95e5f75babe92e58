"""The allocinfo ioctl: ask the kernel for the tags you want instead of parsing them all.

Linux 7.3 added ioctls on ``/proc/allocinfo`` (``include/uapi/linux/alloc_tag.h``):

* ``ALLOCINFO_IOC_CONTENT_ID`` - a number that changes when a module load or unload changes
  the set of tags; read it before and after a walk to know the walk saw one consistent set.
* ``ALLOCINFO_IOC_GET_AT`` - the ``pos``-th tag (0-based) among those matching a filter (module,
  function, file, line, accuracy, min/max bytes); the filter is remembered by the open file.
* ``ALLOCINFO_IOC_GET_NEXT`` - the next matching tag after the last one returned; ENOENT at the
  end.

Why bother when the text is there: a caller interested in one function (``who-calls
xas_alloc``) gets its counters without formatting and parsing ~3,000 lines, and the kernel
reads only the per-CPU counters of the matching tags.

The struct layout changed while the series was reviewed (no filter; a filter of names and line;
that plus accuracy and sizes). The ioctl number encodes the argument size, so the layout is
found by trying the newest first: a kernel that does not know a number answers ENOTTY. Names
longer than 63 characters come back trimmed to their tail by the kernel (it compares the last
64 characters when filtering); results are re-checked here against the exact filter.

The text path (:func:`allocscope.collector.allocinfo.read_allocinfo`) stays the default; this
module is used only through explicit calls (:func:`query_tags`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass

from allocscope.collector.allocinfo import PROC_ALLOCINFO, AllocRecord
from allocscope.collector.site import Site
from allocscope.errors import CapabilityError, InputError

STR_SIZE = 64  # ALLOCINFO_STR_SIZE
IOC_BASE = 0xA6  # ALLOCINFO_IOC_BASE
_NR_CONTENT_ID, _NR_GET_AT, _NR_GET_NEXT = 0, 1, 2

# Filter mask bits (enum order in the uapi header).
MASK_MODNAME = 1 << 0
MASK_FUNCTION = 1 << 1
MASK_FILENAME = 1 << 2
MASK_LINENO = 1 << 3
MASK_INACCURATE = 1 << 4
MASK_MIN_SIZE = 1 << 5
MASK_MAX_SIZE = 1 << 6


class _Tag(ctypes.Structure):
    _fields_ = [
        ("modname", ctypes.c_char * STR_SIZE),
        ("function", ctypes.c_char * STR_SIZE),
        ("filename", ctypes.c_char * STR_SIZE),
        ("lineno", ctypes.c_uint64),
    ]


class _Counter(ctypes.Structure):
    # __attribute__((aligned(8))): 8 + 8 + 1, padded to 24.
    _fields_ = [
        ("bytes", ctypes.c_uint64),
        ("calls", ctypes.c_uint64),
        ("accurate", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    ]


class _TagData(ctypes.Structure):
    _fields_ = [("tag", _Tag), ("counter", _Counter)]


class _FilterSizes(ctypes.Structure):
    """Final layout: names/line plus accuracy and size bounds."""

    _fields_ = [
        ("mask", ctypes.c_uint64),
        ("fields", _Tag),
        ("min_size", ctypes.c_uint64),
        ("max_size", ctypes.c_uint64),
        ("inaccurate", ctypes.c_uint64),
    ]


class _FilterNames(ctypes.Structure):
    """Earlier layout: names and line only."""

    _fields_ = [("mask", ctypes.c_uint64), ("fields", _Tag)]


class _GetAtSizes(ctypes.Structure):
    _fields_ = [("pos", ctypes.c_uint64), ("filter", _FilterSizes), ("data", _TagData)]


class _GetAtNames(ctypes.Structure):
    _fields_ = [("pos", ctypes.c_uint64), ("filter", _FilterNames), ("data", _TagData)]


class _GetAtPlain(ctypes.Structure):
    _fields_ = [("pos", ctypes.c_uint64), ("data", _TagData)]


class _ContentId(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64)]


def _ioc(direction: int, nr: int, size: int) -> int:
    """Linux's _IOC() on x86/arm64: dir(2) | size(14) | type(8) | nr(8)."""
    return (direction << 30) | (size << 16) | (IOC_BASE << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
IOC_CONTENT_ID = _ioc(_IOC_READ, _NR_CONTENT_ID, ctypes.sizeof(_ContentId))
IOC_GET_NEXT = _ioc(_IOC_READ, _NR_GET_NEXT, ctypes.sizeof(_TagData))

# (name, GET_AT struct, what its filter can express), newest first.
LAYOUTS: tuple[tuple[str, type[ctypes.Structure], int], ...] = (
    ("filter+sizes", _GetAtSizes, (1 << 7) - 1),
    ("filter", _GetAtNames, MASK_MODNAME | MASK_FUNCTION | MASK_FILENAME | MASK_LINENO),
    ("plain", _GetAtPlain, 0),
)


def ioc_get_at(struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, _NR_GET_AT, ctypes.sizeof(struct))


@dataclass(frozen=True, slots=True)
class TagFilter:
    """Which tags to return; None = any. ``module=""`` selects built-in tags."""

    function: str | None = None
    file: str | None = None
    line: int | None = None
    module: str | None = None
    inaccurate: bool | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None

    def matches(self, rec: AllocRecord) -> bool:
        s = rec.site
        return (
            (self.function is None or s.function == self.function)
            and (self.file is None or s.file == self.file)
            and (self.line is None or s.line == self.line)
            and (self.module is None or s.module == self.module)
            and (self.inaccurate is None or (not rec.accurate) == self.inaccurate)
            and (self.min_bytes is None or rec.bytes >= self.min_bytes)
            and (self.max_bytes is None or rec.bytes <= self.max_bytes)
        )


def _tail(text: str) -> bytes:
    """What the kernel keeps of a long name: its last STR_SIZE-1 bytes."""
    raw = text.encode()
    return raw[-(STR_SIZE - 1) :]


def _signed(v: int) -> int:
    """Counters are u64 in the ABI but can be transiently negative (per-CPU sums)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _record(data: _TagData) -> AllocRecord:
    tag, ctr = data.tag, data.counter
    site = Site(
        tag.filename.decode(errors="replace"),
        int(tag.lineno),
        tag.function.decode(errors="replace"),
        tag.modname.decode(errors="replace"),
    )
    extras = {} if ctr.accurate else {"accurate": "no"}
    return AllocRecord(site, _signed(int(ctr.bytes)), _signed(int(ctr.calls)), extras)


class AllocinfoIoctl:
    """An open ``/proc/allocinfo`` spoken to through its ioctls (one iterator per open)."""

    def __init__(self, path: str = PROC_ALLOCINFO) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CapabilityError(
                f"{path} is not present: this kernel lacks CONFIG_MEM_ALLOC_PROFILING"
            ) from None
        except OSError as e:
            raise InputError(path, None, f"cannot open: {e.strerror}") from None
        self.layout: str | None = None
        self._get_at: type[ctypes.Structure] | None = None
        self._mask_ok = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> AllocinfoIoctl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def content_id(self) -> int:
        buf = _ContentId()
        self._ioctl(IOC_CONTENT_ID, buf)
        return int(buf.id)

    def _ioctl(self, cmd: int, buf: ctypes.Structure) -> bool:
        """True on success, False on ENOENT (no such tag); other errors are raised."""
        try:
            fcntl.ioctl(self.fd, cmd, buf, True)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise CapabilityError(
                    f"{self.path}: the allocinfo ioctl is not supported here ({e.strerror}); "
                    "it needs Linux 7.3+ - read the text instead"
                ) from None
            raise InputError(self.path, None, f"allocinfo ioctl failed: {e.strerror}") from None
        return True

    def _probe(self) -> None:
        """Find the GET_AT layout this kernel speaks (ENOTTY for a size it does not know)."""
        if self._get_at is not None:
            return
        for name, struct, mask_ok in LAYOUTS:
            buf = struct()
            try:
                fcntl.ioctl(self.fd, ioc_get_at(struct), buf, True)
            except OSError as e:
                if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    continue
                if e.errno != errno.ENOENT:  # ENOENT: understood, just no tags
                    raise InputError(self.path, None, f"allocinfo ioctl: {e.strerror}") from None
            self.layout, self._get_at, self._mask_ok = name, struct, mask_ok
            return
        raise CapabilityError(
            f"{self.path}: the kernel does not support the allocinfo ioctl (Linux 7.3+); "
            "read the text instead"
        )

    def _fill_filter(self, buf: ctypes.Structure, flt: TagFilter) -> None:
        if self._mask_ok == 0:
            return
        f = buf.filter
        mask = 0
        if flt.module is not None:
            f.fields.modname = _tail(flt.module)
            mask |= MASK_MODNAME
        if flt.function is not None:
            f.fields.function = _tail(flt.function)
            mask |= MASK_FUNCTION
        if flt.file is not None:
            f.fields.filename = _tail(flt.file)
            mask |= MASK_FILENAME
        if flt.line is not None:
            f.fields.lineno = flt.line
            mask |= MASK_LINENO
        if self._mask_ok & MASK_INACCURATE and flt.inaccurate is not None:
            f.inaccurate = int(flt.inaccurate)
            mask |= MASK_INACCURATE
        if self._mask_ok & MASK_MIN_SIZE and flt.min_bytes is not None and flt.min_bytes >= 0:
            f.min_size = flt.min_bytes
            mask |= MASK_MIN_SIZE
        if self._mask_ok & MASK_MAX_SIZE and flt.max_bytes is not None and flt.max_bytes >= 0:
            f.max_size = flt.max_bytes
            mask |= MASK_MAX_SIZE
        f.mask = mask

    def get_at(self, pos: int, flt: TagFilter | None = None) -> AllocRecord | None:
        """The ``pos``-th tag matching ``flt`` (kernel-side part of it), or None past the end."""
        self._probe()
        assert self._get_at is not None
        buf = self._get_at()
        buf.pos = pos
        self._fill_filter(buf, flt or TagFilter())
        if not self._ioctl(ioc_get_at(self._get_at), buf):
            return None
        return _record(buf.data)

    def get_next(self) -> AllocRecord | None:
        buf = _TagData()
        if not self._ioctl(IOC_GET_NEXT, buf):
            return None
        return _record(buf)

    def iter_tags(self, flt: TagFilter | None = None) -> Iterator[AllocRecord]:
        """Every tag matching ``flt``: GET_AT(0) then GET_NEXT until ENOENT."""
        flt = flt or TagFilter()
        rec = self.get_at(0, flt)
        while rec is not None:
            if flt.matches(rec):
                yield rec
            rec = self.get_next()


def query_tags(
    path: str = PROC_ALLOCINFO,
    *,
    function: str | None = None,
    file: str | None = None,
    line: int | None = None,
    module: str | None = None,
    inaccurate: bool | None = None,
    min_bytes: int | None = None,
    max_bytes: int | None = None,
    retries: int = 3,
) -> list[AllocRecord]:
    """Tags matching the filters, read through the ioctl (Linux 7.3+).

    The walk is repeated (up to ``retries`` times) if a module load or unload changed the tag
    set meanwhile (CONTENT_ID differs before and after). Raises :class:`CapabilityError` on
    kernels without the ioctl - callers fall back to the text.
    """
    flt = TagFilter(function, file, line, module, inaccurate, min_bytes, max_bytes)
    with AllocinfoIoctl(path) as dev:
        recs: list[AllocRecord] = []
        for _ in range(max(1, retries)):
            before = dev.content_id()
            recs = list(dev.iter_tags(flt))
            if dev.content_id() == before:
                return recs
        return recs
