"""Built-in workloads whose allocations are known, for the demo, tests and benchmarks.

Each workload is a plain function (run it in this process, so a ``-p PID`` filter can target
it) and can also run in a child process via :func:`start` (so a capture can run alongside).
The kernel paths they exercise, on Linux 6.x:

* ``open-close``: ``open()``+``close()`` of one file. Each op allocates a ``struct file``
  (``alloc_empty_file`` -> ``kmem_cache_alloc``), a name buffer (``getname_flags``) and an LSM
  blob (``security_file_alloc``): ~3 ``kmem_cache_alloc`` events per op.
* ``tmpfs-write``: writes into a file on a private tmpfs. Each new page goes through
  ``shmem_add_to_page_cache`` -> ``xas_store`` -> ``xas_create`` -> ``xas_alloc`` (xarray nodes)
  and ``shmem_alloc_folio`` -> page allocator.
* ``leak-pipes``: a planted leak for ``allocscope leaks``: opens :data:`LEAK_PIPES` pipes and
  writes one byte into each, then holds them while churning opens and closes in batches of
  64. Each held pipe keeps one page from ``(anon_)pipe_write`` (plus its pipe_inode_info,
  pipe_buffer array, inode, dentry and two files); the churned ``struct file``s live a few
  microseconds.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Any

from allocscope.errors import AllocscopeError


def open_close(ops: int, path: str = "/etc/hostname") -> int:
    """``ops`` open/close pairs of ``path``; returns ops done."""
    flags = os.O_RDONLY
    for _ in range(ops):
        os.close(os.open(path, flags))
    return ops


@contextmanager
def private_tmpfs(size: str = "1g") -> Iterator[str]:
    """A freshly mounted tmpfs (root), falling back to a dir under /dev/shm.

    A private mount means unmounting frees every page at once, so repeated runs start equal.
    """
    d = tempfile.mkdtemp(prefix="allocscope-tmpfs-")
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", d], capture_output=True
        )
        mounted = r.returncode == 0
    if not mounted:
        shutil.rmtree(d)
        d = tempfile.mkdtemp(prefix="allocscope-tmpfs-", dir="/dev/shm")
    try:
        yield d
    finally:
        # A second SIGTERM (or Ctrl-C) must not cut the clean-up short: that left 256 MiB
        # tmpfs mounts under /tmp.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if mounted:
                subprocess.run(["umount", "-l", d], capture_output=True)
                os.rmdir(d)
            else:
                shutil.rmtree(d, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def tmpfs_write(mib: int, directory: str | None = None, chunk: int = 1 << 20) -> int:
    """Write ``mib`` MiB of new pages into tmpfs files; returns bytes written.

    Writes go to fresh 16 MiB files (deleted afterwards) so every page is a new page-cache
    insertion: shmem_add_to_page_cache is hit once per page.
    """
    buf = b"\xa5" * chunk
    total = mib << 20
    written = 0

    def _write(d: str) -> int:
        done = 0
        n = 0
        while done < total:
            path = os.path.join(d, f"w{n}")
            with open(path, "wb", buffering=0) as f:
                for _ in range(min(16 << 20, total - done) // chunk):
                    done += f.write(buf)
            os.unlink(path)
            n += 1
        return done

    if directory is not None:
        written = _write(directory)
    else:
        with private_tmpfs(f"{max(64, mib + 32)}m") as d:
            written = _write(d)
    return written


LEAK_PIPES = 2048  # leak-pipes: pipes held (two fds each)


def hold_pipes(n: int) -> list[tuple[int, int]]:
    """Open ``n`` pipes, one byte written into each (one page each), and return their fds.

    Raises the soft RLIMIT_NOFILE to the hard limit when ``2 n`` fds need it.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    held = []
    for _ in range(n):
        r, w = os.pipe()
        os.write(w, b"x")
        held.append((r, w))
    return held


def churn_files(seconds: float, path: str = "/etc/hostname", batch: int = 64) -> int:
    """Open ``batch`` files, close them, repeat for ``seconds``; returns opens done.

    Batches keep ~``batch`` ``struct file``s alive at once, so the churn uses that many slab
    addresses (one open/close pair reuses the same object over and over)."""
    end = time.monotonic() + seconds
    ops = 0
    while time.monotonic() < end:
        for _ in range(50):
            fds = [os.open(path, os.O_RDONLY) for _ in range(batch)]
            for fd in fds:
                os.close(fd)
        ops += 50 * batch
    return ops


