"""What this boot's kernel was found to allow, remembered until the next boot.

Live verbs used to learn the same things at every start: ~1 s parsing BTF for three offsets,
and a full BCC compile of a fentry program only to hear EPERM (0.3-1.5 s here, ~10 s under
emulation). Neither answer changes until the kernel does, so both are kept in one small JSON
file keyed by ``/proc/sys/kernel/random/boot_id`` and the kernel release:

* ``verdicts``: outcomes of real attempts, ``backend`` (kernel-wide: fentry refused with EPERM)
  or ``backend:function`` (a notrace site), written by who-calls and by ``doctor --refresh``;
  only causes that are stable within a boot are kept (see
  :func:`allocscope.probes.who_calls.verdict_keys`);
* ``btf``: :class:`~allocscope.probes.capabilities.BTFFacts`.

The file lives in ``/run/allocscope`` (tmpfs: gone at reboot anyway) and is read as root, so
it is treated as hostile input: the directory must be a real directory owned by root with no
access for others (mode 0700, created so), the file a regular file owned by root that nobody
else can write, opened without following a symlink, at most 64 KiB, valid JSON of the expected
shape and of this boot. Anything else is ignored (the cache is then absent, never an error)
and the reason is kept for ``doctor``. Writes go through
:func:`allocscope.collector.atomic.write_atomic` (temp file + rename), mode 0600.

``ALLOCSCOPE_BOOT_CACHE`` names another file (tests, ``scripts/bench-startup``'s cold runs);
``off`` disables the cache.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from allocscope.collector.atomic import write_atomic
from allocscope.probes.capabilities import (
    BTFFacts,
    CheckResult,
    boot_id,
    btf_facts,
    fentry_load_check,
)

DEFAULT_PATH = "/run/allocscope/boot-facts.json"
FENTRY_LOAD = "fentry-load"  # kernel-wide: does a minimal fentry program load at all
ENV = "ALLOCSCOPE_BOOT_CACHE"
FORMAT = 1
MAX_BYTES = 64 * 1024
MAX_VERDICTS = 256


def cache_path() -> str | None:
    """Where the cache is, or None when ``ALLOCSCOPE_BOOT_CACHE=off``."""
    p = os.environ.get(ENV) or DEFAULT_PATH
    return None if p == "off" else p


def boot_identity() -> tuple[str, str] | None:
    """(boot id, kernel release); None when the boot id is unreadable (no caching then)."""
    bid = boot_id()
    return (bid, platform.release()) if bid else None


@dataclass
class BootCache:
    """The cache of this boot: empty when absent, stale, unsafe or corrupt (``status`` says
    which). Mutate with :meth:`record` / :meth:`set_btf`, then :meth:`save`."""

    path: str | None
    identity: tuple[str, str] | None
    verdicts: dict[str, CheckResult] = field(default_factory=dict)
    btf: BTFFacts | None = None
    status: str = "absent"  # "loaded" | "absent" | why it was ignored
    dirty: bool = False

    def record(self, key: str, result: CheckResult) -> None:
        """Remember ``result`` under ``key``; the same verdict again (its timing aside) does
        not make the cache dirty, so a warm run writes nothing."""
        old = self.verdicts.get(key)
        if old is None or (old.ok, old.detail) != (result.ok, result.detail):
            self.verdicts[key] = result
            self.dirty = True

    def set_btf(self, facts: BTFFacts) -> None:
        self.btf = facts
        self.dirty = True

    def btf_facts(self) -> BTFFacts:
        """The cached BTF facts, else parsed now (and remembered)."""
        if self.btf is None:
            self.set_btf(btf_facts())
        assert self.btf is not None
        return self.btf

    def to_dict(self) -> dict[str, Any]:
        bid, release = self.identity or ("", "")
        return {
            "format": FORMAT,
            "boot_id": bid,
            "release": release,
            "written": round(time.time(), 3),
            "verdicts": {
                k: {"ok": v.ok, "detail": v.detail, "seconds": round(v.seconds, 3)}
                for k, v in sorted(self.verdicts.items())[:MAX_VERDICTS]
            },
            "btf": self.btf.to_dict() if self.btf is not None else None,
        }

    def save(self) -> str | None:
        """Write if something changed; returns why it could not (never raises: a cache that
        cannot be written costs the next run time, not this run its result)."""
        if not self.dirty or self.path is None or self.identity is None:
            return None
        if os.geteuid() != 0:
            return "not root: the cache is root's"
        try:
            _prepare_dir(os.path.dirname(self.path))
            # The directory is root's and private (checked above), so whatever stands at the
            # cache's name that is not a regular file (a link, a FIFO) is stale, not someone
            # else's: remove it, since the one writer never replaces such a target.
            if os.path.lexists(self.path) and not stat.S_ISREG(os.lstat(self.path).st_mode):
                os.unlink(self.path)
            data = json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

            def write(f: BinaryIO) -> None:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)

            write_atomic(self.path, write)
        except (OSError, UnsafeCache) as e:
            return str(e)
        self.dirty = False
        return None


class UnsafeCache(Exception):
    """The cache directory or file is not one allocscope may trust (one-line reason)."""


def _check_owner_mode(st: os.stat_result, what: str, *, private: bool) -> None:
    if st.st_uid != 0:
        raise UnsafeCache(f"{what} is owned by uid {st.st_uid}, not root")
    bad = 0o077 if private else 0o022
    if st.st_mode & bad:
        raise UnsafeCache(f"{what} has mode {stat.S_IMODE(st.st_mode):04o} (others may write)")


def _prepare_dir(directory: str) -> None:
    """Create ``directory`` 0700, or check the existing one is root's own real directory."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCache(f"{directory} is not a directory (a symlink?)")
    _check_owner_mode(st, directory, private=True)


