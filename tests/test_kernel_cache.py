"""What the kernel remembers so that requests never reach the daemon
(issue 16, "fewer round trips"), counted by the daemon itself
(`fusesnap debug fuse-stats`): misses, the mount's root, FLUSH."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from fusesnap.pb import debug_pb2
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.debug_pb2_grpc import DebugStub
from tests.conftest import PROXY, Daemon, module_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "kcache", PROXY)


def counts(d: Daemon) -> dict[str, int]:
    """Requests served since the last call, by opcode."""
    assert d.channel is not None
    resp = DebugStub(d.channel).FuseStats(debug_pb2.FuseStatsRequest(reset=True))
    return {o.opcode: o.count for o in resp.opcodes}


def test_a_missing_name_is_looked_up_once(daemon: Daemon) -> None:
    work = daemon.prepare("miss")
    os.stat(work)
    counts(daemon)
    for _ in range(20):
        assert not (work / "not-there").exists()
    assert counts(daemon).get("LOOKUP") == 1


def test_a_name_created_after_a_miss_is_found(daemon: Daemon) -> None:
    work = daemon.prepare("miss-then-create")
    for name in ("created", "renamed", "linked", "dir"):
        assert not (work / name).exists()
    (work / "created").write_bytes(b"c")
    (work / "src").write_bytes(b"r")
    os.rename(work / "src", work / "renamed")
    os.link(work / "created", work / "linked")
    (work / "dir").mkdir()
    assert sorted(os.listdir(work)) == ["created", "dir", "linked", "renamed"]
    assert (work / "renamed").read_bytes() == b"r"
    assert (work / "linked").read_bytes() == b"c"


def test_close_sends_no_flush(daemon: Daemon) -> None:
    work = daemon.prepare("flush")
    (work / "first").write_bytes(b"x")  # the kernel learns FLUSH is not wanted
    counts(daemon)
    for i in range(20):
        (work / f"f{i}").write_bytes(b"x")
    got = counts(daemon)
    assert got.get("FLUSH", 0) == 0
    assert got["CREATE"] == 20  # (RELEASE is sent after close returns: not counted here)


def test_paths_through_the_mount_root_are_answered_by_the_kernel(daemon: Daemon) -> None:
    work = daemon.prepare("absolute")
    (work / "f").write_bytes(b"x")
    os.stat(daemon.mountpoint)
    os.stat(work / "f")
    counts(daemon)
    for _ in range(50):
        os.stat(daemon.mountpoint)
        os.stat(work / "f")  # an absolute path: it crosses the mount's root
    assert counts(daemon) == {}


def test_a_listing_is_read_from_the_daemon_once(daemon: Daemon) -> None:
    work = daemon.prepare("listing")
    (work / "d").mkdir()
    for i in range(50):
        (work / "d" / f"f{i}").write_bytes(b"x")
    first = sorted(os.listdir(work / "d"))
    counts(daemon)
    for _ in range(10):
        assert sorted(os.listdir(work / "d")) == first
    assert "READDIRPLUS" not in counts(daemon)


def test_a_cached_listing_follows_changes_through_the_mount(daemon: Daemon) -> None:
    work = daemon.prepare("listing-changes")
    (work / "d").mkdir()
    (work / "d" / "a").write_bytes(b"a")
    assert os.listdir(work / "d") == ["a"]
    (work / "d" / "b").write_bytes(b"b")
    assert sorted(os.listdir(work / "d")) == ["a", "b"]
    os.rename(work / "d" / "a", work / "d" / "c")
    assert sorted(os.listdir(work / "d")) == ["b", "c"]
    (work / "d" / "b").unlink()
    assert os.listdir(work / "d") == ["c"]


def test_a_polling_daemon_serves_grpc_during_a_burst_of_requests(daemon: Daemon) -> None:
    # The FUSE loop polls for the next request before it sleeps (--fuse-busy-poll,
    # on by default); calls that cross into the same thread must still get in.
    work = daemon.prepare("burst")
    done = threading.Event()

    def burst() -> None:
        for i in range(3000):  # distinct missing names: each is a LOOKUP
            if done.is_set():
                break
            (work / f"missing-{i}").exists()

    t = threading.Thread(target=burst)
    t.start()
    try:
        for _ in range(20):
            daemon.snapshots.Stat(spb.StatSnapshotRequest(key="burst"), timeout=10)
    finally:
        done.set()
        t.join()


def test_busy_poll_flag_is_checked() -> None:
    out = subprocess.run([sys.executable, "-m", "fusesnap", "serve", "--fuse-busy-poll", "-5"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "expected a whole number of microseconds" in out.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="the mount's readahead is set through sysfs, "
                    "which only root may write")
def test_a_sequential_read_reaches_the_daemon_in_mebibyte_requests(daemon: Daemon) -> None:
    work = daemon.prepare("readahead")
    data = os.urandom(8 << 20)
    (work / "big").write_bytes(data)
    fd = os.open(work / "big", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the mount's pages of it
        counts(daemon)
        got = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    finally:
        os.close(fd)
    assert got == data
    reads = counts(daemon).get("READ", 0)
    assert 0 < reads <= 16  # 64 at the kernel's default 128 KiB


def test_a_symlink_is_read_from_the_daemon_once(daemon: Daemon) -> None:
    work = daemon.prepare("symlink")
    (work / "target").write_bytes(b"t")
    os.symlink("target", work / "link")
    counts(daemon)
    for _ in range(20):
        assert os.readlink(work / "link") == "target"
        assert (work / "link").read_bytes() == b"t"  # followed
    assert counts(daemon).get("READLINK") == 1
