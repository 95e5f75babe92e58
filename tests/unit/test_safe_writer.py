"""The one safe writer (collector/atomic.py) against a hostile local user.

This machine runs with ``fs.protected_symlinks=0``, so a link planted in a world-writable
directory is followed by root unless the writer refuses it. Each test plants what an attacker
could and checks, on the filesystem, that the victim file is untouched.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from allocscope.collector import atomic
from allocscope.collector.atomic import OutputError, write_text_atomic
from allocscope.collector.host import collect_host_metadata
from allocscope.collector.result import Result

VICTIM_TEXT = "root-owned file an attacker wants overwritten\n"


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text(VICTIM_TEXT)
    return v


def test_links_at_every_predictable_name_are_never_followed(world_dir: Path, victim: Path) -> None:
    """The old scheme's names (``.<name>.<host>.<pid>.tmp``) for every pid near ours."""
    target = world_dir / "out.json"
    host = socket.gethostname()
    me = os.getpid()
    for pid in range(max(1, me - 200), me + 200):
        (world_dir / f".out.json.{host}.{pid}.tmp").symlink_to(victim)
    write_text_atomic(str(target), "{}\n")
    assert victim.read_text() == VICTIM_TEXT
    assert target.read_text() == "{}\n" and not target.is_symlink()


def test_a_link_at_the_exact_temp_name_is_refused(
    world_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even an attacker who guessed the 64 random bits gets O_EXCL's refusal, not a write."""
    monkeypatch.setattr(secrets, "token_hex", lambda n: "0123456789abcdef")
    target = world_dir / "out.json"
    planted = Path(atomic.temp_name(str(target)))
    planted.symlink_to(victim)
    with pytest.raises(OutputError) as e:
        write_text_atomic(str(target), "{}\n")
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert victim.read_text() == VICTIM_TEXT
    assert not target.exists()


def test_a_link_at_the_target_is_refused_neither_followed_nor_replaced(
    world_dir: Path, victim: Path
) -> None:
    """A planted link is not written through; nor is a link replaced (``-o /dev/stdout``, a
    link to ``/proc/self/fd/1``, used to become a regular file when stdout was one)."""
    target = world_dir / "out.json"
    target.symlink_to(victim)
    stdout = world_dir / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    for link in (target, stdout):
        to = os.readlink(link)
        with pytest.raises(OutputError, match="is a symbolic link"):
            write_text_atomic(str(link), "{}\n")
        assert link.is_symlink() and os.readlink(link) == to
    assert victim.read_text() == VICTIM_TEXT


def test_a_device_or_fifo_at_the_target_is_refused(tmp_path: Path) -> None:
    """``-o /dev/null`` as root used to replace the device node with a regular file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:
        null = tmp_path / "null"  # the same device as /dev/null, never the real node
        os.mknod(null, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
        targets.append(null)
    for t in targets:
        before = os.lstat(t)
        with pytest.raises(OutputError, match="not a regular file"):
            write_text_atomic(str(t), "x")
        after = os.lstat(t)
        assert (after.st_mode, after.st_rdev, after.st_ino) == (
            before.st_mode,
            before.st_rdev,
            before.st_ino,
        )
    assert sorted(os.listdir(tmp_path)) == sorted(t.name for t in targets)


def test_temp_names_are_unguessable(tmp_path: Path) -> None:
    names = {atomic.temp_name(str(tmp_path / "x")) for _ in range(1000)}
    assert len(names) == 1000
    assert all(atomic.TEMP_RE.match(os.path.basename(n)) for n in names)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: str(p), "is a directory"),
        (lambda p: str(p / "no" / "such" / "dir" / "f.json"), "no such directory"),
        (lambda p: "", "empty output path"),
        (lambda p: "/proc/version", ""),
        (lambda p: "/sys/kernel/allocscope.json", ""),
    ],
)
def test_failures_are_one_line_naming_the_path(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(OutputError) as e:
        write_text_atomic(path, "x")
    msg = str(e.value)
    assert "\n" not in msg and reason in msg
    if path:
        assert msg.startswith(path)
    assert isinstance(e.value, OSError)  # the store turns it into StoreUnavailable


def test_parents_only_when_asked(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "f.txt"
    with pytest.raises(OutputError):
        write_text_atomic(str(deep), "x")
    write_text_atomic(str(deep), "x", make_parents=True)
    assert deep.read_text() == "x"


def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")

    def boom(f: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.write_atomic(str(target), boom)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.json"]


def test_a_killed_writers_temp_is_removed_by_the_next_write(tmp_path: Path) -> None:
    me = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".r.json.{me}.999999999.0123456789abcdef.tmp"
    alive = tmp_path / f".r.json.{me}.{os.getpid()}.0123456789abcdef.tmp"
    other_host = tmp_path / ".r.json.elsewhere.999999999.0123456789abcdef.tmp"
    link = tmp_path / f".r.json.{me}.999999998.0123456789abcdef.tmp"
    for p in (dead, alive, other_host):
        p.write_text("partial")
    link.symlink_to(tmp_path / "nothing")
    write_text_atomic(str(tmp_path / "r.json"), "{}")
    left = set(os.listdir(tmp_path))
    assert dead.name not in left
    assert {alive.name, other_host.name, link.name, "r.json"} <= left


def test_a_killed_writers_temp_is_removed_by_the_next_write_of_any_file(tmp_path: Path) -> None:
    """A real writer, SIGKILLed inside its write (its temp file exists and is locked), leaves a
    temp that the next write into the directory, of another file, removes; a live writer's
    temp, locked, is never touched."""
    script = (
        "import sys, time\n"
        "from allocscope.collector.atomic import atomic_file\n"
        "with atomic_file(sys.argv[1]) as f:\n"
        "    f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def writer(name: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / name)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert p.stdout is not None and p.stdout.readline() == "writing\n"
        return p

    killed, live = writer("killed.json"), writer("live.json")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        temps = sorted(n for n in os.listdir(tmp_path) if atomic.TEMP_RE.match(n))
        assert len(temps) == 2
        write_text_atomic(str(tmp_path / "other.json"), "{}")
        left = sorted(os.listdir(tmp_path))
        assert [n for n in left if ".killed.json." in n] == []
        assert [n for n in left if ".live.json." in n] == [t for t in temps if ".live.json." in t]
    finally:
        live.kill()
        live.wait(10)


def test_result_files_go_through_the_safe_writer(world_dir: Path, victim: Path) -> None:
    host = socket.gethostname()
    for pid in range(max(1, os.getpid() - 50), os.getpid() + 50):
        (world_dir / f".r.json.{host}.{pid}.tmp").symlink_to(victim)
    r = Result("who-calls", collect_host_metadata(), 0.0, 1.0, {}, {})
    r.write(str(world_dir / "r.json"))
    assert victim.read_text() == VICTIM_TEXT
    mode = stat.S_IMODE(os.stat(world_dir / "r.json").st_mode)
    assert mode & 0o002 == 0, "never world-writable"
