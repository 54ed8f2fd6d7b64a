"""rename(2) of files and directories from every layer, over existing names, and
renameat2's RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.posix.helpers import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    ROOT_ONLY,
    empty_out,
    errno_of,
    renameat2,
)
from tests.posix.world import ORIGINS, Chain, content, dir_names, subdirs_of_dir

pytestmark = ROOT_ONLY


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
