"""Reading and writing files: open flags, truncate, copy-up under open descriptors,
unlinked open files, fsync, mmap, sparse files and offsets beyond 4 GiB."""

from __future__ import annotations

import errno
import mmap
import os
import stat

import pytest

from tests.posix.helpers import ROOT_ONLY, GiB, errno_of
from tests.posix.world import LOWER, ORIGINS, Chain, big_content, content, dir_names

pytestmark = ROOT_ONLY


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
