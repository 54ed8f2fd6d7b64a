"""Removing and making names: unlink, mkdir, rmdir, directory link counts, opaque
recreated directories, names too long."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.posix.helpers import ROOT_ONLY, empty_out, errno_of
from tests.posix.world import ORIGINS, Chain, subdirs_of_dir

pytestmark = ROOT_ONLY


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
