"""Who may reach what (fusesnap/permissions.py): another local user reaches
nothing of a root daemon's, nor of an ordinary user's daemon, whatever the
umask the daemon was started with. The other user is Debian's `nobody`,
driven with `runuser`; everything lives under a world-traversable directory,
so only fusesnap's own modes stand in the way (each test checks that first).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, fuse_usable

OTHER = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(e.errno)
else:
    print(0)
"""


@pytest.fixture
def other() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("acting as another local user needs root")
    if not shutil.which("runuser") or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"runuser and {SYSTEM_PYTHON} are needed (util-linux, python3)")
    try:
        return pwd.getpwnam(OTHER)
    except KeyError:
        pytest.skip(f"no user {OTHER} on this machine")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="fusesnap-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start(open_dir: Path) -> Iterator[type[Daemon]]:
    """Starts root daemons under `open_dir` (socket in open_dir/run, which the
    daemon creates); all stopped afterwards."""
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    made: list[Daemon] = []

    class Tracked(Daemon):
        def __init__(self, args: tuple[str, ...] = ()) -> None:
            n = len(made)
            super().__init__(open_dir / f"root{n}", open_dir / f"run{n}" / "fusesnap.sock",
                             args=args)
            made.append(self)

    yield Tracked
    for d in made:
        d.cleanup()


def as_other(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", OTHER, "--", *command], capture_output=True,
                          text=True, cwd="/")


def connect_errno(socket: Path) -> int:
    """0 if `nobody` could connect to `socket`, else the errno."""
    out = as_other(SYSTEM_PYTHON, "-c", CONNECT, str(socket))
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def reachable(open_dir: Path) -> None:
    """The control: `nobody` can use `open_dir` itself, so a refusal below it is
    fusesnap's doing."""
    probe = open_dir / "probe"
    probe.write_text("x")
    probe.chmod(0o644)
    assert as_other("cat", str(probe)).stdout == "x"


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of everything under `root` but the mount, by path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "mnt"]
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def fill(d: Daemon) -> Path:
    """A snapshot with a setuid-root copy of `id` and /dev/null's device node,
    and a committed blob; returns the snapshot's directory."""
    work = d.prepare("work")
    shutil.copy("/usr/bin/id", work / "id")
    os.chmod(work / "id", 0o4755)
    os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(d.socket), "content",
                    "ingest", "blob"], input=b"secret", check=True, capture_output=True)
    return work


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_root_daemon_store_and_socket_are_private_whatever_the_umask(
        other: pwd.struct_passwd, start: type[Daemon], open_dir: Path, umask: int) -> None:
    d = start().start(umask=umask)
    fill(d)
    assert stat.S_IMODE(d.root.stat().st_mode) == 0o700
    open_to_others = {p: oct(m) for p, m in modes_under(d.root).items() if m & 0o077}
    assert open_to_others == {}
    st = d.socket.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, 0)
    assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(d.mountpoint.stat().st_mode) == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_other_user_cannot_connect_read_the_store_or_enter_the_mount(
        other: pwd.struct_passwd, start: type[Daemon], open_dir: Path, umask: int) -> None:
    d = start().start(umask=umask)
    fill(d)
    reachable(open_dir)
    assert connect_errno(d.socket) == 13  # EACCES
    blob = next((d.root / "content" / "blobs" / "sha256").iterdir())
    for path in (d.root / "metadata.db", blob, d.root / "layers"):
        assert as_other("cat", str(path)).returncode != 0, path
    assert as_other("ls", str(d.root)).returncode != 0
    assert as_other("ls", str(d.mountpoint)).returncode != 0


def test_other_user_cannot_run_a_setuid_binary_or_open_a_device_node(
        other: pwd.struct_passwd, start: type[Daemon], open_dir: Path) -> None:
    d = start(("--mountpoint", str(open_dir / "mnt")))
    d.mountpoint = open_dir / "mnt"  # outside ROOT, under a directory open to all
    d.start(umask=0)
    work = fill(d)
    reachable(open_dir)
    assert subprocess.run([str(work / "id"), "-u"], capture_output=True,
                          text=True).stdout == "0\n"  # root itself can
    ran = as_other(str(work / "id"), "-u")
    assert ran.returncode != 0 and "Permission denied" in ran.stderr
    wrote = as_other("sh", "-c", f"echo x > {work / 'null'}")
    assert wrote.returncode != 0 and "Permission denied" in wrote.stderr


def test_socket_group_lets_its_members_connect_but_not_enter_the_mount(
        other: pwd.struct_passwd, start: type[Daemon], open_dir: Path) -> None:
    group = subprocess.run(["id", "-gn", OTHER], capture_output=True, text=True,
                           check=True).stdout.strip()
    d = start(("--socket-group", group)).start()
    work = fill(d)
    reachable(open_dir)
    assert d.socket.stat().st_gid == other.pw_gid
    assert connect_errno(d.socket) == 0
    assert as_other("ls", str(work)).returncode != 0


def test_unknown_socket_group_is_refused_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fusesnap", "serve", "--root", str(tmp_path / "root"),
         "--socket", str(tmp_path / "sock"), "--socket-group", "no-such-group-here"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1
    assert "--socket-group no-such-group-here: no such group" in out.stderr
    assert not (tmp_path / "root").exists()


def test_a_store_left_open_by_an_older_fusesnap_is_tightened(
        other: pwd.struct_passwd, start: type[Daemon]) -> None:
    d = start().start()
    fill(d)
    assert d.stop() == 0
    opened = [d.root, d.root / "content", d.root / "layers", d.root / "metadata.db"]
    for p in opened:
        p.chmod(0o755 if p.is_dir() else 0o644)
    d.start()
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in opened} == {
        "root0": "0o700", "content": "0o700", "layers": "0o700", "metadata.db": "0o600"}


def test_ordinary_users_daemon_is_private_to_that_user(
        other: pwd.struct_passwd, rootless_daemon: Path) -> None:
    workdir = rootless_daemon
    root = workdir / "root"
    reachable(workdir)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((workdir / "sock").stat().st_mode) == 0o600
    assert connect_errno(workdir / "sock") == 13
    assert as_other("ls", str(root)).returncode != 0
    assert as_other("cat", str(root / "metadata.db")).returncode != 0
