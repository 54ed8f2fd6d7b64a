"""Property: however a byte stream is cut into WRITE messages, and however its
streams are interrupted (cancelled, cancelled with a WRITE in flight,
half-closed) and resumed from the offset a new stream reports, or restarted
with a WRITE at offset 0, the committed blob reads back byte-identical and
every response carries the digest of exactly the bytes before its offset."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests.conftest import PROXY, Daemon, fuse_usable
from tests.content_client import (
    COMMIT,
    STAT,
    WRITE,
    MiB,
    WriteStream,
    read,
    reopen,
    sha,
    status,
)

_serial = itertools.count(1)


@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContentStub]:
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    d = Daemon(tmp_path_factory.mktemp("property") / "root", args=PROXY)
    try:
        yield ContentStub(d.start().channel)
    finally:
        d.cleanup()


STEPS = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1_500_000)),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("cancel-in-flight"), st.integers(1, 300_000)),
    st.tuples(st.just("half-close"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.one_of(st.integers(0, 64), st.integers(0, 200_000),
                     st.integers(MiB - 10, 3 * MiB)),
       seed=st.integers(0, 2**32 - 1),
       steps=st.lists(STEPS, max_size=12),
       announce_total=st.booleans())
def test_interrupted_and_resumed_writes_commit_the_exact_bytes(
        cs: ContentStub, size: int, seed: int, steps: list[tuple[str, int]],
        announce_total: bool) -> None:
    serial = next(_serial)
    data = b"%08d" % serial + random.Random(seed).randbytes(size)
    ref = f"property/{serial}"
    total = len(data) if announce_total else 0

    def open_stream() -> tuple[WriteStream, int]:
        s, resp = reopen(cs, action=STAT, ref=ref, total=total)
        assert resp.digest == sha(data[:resp.offset])
        return s, resp.offset

    def write(s: WriteStream, pos: int, n: int) -> int:
        piece = data[pos:pos + n]
        resp = s.send(action=WRITE, offset=pos, data=piece)
        assert resp.offset == pos + len(piece)
        assert resp.digest == sha(data[:resp.offset])
        assert status(cs, ref).offset == resp.offset
        return resp.offset

    s, pos = open_stream()
    for kind, n in steps:
        if kind == "write":
            pos = write(s, pos, n)
        elif kind == "restart":
            pos = 0  # Truncate(0): the next WRITE carries offset 0
        elif kind == "half-close":
            assert s.finish() == grpc.StatusCode.OK
            s, pos = open_stream()
        else:
            if kind == "cancel-in-flight":
                s.put(action=WRITE, offset=pos, data=data[pos:pos + n])
            s.cancel()
            s, pos = open_stream()
            assert pos <= len(data)
    pos = write(s, pos, len(data))
    resp = s.send(action=COMMIT, offset=pos, total=total, expected=sha(data))
    assert (resp.offset, resp.digest) == (len(data), sha(data))
    assert s.ended_ok()
    assert read(cs, sha(data)) == data
    cs.Delete(cpb.DeleteContentRequest(digest=sha(data)))
