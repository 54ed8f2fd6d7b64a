"""User namespaces: an ordinary user's daemon as root of its own (`serve
--userns`), and programs run inside it (`fusesnap exec`).

`serve --userns` makes the daemon's process the first member of a new user
namespace and of a new mount namespace owned by it, as rootlesskit and podman
do: uid and gid 0 map to the user's own, 1-65536 to the user's subordinate
ranges from /etc/subuid and /etc/subgid. Only the setuid helpers of Debian's
uidmap package (newuidmap, newgidmap) may write such maps, and they must write
them from outside the namespace: a child of the daemon, left behind in the
old namespace, runs them on the daemon's pid once the daemon has unshared.
Then the daemon is root in the namespace and mounts there; its mount is seen
only inside (the mount namespace is its own), its socket from everywhere.

`fusesnap exec` finds the daemon from its socket (the kernel tells a client
the pid of the process that listens: SO_PEERCRED), joins its user and mount
namespaces (setns: the namespace's owner holds every capability in it) and
runs the program as uid 0 there.

Everything is checked before anything is made: a check that fails says what
is missing and the command that fixes it, and leaves no namespace and no
mount behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000  # linux/sched.h
CLONE_NEWUSER = 0x10000000
RANGE = 65536
"""Ids 1-65536 in the namespace: every id a Debian or Alpine image uses,
nobody (65534) included, as rootlesskit and podman map by default."""

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(Exception):
    """A user namespace cannot be made or joined; the message says why and
    what fixes it."""


@dataclass(frozen=True)
class IdMap:
    """How ids map into the namespace: 0 to the user's own id, 1 to RANGE to a
    subordinate range starting at `start`."""

    own: int
    start: int

    def helper_args(self) -> list[str]:
        """newuidmap's (newgidmap's) arguments after the pid: inside, outside, count."""
        return ["0", str(self.own), "1", "1", str(self.start), str(RANGE)]

    def describe(self) -> str:
        return f"0 = {self.own}, 1-{RANGE} = {self.start}-{self.start + RANGE - 1}"


def subordinate_start(path: Path, user: pwd.struct_passwd, kind: str) -> int:
    """The start of the user's first subordinate range of at least RANGE ids in
    `path` (/etc/subuid or /etc/subgid; an entry names the user or its uid)."""
    fix = (f"as root: usermod --add-sub{kind}s 100000-165535 {user.pw_name} "
           f"(any free range of {RANGE})")
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise NamespaceError(f"{path} does not exist, so {user.pw_name} has no subordinate "
                             f"{kind}s to map; {fix}") from None
    except OSError as e:
        raise NamespaceError(f"cannot read {path}: {e.strerror}") from None
    short = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user.pw_name, str(user.pw_uid)):
            continue
        if not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        if int(fields[2]) >= RANGE:
            return int(fields[1])
        short.append(f"{fields[1]}+{fields[2]}")
    if short:
        raise NamespaceError(f"{user.pw_name}'s subordinate {kind}s in {path} "
                             f"({', '.join(short)}) hold fewer than {RANGE}; {fix}")
    raise NamespaceError(f"{user.pw_name} has no subordinate {kind}s in {path}; {fix}")


def _helper(name: str) -> str:
    """The path of newuidmap or newgidmap, checked: it must be able to write
    a map another user's range is in (setuid root, or a file capability)."""
    path = shutil.which(name)
    if path is None:
        raise NamespaceError(f"{name} is not on PATH: install Debian's uidmap package "
                             f"(as root: apt-get install uidmap)")
    st = os.stat(path)
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return path
    try:
        os.getxattr(path, "security.capability")
        return path
    except OSError:
        pass
    raise NamespaceError(f"{path} is neither setuid root nor given a file capability, so it "
                         f"cannot write the map (as root: chown root {path} && "
                         f"chmod u+s {path})")


def _read_sysctl(name: str) -> int | None:
    try:
        return int(Path("/proc/sys", name.replace(".", "/")).read_text())
    except (OSError, ValueError):
        return None


def _check_enabled() -> None:
    if _read_sysctl("user.max_user_namespaces") == 0:
        raise NamespaceError("user namespaces are disabled (user.max_user_namespaces is 0): "
                             "as root, sysctl -w user.max_user_namespaces=15000")
    if _read_sysctl("kernel.unprivileged_userns_clone") == 0:
        raise NamespaceError("unprivileged user namespaces are disabled "
                             "(kernel.unprivileged_userns_clone is 0): as root, "
                             "sysctl -w kernel.unprivileged_userns_clone=1")
    if _read_sysctl("kernel.apparmor_restrict_unprivileged_userns") == 1:
        raise NamespaceError("AppArmor keeps unprivileged user namespaces from gaining "
                             "capabilities (kernel.apparmor_restrict_unprivileged_userns is 1)"
                             ": as root, sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")


