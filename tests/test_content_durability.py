"""Acknowledged ingest bytes and their times survive kills and the kernel's clocks.

Real daemons over their real sockets. A kill inside a Commit is injected with
the daemon's own fault hook (fusesnap/faults.py), set through its environment.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from time import time_ns

import grpc
import pytest

from fusesnap.pb.content_pb2_grpc import ContentStub
from tests import content_client as cc
from tests.conftest import PROXY, Daemon, module_daemon
from tests.content_client import COMMIT, STAT, WRITE, MiB, WriteStream

ROUNDS = 200
"""Writes per clock test. The kernel stamps a file's mtime from a clock up to a
tick (a few ms) behind the fine one: while Status read that stamp, a half or
more of 200 rounds saw a time earlier than one the client took before its Write."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "durability", args=PROXY)


@pytest.fixture
def cs(shared: Daemon) -> ContentStub:
    assert shared.channel is not None
    return ContentStub(shared.channel)


def own(d: Daemon) -> ContentStub:
    assert d.channel is not None
    return ContentStub(d.channel)


def test_status_updated_at_is_never_before_the_write_it_reports(cs):
    s = WriteStream(cs)
    s.send(action=STAT, ref="status-clock")
    late = []
    for _ in range(ROUNDS):
        before = time_ns()
        s.send(action=WRITE, data=b"abc")
        updated = cc.status(cs, "status-clock").updated_at.ToNanoseconds()
        if updated < before:
            late.append(before - updated)
    assert s.finish() == grpc.StatusCode.OK
    assert late == []


def test_a_resumed_stream_reports_updated_at_not_before_the_last_write(cs):
    """containerd's content suite, Resume: a second writer's Status is checked
    against the times taken around the first writer's Write."""
    late = []
    for i in range(ROUNDS):
        s, _ = cc.reopen(cs, action=STAT, ref="resume-clock")
        before = time_ns()
        s.send(action=WRITE, offset=i, data=b"x")
        assert s.finish() == grpc.StatusCode.OK
        again, resp = cc.reopen(cs, action=STAT, ref="resume-clock")
        assert again.finish() == grpc.StatusCode.OK
        if resp.updated_at.ToNanoseconds() < before:
            late.append(before - resp.updated_at.ToNanoseconds())
    assert late == []


def test_updated_at_survives_a_restart(new_daemon):
    d = new_daemon(args=PROXY).start()
    s = WriteStream(own(d))
    s.send(action=STAT, ref="a")
    s.send(action=WRITE, data=b"abc")
    updated = cc.status(own(d), "a").updated_at
    d.kill()
    d2 = new_daemon(d.root, d.socket, args=PROXY).start()
    assert cc.status(own(d2), "a").updated_at == updated


def test_a_kill_between_placing_the_blob_and_recording_it_keeps_the_ingest(new_daemon):
    """kill -9 inside Commit after the blob file is in place, before the
    transaction that records it: the ingest resumes at its full offset."""
    d = new_daemon(args=PROXY).start(
        env={**os.environ, "FUSESNAP_CRASH_AT": "content-commit-linked"})
    data = os.urandom(3 * MiB)
    s = WriteStream(own(d))
    s.send(action=STAT, ref="layer", total=len(data), expected=cc.sha(data))
    for pos in range(0, len(data), MiB):
        s.send(action=WRITE, offset=pos, data=data[pos:pos + MiB])
    assert s.fails(action=COMMIT, offset=len(data)) == grpc.StatusCode.UNAVAILABLE
    assert d.proc is not None and d.proc.wait(timeout=30) == -signal.SIGKILL
    d2 = new_daemon(d.root, d.socket, args=PROXY).start()
    cs = own(d2)
    st = cc.status(cs, "layer")
    assert (st.offset, st.total, st.expected) == (len(data), len(data), cc.sha(data))
    assert cc.code(cc.info, cs, cc.sha(data)) == grpc.StatusCode.NOT_FOUND
    assert cc.code(cc.read, cs, cc.sha(data)) == grpc.StatusCode.NOT_FOUND
    again, resp = cc.reopen(cs, action=STAT, ref="layer", total=len(data))
    assert (resp.offset, resp.digest) == (len(data), cc.sha(data))
    resp = again.send(action=COMMIT, offset=len(data), expected=cc.sha(data))
    assert resp.digest == cc.sha(data)
    assert cc.read(cs, cc.sha(data)) == data
