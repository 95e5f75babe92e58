"""Is the filesystem a path is meant to live on actually mounted?

A fleet store usually sits on its own filesystem (an NFS export, a data disk) listed in
/etc/fstab. When that filesystem is not mounted -- boot ordering, a failed NFS server -- its
mount point is an ordinary directory on the root filesystem, perfectly writable: an agent that
only tried a write would fill the root disk with snapshots nobody else sees. This module
answers the question the write cannot: which fstab mount point should hold the path, and is
it mounted now.
"""

from __future__ import annotations

import os
import re

FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """fstab and mountinfo write spaces and tabs in paths as ``\\040``, ``\\011``."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def fstab_mount_points(path: str | None = None) -> list[str]:
    """Mount points of the filesystems /etc/fstab lists (swap and ``none`` left out)."""
    try:
        with open(path or FSTAB, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        mp = _unescape(fields[1])
        if mp.startswith("/"):
            out.append(os.path.normpath(mp))
    return out


def mounted_points(path: str | None = None) -> set[str]:
    """Mount points mounted in this process's namespace now (mountinfo field 5)."""
    try:
        with open(path or MOUNTINFO, encoding="utf-8", errors="replace") as f:
            return {
                os.path.normpath(_unescape(fields[4]))
                for fields in (line.split() for line in f)
                if len(fields) > 4
            }
    except OSError:
        return set()


def unmounted_home(
    path: str, *, fstab: str | None = None, mountinfo: str | None = None
) -> str | None:
    """The fstab mount point that should hold ``path`` if it is not mounted now, else None.

    The deepest fstab mount point at or above ``path`` (symlinks resolved) is the filesystem
    the path is meant to be on; ``/`` always is mounted and is never the answer.
    """
    real = os.path.realpath(path)
    home = None
    for mp in fstab_mount_points(fstab):
        if mp != "/" and (real == mp or real.startswith(mp + "/")):
            if home is None or len(mp) > len(home):
                home = mp
    if home is None or home in mounted_points(mountinfo):
        return None
    return home
