"""System-call helpers of the POSIX suite (tests/test_model.py uses them too):
rename(2) with flags, dropping the kernel's caches, the errno of a call, and
everything a program can see of a tree."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

# Device nodes, owners, trusted.* and security.* xattrs need root. Every test
# module of the package sets `pytestmark = ROOT_ONLY`.
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the POSIX suite runs as root")

GiB = 1 << 30

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
_SYS_renameat2 = 316  # x86_64


def renameat2(src: Path | str, dst: Path | str, flags: int) -> None:
    """rename(2) with flags, through libc's wrapper or the raw syscall."""
    s, d = os.fsencode(src), os.fsencode(dst)
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        res = fn(AT_FDCWD, s, AT_FDCWD, d, flags)
    else:
        _libc.syscall.restype = ctypes.c_long
        res = _libc.syscall(ctypes.c_long(_SYS_renameat2), ctypes.c_int(AT_FDCWD), s,
                            ctypes.c_int(AT_FDCWD), d, ctypes.c_uint(flags))
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src), None, str(dst))


def drop_caches() -> bool:
    """Ask the kernel to forget dentries and inodes (True if it was allowed)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    return 0


def kind_of(mode: int) -> str:
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}[stat.S_IFMT(mode)]


def _xattrs(p: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    return tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False)) for n in names))


def tree_state(root: Path, *, inodes: bool = False, times: bool = False) -> dict[str, tuple]:
    """Everything a program can see of the tree under `root`, path by path:
    type, mode, owner, size (not of directories), link count, content or
    symlink target, xattrs, and which paths share an inode ("." is `root`
    itself); with `inodes` and `times` also st_ino and the times."""
    st = os.lstat(root)
    out: dict[str, tuple] = {
        ".": (kind_of(st.st_mode), st.st_mode, st.st_uid, st.st_gid, None, st.st_nlink, None,
              _xattrs(str(root)))
        + ((st.st_ino,) if inodes else ())
        + ((st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns) if times else ())
    }
    by_ino: dict[int, list[str]] = {}
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        for name in sorted(os.listdir(path)):
            p = f"{path}/{name}"
            r = f"{rel}/{name}" if rel else name
            st = os.lstat(p)
            k = kind_of(st.st_mode)
            if k == "f":
                with open(p, "rb") as f:
                    data = f.read()
                body: object = data if len(data) <= 256 else hashlib.sha256(data).hexdigest()
            elif k == "l":
                body = os.readlink(p)
            elif k in "cb":
                body = st.st_rdev
            else:
                body = None
            row: tuple = (k, st.st_mode, st.st_uid, st.st_gid,
                          None if k == "d" else st.st_size, st.st_nlink, body, _xattrs(p))
            if inodes:
                row += (st.st_ino,)
            if times:
                row += (st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns)
            out[r] = row
            if k == "d":
                stack.append((r, p))
            else:
                by_ino.setdefault(st.st_ino, []).append(r)
    for paths in by_ino.values():
        for r in paths:
            out[r] += (tuple(sorted(paths)),)
    return out


def empty_out(d: Path) -> None:
    """Remove everything below directory `d`, deepest first."""
    for dirpath, dirnames, filenames in os.walk(d, topdown=False):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        for n in dirnames:
            os.rmdir(os.path.join(dirpath, n))
