"""Hard links made in the active snapshot and in the layers: one inode, link counts,
writes and metadata seen through every name."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.posix.helpers import ROOT_ONLY, errno_of
from tests.posix.world import ORIGINS, Chain, content

pytestmark = ROOT_ONLY


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
