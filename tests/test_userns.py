"""Issue 18, parts 1 and 2: `fusesnap serve --userns` and `fusesnap exec`, as an
ordinary user with real subordinate ranges (/etc/subuid, /etc/subgid) and
Debian's newuidmap/newgidmap.

The daemon maps 0 to the user and 1-65536 to the user's ranges; inside its
namespace (reached with `fusesnap exec`) an image's files of root, uid 33 or
1000 show with those owners, exactly as `umoci unpack` as root makes them, and
the user changes them as root would. The host store holds only the user's
plain files. The export of the changed image, imported by a root containerd
of its own (native snapshotter), is the same tree.

Each bad input gets one line naming what is missing and the fix, and leaves
nothing behind (no store directory, no socket, no mount).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import oci
from tests.containerd_env import Containerd, unavailable
from tests.rootless_env import (  # fixtures user, ranged, workdir, rootless_daemon
    SYSTEM_PYTHON,
    as_user,
    assert_only_users_plain_files,
    fusesnap_cli,
    rangeless_user,
    rootless_image,
)
from tests.trees import Node, Tree, assert_same_tree, host_tree, xattrs

pytestmark = pytest.mark.rootless

NAME = "fusesnap.test/userns:1"
CHANGED = "fusesnap.test/userns:changed"


def _start(user: pwd.struct_passwd, workdir: Path, *args: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(workdir / "daemon.log", "wb")
    run = as_user(user)
    run["env"] = {**run["env"], **(env or {})}
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "fusesnap", "serve", "--root", str(workdir / "root"),
         "--socket", str(workdir / "sock"), *args], stdout=log, stderr=log, **run)


def _wait_serving(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 30
    while not (workdir / "daemon.log").read_bytes().rstrip().endswith(b"serving"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("daemon did not start:\n" + (workdir / "daemon.log").read_text())
        time.sleep(0.05)


@pytest.fixture
def userns_daemon(ranged: pwd.struct_passwd, workdir: Path) -> Iterator[Path]:
    proc = _start(ranged, workdir, "--userns")
    _wait_serving(proc, workdir)
    yield workdir
    proc.terminate()
    assert proc.wait(timeout=30) == 0, (workdir / "daemon.log").read_text()


def fusesnap(user: pwd.struct_passwd, workdir: Path, *args: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """`fusesnap ARGS…` run as `user` against the daemon on workdir/sock."""
    return fusesnap_cli(user, workdir / "sock", *args, check=check)


def inside(user: pwd.struct_passwd, workdir: Path, *command: str,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """COMMAND run through `fusesnap exec` in the daemon's namespaces."""
    return fusesnap(user, workdir, "exec", "--", *command, check=check)


_DUMP = """
import dataclasses, json, sys
from pathlib import Path
from tests.trees import host_tree, xattrs
root = Path(sys.argv[1])
print(json.dumps({
    "tree": {p: dataclasses.asdict(n) for p, n in host_tree(root).items()},
    "xattrs": {p: {k: v.hex() for k, v in a.items()} for p, a in xattrs(root).items()},
}))
"""


def seen_inside(user: pwd.struct_passwd, workdir: Path,
                root: Path) -> tuple[Tree, dict[str, dict[str, bytes]]]:
    """The tree under `root` and its xattrs, read inside the namespace."""
    out = json.loads(inside(user, workdir, SYSTEM_PYTHON, "-c", _DUMP, str(root)).stdout)
    return ({p: Node(**n) for p, n in out["tree"].items()},
            {p: {k: bytes.fromhex(v) for k, v in a.items()} for p, a in out["xattrs"].items()})


def unpacked(archive: Path, work: Path) -> tuple[Tree, dict[str, dict[str, bytes]]]:
    rootfs = oci.umoci_unpack(archive, work)
    return host_tree(rootfs), xattrs(rootfs)


