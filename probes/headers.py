"""Which kernel headers BCC compiles against, and whether they match the running kernel.

BCC's C needs kernel headers even for programs that read no kernel struct. In order of trust:

1. ``/lib/modules/$(uname -r)/build`` with headers *for this release* -- matching.
2. ``/sys/kernel/kheaders.tar.xz`` (``CONFIG_IKHEADERS``) -- the kernel's own, matching; BCC
   extracts it itself when (1) is absent.
3. The nearest distribution headers (e.g. Debian's ``linux-headers-amd64`` for another
   release), merged into a private symlink tree under allocscope's cache and passed through
   ``BCC_KERNEL_SOURCE`` so nothing under /lib/modules is touched -- **mismatched**: good for
   programs that only use tracepoint arguments, never for reading kernel structs.

Probes receive ``-DALLOCSCOPE_HEADERS_MATCH=0|1`` and read structs only when it is 1 (or when
offsets come from BTF as ``-D`` macros).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass

from allocscope.errors import CapabilityError

KHEADERS = "/sys/kernel/kheaders.tar.xz"
CACHE_DIR = os.environ.get(
    "ALLOCSCOPE_CACHE", os.path.join(os.environ.get("XDG_CACHE_HOME", "/var/cache"), "allocscope")
)


@dataclass(frozen=True, slots=True)
class HeaderTree:
    """Where BCC finds headers: ``path`` None means "BCC's own search" (cases 1 and 2)."""

    kind: str  # "modules" | "kheaders" | "nearest" | "none"
    path: str | None
    release: str  # the release the headers are for
    matches: bool
    note: str

    def environment(self) -> dict[str, str]:
        """Environment variables BCC must see for this tree."""
        return {"BCC_KERNEL_SOURCE": self.path} if self.kind == "nearest" and self.path else {}


def _release_of_tree(path: str) -> str | None:
    """Kernel release a header tree was built for (from its utsrelease.h / version file)."""
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            with open(os.path.join(path, rel)) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r'"([^"]+)"', text)
        return m[1] if m else text.strip()
    return None


def distribution_header_dirs() -> list[tuple[str, str]]:
    """(arch dir, common dir) pairs of installed Debian-style header packages, newest first."""
    pairs = []
    for arch_dir in sorted(glob.glob("/usr/src/linux-headers-*-amd64"), reverse=True):
        common = re.sub(r"-amd64$", "-common", arch_dir)
        if os.path.isdir(common):
            pairs.append((arch_dir, common))
    return pairs


def private_tree_path(arch_dir: str) -> str:
    return os.path.join(CACHE_DIR, "kheaders", os.path.basename(arch_dir))


def _private_parent(directory: str) -> None:
    """Create ``directory`` (0755), or refuse one that another user could write into.

    The tree is built by root and handed to clang: a directory others may write to (an
    ``ALLOCSCOPE_CACHE`` or ``XDG_CACHE_HOME`` under /tmp) would let them swap headers, or plant
    links where the build writes, between our check and BCC's compile.
    """
    os.makedirs(directory, mode=0o755, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise CapabilityError(f"{directory}: not a directory (a symlink?); remove it")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise CapabilityError(
            f"{directory}: owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}: others "
            "could change the headers BCC compiles; remove it or set ALLOCSCOPE_CACHE to a "
            "directory only root can write"
        )


def _remove_tree(path: str) -> None:
    """Remove a file, a link (not what it points to) or a directory tree, if present."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def build_private_tree(arch_dir: str, common_dir: str) -> str:
    """Merge a ``-common`` and an ``-amd64`` header dir into one symlink farm (idempotent).

    BCC wants one directory with ``include/linux/kconfig.h`` *and* the generated headers; the
    Debian packages split those between two directories. The farm is built in an unguessable
    directory made exclusively by :func:`tempfile.mkdtemp` beside its final name, then renamed
    into place, so a concurrent run or a killed one never leaves a half-built tree in use.
    """
    dest = private_tree_path(arch_dir)
    marker = os.path.join(dest, ".allocscope-complete")
    if os.path.exists(marker):
        return dest
    parent = os.path.dirname(dest)
    _private_parent(os.path.dirname(parent))
    _private_parent(parent)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", dir=parent)
    try:
        subprocess.run(["cp", "-rs", os.path.join(common_dir, "."), tmp + "/"], check=True)
        subprocess.run(["cp", "-rsf", os.path.join(arch_dir, "."), tmp + "/"], check=True)
        os.close(os.open(os.path.join(tmp, ".allocscope-complete"), os.O_CREAT | os.O_EXCL, 0o644))
        os.chmod(tmp, 0o755)
        _remove_tree(dest)  # an incomplete tree from an older version
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.exists(marker):  # not a concurrent run that finished first
                raise
    finally:
        _remove_tree(tmp)
    return dest


def resolve_headers(*, build: bool = True) -> HeaderTree:
    """Pick the most trustworthy header tree available (see module docstring)."""
    release = platform.release()
    build_dir = f"/lib/modules/{release}/build"
    if os.path.isfile(os.path.join(build_dir, "include/linux/kconfig.h")) or os.path.isfile(
        os.path.join(f"/lib/modules/{release}/source", "include/linux/kconfig.h")
    ):
        tree_release = _release_of_tree(build_dir)
        matches = tree_release is None or tree_release == release
        return HeaderTree(
            "modules",
            None,
            tree_release or release,
            matches,
            f"{build_dir}" + ("" if matches else f" is for {tree_release}, not {release}"),
        )
    if os.path.exists(KHEADERS):
        return HeaderTree(
            "kheaders",
            None,
            release,
            True,
            f"{KHEADERS} (CONFIG_IKHEADERS: the kernel's own headers)",
        )
    for arch_dir, common_dir in distribution_header_dirs():
        tree_release = _release_of_tree(arch_dir) or os.path.basename(arch_dir)[14:]
        path = private_tree_path(arch_dir)
        if build:
            path = build_private_tree(arch_dir, common_dir)
        elif not os.path.exists(os.path.join(path, ".allocscope-complete")):
            continue
        return HeaderTree(
            "nearest",
            path,
            tree_release,
            tree_release == release,
            f"no headers for {release}; using {tree_release} from {arch_dir} via a private "
            f"tree at {path} (struct reads disabled)",
        )
    return HeaderTree(
        "none",
        None,
        "",
        False,
        "no kernel headers: install linux-headers-$(uname -r) or the nearest "
        "linux-headers-amd64 (./scripts/setup does this)",
    )
