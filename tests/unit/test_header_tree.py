"""The private header tree (probes/headers.py): built as root, handed to clang, so it is built
where nobody else can write, under a name nobody can predict, and renamed into place whole."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from allocscope.errors import CapabilityError
from allocscope.probes import headers


def fake_packages(root: Path) -> tuple[str, str]:
    """A Debian-style pair: ``-common`` (kconfig.h) and ``-amd64`` (generated headers)."""
    common = root / "linux-headers-9.9.9-common"
    arch = root / "linux-headers-9.9.9-amd64"
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (arch / "include/generated").mkdir(parents=True)
    (arch / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "9.9.9-amd64"\n')
    return str(arch), str(common)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    c = tmp_path / "cache"
    c.mkdir(mode=0o755)
    monkeypatch.setattr(headers, "CACHE_DIR", str(c))
    return c


def test_tree_is_built_whole_and_reused(tmp_path: Path, cache: Path) -> None:
    arch, common = fake_packages(tmp_path / "src")
    dest = headers.build_private_tree(arch, common)
    assert dest == headers.private_tree_path(arch)
    assert os.path.islink(os.path.join(dest, "include/linux/kconfig.h"))
    assert os.path.islink(os.path.join(dest, "include/generated/utsrelease.h"))
    assert os.path.exists(os.path.join(dest, ".allocscope-complete"))
    assert os.listdir(cache / "kheaders") == [os.path.basename(dest)]  # no temp left
    assert headers.build_private_tree(arch, common) == dest


def test_links_at_predictable_names_are_not_followed(tmp_path: Path, cache: Path) -> None:
    """A user who plants links where the build could write gets nothing overwritten."""
    arch, common = fake_packages(tmp_path / "src")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("root's file\n")
    kheaders = cache / "kheaders"
    kheaders.mkdir(mode=0o755)
    base = os.path.basename(headers.private_tree_path(arch))
    for pid in range(os.getpid() - 50, os.getpid() + 50):  # the old name: dest + .tmp<pid>
        os.symlink(victim, kheaders / f"{base}.tmp{pid}")
    headers.build_private_tree(arch, common)
    assert sorted(os.listdir(victim)) == ["keep"]
    assert (victim / "keep").read_text() == "root's file\n"


def test_incomplete_tree_is_replaced_and_a_link_at_its_name_is_not_followed(
    tmp_path: Path, cache: Path
) -> None:
    arch, common = fake_packages(tmp_path / "src")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    kheaders = cache / "kheaders"
    kheaders.mkdir(mode=0o755)
    os.symlink(victim, headers.private_tree_path(arch))  # no marker: treated as incomplete
    dest = headers.build_private_tree(arch, common)
    assert not os.path.islink(dest) and os.path.isdir(dest)
    assert os.listdir(victim) == ["keep"]


@pytest.mark.parametrize("where", ["cache", "kheaders"])
def test_directory_others_can_write_is_refused(tmp_path: Path, cache: Path, where: str) -> None:
    arch, common = fake_packages(tmp_path / "src")
    loose = cache if where == "cache" else cache / "kheaders"
    loose.mkdir(exist_ok=True)
    loose.chmod(0o1777)
    with pytest.raises(CapabilityError, match="others could change the headers"):
        headers.build_private_tree(arch, common)
    assert not os.path.exists(headers.private_tree_path(arch))


def test_a_failed_build_leaves_no_temp(tmp_path: Path, cache: Path) -> None:
    arch, _ = fake_packages(tmp_path / "src")
    with pytest.raises(subprocess.CalledProcessError):  # cp cannot read the missing dir
        headers.build_private_tree(arch, str(tmp_path / "absent-common"))
    assert os.listdir(cache / "kheaders") == []
