"""POSIX behaviour of an active snapshot, as a local filesystem gives it.

Every test runs in the merged view of a three-layer chain: a committed bottom
layer, a committed middle layer that modifies, adds and deletes, and an active
snapshot on top. Each layer L holds the same set of objects named `L_*`
("bottom_file", "middle_dir", "own_link" …), so a test parametrized by
`origin` exercises an object of the snapshot's own layer and objects that live
in one or two parent layers. Every test also checks, on teardown, that the
committed layers and a view of them did not change (through a fresh view too,
which shares no cache with the mount's old inodes).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import mmap
import os
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROXY, Daemon, fuse_usable

# Device nodes, owners, trusted.* and security.* xattrs need root.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the POSIX suite runs as root")

ORIGINS = ["own", "middle", "bottom"]
LOWER = ["middle", "bottom"]
GiB = 1 << 30

# --------------------------------------------------------------------------- helpers

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


# --------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def fs_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module: each test builds its own chain of snapshots on it."""
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    d = Daemon(tmp_path_factory.mktemp("posix") / "root", args=PROXY)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def content(origin: str, what: str) -> bytes:
    return f"{origin} {what}\n".encode()


def big_content(origin: str) -> bytes:
    return bytes((i * 7 + len(origin)) % 251 for i in range(65536))


def dir_names(origin: str) -> list[str]:
    """The sorted names in `<origin>_dir` as the active snapshot sees it."""
    extra = {"bottom": ["added_in_middle"], "middle": ["moved_from_bottom"]}.get(origin, [])
    return sorted(["child", "sub"] + extra)


def subdirs_of_dir(origin: str) -> int:
    return 2 if origin == "middle" else 1  # sub (and moved_from_bottom)


def empty_out(d: Path) -> None:
    """Remove everything below directory `d`, deepest first."""
    for dirpath, dirnames, filenames in os.walk(d, topdown=False):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        for n in dirnames:
            os.rmdir(os.path.join(dirpath, n))