def _check_fuse() -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise NamespaceError("/dev/fuse cannot be opened for reading and writing by this "
                             "user: as root, chmod 0666 /dev/fuse (Debian's default)")


@dataclass(frozen=True)
class Plan:
    """What :func:`enter` does, every check made."""

    uids: IdMap
    gids: IdMap
    newuidmap: str
    newgidmap: str


def plan(subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> Plan:
    """Check everything `serve --userns` needs, changing nothing."""
    if os.getuid() == 0:
        raise NamespaceError("--userns is for an ordinary user: root's daemon needs no user "
                             "namespace (run it without --userns)")
    _check_enabled()
    user = pwd.getpwuid(os.getuid())
    newuidmap, newgidmap = _helper("newuidmap"), _helper("newgidmap")
    uids = IdMap(os.getuid(), subordinate_start(subuid, user, "uid"))
    gids = IdMap(os.getgid(), subordinate_start(subgid, user, "gid"))
    _check_fuse()
    return Plan(uids, gids, newuidmap, newgidmap)


def _single_threaded(what: str) -> None:
    # The kernel refuses unshare and setns of a user namespace to a process
    # with more than one thread (EINVAL).
    if threading.active_count() > 1:
        raise NamespaceError(f"{what}: this process already runs other threads")


def enter(p: Plan) -> None:
    """Make this process root of a new user namespace and a new mount
    namespace mapped as `p` says."""
    _single_threaded("cannot create a user namespace")
    parent = os.getpid()
    go_r, go_w = os.pipe()
    said_r, said_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child, which exits)
        status = 1
        try:
            os.close(go_w)
            os.close(said_r)
            if os.read(go_r, 1) == b"1":
                for helper, ids in ((p.newuidmap, p.uids), (p.newgidmap, p.gids)):
                    done = subprocess.run([helper, str(parent), *ids.helper_args()],
                                          capture_output=True, text=True)
                    if done.returncode != 0:
                        os.write(said_w, f"{helper} failed: {done.stderr.strip()}".encode())
                        break
                else:
                    status = 0
        finally:
            os._exit(status)
    os.close(go_r)
    os.close(said_w)
    failed = 0
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        failed = ctypes.get_errno()
    os.write(go_w, b"0" if failed else b"1")
    os.close(go_w)
    with os.fdopen(said_r, "rb") as f:
        said = f.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if failed:
        raise NamespaceError(f"cannot create a user namespace: {os.strerror(failed)}"
                             + (" (the number of user namespaces is at its limit)"
                                if failed == errno.ENOSPC else ""))
    if os.waitstatus_to_exitcode(status) != 0:
        raise NamespaceError(said or "mapping the user namespace's ids failed")
    _become_root()


def _become_root() -> None:
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)


def daemon_pid(sock: Path) -> int:
    """The pid of the process listening on `sock` (the kernel's SO_PEERCRED)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as e:
        raise NamespaceError(f"no daemon answers on {sock} ({e.strerror}): start one with "
                             "fusesnap serve --userns") from None
    finally:
        s.close()
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def join(pid: int, sock: Path) -> None:
    """Enter the user and mount namespaces of process `pid` (the daemon on
    `sock`) as uid and gid 0 there, in the same working directory."""
    try:
        ours, theirs = os.stat("/proc/self/ns/user"), os.stat(f"/proc/{pid}/ns/user")
    except OSError as e:
        raise NamespaceError(f"cannot see the namespaces of the daemon on {sock} "
                             f"(pid {pid}): {e.strerror}") from None
    if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino):
        raise NamespaceError(f"the daemon on {sock} (pid {pid}) runs in no user namespace of "
                             "its own: start it with fusesnap serve --userns")
    _single_threaded("cannot join a user namespace")
    cwd = os.getcwd()
    fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "mnt")]
    try:
        for fd, kind, name in ((fds[0], CLONE_NEWUSER, "user"), (fds[1], CLONE_NEWNS, "mount")):
            if _libc.setns(fd, kind) != 0:
                err = ctypes.get_errno()
                raise NamespaceError(f"cannot join the {name} namespace of the daemon on {sock} "
                                     f"(pid {pid}): {os.strerror(err)}")
    finally:
        for fd in fds:
            os.close(fd)
    _become_root()
    try:
        os.chdir(cwd)  # setns of a mount namespace moves to its root
    except OSError:
        os.chdir("/")
