"""Which fstab filesystem should hold a path, and whether it is mounted (collector/mounts.py)."""

from __future__ import annotations

import os
from pathlib import Path

from allocscope.collector.mounts import fstab_mount_points, mounted_points, unmounted_home

FSTAB = """\
# /etc/fstab: static file system information.
UUID=abc  /               ext4  errors=remount-ro 0 1
UUID=def  none            swap  sw                0 0
nfs:/fleet /srv            nfs   rw                0 0
/dev/vdb1 /srv/data       xfs   noatime           0 2
/dev/vdc1 /mnt/with\\040space ext4 defaults       0 2
tmpfs     /tmp            tmpfs defaults          0 0
"""
MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /srv rw,relatime shared:20 - nfs nfs:/fleet rw
41 22 0:51 / /mnt/with\\040space rw - ext4 /dev/vdc1 rw
"""


def files(tmp_path: Path, mountinfo: str = MOUNTINFO) -> dict[str, str]:
    (tmp_path / "fstab").write_text(FSTAB)
    (tmp_path / "mountinfo").write_text(mountinfo)
    return {"fstab": str(tmp_path / "fstab"), "mountinfo": str(tmp_path / "mountinfo")}


def test_parsers_unescape_and_skip_swap(tmp_path: Path) -> None:
    f = files(tmp_path)
    assert fstab_mount_points(f["fstab"]) == ["/", "/srv", "/srv/data", "/mnt/with space", "/tmp"]
    assert mounted_points(f["mountinfo"]) == {"/", "/srv", "/mnt/with space"}


def test_deepest_fstab_mount_point_decides(tmp_path: Path) -> None:
    f = files(tmp_path)
    # /srv is mounted, but /srv/data (the deeper fstab entry) is not
    assert unmounted_home("/srv/data/allocscope", **f) == "/srv/data"
    assert unmounted_home("/srv/data", **f) == "/srv/data"
    assert unmounted_home("/srv/other/allocscope", **f) is None  # on /srv: mounted
    assert unmounted_home("/srv/database", **f) is None  # a sibling name, not under /srv/data
    assert unmounted_home("/mnt/with space/s", **f) is None
    assert unmounted_home("/var/lib/allocscope", **f) is None  # on /: always there


def test_unmounted_tmpfs_and_symlinks(tmp_path: Path) -> None:
    f = files(tmp_path)
    assert unmounted_home("/tmp/x", **f) == "/tmp"  # listed in this fstab, not in mountinfo
    link = tmp_path / "store-link"
    os.symlink("/srv/data/allocscope", link)
    assert unmounted_home(str(link), **f) == "/srv/data"


def test_missing_files_mean_nothing_is_known(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "absent")
    assert fstab_mount_points(nowhere) == [] and mounted_points(nowhere) == set()
    assert unmounted_home("/srv/data/x", fstab=nowhere, mountinfo=nowhere) is None


def test_this_machines_root_store_is_fine() -> None:
    assert unmounted_home("/var/lib/allocscope") is None