def populate(root: Path, layer: str) -> None:
    """The standard objects of layer `layer`, all named `<layer>_*`."""
    f = root / f"{layer}_file"
    f.write_bytes(content(layer, "file"))
    f.chmod(0o644)
    os.setxattr(f, "user.layer", layer.encode())
    e = root / f"{layer}_exec"
    e.write_bytes(b"#!/bin/sh\necho " + layer.encode() + b"\n")
    e.chmod(0o755)
    d = root / f"{layer}_dir"
    d.mkdir()
    d.chmod(0o755)
    (d / "child").write_bytes(content(layer, "child"))
    (d / "sub").mkdir()
    (d / "sub" / "deep").write_bytes(content(layer, "deep"))
    os.setxattr(d, "user.layer", layer.encode())
    (root / f"{layer}_empty").mkdir()
    os.symlink(f"{layer}_file", root / f"{layer}_link")
    (root / f"{layer}_hard1").write_bytes(content(layer, "hard"))
    os.link(root / f"{layer}_hard1", root / f"{layer}_hard2")
    os.mkfifo(root / f"{layer}_fifo", 0o644)
    os.mknod(root / f"{layer}_null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / f"{layer}_big").write_bytes(big_content(layer))


@dataclass
class Chain:
    daemon: Daemon
    bottom: Path  # committed
    middle: Path  # committed, child of bottom
    active: Path  # active, child of middle
    view: Path  # a view of middle
    middle_key: str
    active_key: str

    def obj(self, origin: str, what: str) -> Path:
        return self.active / f"{origin}_{what}"

    def commit_and_child(self) -> Path:
        """Commit the active snapshot and prepare a child of it; returns the child."""
        name = f"{self.active_key}-c"
        self.daemon.commit(name, self.active_key)
        self.active_key = f"{name}-child"
        return self.daemon.prepare(self.active_key, name)


_counter = itertools.count()


@pytest.fixture
def chain(fs_daemon: Daemon) -> Iterator[Chain]:
    n = next(_counter)
    d = fs_daemon
    bottom = d.prepare(f"b{n}-key")
    populate(bottom, "bottom")
    (bottom / "bottom_modified").write_bytes(b"bottom version\n")
    (bottom / "bottom_gone").write_bytes(b"deleted in middle\n")
    (bottom / "bottom_gone_dir").mkdir()
    (bottom / "bottom_gone_dir" / "child").write_bytes(b"gone with its dir\n")
    (bottom / "bottom_opaque").mkdir()
    (bottom / "bottom_opaque" / "old_child").write_bytes(b"hidden by the recreated dir\n")
    (bottom / "bottom_dir2file").mkdir()
    (bottom / "bottom_dir2file" / "inner").write_bytes(b"hidden by the file\n")
    (bottom / "bottom_file2dir").write_bytes(b"replaced by a dir\n")
    (bottom / "bottom_chmod").write_bytes(b"mode changed in middle\n")
    (bottom / "bottom_shared").write_bytes(b"linked from middle\n")
    (bottom / "bottom_moved").mkdir()
    (bottom / "bottom_moved" / "child").write_bytes(b"moved with its dir\n")
    d.commit(f"b{n}", f"b{n}-key")

    middle = d.prepare(f"m{n}-key", f"b{n}")
    populate(middle, "middle")
    (middle / "bottom_modified").write_bytes(b"middle version\n")
    (middle / "bottom_gone").unlink()
    (middle / "bottom_gone_dir" / "child").unlink()
    (middle / "bottom_gone_dir").rmdir()
    (middle / "bottom_opaque" / "old_child").unlink()
    (middle / "bottom_opaque").rmdir()
    (middle / "bottom_opaque").mkdir()
    (middle / "bottom_opaque" / "new_child").write_bytes(b"in the recreated dir\n")
    (middle / "bottom_dir2file" / "inner").unlink()
    (middle / "bottom_dir2file").rmdir()
    (middle / "bottom_dir2file").write_bytes(b"now a file\n")
    (middle / "bottom_file2dir").unlink()
    (middle / "bottom_file2dir").mkdir()
    (middle / "bottom_file2dir" / "inner").write_bytes(b"in the dir that was a file\n")
    (middle / "bottom_chmod").chmod(0o600)
    (middle / "bottom_dir" / "added_in_middle").write_bytes(b"added in middle\n")
    os.link(middle / "bottom_shared", middle / "middle_to_bottom_shared")
    os.rename(middle / "bottom_moved", middle / "middle_dir" / "moved_from_bottom")
    d.commit(f"m{n}", f"m{n}-key")

    active = d.prepare(f"a{n}-key", f"m{n}")
    populate(active, "own")
    view = d.view(f"v{n}-key", f"m{n}")

    before = {p: tree_state(p, inodes=True, times=True) for p in (bottom, middle, view)}
    c = Chain(d, bottom, middle, active, view, f"m{n}", f"a{n}-key")
    try:
        yield c
        # Committed layers and views never change, whatever the active one did.
        for p, state in before.items():
            assert tree_state(p, inodes=True, times=True) == state, f"{p} changed"
        # A fresh view shares no kernel or daemon cache with the old inodes: it
        # shows what the layers hold. Same everything but the inode numbers.
        fresh = tree_state(d.view(f"v{n}-check", f"m{n}"), times=True)
        assert fresh == {k: v[:8] + v[9:] for k, v in before[middle].items()}
    finally:
        remove_all_snapshots(d)


def remove_all_snapshots(d: Daemon) -> None:
    """Remove every snapshot, children first (the next test starts from an empty store)."""
    from fusesnap.pb import snapshots_pb2 as spb

    while True:
        infos = [i for r in d.snapshots.List(spb.ListSnapshotsRequest()) for i in r.info]
        if not infos:
            return
        parents = {i.parent for i in infos}
        for i in infos:
            if i.name not in parents:
                d.snapshots.Remove(spb.RemoveSnapshotRequest(key=i.name))


# --------------------------------------------------------------------------- the merged view


def test_merged_view_lists_objects_of_every_layer(chain: Chain) -> None:
    names = set(os.listdir(chain.active))
    for origin in ORIGINS:
        for what in ("file", "exec", "dir", "empty", "link", "hard1", "hard2", "fifo", "null",
                     "big"):
            assert f"{origin}_{what}" in names


def test_file_changed_in_middle_layer_shows_middle_bytes(chain: Chain) -> None:
    assert (chain.active / "bottom_modified").read_bytes() == b"middle version\n"
    assert (chain.bottom / "bottom_modified").read_bytes() == b"bottom version\n"


def test_file_deleted_in_middle_layer_is_hidden(chain: Chain) -> None:
    assert not os.path.lexists(chain.active / "bottom_gone")
    assert "bottom_gone" not in os.listdir(chain.active)
    assert (chain.bottom / "bottom_gone").exists()


def test_directory_deleted_in_middle_layer_is_hidden(chain: Chain) -> None:
    assert errno_of(lambda: os.lstat(chain.active / "bottom_gone_dir")) == errno.ENOENT
    assert errno_of(lambda: os.lstat(chain.active / "bottom_gone_dir" / "child")) == errno.ENOENT


def test_directory_recreated_in_middle_layer_is_opaque(chain: Chain) -> None:
    assert os.listdir(chain.active / "bottom_opaque") == ["new_child"]


def test_directory_replaced_by_file_hides_its_children(chain: Chain) -> None:
    p = chain.active / "bottom_dir2file"
    assert p.is_file()
    assert p.read_bytes() == b"now a file\n"
    assert errno_of(lambda: os.lstat(p / "inner")) == errno.ENOTDIR


def test_file_replaced_by_directory_shows_directory(chain: Chain) -> None:
    p = chain.active / "bottom_file2dir"
    assert p.is_dir()
    assert os.listdir(p) == ["inner"]


def test_entry_added_in_middle_to_bottom_directory_is_merged(chain: Chain) -> None:
    assert sorted(os.listdir(chain.active / "bottom_dir")) == ["added_in_middle", "child", "sub"]


def test_directory_renamed_in_middle_layer_keeps_bottom_children(chain: Chain) -> None:
    moved = chain.active / "middle_dir" / "moved_from_bottom"
    assert not os.path.lexists(chain.active / "bottom_moved")
    assert os.listdir(moved) == ["child"]
    assert (moved / "child").read_bytes() == b"moved with its dir\n"
    (moved / "child").write_bytes(b"changed on top")
    assert (chain.bottom / "bottom_moved" / "child").read_bytes() == b"moved with its dir\n"


def test_snapshot_root_directory_attributes_can_change(chain: Chain) -> None:
    os.chmod(chain.active, 0o2751)
    os.chown(chain.active, 1000, 2000)
    os.utime(chain.active, ns=(10, 20))
    os.setxattr(chain.active, "user.root", b"yes")
    st = os.stat(chain.active)
    assert st.st_mode == stat.S_IFDIR | 0o2751
    assert (st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (1000, 2000, 10, 20)
    (chain.active / "inherits").write_bytes(b"")
    assert os.stat(chain.active / "inherits").st_gid == 2000
    child = chain.commit_and_child()
    assert os.stat(child).st_mode == stat.S_IFDIR | 0o2751
    assert os.getxattr(child, "user.root") == b"yes"


def test_names_are_arbitrary_bytes(chain: Chain) -> None:
    name = b"\xff\xfe weird\tname\n"
    p = os.path.join(os.fsencode(chain.obj("bottom", "dir")), name)
    with open(p, "wb") as f:
        f.write(b"bytes")
    assert name in os.listdir(os.fsencode(chain.obj("bottom", "dir")))
    with open(p, "rb") as f:
        assert f.read() == b"bytes"


def test_mode_changed_in_middle_layer_applies(chain: Chain) -> None:
    assert stat.S_IMODE(os.stat(chain.active / "bottom_chmod").st_mode) == 0o600


# --------------------------------------------------------------------------- reading and writing


@pytest.mark.parametrize("origin", ORIGINS)
def test_read_returns_file_bytes(chain: Chain, origin: str) -> None:
    assert chain.obj(origin, "file").read_bytes() == content(origin, "file")
    assert (chain.obj(origin, "dir") / "child").read_bytes() == content(origin, "child")
    assert (chain.obj(origin, "dir") / "sub" / "deep").read_bytes() == content(origin, "deep")
    assert chain.obj(origin, "big").read_bytes() == big_content(origin)


@pytest.mark.parametrize("origin", ORIGINS)
def test_partial_overwrite_keeps_surrounding_bytes(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "big")
    fd = os.open(p, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"X" * 100, 30000) == 100
    finally:
        os.close(fd)
    want = bytearray(big_content(origin))
    want[30000:30100] = b"X" * 100
    assert p.read_bytes() == bytes(want)
    assert p.stat().st_size == 65536


@pytest.mark.parametrize("origin", ORIGINS)
def test_write_extends_file_and_updates_mtime(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with open(p, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"more")
    st = p.stat()
    assert st.st_size == len(content(origin, "file")) + 4
    assert st.st_mtime_ns > 1_000_000_000
    assert p.read_bytes() == content(origin, "file") + b"more"


@pytest.mark.parametrize("origin", ORIGINS)
def test_o_append_writes_at_end(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"one")
        os.write(fd, b"two")
    finally:
        os.close(fd)
    assert p.read_bytes() == content(origin, "file") + b"onetwo"


@pytest.mark.parametrize("origin", ORIGINS)
def test_o_trunc_empties_file(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "big")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert p.read_bytes() == b"new"
    assert p.stat().st_size == 3


@pytest.mark.parametrize("origin", ORIGINS)
def test_o_excl_on_existing_file_is_eexist(chain: Chain, origin: str) -> None:
    for what in ("file", "dir", "link", "fifo"):
        p = chain.obj(origin, what)
        assert errno_of(lambda p=p: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == \
            errno.EEXIST
    assert chain.obj(origin, "file").read_bytes() == content(origin, "file")


def test_o_excl_on_dangling_symlink_is_eexist(chain: Chain) -> None:
    os.symlink("nowhere", chain.active / "dangling")
    assert errno_of(lambda: os.open(chain.active / "dangling",
                                    os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST
    assert not os.path.exists(chain.active / "nowhere")


@pytest.mark.parametrize("origin", ORIGINS)
def test_o_creat_on_existing_file_opens_it(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        assert os.read(fd, 100) == content(origin, "file")
    finally:
        os.close(fd)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


@pytest.mark.parametrize("origin", ORIGINS)
def test_create_file_in_directory(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "dir") / "new"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    try:
        os.write(fd, b"created")
    finally:
        os.close(fd)
    st = p.stat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid, st.st_nlink, st.st_size) == (0, 0, 1, 7)
    assert p.read_bytes() == b"created"
    assert sorted(os.listdir(p.parent)) == sorted(dir_names(origin) + ["new"])


def test_create_applies_umask(chain: Chain) -> None:
    old = os.umask(0o027)
    try:
        fd = os.open(chain.active / "masked", os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)
        os.mkdir(chain.active / "masked_dir", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(chain.active / "masked").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(chain.active / "masked_dir").st_mode) == 0o750


@pytest.mark.parametrize("origin", ORIGINS)
def test_truncate_shrinks_file(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "big")
    os.truncate(p, 1000)
    assert p.stat().st_size == 1000
    assert p.read_bytes() == big_content(origin)[:1000]


@pytest.mark.parametrize("origin", ORIGINS)
def test_truncate_extends_file_with_zeros(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.truncate(p, 10000)
    data = p.read_bytes()
    assert len(data) == 10000
    assert data == content(origin, "file") + bytes(10000 - len(content(origin, "file")))


@pytest.mark.parametrize("origin", ORIGINS)
def test_ftruncate_through_open_descriptor(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "big")
    with open(p, "r+b") as f:
        f.truncate(10)
        f.seek(0)
        assert f.read() == big_content(origin)[:10]
        assert os.fstat(f.fileno()).st_size == 10
    assert p.read_bytes() == big_content(origin)[:10]


@pytest.mark.parametrize("origin", LOWER)
def test_reader_opened_before_copy_up_sees_later_writes(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    with open(p, "rb", buffering=0) as reader:
        with open(p, "r+b", buffering=0) as writer:
            writer.write(b"CHANGED")
        assert os.pread(reader.fileno(), 7, 0) == b"CHANGED"


@pytest.mark.parametrize("origin", ORIGINS)
def test_unlinked_open_file_stays_usable(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    with open(p, "r+b", buffering=0) as f:
        p.unlink()
        assert not os.path.lexists(p)
        assert os.fstat(f.fileno()).st_nlink == 0
        f.seek(0, os.SEEK_END)
        f.write(b"after unlink")
        f.seek(0)
        assert f.read() == content(origin, "file") + b"after unlink"
    assert not os.path.lexists(p)


def test_unlinked_read_only_file_stays_readable(chain: Chain) -> None:
    p = chain.obj("bottom", "file")
    with open(p, "rb", buffering=0) as f:
        p.unlink()
        assert f.read() == content("bottom", "file")
        assert os.fstat(f.fileno()).st_nlink == 0


@pytest.mark.parametrize("origin", ORIGINS)
def test_fsync_and_fdatasync_succeed(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    fd = os.open(p, os.O_RDWR)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(chain.active, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert p.read_bytes().startswith(b"synced")


@pytest.mark.parametrize("origin", ORIGINS)
def test_mmap_shared_write_is_visible_to_read(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "big")
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[100:105] = b"MMAP!"
        with open(p, "rb") as other:
            other.seek(100)
            assert other.read(5) == b"MMAP!"
        m.flush()
        m.close()
    want = bytearray(big_content(origin))
    want[100:105] = b"MMAP!"
    assert p.read_bytes() == bytes(want)


def test_mmap_shared_write_reaches_the_layer(chain: Chain) -> None:
    p = chain.obj("bottom", "big")
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[0:4] = b"MAPD"
        m.close()
    child = chain.commit_and_child()
    assert (child / "bottom_big").read_bytes()[:8] == b"MAPD" + big_content("bottom")[4:8]


def test_sparse_file_holes_read_as_zeros_and_take_no_space(chain: Chain) -> None:
    p = chain.active / "sparse"
    with open(p, "wb") as f:
        f.seek(GiB)
        f.write(b"end")
    st = p.stat()
    assert st.st_size == GiB + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(p, "rb") as f:
        assert f.read(4096) == bytes(4096)
        f.seek(GiB // 2)
        assert f.read(65536) == bytes(65536)
        f.seek(GiB - 2)
        assert f.read() == b"\0\0end"


def test_sparse_file_stays_sparse_in_child_after_copy_up(chain: Chain) -> None:
    with open(chain.active / "sparse", "wb") as f:
        f.seek(GiB)
        f.write(b"end")
    child = chain.commit_and_child()
    with open(child / "sparse", "r+b") as f:
        f.write(b"start")
    st = os.stat(child / "sparse")
    assert st.st_size == GiB + 3
    assert st.st_blocks * 512 < 1 << 20


def test_write_beyond_4_gib(chain: Chain) -> None:
    p = chain.active / "large"
    off = 5 * GiB + 12345
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"far away", off) == 8
        assert os.pread(fd, 8, off) == b"far away"
        assert os.fstat(fd).st_size == off + 8
    finally:
        os.close(fd)
    assert p.stat().st_size == off + 8
    with open(p, "rb") as f:
        f.seek(4 * GiB)
        assert f.read(16) == bytes(16)


def test_truncate_beyond_4_gib_of_lower_file(chain: Chain) -> None:
    p = chain.obj("bottom", "file")
    os.truncate(p, 6 * GiB)
    assert p.stat().st_size == 6 * GiB
    with open(p, "rb") as f:
        assert f.read(len(content("bottom", "file"))) == content("bottom", "file")
        f.seek(6 * GiB - 4)
        assert f.read() == bytes(4)


# --------------------------------------------------------------------------- unlink, mkdir, rmdir


@pytest.mark.parametrize("origin", ORIGINS)
def test_unlink_removes_the_name(chain: Chain, origin: str) -> None:
    for what in ("file", "link", "fifo", "null"):
        p = chain.obj(origin, what)
        os.unlink(p)
        assert not os.path.lexists(p)
        assert p.name not in os.listdir(chain.active)


@pytest.mark.parametrize("origin", ORIGINS)
def test_unlinked_lower_name_can_be_created_again(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    p.unlink()
    p.write_bytes(b"reborn")
    assert p.read_bytes() == b"reborn"
    assert os.listxattr(p) == []


@pytest.mark.parametrize("origin", ORIGINS)
def test_unlink_of_directory_is_eisdir(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.unlink(chain.obj(origin, "dir"))) == errno.EISDIR


def test_unlink_of_missing_name_is_enoent(chain: Chain) -> None:
    assert errno_of(lambda: os.unlink(chain.active / "bottom_gone")) == errno.ENOENT


@pytest.mark.parametrize("origin", ORIGINS)
def test_deleted_lower_file_stays_hidden_in_child_snapshots(chain: Chain, origin: str) -> None:
    chain.obj(origin, "file").unlink()
    child = chain.commit_and_child()
    assert not os.path.lexists(child / f"{origin}_file")
    grandchild = chain.commit_and_child()
    assert f"{origin}_file" not in os.listdir(grandchild)


@pytest.mark.parametrize("origin", ORIGINS)
def test_mkdir_in_directory(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    nlink = d.stat().st_nlink
    os.mkdir(d / "newdir", 0o750)
    st = os.stat(d / "newdir")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink == 2
    assert d.stat().st_nlink == nlink + 1
    assert os.listdir(d / "newdir") == []


@pytest.mark.parametrize("origin", ORIGINS)
def test_mkdir_over_existing_name_is_eexist(chain: Chain, origin: str) -> None:
    for what in ("file", "dir", "link"):
        assert errno_of(lambda w=what: os.mkdir(chain.obj(origin, w))) == errno.EEXIST


@pytest.mark.parametrize("origin", ORIGINS)
def test_directory_link_count_is_two_plus_subdirectories(chain: Chain, origin: str) -> None:
    assert chain.obj(origin, "dir").stat().st_nlink == 2 + subdirs_of_dir(origin)
    assert chain.obj(origin, "empty").stat().st_nlink == 2
    subdirs = sum(1 for e in os.scandir(chain.active) if e.is_dir(follow_symlinks=False))
    assert chain.active.stat().st_nlink == 2 + subdirs


@pytest.mark.parametrize("origin", ORIGINS)
def test_rmdir_removes_empty_directory(chain: Chain, origin: str) -> None:
    nlink = chain.active.stat().st_nlink
    os.rmdir(chain.obj(origin, "empty"))
    assert not os.path.lexists(chain.obj(origin, "empty"))
    assert chain.active.stat().st_nlink == nlink - 1


@pytest.mark.parametrize("origin", ORIGINS)
def test_rmdir_of_non_empty_directory_is_enotempty(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.rmdir(chain.obj(origin, "dir"))) == errno.ENOTEMPTY
    assert (chain.obj(origin, "dir") / "child").exists()


@pytest.mark.parametrize("origin", ORIGINS)
def test_rmdir_of_file_is_enotdir(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.rmdir(chain.obj(origin, "file"))) == errno.ENOTDIR


@pytest.mark.parametrize("origin", ORIGINS)
def test_rmdir_after_emptying_lower_directory(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    empty_out(d)
    assert os.listdir(d) == []
    assert d.stat().st_nlink == 2
    d.rmdir()
    assert not os.path.lexists(d)


@pytest.mark.parametrize("origin", ORIGINS)
def test_directory_removed_and_recreated_is_opaque(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    empty_out(d)
    d.rmdir()
    d.mkdir()
    assert os.listdir(d) == []
    assert os.listxattr(d) == []
    (d / "fresh").write_bytes(b"fresh")
    assert os.listdir(d) == ["fresh"]
    child = chain.commit_and_child()
    assert os.listdir(child / d.name) == ["fresh"]


@pytest.mark.parametrize("origin", ORIGINS)
def test_directory_replaced_by_file_in_active_hides_children(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "empty")
    d.rmdir()
    d.write_bytes(b"a file now")
    assert d.read_bytes() == b"a file now"
    child = chain.commit_and_child()
    assert (child / d.name).read_bytes() == b"a file now"


def test_name_longer_than_255_bytes_is_enametoolong(chain: Chain) -> None:
    long = chain.active / ("x" * 256)
    assert errno_of(lambda: long.write_bytes(b"")) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.mkdir(long)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.lstat(long)) == errno.ENAMETOOLONG
    ok = chain.active / ("y" * 255)
    ok.write_bytes(b"fits")
    assert ok.read_bytes() == b"fits"


# --------------------------------------------------------------------------- rename


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_file_within_directory(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "file")
    ino = src.stat().st_ino
    dst = chain.active / "renamed"
    os.rename(src, dst)
    assert not os.path.lexists(src)
    assert dst.read_bytes() == content(origin, "file")
    assert dst.stat().st_ino == ino
    assert os.getxattr(dst, "user.layer") == origin.encode()


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("into", ORIGINS)
def test_rename_file_into_another_directory(chain: Chain, origin: str, into: str) -> None:
    src = chain.obj(origin, "file")
    dst = chain.obj(into, "dir") / "sub" / "moved"
    os.rename(src, dst)
    assert not os.path.lexists(src)
    assert dst.read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_directory_keeps_its_children(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "dir")
    ino = src.stat().st_ino
    dst = chain.active / "moved_dir"
    os.rename(src, dst)
    assert not os.path.lexists(src)
    assert dst.stat().st_ino == ino
    assert (dst / "child").read_bytes() == content(origin, "child")
    assert (dst / "sub" / "deep").read_bytes() == content(origin, "deep")
    assert dst.stat().st_nlink == 2 + subdirs_of_dir(origin)
    (dst / "sub" / "deep").write_bytes(b"changed after move")
    child = chain.commit_and_child()
    assert not os.path.lexists(child / src.name)
    assert (child / "moved_dir" / "child").read_bytes() == content(origin, "child")
    assert (child / "moved_dir" / "sub" / "deep").read_bytes() == b"changed after move"


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("into", ORIGINS)
def test_rename_directory_into_another_directory(chain: Chain, origin: str, into: str) -> None:
    src = chain.obj(origin, "dir")
    parent = chain.obj(into, "empty")
    root_nlink = chain.active.stat().st_nlink
    os.rename(src, parent / "inner")
    assert (parent / "inner" / "sub" / "deep").read_bytes() == content(origin, "deep")
    assert parent.stat().st_nlink == 3
    assert chain.active.stat().st_nlink == root_nlink - 1
    assert os.listdir(parent) == ["inner"]


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_then_create_at_old_name(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "dir")
    os.rename(src, chain.active / "elsewhere")
    src.mkdir()
    assert os.listdir(src) == []
    assert sorted(os.listdir(chain.active / "elsewhere")) == dir_names(origin)


@pytest.mark.parametrize("src_origin", ORIGINS)
@pytest.mark.parametrize("dst_origin", ORIGINS)
def test_rename_over_existing_file_replaces_it(chain: Chain, src_origin: str,
                                               dst_origin: str) -> None:
    src = chain.obj(src_origin, "file")
    dst = chain.obj(dst_origin, "exec")
    ino = src.stat().st_ino
    os.rename(src, dst)
    assert not os.path.lexists(src)
    assert dst.read_bytes() == content(src_origin, "file")
    assert dst.stat().st_ino == ino
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644
    child = chain.commit_and_child()
    assert (child / dst.name).read_bytes() == content(src_origin, "file")
    assert not os.path.lexists(child / src.name)


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_over_hard_link_drops_one_link(chain: Chain, origin: str) -> None:
    os.rename(chain.obj(origin, "file"), chain.obj(origin, "hard1"))
    assert chain.obj(origin, "hard2").stat().st_nlink == 1
    assert chain.obj(origin, "hard2").read_bytes() == content(origin, "hard")


@pytest.mark.parametrize("src_origin", ORIGINS)
@pytest.mark.parametrize("dst_origin", ORIGINS)
def test_rename_directory_over_empty_directory(chain: Chain, src_origin: str,
                                               dst_origin: str) -> None:
    src = chain.obj(src_origin, "dir")
    dst = chain.obj(dst_origin, "empty")
    nlink = chain.active.stat().st_nlink
    os.rename(src, dst)
    assert not os.path.lexists(src)
    assert (dst / "child").read_bytes() == content(src_origin, "child")
    assert chain.active.stat().st_nlink == nlink - 1


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_over_directory_emptied_in_active(chain: Chain, origin: str) -> None:
    dst = chain.obj(origin, "dir")
    empty_out(dst)
    os.rename(chain.obj(origin, "empty"), dst)
    assert os.listdir(dst) == []
    child = chain.commit_and_child()
    assert os.listdir(child / dst.name) == []


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_over_non_empty_directory_is_enotempty(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.rename(chain.obj(origin, "empty"), chain.obj(origin, "dir")))
    assert e == errno.ENOTEMPTY
    assert chain.obj(origin, "empty").is_dir()


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_file_over_directory_is_eisdir(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.rename(chain.obj(origin, "file"), chain.obj(origin, "empty")))
    assert e == errno.EISDIR


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_directory_over_file_is_enotdir(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.rename(chain.obj(origin, "empty"), chain.obj(origin, "file")))
    assert e == errno.ENOTDIR


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_directory_into_itself_is_einval(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    assert errno_of(lambda: os.rename(d, d / "sub" / "self")) == errno.EINVAL


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_between_hard_links_of_one_file_does_nothing(chain: Chain, origin: str) -> None:
    os.rename(chain.obj(origin, "hard1"), chain.obj(origin, "hard2"))
    assert chain.obj(origin, "hard1").exists()
    assert chain.obj(origin, "hard2").stat().st_nlink == 2


def test_rename_to_another_snapshot_is_exdev(chain: Chain) -> None:
    other = chain.daemon.prepare(f"{chain.active_key}-other", chain.middle_key)
    e = errno_of(lambda: os.rename(chain.obj("own", "file"), other / "x"))
    assert e == errno.EXDEV


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_noreplace_over_existing_is_eexist(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: renameat2(chain.obj(origin, "file"), chain.obj(origin, "exec"),
                                   RENAME_NOREPLACE))
    assert e == errno.EEXIST
    assert chain.obj(origin, "file").read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_noreplace_to_free_name_moves(chain: Chain, origin: str) -> None:
    renameat2(chain.obj(origin, "dir"), chain.active / "free", RENAME_NOREPLACE)
    assert (chain.active / "free" / "child").read_bytes() == content(origin, "child")
    assert not os.path.lexists(chain.obj(origin, "dir"))


@pytest.mark.parametrize("a", ORIGINS)
@pytest.mark.parametrize("b", ORIGINS)
def test_rename_exchange_swaps_two_files(chain: Chain, a: str, b: str) -> None:
    pa, pb = chain.obj(a, "file"), chain.obj(b, "exec")
    ia, ib = pa.stat().st_ino, pb.stat().st_ino
    data_b = pb.read_bytes()
    renameat2(pa, pb, RENAME_EXCHANGE)
    assert pa.read_bytes() == data_b
    assert pb.read_bytes() == content(a, "file")
    assert (pa.stat().st_ino, pb.stat().st_ino) == (ib, ia)
    child = chain.commit_and_child()
    assert (child / pa.name).read_bytes() == data_b
    assert (child / pb.name).read_bytes() == content(a, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_exchange_directory_and_file_across_directories(chain: Chain,
                                                               origin: str) -> None:
    d = chain.obj(origin, "dir")
    f = chain.obj("middle" if origin == "bottom" else "bottom", "dir") / "child"
    root_nlink = chain.active.stat().st_nlink
    parent_nlink = f.parent.stat().st_nlink
    renameat2(d, f, RENAME_EXCHANGE)
    assert d.read_bytes() == content(f.parent.name.split("_")[0], "child")
    assert (f / "sub" / "deep").read_bytes() == content(origin, "deep")
    assert chain.active.stat().st_nlink == root_nlink - 1
    assert f.parent.stat().st_nlink == parent_nlink + 1


def test_rename_exchange_with_missing_target_is_enoent(chain: Chain) -> None:
    e = errno_of(lambda: renameat2(chain.obj("bottom", "file"), chain.active / "absent",
                                   RENAME_EXCHANGE))
    assert e == errno.ENOENT


@pytest.mark.parametrize("origin", ORIGINS)
def test_rename_whiteout_leaves_a_whiteout_device(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "file")
    renameat2(src, chain.active / "moved", RENAME_WHITEOUT)
    st = os.lstat(src)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (chain.active / "moved").read_bytes() == content(origin, "file")


def test_rename_exchange_of_non_empty_directories(chain: Chain) -> None:
    renameat2(chain.obj("bottom", "dir"), chain.obj("middle", "dir"), RENAME_EXCHANGE)
    assert (chain.obj("bottom", "dir") / "child").read_bytes() == content("middle", "child")
    assert (chain.obj("middle", "dir") / "child").read_bytes() == content("bottom", "child")
    child = chain.commit_and_child()
    assert (child / "middle_dir" / "sub" / "deep").read_bytes() == content("bottom", "deep")


# --------------------------------------------------------------------------- hard links


@pytest.mark.parametrize("origin", ORIGINS)
def test_hard_link_shares_inode_and_counts_links(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "file")
    dst = chain.obj("bottom", "dir") / "linked"
    os.link(src, dst)
    a, b = src.stat(), dst.stat()
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    assert dst.read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_write_through_one_link_is_seen_through_the_other(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "file")
    dst = chain.active / "linked"
    os.link(src, dst)
    with open(dst, "r+b") as f:
        f.write(b"NEW")
    assert src.read_bytes()[:3] == b"NEW"
    os.chmod(src, 0o600)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    os.setxattr(dst, "user.via", b"link")
    assert os.getxattr(src, "user.via") == b"link"
    child = chain.commit_and_child()
    a, b = os.stat(child / src.name), os.stat(child / "linked")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    with open(child / "linked", "r+b") as f:
        f.write(b"CHILD")
    assert (child / src.name).read_bytes()[:5] == b"CHILD"


@pytest.mark.parametrize("origin", ORIGINS)
def test_hard_links_of_a_layer_share_inode_and_data(chain: Chain, origin: str) -> None:
    h1, h2 = chain.obj(origin, "hard1"), chain.obj(origin, "hard2")
    assert h1.stat().st_ino == h2.stat().st_ino
    assert h1.stat().st_nlink == 2
    with open(h2, "ab") as f:
        f.write(b"appended")
    assert h1.read_bytes() == content(origin, "hard") + b"appended"


def test_hard_link_made_in_middle_to_bottom_file_shares_inode(chain: Chain) -> None:
    a, b = chain.active / "bottom_shared", chain.active / "middle_to_bottom_shared"
    assert a.stat().st_ino == b.stat().st_ino
    assert a.stat().st_nlink == 2
    b.write_bytes(b"rewritten")
    assert a.read_bytes() == b"rewritten"


@pytest.mark.parametrize("origin", ORIGINS)
def test_unlink_of_one_link_leaves_the_other(chain: Chain, origin: str) -> None:
    h1, h2 = chain.obj(origin, "hard1"), chain.obj(origin, "hard2")
    h1.unlink()
    assert h2.stat().st_nlink == 1
    assert h2.read_bytes() == content(origin, "hard")
    child = chain.commit_and_child()
    assert os.stat(child / h2.name).st_nlink == 1
    assert not os.path.lexists(child / h1.name)


@pytest.mark.parametrize("origin", ORIGINS)
def test_link_then_unlink_original_keeps_object(chain: Chain, origin: str) -> None:
    src = chain.obj(origin, "file")
    os.link(src, chain.active / "keeper")
    src.unlink()
    st = os.stat(chain.active / "keeper")
    assert st.st_nlink == 1
    assert (chain.active / "keeper").read_bytes() == content(origin, "file")
    assert os.getxattr(chain.active / "keeper", "user.layer") == origin.encode()


@pytest.mark.parametrize("origin", ORIGINS)
def test_hard_link_to_directory_is_eperm(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.link(chain.obj(origin, "dir"), chain.active / "x")) == errno.EPERM


@pytest.mark.parametrize("origin", ORIGINS)
def test_hard_link_over_existing_name_is_eexist(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.link(chain.obj(origin, "file"), chain.obj(origin, "exec")))
    assert e == errno.EEXIST


@pytest.mark.parametrize("origin", ORIGINS)
def test_hard_links_to_symlink_fifo_and_device(chain: Chain, origin: str) -> None:
    for what in ("link", "fifo", "null"):
        src = chain.obj(origin, what)
        os.link(src, chain.active / f"hl_{what}", follow_symlinks=False)
        a, b = os.lstat(src), os.lstat(chain.active / f"hl_{what}")
        assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    assert os.readlink(chain.active / "hl_link") == f"{origin}_file"


# --------------------------------------------------------------------------- special files


@pytest.mark.parametrize("origin", ORIGINS)
def test_symlink_resolves_to_its_target(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "link")
    assert os.readlink(p) == f"{origin}_file"
    assert stat.S_ISLNK(os.lstat(p).st_mode)
    assert os.lstat(p).st_size == len(f"{origin}_file")
    assert p.read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_symlink_created_to_lower_objects(chain: Chain, origin: str) -> None:
    os.symlink(f"{origin}_dir/sub", chain.active / "to_sub")
    os.symlink("/absolute/target/" + "z" * 200, chain.active / "long")
    assert (chain.active / "to_sub" / "deep").read_bytes() == content(origin, "deep")
    assert os.readlink(chain.active / "long") == "/absolute/target/" + "z" * 200
    assert os.lstat(chain.active / "long").st_size == 17 + 200


@pytest.mark.parametrize("origin", ORIGINS)
def test_fifo_passes_data_between_threads(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "fifo")
    assert stat.S_ISFIFO(os.lstat(p).st_mode)
    got: list[bytes] = []

    def reader() -> None:
        with open(p, "rb") as f:
            got.append(f.read())

    def writer() -> None:
        with open(p, "wb") as f:
            f.write(b"through the pipe")

    threads = [threading.Thread(target=reader, daemon=True),
               threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "fifo open or transfer hung"
    assert got == [b"through the pipe"]


def test_mkfifo_creates_fifo(chain: Chain) -> None:
    os.mkfifo(chain.obj("bottom", "dir") / "pipe", 0o600)
    st = os.lstat(chain.obj("bottom", "dir") / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


@pytest.mark.parametrize("origin", ORIGINS)
def test_unix_socket_bind_creates_socket_entry_that_accepts(chain: Chain, origin: str) -> None:
    path = chain.obj(origin, "dir") / "sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        try:
            client.connect(str(path))
            conn, _ = server.accept()
            client.sendall(b"hello")
            assert conn.recv(5) == b"hello"
            conn.close()
        finally:
            client.close()
    finally:
        server.close()
    assert errno_of(lambda: socket.socket(socket.AF_UNIX).bind(str(path))) == errno.EADDRINUSE
    os.unlink(path)


@pytest.mark.parametrize("origin", ORIGINS)
def test_character_device_of_layer_works(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "null")
    st = os.lstat(p)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    with open(p, "r+b", buffering=0) as f:
        assert f.write(b"discarded") == 9
        assert f.read() == b""


def test_mknod_creates_character_and_block_devices(chain: Chain) -> None:
    os.mknod(chain.active / "zero", stat.S_IFCHR | 0o640, os.makedev(1, 5))
    os.mknod(chain.obj("bottom", "dir") / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    z = os.lstat(chain.active / "zero")
    assert stat.S_ISCHR(z.st_mode) and stat.S_IMODE(z.st_mode) == 0o640
    assert z.st_rdev == os.makedev(1, 5)
    with open(chain.active / "zero", "rb") as f:
        assert f.read(16) == bytes(16)
    b = os.lstat(chain.obj("bottom", "dir") / "blk")
    assert stat.S_ISBLK(b.st_mode) and b.st_rdev == os.makedev(7, 200)
    child = chain.commit_and_child()
    assert os.lstat(child / "zero").st_rdev == os.makedev(1, 5)


def test_mknod_of_regular_file_creates_empty_file(chain: Chain) -> None:
    os.mknod(chain.active / "plain", stat.S_IFREG | 0o600)
    assert (chain.active / "plain").read_bytes() == b""
    (chain.active / "plain").write_bytes(b"filled")
    assert (chain.active / "plain").read_bytes() == b"filled"


# --------------------------------------------------------------------------- modes, owners, times


@pytest.mark.parametrize("origin", ORIGINS)
def test_chmod_changes_mode(chain: Chain, origin: str) -> None:
    for what, mode in (("file", 0o600), ("dir", 0o700), ("fifo", 0o640), ("null", 0o600)):
        p = chain.obj(origin, what)
        os.chmod(p, mode)
        assert stat.S_IMODE(os.lstat(p).st_mode) == mode
    assert chain.obj(origin, "file").read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_executable_of_layer_runs(chain: Chain, origin: str) -> None:
    out = subprocess.run([chain.obj(origin, "exec")], capture_output=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, origin.encode() + b"\n")


@pytest.mark.parametrize("origin", ORIGINS)
def test_setuid_setgid_and_sticky_bits_are_kept(chain: Chain, origin: str) -> None:
    f, d = chain.obj(origin, "exec"), chain.obj(origin, "empty")
    os.chmod(f, 0o6755)
    os.chmod(d, 0o1777)
    assert os.stat(f).st_mode == stat.S_IFREG | 0o6755
    assert os.stat(d).st_mode == stat.S_IFDIR | 0o1777
    child = chain.commit_and_child()
    assert os.stat(child / f.name).st_mode == stat.S_IFREG | 0o6755
    assert os.stat(child / d.name).st_mode == stat.S_IFDIR | 0o1777


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_changes_owner_and_group(chain: Chain, origin: str) -> None:
    for what in ("file", "dir", "fifo"):
        p = chain.obj(origin, what)
        os.chown(p, 1234, 5678)
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(chain.obj(origin, "link"), 4321, 8765, follow_symlinks=False)
    st = os.lstat(chain.obj(origin, "link"))
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert os.stat(chain.obj(origin, "link")).st_uid == 1234  # the target's


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_clears_setuid_and_setgid_of_executable(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    os.chmod(p, 0o6755)
    os.chown(p, 1000, 1000)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_keeps_setgid_without_group_execute(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.chmod(p, 0o2644)
    os.chown(p, 1000, 1000)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o2644


@pytest.mark.parametrize("origin", ORIGINS)
def test_setgid_directory_passes_group_and_bit_to_new_entries(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    (d / "f").write_bytes(b"")
    os.mkdir(d / "sd")
    os.mkfifo(d / "p")
    os.symlink("x", d / "l")
    assert os.stat(d / "f").st_gid == 4242
    assert not os.stat(d / "f").st_mode & stat.S_ISGID
    sd = os.stat(d / "sd")
    assert sd.st_gid == 4242 and sd.st_mode & stat.S_ISGID
    assert os.lstat(d / "p").st_gid == 4242
    assert os.lstat(d / "l").st_gid == 4242
    assert os.stat(d / "child").st_gid == 0  # existing entries keep theirs


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_sets_times_with_nanosecond_precision(chain: Chain, origin: str) -> None:
    times = (1_000_000_001_123_456_789, 1_500_000_002_987_654_321)
    for what in ("file", "dir", "fifo"):
        p = chain.obj(origin, what)
        os.utime(p, ns=times)
        st = os.stat(p)
        assert (st.st_atime_ns, st.st_mtime_ns) == times
    os.utime(chain.obj(origin, "link"), ns=times, follow_symlinks=False)
    st = os.lstat(chain.obj(origin, "link"))
    assert (st.st_atime_ns, st.st_mtime_ns) == times
    child = chain.commit_and_child()
    st = os.stat(child / f"{origin}_file")
    assert (st.st_atime_ns, st.st_mtime_ns) == times


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_to_the_epoch(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(0, 0))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (0, 0)


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_now_sets_current_time(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(0, 0))
    before = os.stat(p)
    os.utime(p)
    st = os.stat(p)
    assert st.st_mtime_ns > before.st_mtime_ns
    assert st.st_atime_ns > before.st_atime_ns


def test_touch_after_write_is_not_older_than_the_write(chain: Chain) -> None:
    a, b = chain.active / "written", chain.active / "touched"
    b.write_bytes(b"")
    for _ in range(50):
        a.write_bytes(b"x")
        os.utime(b)
        assert os.stat(b).st_mtime_ns >= os.stat(a).st_mtime_ns
        os.utime(a)
        assert os.stat(a).st_ctime_ns >= os.stat(b).st_ctime_ns


@pytest.mark.parametrize("origin", ORIGINS)
def test_metadata_change_updates_ctime_only(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(5, 5))
    ctime = os.stat(p).st_ctime_ns
    os.chmod(p, 0o640)
    st = os.stat(p)
    assert st.st_mtime_ns == 5 and st.st_ctime_ns >= ctime


@pytest.mark.parametrize("origin", ORIGINS)
def test_creating_an_entry_updates_directory_mtime(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    os.utime(d, ns=(5, 5))
    (d / "new").write_bytes(b"")
    assert os.stat(d).st_mtime_ns > 5
    os.utime(d, ns=(5, 5))
    (d / "new").unlink()
    assert os.stat(d).st_mtime_ns > 5


# --------------------------------------------------------------------------- xattrs


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_of_the_layer_is_visible(chain: Chain, origin: str) -> None:
    for what in ("file", "dir"):
        p = chain.obj(origin, what)
        assert os.listxattr(p) == ["user.layer"]
        assert os.getxattr(p, "user.layer") == origin.encode()


@pytest.mark.parametrize("origin", ORIGINS)
def test_user_xattr_set_get_list_remove(chain: Chain, origin: str) -> None:
    for what in ("file", "dir"):
        p = chain.obj(origin, what)
        os.setxattr(p, "user.one", b"1")
        os.setxattr(p, "user.two", b"\0binary\xff")
        os.setxattr(p, "user.layer", b"replaced")
        assert sorted(os.listxattr(p)) == ["user.layer", "user.one", "user.two"]
        assert os.getxattr(p, "user.two") == b"\0binary\xff"
        assert os.getxattr(p, "user.layer") == b"replaced"
        os.removexattr(p, "user.one")
        os.removexattr(p, "user.layer")
        assert os.listxattr(p) == ["user.two"]
        assert errno_of(lambda p=p: os.getxattr(p, "user.one")) == errno.ENODATA
    child = chain.commit_and_child()
    assert os.listxattr(child / f"{origin}_file") == ["user.two"]


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_with_empty_and_large_values(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.large", b"v" * 60000)
    assert os.getxattr(p, "user.empty") == b""
    assert os.getxattr(p, "user.large") == b"v" * 60000


@pytest.mark.parametrize("origin", ORIGINS)
def test_trusted_xattr_round_trips(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.setxattr(p, "trusted.overlay.opaque", b"y")
    assert os.getxattr(p, "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" in os.listxattr(p)
    os.removexattr(p, "trusted.overlay.opaque")
    assert "trusted.overlay.opaque" not in os.listxattr(p)


def _caps(permitted: int) -> bytes:
    # struct vfs_cap_data, revision 2, effective flag set.
    return struct.pack("<IIIII", 0x02000001, permitted, 0, 0, 0)


@pytest.mark.parametrize("origin", ORIGINS)
def test_security_capability_round_trips(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    caps = _caps(1 << 10)  # CAP_NET_BIND_SERVICE
    os.setxattr(p, "security.capability", caps)
    assert os.getxattr(p, "security.capability") == caps
    assert "security.capability" in os.listxattr(p)
    child = chain.commit_and_child()
    assert os.getxattr(child / p.name, "security.capability") == caps
    os.removexattr(child / p.name, "security.capability")
    assert errno_of(lambda: os.getxattr(child / p.name, "security.capability")) == errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_write_drops_security_capability(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    os.setxattr(p, "security.capability", _caps(1 << 10))
    with open(p, "ab") as f:
        f.write(b"# patched\n")
    assert errno_of(lambda: os.getxattr(p, "security.capability")) == errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_create_flag_on_existing_name_is_eexist(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    e = errno_of(lambda: os.setxattr(p, "user.layer", b"x", os.XATTR_CREATE))
    assert e == errno.EEXIST
    os.setxattr(p, "user.new", b"x", os.XATTR_CREATE)
    assert os.getxattr(p, "user.new") == b"x"


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_replace_flag_on_missing_name_is_enodata(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    assert errno_of(lambda: os.setxattr(p, "user.none", b"x", os.XATTR_REPLACE)) == errno.ENODATA
    os.setxattr(p, "user.layer", b"again", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.layer") == b"again"


@pytest.mark.parametrize("origin", ORIGINS)
def test_removexattr_of_missing_name_is_enodata(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.removexattr(chain.obj(origin, "file"), "user.none")) == \
        errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_user_xattr_on_symlink_or_fifo_is_refused(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.setxattr(chain.obj(origin, "link"), "user.x", b"1",
                                     follow_symlinks=False))
    assert e == errno.EPERM
    assert errno_of(lambda: os.setxattr(chain.obj(origin, "fifo"), "user.x", b"1")) == \
        errno.EPERM


# --------------------------------------------------------------------------- inode numbers, statfs


@pytest.mark.parametrize("origin", ORIGINS)
def test_st_ino_is_stable_across_lookups_and_dropped_caches(chain: Chain, origin: str) -> None:
    paths = [chain.obj(origin, w) for w in ("file", "dir", "link", "hard1", "fifo")]
    paths.append(chain.obj(origin, "dir") / "sub" / "deep")
    first = [os.lstat(p).st_ino for p in paths]
    assert [os.lstat(p).st_ino for p in paths] == first
    if not drop_caches():
        pytest.skip("cannot write /proc/sys/vm/drop_caches")
    assert [os.lstat(p).st_ino for p in paths] == first


@pytest.mark.parametrize("origin", ORIGINS)
def test_st_ino_survives_copy_up_and_rename(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    ino = p.stat().st_ino
    with open(p, "ab") as f:
        f.write(b"x")
    os.chmod(p, 0o600)
    assert p.stat().st_ino == ino
    os.rename(p, chain.obj("bottom", "dir") / "renamed")
    drop_caches()
    assert os.stat(chain.obj("bottom", "dir") / "renamed").st_ino == ino


@pytest.mark.parametrize("origin", ORIGINS)
def test_names_deleted_while_a_directory_is_read_stay_deleted(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    names = [f"entry{i:03}" for i in range(300)]
    for n in names:
        (d / n).write_bytes(b"")
    if origin != "own":
        chain.active = chain.commit_and_child()
        d = chain.obj(origin, "dir")
    seen = []
    with os.scandir(d) as it:
        seen.append(next(it).name)
        for n in names:
            os.unlink(d / n)
        seen.extend(e.name for e in it)
    for n in names:
        assert not os.path.lexists(d / n), f"{n} came back after a readdir"
    assert len(set(seen)) == len(seen)
    assert sorted(os.listdir(d)) == dir_names(origin)


def test_inode_numbers_are_unique_and_match_readdir(chain: Chain) -> None:
    seen: dict[int, set[tuple[int, int]]] = {}
    for dirpath, _, _ in os.walk(chain.active):
        with os.scandir(dirpath) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                assert e.inode() == st.st_ino
                seen.setdefault(st.st_ino, set()).add((st.st_dev, st.st_nlink))
    counts: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(chain.active):
        for n in dirnames + filenames:
            ino = os.lstat(os.path.join(dirpath, n)).st_ino
            counts[ino] = counts.get(ino, 0) + 1
    for ino, n in counts.items():
        ((_, nlink),) = seen[ino]
        if n > 1:
            assert nlink == n  # only hard links share a number


def test_statfs_returns_sane_numbers(chain: Chain) -> None:
    st = os.statvfs(chain.active)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert 0 < st.f_blocks
    assert 0 <= st.f_bavail <= st.f_bfree <= st.f_blocks
    assert 0 <= st.f_ffree <= st.f_files
    assert st.f_namemax == 255
    assert os.statvfs(chain.bottom).f_blocks == st.f_blocks


# --------------------------------------------------------------------------- read-only snapshots


def _mutations(root: Path) -> dict[str, Callable[[], object]]:
    f, e = root / "bottom_file", root / "bottom_exec"

    def bind() -> None:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(root / "new_sock"))
        finally:
            s.close()

    return {
        "create": lambda: os.open(root / "new", os.O_CREAT | os.O_WRONLY, 0o644),
        "open_for_write": lambda: os.open(f, os.O_WRONLY),
        "open_for_read_write": lambda: os.open(f, os.O_RDWR),
        "open_with_truncate": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "open_for_append": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "truncate": lambda: os.truncate(f, 0),
        "unlink": lambda: os.unlink(f),
        "unlink_in_subdirectory": lambda: os.unlink(root / "bottom_dir" / "child"),
        "mkdir": lambda: os.mkdir(root / "new_dir"),
        "rmdir": lambda: os.rmdir(root / "bottom_empty"),
        "rename": lambda: os.rename(f, root / "renamed"),
        "rename_over": lambda: os.rename(f, e),
        "rename_exchange": lambda: renameat2(f, e, RENAME_EXCHANGE),
        "link": lambda: os.link(f, root / "new_link"),
        "symlink": lambda: os.symlink("target", root / "new_symlink"),
        "mkfifo": lambda: os.mkfifo(root / "new_fifo"),
        "mknod": lambda: os.mknod(root / "new_dev", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
        "bind_socket": bind,
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "lchown": lambda: os.chown(root / "bottom_link", 1, 1, follow_symlinks=False),
        "utime": lambda: os.utime(f, ns=(1, 1)),
        "utime_now": lambda: os.utime(f),
        "setxattr": lambda: os.setxattr(f, "user.new", b"1"),
        "setxattr_trusted": lambda: os.setxattr(f, "trusted.new", b"1"),
        "replace_xattr": lambda: os.setxattr(f, "user.layer", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.layer"),
    }


@pytest.mark.parametrize("which", ["bottom", "middle", "view"])
@pytest.mark.parametrize("op", sorted(_mutations(Path("/")).keys()))
def test_read_only_snapshot_refuses_mutation_with_erofs(chain: Chain, which: str,
                                                        op: str) -> None:
    root = getattr(chain, which)
    assert errno_of(_mutations(root)[op]) == errno.EROFS


@pytest.mark.parametrize("which", ["bottom", "middle", "view"])
def test_read_only_snapshot_allows_reading(chain: Chain, which: str) -> None:
    root = getattr(chain, which)
    assert (root / "bottom_file").read_bytes() == content("bottom", "file")
    assert os.getxattr(root / "bottom_file", "user.layer") == b"bottom"
    assert os.readlink(root / "bottom_link") == "bottom_file"
    fd = os.open(root / "bottom_file", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_file_open_for_writing_at_commit_refuses_later_writes(chain: Chain) -> None:
    fd = os.open(chain.obj("own", "file"), os.O_WRONLY)
    try:
        os.write(fd, b"before")
        name = f"{chain.active_key}-c"
        chain.daemon.commit(name, chain.active_key)
        assert errno_of(lambda: os.write(fd, b"after")) == errno.EROFS
    finally:
        os.close(fd)
    child = chain.daemon.prepare(f"{name}-child", name)
    assert (child / "own_file").read_bytes() == b"before" + content("own", "file")[6:]


def test_file_unlinked_while_open_at_commit_leaves_committed_usage_alone(chain: Chain) -> None:
    from fusesnap.pb import snapshots_pb2 as spb

    p = chain.obj("own", "file")
    f = open(p, "r+b", buffering=0)
    try:
        f.write(b"z" * 100_000)
        p.unlink()
        name = f"{chain.active_key}-c"
        chain.daemon.commit(name, chain.active_key)
        usage = chain.daemon.snapshots.Usage(spb.UsageRequest(key=name))
        f.seek(0)
        assert f.read(3) == b"zzz"
        assert os.fstat(f.fileno()).st_nlink == 0
    finally:
        f.close()
    assert chain.daemon.snapshots.Usage(spb.UsageRequest(key=name)) == usage
    assert usage.size < 100_000
    child = chain.daemon.prepare(f"{name}-child", name)
    assert not os.path.lexists(child / "own_file")


def test_committed_layers_never_change_when_a_child_modifies_them(chain: Chain) -> None:
    # Touch every lower object in every way; the chain fixture's teardown
    # checks bottom, middle and the view, through the mount and a fresh view.
    a = chain.active
    for origin in LOWER:
        with open(a / f"{origin}_big", "r+b") as f:
            f.write(b"overwritten")
        os.truncate(a / f"{origin}_file", 3)
        os.chmod(a / f"{origin}_exec", 0o4700)
        os.chown(a / f"{origin}_dir", 99, 99)
        os.utime(a / f"{origin}_dir" / "child", ns=(7, 7))
        os.setxattr(a / f"{origin}_dir", "user.layer", b"changed")
        os.removexattr(a / f"{origin}_file", "user.layer")
        os.link(a / f"{origin}_hard1", a / f"{origin}_hard3")
        with open(a / f"{origin}_hard2", "ab") as f:
            f.write(b"appended")
        os.unlink(a / f"{origin}_fifo")
        os.rename(a / f"{origin}_dir" / "sub", a / f"{origin}_empty" / "moved_sub")
        (a / f"{origin}_empty" / "moved_sub" / "deep").write_bytes(b"rewritten")
        os.rename(a / f"{origin}_link", a / f"{origin}_null")
        renameat2(a / f"{origin}_dir", a / f"{origin}_empty", RENAME_EXCHANGE)
    os.unlink(a / "bottom_modified")
    (a / "bottom_opaque" / "new_child").unlink()
    os.rmdir(a / "bottom_opaque")
    (a / "bottom_dir2file").write_bytes(b"changed again")
    with open(a / "middle_to_bottom_shared", "ab") as f:
        f.write(b"via middle's link")
    drop_caches()


def test_view_shows_its_parent(chain: Chain) -> None:
    assert tree_state(chain.view) == tree_state(chain.middle)
