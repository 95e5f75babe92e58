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
import subprocess
from dataclasses import dataclass

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


def build_private_tree(arch_dir: str, common_dir: str) -> str:
    """Merge a ``-common`` and an ``-amd64`` header dir into one symlink farm (idempotent).

    BCC wants one directory with ``include/linux/kconfig.h`` *and* the generated headers; the
    Debian packages split those between two directories.
    """
    dest = private_tree_path(arch_dir)
    marker = os.path.join(dest, ".allocscope-complete")
    if os.path.exists(marker):
        return dest
    tmp = dest + f".tmp{os.getpid()}"
    subprocess.run(["rm", "-rf", tmp], check=True)
    os.makedirs(tmp)
    subprocess.run(["cp", "-rs", os.path.join(common_dir, "."), tmp + "/"], check=True)
    subprocess.run(["cp", "-rsf", os.path.join(arch_dir, "."), tmp + "/"], check=True)
    open(os.path.join(tmp, ".allocscope-complete"), "w").close()
    subprocess.run(["rm", "-rf", dest], check=True)
    os.rename(tmp, dest)
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