def _read_safely(path: str) -> bytes:
    """The file's bytes, if the directory and the file pass the checks (else UnsafeCache)."""
    directory = os.path.dirname(path) or "."
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCache(f"{directory} is not a directory (a symlink?)")
    _check_owner_mode(st, directory, private=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeCache(f"{path} is a symlink") from None
        raise
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise UnsafeCache(f"{path} is not a regular file")
        _check_owner_mode(fst, path, private=False)
        if fst.st_size > MAX_BYTES:
            raise UnsafeCache(f"{path} is {fst.st_size} bytes (at most {MAX_BYTES})")
        return os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)


def _verdicts_from(d: object) -> dict[str, CheckResult] | None:
    if not isinstance(d, dict) or len(d) > MAX_VERDICTS:
        return None
    out: dict[str, CheckResult] = {}
    for k, v in d.items():
        if not (isinstance(k, str) and 0 < len(k) < 200 and isinstance(v, dict)):
            return None
        ok, detail, seconds = v.get("ok"), v.get("detail"), v.get("seconds", 0.0)
        if not (
            isinstance(ok, bool)
            and isinstance(detail, str)
            and len(detail) <= 1000
            and isinstance(seconds, int | float)
        ):
            return None
        out[k] = CheckResult(ok, detail, float(seconds))
    return out


def parse(data: bytes, identity: tuple[str, str]) -> tuple[dict[str, CheckResult], BTFFacts | None]:
    """The verdicts and BTF facts of ``data`` if it is a well-formed cache of ``identity``;
    raises ValueError (with the reason) otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("unknown format")
    if (doc.get("boot_id"), doc.get("release")) != identity:
        raise ValueError("from another boot")
    verdicts = _verdicts_from(doc.get("verdicts"))
    if verdicts is None:
        raise ValueError("malformed verdicts")
    raw_btf = doc.get("btf")
    facts = None if raw_btf is None else BTFFacts.from_dict(raw_btf)
    if raw_btf is not None and facts is None:
        raise ValueError("malformed btf facts")
    return verdicts, facts


def load(path: str | None = None) -> BootCache:
    """This boot's cache (empty, with the reason in ``status``, when it cannot be used)."""
    path = cache_path() if path is None else path
    identity = boot_identity()
    cache = BootCache(path, identity)
    if path is None:
        cache.status = f"disabled ({ENV}=off)"
        return cache
    if identity is None:
        cache.status = "no boot id"
        return cache
    if os.geteuid() != 0:
        cache.status = "not root"
        return cache
    try:
        data = _read_safely(path)
    except FileNotFoundError:
        return cache
    except UnsafeCache as e:
        cache.status = f"ignored: {e}"
        return cache
    except OSError as e:
        cache.status = f"ignored: {path}: {e.strerror or e}"
        return cache
    try:
        cache.verdicts, cache.btf = parse(data, identity)
    except ValueError as e:
        cache.status = f"ignored: {path}: {e}"
        cache.dirty = True  # rewrite it (a stale or corrupt file is replaced, not trusted)
        return cache
    cache.status = "loaded"
    return cache


def record_attempt(
    cache: BootCache, backend: str, functions: list[str], result: CheckResult
) -> None:
    """Remember a who-calls attempt under the keys :func:`verdict_keys` gives."""
    from allocscope.probes.who_calls import verdict_keys

    for fn in functions:
        for key in verdict_keys(backend, fn, result):
            cache.record(key, result)


def seed_from_attach_types(cache: BootCache, attach: Mapping[str, CheckResult]) -> None:
    """Record doctor's attempts (kprobe/fentry on its probe function, tracepoints) as
    verdicts: a kernel-wide failure there rules the backend out for every site."""
    from allocscope.probes.capabilities import DEFAULT_FUNCTION

    for backend in ("fentry", "kprobe", "raw_tracepoint", "tracepoint"):
        r = attach.get(backend)
        if r is None or r.detail.startswith("not tried"):
            continue
        record_attempt(cache, backend, [DEFAULT_FUNCTION], r)


def settle_fentry(cache: BootCache, function: str) -> None:
    """Before fentry would be compiled as a candidate: ask the kernel with bpf(2) whether
    it loads fentry programs at all (:func:`fentry_load_check`, milliseconds, no compile).
    A refusal becomes the kernel-wide ``fentry`` verdict, so even the first run of a boot
    compiles only the backend that will work; the answer itself is kept as ``fentry-load``,
    so later runs do not ask again."""
    from allocscope.probes.who_calls import refused

    if FENTRY_LOAD in cache.verdicts or refused(cache.verdicts, "fentry", function):
        return
    result = fentry_load_check(function)
    if result is None:
        return
    cache.record(FENTRY_LOAD, result)
    if not result.ok:
        record_attempt(cache, "fentry", [function], result)
