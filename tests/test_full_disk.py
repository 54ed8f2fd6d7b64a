"""A full disk (fusesnap/store/space.py): the store on a 64 MiB tmpfs, filled
through the mount and through an ingest. The daemon answers ENOSPC and
RESOURCE_EXHAUSTED and nothing else, keeps serving reads and everything
committed, frees space through the API, recovers by itself, and starts on
a full disk."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import tests.content_client as cc
from fusesnap.errors import ResourceExhausted
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.store.db import Database
from tests.conftest import PROXY, Daemon

MiB = 1 << 20
WAIT = 30.0
"""Seconds a test waits at most for the daemon to notice space came back
(it looks every second)."""


def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.getuid() != 0:
        pytest.skip("mounting a small file system (tmpfs) needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "fusesnap-full",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB file system for the store."""
    yield from tmpfs(tmp_path / "small", "64m")


def fill_file(path: Path, limit: int = 200) -> int:
    """Append 1 MiB writes to `path` until the disk is full; the errno that
    stopped it (bounded: `limit` MiB at most)."""
    block = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(limit):
            view = memoryview(block)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except OSError as e:
                    return e.errno
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the kernel may report ENOSPC again at close
    raise AssertionError(f"wrote {limit} MiB to a 64 MiB file system")


def fill_ingest(content: ContentStub, ref: str, limit: int = 200) -> grpc.RpcError:
    """Write 1 MiB messages to ingest `ref` until the daemon refuses one."""
    s = cc.WriteStream(content)
    s.send(action=cc.STAT, ref=ref)
    block = os.urandom(MiB)
    try:
        for i in range(limit):
            s.send(action=cc.WRITE, offset=i * MiB, data=block)
    except grpc.RpcError as e:
        return e
    finally:
        s.release()
    raise AssertionError(f"ingested {limit} MiB on a 64 MiB file system")


def rpc_error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value


def wait_for_space(d: Daemon, key: str) -> Path:
    """Prepare `key` once the daemon accepts new data again; its directory."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return d.prepare(key)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class World:
    """What a test commits before the disk fills, to check it after."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.content = ContentStub(d.channel)
        base = d.prepare("base-work")
        (base / "etc").mkdir()
        (base / "etc" / "motd").write_bytes(os.urandom(200_000))
        (base / "bin").mkdir()
        (base / "bin" / "tool").write_bytes(os.urandom(300_000))
        self.files = {p: digest(base / p) for p in ("etc/motd", "bin/tool")}
        d.commit("base", "base-work")
        self.blob = os.urandom(500_000)
        self.digest = cc.ingest(self.content, "kept", self.blob)

    def intact(self, where: Path) -> None:
        assert {p: digest(where / p) for p in self.files} == self.files
        assert cc.read(self.content, self.digest) == self.blob


def no_tracebacks(d: Daemon) -> None:
    assert "Traceback" not in d.logs(), d.logs()


def test_full_disk_refuses_new_data_and_serves_everything_else(
        new_daemon: type[Daemon], small: Path, tmp_path: Path) -> None:
    d = new_daemon(small / "root", tmp_path / "sock", args=PROXY).start()
    world = World(d)
    work = d.prepare("work", "base")
    small_work = d.prepare("small-work", "base")
    (small_work / "note").write_text("made before the disk filled\n")
    (work / "big").touch()

    # An ingest fills the disk: RESOURCE_EXHAUSTED, not DATA_LOSS, and the
    # ingest keeps every byte it acknowledged.
    err = fill_ingest(world.content, "big")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert "no space left" in (err.details() or "")
    offset = cc.status(world.content, "big").offset
    assert offset > 0 and offset % MiB == 0

    # Through the mount: ENOSPC for anything that adds data.
    assert fill_file(work / "big") == errno.ENOSPC
    with pytest.raises(OSError) as e:
        (work / "new").write_text("x")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:
        (work / "dir").mkdir()
    assert e.value.errno == errno.ENOSPC
    err = rpc_error(d.prepare, "refused", "base")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no space left" in (err.details() or "")

    # Everything else goes on: reads, listings, metadata calls, a Commit, a View.
    assert d.proc is not None and d.proc.poll() is None
    world.intact(work)
    assert sorted(os.listdir(work)) == ["big", "bin", "etc"]
    d.commit("small", "small-work")
    look = d.view("look", "small")
    assert (look / "note").read_text() == "made before the disk filled\n"
    world.intact(look)
    keys = {s.name for r in d.snapshots.List(spb.ListSnapshotsRequest()) for s in r.info}
    assert {"base", "small", "look", "work"} <= keys
    assert cc.info(world.content, world.digest).size == len(world.blob)

    # Freeing space through the API works on the full disk, and the daemon
    # takes new data again by itself.
    world.content.Abort(cpb.AbortRequest(ref="big"))
    d.snapshots.Remove(spb.RemoveSnapshotRequest(key="work"))
    again = wait_for_space(d, "again")
    (again / "new").write_text("space is back\n")
    assert (again / "new").read_text() == "space is back\n"
    assert cc.ingest(world.content, "after", b"new bytes") == cc.sha(b"new bytes")
    world.intact(look)
    assert d.stop() == 0
    no_tracebacks(d)


