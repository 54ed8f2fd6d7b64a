"""Who may reach what: the store, the mount and the socket belong to the
daemon's user alone.

A root daemon mounts `suid,dev,allow_other` (containers run from the mount),
so whoever reaches a snapshot's directory reaches its setuid binaries and
device nodes, and whoever connects to the socket can prepare one: both are
root. So, whatever umask the daemon was started with:

- the daemon creates everything with umask 077, and ROOT (and the
  directories it makes for the socket or the mountpoint) with explicit modes;
- ROOT is 0700 (and is tightened to 0700 if an older fusesnap left it open);
  so are the directories of the store below it, its files 0600;
- the mount's root directory is 0700, owned by the daemon's user, wherever
  the mountpoint is (fusesnap/layerfs/ops.py): only the daemon's user (and
  root) can walk into a snapshot by path. Containers are not affected: their
  processes start inside a snapshot's directory, never above it;
- the socket is 0660, group root or `--socket-group`, for a root daemon; 0600
  (0660 with `--socket-group`) for an ordinary user's.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
SOCKET_MODE = 0o660


class NotPrivate(Exception):
    """A path the daemon must own privately belongs to someone else, or a
    group does not exist; the message says which."""


def restrict_process() -> None:
    """Make everything this process creates private to its user from now on."""
    os.umask(UMASK)


def private_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` (and missing parents, 0700) with `mode`, or tighten it to
    `mode` if it exists and grants more. NotPrivate if another user owns it."""
    try:
        path.mkdir(parents=True, mode=mode)
    except FileExistsError:
        pass
    else:
        os.chmod(path, mode)  # exactly: the umask took the group's bits
    st = path.stat()
    if st.st_uid != os.getuid():
        raise NotPrivate(f"{path} belongs to uid {st.st_uid}, not to this user "
                         f"(uid {os.getuid()}); give fusesnap a directory of its own")
    _tighten(path, st, mode)


def tighten(paths: Iterable[Path], mode: int) -> None:
    """Take from each existing path of ours what `mode` does not grant (a store
    made by an older fusesnap had 0755 directories and 0644 files)."""
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if st.st_uid == os.getuid() and not stat.S_ISLNK(st.st_mode):
            _tighten(path, st, mode)


def _tighten(path: Path, st: os.stat_result, mode: int) -> None:
    have = stat.S_IMODE(st.st_mode)
    if have & ~mode:
        os.chmod(path, have & mode)
        log.info("%s: mode %04o -> %04o (the store is private)", path, have, have & mode)


def socket_group(name: str | None) -> int | None:
    """The group that may use the socket: `name` (a group name or number), else
    root's for a root daemon and none (socket 0600) for an ordinary user's.
    NotPrivate if the group does not exist."""
    if name is None or name == "":
        return 0 if os.getuid() == 0 else None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise NotPrivate(f"--socket-group {name}: no such group") from None


def restrict_socket(path: Path, group: int | None) -> None:
    """Give the listening socket its owner group and mode (see the module).
    NotPrivate if this user cannot give it `group`."""
    if group is not None:
        try:
            os.chown(path, -1, group)
        except PermissionError:
            raise NotPrivate(f"cannot give {path} group {group}: an ordinary user can "
                             "only choose a group it belongs to") from None
    os.chmod(path, SOCKET_MODE if group is not None else FILE_MODE)
