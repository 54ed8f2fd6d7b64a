"""Partial copy-up (fusesnap/snapshots/layers/data.py), through a real mount: writing
to a file of a lower layer copies only the blocks it writes, and every way of
reading the file — the writer's descriptor, one opened before the copy-up, a
new one, a view of the committed layer, the layer's diff, the daemon after a
kill -9 — sees exactly the bytes a plain file would hold.

The property test drives one file through random writes, truncates and
commits (each commit starts a new active snapshot on top, so data chains of
every depth form, past MAX_CHAIN) against a bytearray model.
"""

from __future__ import annotations

import io
import itertools
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusesnap.layerfs.ops import OID_MASK
from fusesnap.pb.diff_pb2 import DiffRequest
from fusesnap.pb.diff_pb2_grpc import DifferStub
from fusesnap.snapshots.layers.data import MAX_CHAIN
from tests.conftest import PROXY, Daemon, module_daemon

MIB = 1 << 20
_keys = itertools.count()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "copy-up", PROXY)


def key() -> str:
    return f"k{next(_keys)}"


def on_lower(daemon: Daemon, content: bytes) -> tuple[str, Path]:
    """(key, directory) of an active snapshot over a committed layer holding
    `content` as file `f`."""
    first = key()
    (daemon.prepare(first) / "f").write_bytes(content)
    committed = key()
    daemon.commit(committed, first)
    active = key()
    return active, daemon.prepare(active, committed)


def commit_and_continue(daemon: Daemon, active: str) -> tuple[str, Path]:
    committed = key()
    daemon.commit(committed, active)
    nxt = key()
    return nxt, daemon.prepare(nxt, committed)


def backing_file(daemon: Daemon, path: Path) -> Path:
    """The file that holds `path`'s bytes in its snapshot's own layer."""
    sid = path.relative_to(daemon.mountpoint).parts[0]
    return daemon.root / "layers" / sid / str(os.stat(path).st_ino & OID_MASK)


