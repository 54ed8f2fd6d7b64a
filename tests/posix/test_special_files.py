"""Symlinks, named pipes, unix sockets and device nodes."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading

import pytest

from tests.posix.helpers import ROOT_ONLY, errno_of
from tests.posix.world import ORIGINS, Chain, content

pytestmark = ROOT_ONLY


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
