"""The one safe writer: every file allocscope writes goes through :func:`write_atomic`.

allocscope runs as root and is pointed at shared and world-writable directories (``-o
/tmp/x.json``, a store many agents share). Three rules follow, each for a reason:

* **Unguessable, exclusive temp files.** The temp name is ``.<name>.<host>.<pid>.<16 hex>.tmp``
  in the target's own directory (so the rename is atomic), created with ``O_CREAT | O_EXCL |
  O_NOFOLLOW``. A predictable name (the old ``.<name>.<host>.<pid>.tmp``) let a local user plant
  symlinks for upcoming pids and have root overwrite a file of their choice when
  ``fs.protected_symlinks=0``; with 64 random bits there is nothing to plant, and ``O_EXCL``
  refuses a link that is there anyway. The caller writes through the file object we opened,
  never by name, so the name cannot be swapped under it.
* **Atomic publication.** fsync the file, ``rename`` it over the target, fsync the directory: a
  reader or a crash sees the old content or the whole new one. Only a regular file (or
  nothing) at the target is replaced: a link, a device (``/dev/null``), a FIFO or a directory
  there is refused up front, and a link planted after that check is replaced by ``rename``,
  never written through.
* **One-line failures.** Any ``OSError`` becomes :class:`OutputError` (``PATH: reason``), which
  the CLI prints as ``allocscope: error: ...``; it is still an ``OSError`` for callers (the store)
  that turn write failures into their own errors. Missing parent directories are an error
  unless the caller asks for them (``make_parents``): a typo in ``-o`` should not grow a tree.

Host and pid stay in the temp name so :func:`clean_stale_temps` can remove what a killed writer
of this host left, and leave a live writer's (or another host's, on a shared filesystem) alone.
A pid says little on a shared store, though: two cloned machines share a hostname, and the
other machine's pid is "dead" here. So the writer also holds an exclusive ``flock`` on its temp
file for as long as it writes (released by the kernel when the writer dies, NFS forwards it to
the server), and a temp is removed only when that lock can be taken (:func:`writer_gone`).
Every write first removes such leftovers from its directory, whatever file they were for.

:func:`check_output` tries the target's directory before a long capture starts, so ``-o`` on
a read-only or pseudo filesystem fails in a second, not after a 60 s window.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from allocscope.errors import AllocscopeError

TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp$")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputError(AllocscopeError, OSError):
    """A file could not be written; the message names it and says why, on one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def temp_name(path: str) -> str:
    """A fresh unguessable temp path beside ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    return os.path.join(directory, f".{base}.{_host()}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _reason(e: OSError) -> str:
    if e.errno == errno.EISDIR:
        return "is a directory"
    if e.errno == errno.ENOENT:  # the directory exists (checked first): a pseudo filesystem
        return "cannot create a file there (a pseudo filesystem such as /proc or /sys?)"
    return e.strerror or str(e)


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_existing(path: str) -> None:
    """Refuse a target that the rename would wrongly replace: a directory, a link, or anything
    that is not a regular file. ``-o /dev/null`` used to replace the device node with a regular
    file, as root (every later ``> /dev/null`` on the machine then filled a file), and ``-o
    /dev/stdout`` replaced that link. A link is refused whatever it points to: writing through
    it is what a planted link wants, and replacing it breaks ``/dev/stdout`` and its kin."""
    try:
        st = os.lstat(path)
    except OSError:
        return  # nothing there (or unreachable: the open below says why)
    if stat.S_ISLNK(st.st_mode):
        try:
            to = os.readlink(path)
        except OSError:
            to = "?"
        raise OutputError(
            errno.ELOOP,
            f"{path}: is a symbolic link (to {to[:200]}): not written through, not replaced; "
            "name the file itself, or omit -o to print to stdout",
        )
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(errno.EISDIR, f"{path}: is a directory")
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise OutputError(
                errno.EINVAL,
                f"{path}: is {kind}, not a regular file: the output goes to a new file renamed "
                "over the target, which would replace it; omit -o to print to stdout",
            )


def _check_target(path: str, make_parents: bool) -> str:
    if not path:
        raise OutputError(errno.EINVAL, "'': an empty output path")
    directory = os.path.dirname(os.path.abspath(path))
    _check_existing(path)
    if make_parents:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise OutputError(e.errno or 0, f"{path}: {_reason(e)}") from None
    elif not os.path.isdir(directory):
        raise OutputError(errno.ENOENT, f"{path}: no such directory {directory} (create it first)")
    return directory


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # pseudo filesystems
            raise
    finally:
        os.close(dfd)


def check_output(path: str, *, make_parents: bool = False) -> None:
    """Raise :class:`OutputError` now if ``path`` cannot be written (the checks and the
    exclusive temp-file creation :func:`atomic_file` does, with nothing left behind). A disk
    that fills up later still fails at the write itself."""
    _check_target(path, make_parents)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, _OPEN_FLAGS, 0o600)
    except OSError as e:
        raise OutputError(e.errno or 0, f"{path}: {_reason(e)}") from None
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextmanager
def atomic_file(path: str, *, make_parents: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` when the block ends without an exception.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    directory = _check_target(path, make_parents)
    clean_stale_temps(directory)  # a killed writer's, whatever file it was writing there
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, _OPEN_FLAGS, 0o666)
    except OSError as e:
        raise OutputError(e.errno or 0, f"{path}: {_reason(e)}") from None
    hold_lock(fd)
    published = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        published = True
        _fsync_dir(directory)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(e.errno or 0, f"{path}: {_reason(e)}") from None
    finally:
        if not published:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_atomic(
    path: str, write: Callable[[BinaryIO], object], *, make_parents: bool = False
) -> None:
    """Call ``write(f)`` on a fresh temp file and publish the result atomically at ``path``."""
    with atomic_file(path, make_parents=make_parents) as f:
        write(f)


def write_text_atomic(path: str, text: str, *, make_parents: bool = False) -> None:
    write_atomic(path, lambda f: f.write(text.encode()), make_parents=make_parents)


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process of this host (ours counts; EPERM means it exists)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_lock(fd: int) -> bool:
    """Mark the file open at ``fd`` as being written: an exclusive ``flock`` that the kernel
    drops when the last descriptor of this open file closes (or the writer dies). A filesystem
    without locks (``nolock`` NFS) gives no mark, and then nothing is ever proven abandoned."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def writer_gone(fd: int) -> bool:
    """Is nobody writing the file open at ``fd`` (see :func:`hold_lock`)? A shared lock is
    taken and kept until ``fd`` is closed, so a writer cannot start on it meanwhile; any
    failure (held, or locks unsupported) answers no: only a proof removes a file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def clean_stale_temps(directory: str, base: str | None = None) -> int:
    """Remove temp files in ``directory`` that a dead writer of this host left behind.

    Only our own pattern, only regular files (never a link) owned by us, only this host's, only
    when the pid is gone and no writer holds the file's lock (a cloned machine with our hostname
    may be writing it); ``base`` limits it to the temps of one target name. Returns how many.
    """
    me, uid = _host(), os.geteuid()
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        m = TEMP_RE.match(name)
        if not m or m["host"] != me or (base is not None and m["name"] != base):
            continue
        if pid_alive(int(m["pid"])):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.path.samestat(os.fstat(fd), st) and writer_gone(fd):
                os.unlink(full)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