def test_daemon_stops_and_starts_on_a_full_disk(
        new_daemon: type[Daemon], small: Path, tmp_path: Path) -> None:
    d = new_daemon(small / "root", tmp_path / "sock", args=PROXY).start()
    world = World(d)
    work = d.prepare("work", "base")
    assert fill_file(work / "big") == errno.ENOSPC
    assert d.stop() == 0
    assert not os.path.ismount(d.mountpoint)

    d.start()  # on the full disk
    world.content = ContentStub(d.channel)
    world.intact(work)
    assert (work / "big").stat().st_size > 0
    with pytest.raises(OSError) as e:
        (work / "new").write_text("x")
    assert e.value.errno == errno.ENOSPC
    d.snapshots.Remove(spb.RemoveSnapshotRequest(key="work"))
    again = wait_for_space(d, "again")
    (again / "new").write_text("x")
    world.intact(d.view("look", "base"))
    assert d.stop() == 0
    no_tracebacks(d)


def test_collector_frees_space_on_a_full_disk(
        new_daemon: type[Daemon], small: Path, tmp_path: Path) -> None:
    d = new_daemon(small / "root", tmp_path / "sock").start()  # direct role: fusesnap collects
    content = ContentStub(d.channel)
    stray = cc.ingest(content, "stray", os.urandom(30 * MiB))  # on no lease
    err = fill_ingest(content, "filler")  # an ingest is safe from collection a day
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    subprocess.run([*d.command()[:3], "--socket", str(d.socket), "gc"], check=True,
                   capture_output=True, timeout=60)
    assert cc.code(cc.info, content, stray) == grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + WAIT
    while True:
        try:
            assert cc.ingest(content, "after", b"new bytes") == cc.sha(b"new bytes")
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        time.sleep(0.2)
    assert cc.status(content, "filler").offset > 0
    assert d.stop() == 0
    no_tracebacks(d)


# ---------------------------------------------------------------- the database alone


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "tiny", "4m")


def _fill_but(path: Path, leave: int) -> Path:
    """Fill the file system of `path` but `leave` bytes, with the file `path`."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    size = path.stat().st_size
    os.truncate(path, max(0, size - leave))
    return path


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0])
    finally:
        conn.close()


def _group_of_rows(db: Database, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        with db.group():
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                       (f"k{i}", os.urandom(400).hex()))


def test_group_whose_commit_finds_the_disk_full_is_replayed_whole(tiny: Path) -> None:
    db = Database(tiny / "metadata.db")
    before = _rows(tiny / "metadata.db")
    ballast = _fill_but(tiny / "ballast", 4096)
    _group_of_rows(db, 300)  # about 240 KiB of WAL: more than is free
    freed: list[str] = []
    db.on_full = lambda what: (freed.append(what), os.unlink(ballast))  # type: ignore[func-returns-value]
    db.commit_group()
    assert freed == ["committing metadata"]
    db.close()
    assert _rows(tiny / "metadata.db") == before + 300


def test_group_that_cannot_commit_stays_open_whole_until_space_comes_back(tiny: Path) -> None:
    db = Database(tiny / "metadata.db")
    before = _rows(tiny / "metadata.db")
    ballast = _fill_but(tiny / "ballast", 4096)
    _group_of_rows(db, 300)
    with pytest.raises(ResourceExhausted):
        db.commit_group()
    # Still there for this connection's readers, not yet for others.
    assert db.one("SELECT COUNT(*) FROM meta")[0] == before + 300
    _group_of_rows(db, 1, first=300)  # changes go on joining the open group
    os.unlink(ballast)
    db.commit_group()
    db.close()
    assert _rows(tiny / "metadata.db") == before + 301
