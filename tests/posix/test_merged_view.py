"""What the active snapshot shows of its layers: the middle layer's modifications,
deletions, opaque and replaced directories, renames; the root directory and names."""

from __future__ import annotations

import errno
import os
import stat

from tests.posix.helpers import ROOT_ONLY, errno_of
from tests.posix.world import ORIGINS, Chain

pytestmark = ROOT_ONLY


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
