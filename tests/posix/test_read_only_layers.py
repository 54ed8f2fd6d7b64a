"""Committed layers and views: read-only (EROFS for every mutation), readable,
unchanged by a child; files open at commit time."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.posix.helpers import (
    RENAME_EXCHANGE,
    ROOT_ONLY,
    drop_caches,
    errno_of,
    renameat2,
    tree_state,
)
from tests.posix.world import LOWER, Chain, content

pytestmark = ROOT_ONLY


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