def diff_member(daemon: Daemon, snapshot: str, name: str) -> bytes:
    tar = b"".join(r.data for r in DifferStub(daemon.channel).Diff(DiffRequest(key=snapshot)))
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def pattern(size: int, seed: int = 1) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4099))
    return (block * (size // len(block) + 1))[:size]


def test_appending_a_byte_to_a_big_lower_file_copies_one_block(daemon: Daemon) -> None:
    content = pattern(64 * MIB)
    _, top = on_lower(daemon, content)
    with open(top / "f", "ab") as f:
        f.write(b"!")
    assert (top / "f").read_bytes() == content + b"!"
    backing = backing_file(daemon, top / "f")
    assert backing.stat().st_size == len(content) + 1  # as long as the file, but sparse:
    assert backing.stat().st_blocks * 512 <= 64 * 1024


def test_a_write_in_the_middle_keeps_the_bytes_around_it(daemon: Daemon) -> None:
    content = pattern(3 * MIB + 123)
    active, top = on_lower(daemon, content)
    with open(top / "f", "r+b") as f:
        f.seek(MIB + 4000)  # across a block boundary, starting and ending mid-block
        f.write(b"x" * 300)
    expected = content[:MIB + 4000] + b"x" * 300 + content[MIB + 4300:]
    assert (top / "f").read_bytes() == expected
    assert diff_member(daemon, active, "f") == expected


def test_a_descriptor_opened_before_the_copy_up_reads_the_new_bytes(daemon: Daemon) -> None:
    content = pattern(MIB)
    _, top = on_lower(daemon, content)
    with open(top / "f", "rb", buffering=0) as reader:
        assert reader.read(10) == content[:10]
        with open(top / "f", "r+b", buffering=0) as writer:
            writer.seek(5)
            writer.write(b"HELLO")
        reader.seek(0)
        os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert reader.read() == content[:5] + b"HELLO" + content[10:]


def test_truncate_then_grow_shows_zeros_not_the_old_bytes(daemon: Daemon) -> None:
    content = pattern(100_000)
    _, top = on_lower(daemon, content)
    os.truncate(top / "f", 5000)
    os.truncate(top / "f", 20_000)
    assert (top / "f").read_bytes() == content[:5000] + bytes(15_000)
    with open(top / "f", "r+b") as f:
        f.seek(6000)
        f.write(b"y")
    assert (top / "f").read_bytes() == content[:5000] + bytes(1000) + b"y" + bytes(13_999)


def test_a_committed_partial_file_reads_the_same_in_a_view_and_after_kill_9(
        tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "root", args=PROXY).start()
    try:
        first = key()
        (daemon.prepare(first) / "f").write_bytes(pattern(2 * MIB))
        daemon.commit("lower", first)
        top = daemon.prepare("top", "lower")
        with open(top / "f", "r+b") as f:
            f.seek(4096 * 3 + 17)
            f.write(b"z" * 10_000)
        expected = (top / "f").read_bytes()
        daemon.commit("upper", "top")
        assert (daemon.view("look", "upper") / "f").read_bytes() == expected
        again = daemon.prepare("again", "upper")
        with open(again / "f", "ab") as f:
            f.write(b"end")
            os.fsync(f.fileno())  # the copy-up is in the daemon's open group until then
        daemon.kill()
        daemon.start()
        assert (again / "f").read_bytes() == expected + b"end"
        assert (daemon.view("look2", "upper") / "f").read_bytes() == expected
    finally:
        daemon.cleanup()


# --------------------------------------------------------------------------- property

SIZE = 64 * 1024
offsets = st.integers(0, SIZE + 9000)
ops = st.one_of(
    st.tuples(st.just("write"), offsets, st.integers(1, 9000)),
    st.tuples(st.just("truncate"), offsets, st.just(0)),
    st.tuples(st.just("commit"), st.just(0), st.just(0)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(ops, min_size=1, max_size=2 * MAX_CHAIN + 6))
def test_random_writes_truncates_and_commits_read_like_a_plain_file(
        daemon: Daemon, steps: list[tuple[str, int, int]]) -> None:
    model = bytearray(pattern(SIZE, seed=len(steps)))
    active, top = on_lower(daemon, bytes(model))
    fill = 0
    for what, offset, length in steps:
        if what == "write":
            fill += 1
            data = bytes([fill % 256]) * length
            with open(top / "f", "r+b") as f:
                f.seek(offset)
                f.write(data)
            if offset > len(model):
                model.extend(bytes(offset - len(model)))
            model[offset:offset + length] = data
        elif what == "truncate":
            os.truncate(top / "f", offset)
            del model[offset:]
            model.extend(bytes(offset - len(model)))
        else:
            active, top = commit_and_continue(daemon, active)
        assert (top / "f").read_bytes() == bytes(model)
    assert os.stat(top / "f").st_size == len(model)


def test_st_blocks_of_committed_files_survive_a_restart(tmp_path: Path) -> None:
    """st_blocks is recorded with a file's bytes (no stat per lookup): a sparse
    and a dense file keep what they hold in a view after a restart."""
    daemon = Daemon(tmp_path / "root", args=PROXY).start()
    try:
        top = daemon.prepare("a")
        with open(top / "sparse", "wb") as f:
            f.seek(64 * MIB)
            f.write(b"end")
        (top / "dense").write_bytes(pattern(3 * MIB))
        before = {n: os.stat(top / n).st_blocks for n in ("sparse", "dense")}
        daemon.commit("c", "a")
        daemon.stop()
        daemon.start()
        look = daemon.view("v", "c")
        after = {n: os.stat(look / n).st_blocks for n in ("sparse", "dense")}
        assert after == before
        assert after["sparse"] * 512 < MIB and after["dense"] * 512 >= 3 * MIB
    finally:
        daemon.cleanup()