def leak_pipes(n: int, seconds: float, path: str = "/etc/hostname") -> int:
    """Hold ``n`` pipes (one page each) and churn open/close of ``path`` for ``seconds``;
    returns the churned ops. The pipes are closed when it returns."""
    held = hold_pipes(n)
    try:
        return churn_files(seconds, path)
    finally:
        for r, w in held:
            os.close(r)
            os.close(w)


WORKLOADS: dict[str, Callable[[float], int]] = {}


# Set in the workload child: called once its set-up (mount namespace, tmpfs) is done and the
# loop begins, so a capture can start its clock on a running workload (under QEMU TCG with one
# vCPU the set-up takes over 2 s: a first 2 s window used to see almost nothing).
def _not_waited_for() -> None:
    """Outside a child started by :func:`start` nobody waits for the loop."""


_ready: Callable[[], object] = _not_waited_for


def _open_close_for(seconds: float) -> int:
    _ready()
    end = time.monotonic() + seconds
    ops = 0
    while time.monotonic() < end:
        ops += open_close(2000)
    return ops


def _tmpfs_write_for(seconds: float) -> int:
    end = time.monotonic() + seconds
    mib = 0
    with private_tmpfs("256m") as d:
        _ready()
        while time.monotonic() < end:
            tmpfs_write(64, d)
            mib += 64
    return mib


def _leak_pipes_for(seconds: float) -> int:
    _ready()
    return leak_pipes(LEAK_PIPES, seconds)


WORKLOADS["open-close"] = _open_close_for
WORKLOADS["tmpfs-write"] = _tmpfs_write_for
WORKLOADS["leak-pipes"] = _leak_pipes_for


_PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
_CLONE_NEWNS = 0x00020000  # include/uapi/linux/sched.h


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through private_tmpfs's finally: the mount is cleaned up


def _child(name: str, seconds: float, delay: float, parent: int, ready: Any = None) -> None:
    """The workload child's whole life. Each line is one rule of the capture core:

    * it never holds the parent's BPF program, link or perf fds (every inherited fd above
      stderr is closed first), so killing the parent detaches every probe at once;
    * it dies with its parent (PR_SET_PDEATHSIG = SIGTERM; re-checked against a parent that
      died before the prctl);
    * Ctrl-C is the parent's to handle: SIGINT is ignored, so nothing is printed here;
    * SIGTERM ends the loop through ``finally`` blocks (tmpfs unmounted, files removed), and
      its mounts live in a private mount namespace, so even a SIGKILL leaves none behind.
    """
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 4096)
    libc = _libc()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if os.getppid() != parent:
        return
    if os.geteuid() == 0 and libc.unshare(_CLONE_NEWNS) == 0:
        subprocess.run(["mount", "--make-rprivate", "/"], capture_output=True)
    global _ready
    if ready is not None:
        _ready = ready.set
    try:
        time.sleep(delay)
        WORKLOADS[name](seconds)
    except (SystemExit, KeyboardInterrupt):
        pass


def check_name(name: str) -> None:
    """The one workload-name check every verb uses."""
    if name not in WORKLOADS:
        raise AllocscopeError(f"unknown workload {name!r} (have: {', '.join(sorted(WORKLOADS))})")


def start(name: str, seconds: float, delay: float = 0.0, *, wait_ready: float = 0.0) -> BaseProcess:
    """Run workload ``name`` for ``seconds`` in a child process (after ``delay``); stop it
    with :func:`stop`. With ``wait_ready``, wait up to that many seconds until the child's
    set-up is done and its loop runs. See :func:`_child` for the rules the child keeps."""
    check_name(name)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(
        target=_child,
        args=(name, seconds, delay, os.getpid(), ready),
        daemon=True,
        name=f"allocscope-{name}",
    )
    p.start()
    if wait_ready > 0:
        deadline = time.monotonic() + wait_ready
        while not ready.wait(0.05) and p.is_alive() and time.monotonic() < deadline:
            pass
    return p


def stop(p: BaseProcess, timeout: float = 10.0) -> None:
    """SIGTERM, so the child cleans up its mounts and files; SIGKILL only if it hangs."""
    if p.is_alive():
        p.terminate()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
