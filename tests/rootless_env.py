"""The rootless suites' set-up: an ordinary user (created when missing, so
it needs root), a work directory of theirs, and ``fusesnap serve`` running as
them (direct role). Debian's /usr/bin/python3 runs the code (the project's
interpreter may live under a directory the user cannot enter) with this
environment's site-packages on PYTHONPATH; it is the same Python 3.11 ABI.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

from tests import oci
from tests.conftest import fuse_usable

USER = "fusesnap-rootless"
NO_RANGES = "fusesnap-noranges"  # a system user: Debian's useradd gives it no subordinate ranges
RANGE_START = 200000  # the suite's user's ranges when it has none (see `ranged`)
REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"

def _readable_by(user: pwd.struct_passwd, path: Path) -> bool:
    probe = subprocess.run(["runuser", "-u", user.pw_name, "--", "test", "-r", str(path)])
    return probe.returncode == 0


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("creating an ordinary user for the rootless suite needs root")
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    if not os.path.exists(SYSTEM_PYTHON) or not shutil.which("runuser"):
        pytest.skip(f"{SYSTEM_PYTHON} and runuser are needed (Debian packages python3, util-linux)")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        return pwd.getpwnam(USER)


def has_range(path: str, user: pwd.struct_passwd) -> bool:
    """Whether `path` (/etc/subuid or /etc/subgid) gives `user` a range of 65536."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return False
    return any(line.split(":")[0] in (user.pw_name, str(user.pw_uid))
               and int(line.split(":")[2]) >= 65536 for line in lines if line.count(":") == 2)


@pytest.fixture
def ranged(user: pwd.struct_passwd) -> pwd.struct_passwd:
    """The suite's ordinary user, with subordinate uid and gid ranges of 65536
    (Debian's useradd gives a new user some; a user made before may have none)."""
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: Debian's uidmap package (make setup installs it)")
    for kind, path in (("uid", "/etc/subuid"), ("gid", "/etc/subgid")):
        if not has_range(path, user):
            subprocess.run(["usermod", f"--add-sub{kind}s",
                            f"{RANGE_START}-{RANGE_START + 65535}", user.pw_name], check=True)
    return user


def rangeless_user() -> pwd.struct_passwd:
    """An ordinary user without subordinate ranges (created when missing)."""
    try:
        other = pwd.getpwnam(NO_RANGES)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh",
                        NO_RANGES], check=True)
        other = pwd.getpwnam(NO_RANGES)
    assert not has_range("/etc/subuid", other)
    return other


@pytest.fixture
def workdir(user: pwd.struct_passwd) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fusesnap-rootless-"))
    d.chmod(0o755)
    os.chown(d, user.pw_uid, user.pw_gid)
    yield d
    subprocess.run(["fusermount3", "-u", "-z", str(d / "root" / "mnt")], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def _env() -> dict[str, str]:
    site = str(Path(pyfuse3.__file__).resolve().parent.parent)
    return {"PYTHONPATH": f"{REPO}:{site}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def as_user(user: pwd.struct_passwd) -> dict:
    """Popen arguments that run a command as `user` (no wrapper process in between,
    so signals reach the command itself)."""
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": _env(),
            "cwd": "/"}


@pytest.fixture
def rootless_daemon(user: pwd.struct_passwd, workdir: Path) -> Iterator[Path]:
    site = Path(pyfuse3.__file__).resolve().parent.parent
    if not (_readable_by(user, REPO / "fusesnap" / "__init__.py")
            and _readable_by(user, site / "trio" / "__init__.py")):
        pytest.skip(f"{USER} cannot read the source tree {REPO} or {site}")
    log = open(workdir / "daemon.log", "wb")
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "fusesnap", "serve", "--root", str(workdir / "root"),
         "--socket", str(workdir / "sock")],
        stdout=log, stderr=log, **as_user(user))
    deadline = time.monotonic() + 30
    while not (workdir / "daemon.log").read_bytes().rstrip().endswith(b"serving"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("rootless daemon did not start:\n"
                        + (workdir / "daemon.log").read_text())
        time.sleep(0.05)
    yield workdir
    proc.terminate()
    assert proc.wait(timeout=30) == 0, (workdir / "daemon.log").read_text()
    log.close()


def fusesnap_cli(user: pwd.struct_passwd, socket: Path, *args: str,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    """`fusesnap --socket SOCKET ARGS…` run as `user`."""
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "fusesnap", "--socket", str(socket), *args],
                          capture_output=True, text=True, timeout=300, **as_user(user))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_only_users_plain_files(root: Path, user: pwd.struct_passwd) -> None:
    """Everything the daemon keeps under `root` on the host (its mount point's
    contents aside) belongs to `user` and is no device node: what the
    snapshots hold of root's is recorded, not made."""
    mounts = root / "mnt"
    for path in root.rglob("*"):
        if path.is_relative_to(mounts):
            continue
        st = path.lstat()
        assert st.st_uid == user.pw_uid, path
        assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), path


def rootless_image(name: str) -> oci.Image:
    """The rich test image without its 100 MB layer (gzip or uncompressed:
    Debian's umoci reads no zstd), and a layer of what only root makes:
    root's files, device nodes, a web server's (uid 33) directory."""
    layers = [layer for layer in oci.rich_image().layers
              if not any(getattr(e, "path", "") == "data/big" for e in layer.entries)]
    return oci.Image(name, [*layers, oci.Layer([
        oci.Dir("dev"),
        oci.Device("dev/null", 1, 3),
        oci.Device("dev/loop0", 7, 0, block=True, mode=0o660, gid=6),
        oci.Dir("root", 0o700),
        oci.File("root/secret", b"root's only\n", 0o600),
        oci.Dir("var"),
        oci.Dir("var/www", 0o755, 33, 33),
        oci.File("var/www/index.html", b"served\n", 0o644, 33, 33),
    ])])