def without_trusted(found: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """`found` less `trusted.*`, which the kernel shows only to the initial
    namespace's CAP_SYS_ADMIN (fs/xattr.c, xattr_permission)."""
    kept = {p: {k: v for k, v in a.items() if not k.startswith("trusted.")}
            for p, a in found.items()}
    return {p: a for p, a in kept.items() if a}


CHANGE = """
set -e
cd "$1"
echo 'written by the namespace root' > hello.txt
chown 33:33 hello.txt
chmod 4750 hello.txt
chown 1000:1000 data/chmod
setfattr -n user.note -v added hello.txt
rm data/over
echo changed > root/secret
mkdir -p www && chown 33:33 www
if mknod dev/zero c 1 5 2>/dev/null; then echo mknod-worked; else echo mknod-refused; fi
"""


def test_a_userns_daemon_shows_an_image_as_root_sees_it_and_its_changes_survive_export(
        ranged: pwd.struct_passwd, userns_daemon: Path, tmp_path: Path) -> None:
    user, workdir = ranged, userns_daemon
    built = oci.write_archive(rootless_image(NAME), workdir / "image.tar")
    expected, expected_xattrs = unpacked(built.path, workdir / "umoci-in")
    assert {n.uid for n in expected.values()} >= {0, 1234} and any(
        stat.S_ISBLK(n.mode) for n in expected.values())

    fusesnap(user, workdir, "images", "import", str(built.path))
    work = Path(fusesnap(user, workdir, "images", "prepare", NAME, "build").stdout.strip())

    # Inside: the owners, modes, device nodes, setuid bits and xattrs umoci
    # makes as root; the snapshot's root directory is the user's, which is
    # root there.
    tree, found = seen_inside(user, workdir, work)
    assert_same_tree(tree, expected)
    assert found == without_trusted(expected_xattrs)
    assert inside(user, workdir, "id", "-u").stdout.strip() == "0"

    # Outside, the mount is not there: it lives in the daemon's mount namespace.
    assert not os.path.ismount(work.parent)

    # Changes as the namespace's root; a device node is the kernel's to refuse
    # (vfs_mknod wants CAP_MKNOD in the initial namespace).
    said = inside(user, workdir, "sh", "-c", CHANGE, "change", str(work)).stdout.split()
    assert said == ["mknod-refused"]
    # The daemon records one instead, from outside or inside alike.
    fusesnap(user, workdir, "snapshots", "mknod", "build", "dev/zero", "c", "1", "5",
             "--mode", "0660", "--owner", "0:6")
    inside(user, workdir, SYSTEM_PYTHON, "-m", "fusesnap", "snapshots", "mknod", "build",
           "var/www/pipe", "p", "--owner", "33:33")
    zero = inside(user, workdir, "stat", "-c", "%F %t:%T %a %u:%g", f"{work}/dev/zero")
    assert zero.stdout.split() == ["character", "special", "file", "1:5", "660", "0:6"]
    changed, changed_xattrs = seen_inside(user, workdir, work)
    assert stat.S_ISFIFO(changed["./var/www/pipe"].mode) and changed["./var/www/pipe"].uid == 33
    hello = changed["./hello.txt"]
    assert (hello.uid, hello.gid, stat.S_IMODE(hello.mode)) == (33, 33, 0o4750)
    assert changed["./data/chmod"].uid == 1000 and "./data/over" not in changed
    assert changed_xattrs["hello.txt"] == {"user.note": b"added"}

    # Client commands work the same from inside: the socket comes with exec.
    listed = inside(user, workdir, SYSTEM_PYTHON, "-m", "fusesnap", "snapshots", "ls").stdout
    assert "build" in listed

    name, digest = fusesnap(user, workdir, "images", "commit", CHANGED, "build").stdout.split()
    assert (name, digest[:7]) == (CHANGED, "sha256:")
    exported = workdir / "changed.tar"
    fusesnap(user, workdir, "images", "export", CHANGED, str(exported))
    out, out_xattrs = unpacked(exported, workdir / "umoci-out")
    assert_same_tree(out, changed)
    assert without_trusted(out_xattrs) == changed_xattrs

    # The host holds only plain files of the user.
    assert_only_users_plain_files(workdir / "root", user)

    # A root containerd of its own imports the export and unpacks the same tree.
    why = unavailable()
    if why:
        pytest.skip(f"the containerd half needs {why}")
    ctd = Containerd(tmp_path / "containerd", None).start()
    try:
        ctd.ctr("images", "import", "--snapshotter", ctd.snapshotter, str(exported),
                timeout=120)
        snapshots = ctd.root / "io.containerd.snapshotter.v1.native" / "snapshots"
        top = [d for d in snapshots.iterdir() if (d / "hello.txt").exists()]
        assert len(top) == 1, list(snapshots.iterdir())
        assert_same_tree(host_tree(top[0]), changed)
    finally:
        ctd.stop()


# --------------------------------------------------------------------------- bad input


def test_mknod_refuses_what_mknod_refuses_and_changes_nothing(
        ranged: pwd.struct_passwd, userns_daemon: Path) -> None:
    user, workdir = ranged, userns_daemon
    work = fusesnap(user, workdir, "snapshots", "prepare", "w").stdout.strip()
    inside(user, workdir, "sh", "-c", f"mkdir {work}/dev && echo kept > {work}/dev/null")
    before = seen_inside(user, workdir, Path(work))
    for args, said in [
        (["w", "dev/null", "c", "1", "3"], "already exists: /dev/null: the snapshot has it"),
        (["w", "nodir/null", "c", "1", "3"], "not found: /nodir/null: no such directory"),
        (["w", "dev/x", "c"], "a device needs MAJOR and MINOR"),
        (["w", "dev/x", "p", "1", "2"], "a FIFO has no device numbers"),
        (["w", "../x", "p"], "'../x' names no entry inside the snapshot"),
        (["w", "dev/x", "c", "4096", "0"], "device numbers: major 0-4095"),
        (["absent", "dev/x", "p"], "not found: snapshot absent does not exist"),
    ]:
        proc = fusesnap(user, workdir, "snapshots", "mknod", *args, check=False)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith(f"fusesnap: {said}"), (args, lines)
    assert seen_inside(user, workdir, Path(work)) == before
    bad = fusesnap(user, workdir, "snapshots", "mknod", "w", "dev/x", "q", check=False)
    assert bad.returncode == 2 and "invalid choice: 'q'" in bad.stderr


def _refused(user: pwd.struct_passwd, workdir: Path, *args: str,
             env: dict[str, str] | None = None) -> str:
    """`serve --userns ARGS` fails with one line and leaves nothing; the line."""
    proc = _start(user, workdir, "--userns", *args, env=env)
    try:
        assert proc.wait(timeout=30) == 1
    finally:
        proc.kill()
    lines = (workdir / "daemon.log").read_text().splitlines()
    assert len(lines) == 1, lines
    assert not (workdir / "root").exists() and not (workdir / "sock").exists()
    return lines[0]


def test_a_user_without_subordinate_ranges_is_told_how_to_add_them(
        user: pwd.struct_passwd, workdir: Path) -> None:
    other = rangeless_user()
    name = other.pw_name
    os.chown(workdir, other.pw_uid, other.pw_gid)
    line = _refused(other, workdir)
    assert f"{name} has no subordinate uids in /etc/subuid" in line
    assert f"usermod --add-subuids 100000-165535 {name}" in line


def test_missing_or_powerless_newuidmap_is_named(ranged: pwd.struct_passwd,
                                                 workdir: Path) -> None:
    empty = workdir / "empty"
    empty.mkdir()
    line = _refused(ranged, workdir, env={"PATH": str(empty)})
    assert "newuidmap is not on PATH" in line and "apt-get install uidmap" in line

    plain = workdir / "bin"  # where the user can look
    plain.mkdir()
    for tool in ("newuidmap", "newgidmap"):
        shutil.copyfile(shutil.which(tool) or "", plain / tool)
        (plain / tool).chmod(0o755)  # not setuid
    plain.chmod(0o755)
    line = _refused(ranged, workdir, env={"PATH": f"{plain}:/usr/bin:/bin"})
    assert f"{plain}/newuidmap is neither setuid root" in line and "chmod u+s" in line


# Run as root: COMMAND as `uid`:`gid` inside a user namespace of its own in
# which user.max_user_namespaces is 0. The limit is per namespace and holds
# for every namespace below it; the machine's own stays as it is (and may not
# be writable at all where the suite itself runs in a user namespace).
_NO_USERNS = r"""
import ctypes, os, sys
uid, gid, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(go_w)
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
        os._exit(3)
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.execv(command[0], command)
os.close(go_r)
import time
time.sleep(0.2)  # the child has unshared (a map written too early fails: it retries)
for name, own in (("uid_map", uid), ("gid_map", gid)):
    for _ in range(50):
        try:
            with open(f"/proc/{child}/{name}", "w") as f:
                f.write(f"0 0 1\n{own} {own} 1\n")
            break
        except OSError:
            time.sleep(0.1)
os.write(go_w, b"1")
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_disabled_user_namespaces_are_named_with_the_sysctl(
        ranged: pwd.struct_passwd, workdir: Path) -> None:
    serve = [SYSTEM_PYTHON, "-m", "fusesnap", "serve", "--userns", "--root",
             str(workdir / "root"), "--socket", str(workdir / "sock")]
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _NO_USERNS, str(ranged.pw_uid),
                           str(ranged.pw_gid), *serve], capture_output=True, text=True,
                          timeout=60, env=as_user(ranged)["env"], cwd="/")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "user namespaces are disabled (user.max_user_namespaces is 0)" in lines[0]
    assert "sysctl -w user.max_user_namespaces=" in lines[0]
    assert not (workdir / "root").exists() and not (workdir / "sock").exists()


def test_an_unusable_dev_fuse_is_named(ranged: pwd.struct_passwd, workdir: Path) -> None:
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)
    try:
        line = _refused(ranged, workdir)
    finally:
        os.chmod("/dev/fuse", mode)
    assert "/dev/fuse cannot be opened" in line and "chmod 0666 /dev/fuse" in line


def test_root_is_told_it_needs_no_user_namespace(tmp_path: Path) -> None:
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "fusesnap", "serve", "--userns",
                           "--root", str(tmp_path / "root"), "--socket", str(tmp_path / "sock")],
                          capture_output=True, text=True, timeout=30,
                          env={**as_user(pwd.getpwuid(0))["env"]})
    assert proc.returncode == 1
    assert "--userns is for an ordinary user" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / "root").exists()


def test_exec_needs_a_userns_daemon_on_the_socket(
        user: pwd.struct_passwd, rootless_daemon: Path) -> None:
    proc = inside(user, rootless_daemon, "true", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("fusesnap: the daemon on ")
    assert "runs in no user namespace of its own: start it with fusesnap serve --userns" \
        in proc.stderr and len(proc.stderr.splitlines()) == 1

    (rootless_daemon / "nothing.sock").touch()
    proc = fusesnap(user, rootless_daemon, "--socket", str(rootless_daemon / "nothing.sock"),
                    "exec", "true", check=False)
    assert proc.returncode == 1 and "no daemon answers on" in proc.stderr
