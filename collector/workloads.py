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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess


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
        if mounted:
            subprocess.run(["umount", "-l", d], capture_output=True)
            os.rmdir(d)
        else:
            shutil.rmtree(d, ignore_errors=True)


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


WORKLOADS: dict[str, Callable[[float], int]] = {}


def _open_close_for(seconds: float) -> int:
    end = time.monotonic() + seconds
    ops = 0
    while time.monotonic() < end:
        ops += open_close(2000)
    return ops


def _tmpfs_write_for(seconds: float) -> int:
    end = time.monotonic() + seconds
    mib = 0
    with private_tmpfs("256m") as d:
        while time.monotonic() < end:
            tmpfs_write(64, d)
            mib += 64
    return mib


WORKLOADS["open-close"] = _open_close_for
WORKLOADS["tmpfs-write"] = _tmpfs_write_for


def _child(name: str, seconds: float, delay: float) -> None:
    time.sleep(delay)
    WORKLOADS[name](seconds)


def start(name: str, seconds: float, delay: float = 0.0) -> BaseProcess:
    """Run workload ``name`` for ``seconds`` in a child process (after ``delay``)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (have: {', '.join(sorted(WORKLOADS))})")
    p = mp.get_context("fork").Process(target=_child, args=(name, seconds, delay), daemon=True)
    p.start()
    return p
