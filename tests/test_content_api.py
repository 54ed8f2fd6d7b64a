"""The gRPC contract of containerd.services.content.v1.Content (spec §3), RPC by RPC.

Every test talks to a real daemon over its unix socket. Most share one daemon
(module scope) and keep to refs and bytes of their own; the few that must see
every blob, or kill the daemon, start their own.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.cli.content import ContentClient
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests.conftest import PROXY, Daemon, module_daemon
from tests.content_client import (
    COMMIT,
    EMPTY,
    STAT,
    WRITE,
    MiB,
    WriteStream,
    code,
    info,
    ingest,
    listed,
    read,
    reopen,
    sha,
    status,
    statuses,
)

GO_ZERO_TIME = Timestamp(seconds=-62135596800, nanos=0)
C = grpc.StatusCode

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "content", args=PROXY)


@pytest.fixture
def d(shared: Daemon) -> Daemon:
    return shared


@pytest.fixture
def cs(shared: Daemon) -> ContentStub:
    return ContentStub(shared.channel)


_serial = itertools.count(1)


@pytest.fixture
def k(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Refs (and bytes) private to the test: k("a") -> "7:test_name/a"."""
    prefix = f"{next(_serial)}:{request.node.name}/"

    def key(suffix: str = "") -> str:
        return prefix + suffix
    return key


def own(d: Daemon) -> ContentStub:
    return ContentStub(d.channel)


def blob_file(d: Daemon, digest: str) -> Path:
    alg, _, hexa = digest.partition(":")
    return d.root / "content" / "blobs" / alg / hexa


def ingest_files(d: Daemon) -> list[Path]:
    return sorted((d.root / "content" / "ingest").rglob("*"))


def update(cs: ContentStub, digest: str, labels: dict[str, str],
           paths: list[str] | None = None) -> cpb.Info:
    req = cpb.UpdateRequest(info=cpb.Info(digest=digest, labels=labels))
    if paths is not None:
        req.update_mask.CopyFrom(FieldMask(paths=paths))
    resp = cs.Update(req)
    assert resp.HasField("info")
    return resp.info


def partial(cs: ContentStub, ref: str, data: bytes, total: int = 0) -> str:
    """An ingest holding `data`, left unfinished (half-closed); its running digest."""
    s = WriteStream(cs)
    s.send(action=STAT, ref=ref, total=total)
    resp = s.send(action=WRITE, offset=0, data=data)
    assert s.finish() == C.OK
    return resp.digest


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --------------------------------------------------------------------------- Info


def test_info_of_a_committed_blob_gives_digest_size_times_and_labels(cs, k):
    data = k().encode() * 100
    before = time.time_ns()
    digest = ingest(cs, k("a"), data, labels={"team": "infra"})
    got = info(cs, digest)
    assert (got.digest, got.size, dict(got.labels)) == (sha(data), len(data), {"team": "infra"})
    assert before <= got.created_at.ToNanoseconds() <= time.time_ns()
    assert got.updated_at == got.created_at


def test_info_of_an_absent_digest_is_not_found(cs):
    assert code(cs.Info, cpb.InfoRequest(digest=sha(b"never written"))) == C.NOT_FOUND


@pytest.mark.parametrize("alg,length", [("sha384", 96), ("sha512", 128)])
def test_info_accepts_sha384_and_sha512_digests(cs, alg, length):
    assert code(cs.Info, cpb.InfoRequest(digest=f"{alg}:{'a' * length}")) == C.NOT_FOUND


def test_info_of_a_malformed_digest_is_invalid_argument(cs):
    assert code(cs.Info, cpb.InfoRequest(digest="sha256:abc")) == C.INVALID_ARGUMENT


def test_a_blob_is_invisible_until_its_commit(cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=data)
    assert code(cs.Info, cpb.InfoRequest(digest=sha(data))) == C.NOT_FOUND
    assert sha(data) not in [i.digest for i in listed(cs)]
    s.send(action=COMMIT, offset=len(data))
    assert info(cs, sha(data)).size == len(data)


# --------------------------------------------------------------------------- Update


def test_update_label_path_sets_one_label_and_keeps_the_others(cs, k):
    digest = ingest(cs, k("a"), k().encode(), labels={"keep": "1", "old": "x"})
    got = update(cs, digest, {"containerd.io/gc.root": "now"}, ["labels.containerd.io/gc.root"])
    assert dict(got.labels) == {"keep": "1", "old": "x", "containerd.io/gc.root": "now"}
    assert dict(info(cs, digest).labels) == dict(got.labels)


def test_update_label_path_without_a_value_deletes_the_label(cs, k):
    digest = ingest(cs, k("a"), k().encode(), labels={"keep": "1", "old": "x"})
    assert dict(update(cs, digest, {}, ["labels.old"]).labels) == {"keep": "1"}


def test_update_labels_path_replaces_all_labels(cs, k):
    digest = ingest(cs, k("a"), k().encode(), labels={"old": "x"})
    assert dict(update(cs, digest, {"new": "y"}, ["labels"]).labels) == {"new": "y"}


@pytest.mark.parametrize("paths", [None, []], ids=["absent-mask", "empty-mask"])
def test_update_without_mask_paths_replaces_all_labels(cs, k, paths):
    digest = ingest(cs, k("a"), k().encode(), labels={"old": "x"})
    assert dict(update(cs, digest, {"new": "y", "gone": ""}, paths).labels) == {"new": "y"}


def test_update_sets_updated_at_and_keeps_digest_size_and_created_at(cs, k):
    data = k().encode()
    digest = ingest(cs, k("a"), data)
    before = info(cs, digest)
    req = cpb.UpdateRequest(
        info=cpb.Info(digest=digest, size=1, created_at=GO_ZERO_TIME, updated_at=GO_ZERO_TIME,
                      labels={"a": "b"}),
        update_mask=FieldMask(paths=["labels.a"]))
    got = cs.Update(req).info
    assert (got.digest, got.size, got.created_at) == (digest, len(data), before.created_at)
    assert got.updated_at.ToNanoseconds() > before.updated_at.ToNanoseconds()


@pytest.mark.parametrize("path", ["size", "digest", "created_at", "labelsx", ""])
def test_update_of_another_path_is_invalid_argument_and_changes_nothing(cs, k, path):
    digest = ingest(cs, k("a"), k().encode(), labels={"old": "x"})
    assert code(update, cs, digest, {"new": "y"}, ["labels.new", path]) == C.INVALID_ARGUMENT
    assert dict(info(cs, digest).labels) == {"old": "x"}


def test_update_of_an_absent_blob_is_not_found(cs):
    assert code(update, cs, sha(b"absent"), {"a": "b"}, ["labels.a"]) == C.NOT_FOUND


def test_update_with_a_label_over_4096_bytes_is_invalid_argument(cs, k):
    digest = ingest(cs, k("a"), k().encode())
    assert code(update, cs, digest, {"a": "x" * 4096}, ["labels.a"]) == C.INVALID_ARGUMENT
    assert dict(update(cs, digest, {"a": "x" * 4095}, ["labels.a"]).labels) == {"a": "x" * 4095}


# --------------------------------------------------------------------------- List


def test_list_streams_every_committed_blob_with_its_labels_and_times(new_daemon):
    d = new_daemon().start()
    cs = own(d)
    a = ingest(cs, "a", b"first", labels={"x": "1"})
    b = ingest(cs, "b", b"second")
    got = {i.digest: i for i in listed(cs)}
    assert set(got) == {a, b}
    assert dict(got[a].labels) == {"x": "1"}
    assert got[b].size == len(b"second")
    for i in got.values():
        assert i.updated_at == info(cs, i.digest).updated_at
        assert i.created_at.ToNanoseconds() > 0


def test_list_filters_on_digest_and_labels(cs, k):
    a = ingest(cs, k("a"), k("a").encode(), labels={"containerd.io/gc.root": "t", "t": k()})
    b = ingest(cs, k("b"), k("b").encode(), labels={"t": k()})
    mine = f'labels.t=="{k()}"'
    assert {i.digest for i in listed(cs, mine)} == {a, b}
    assert [i.digest for i in listed(cs, f"digest=={a}")] == [a]
    assert [i.digest for i in listed(cs, f'{mine},labels."containerd.io/gc.root"')] == [a]
    assert {i.digest for i in listed(cs, f"digest=={a}", f"digest=={b}")} == {a, b}


def test_list_filter_on_size_never_matches(cs, k):
    data = k().encode()
    ingest(cs, k("a"), data)
    assert listed(cs, f"size=={len(data)}") == []


def test_list_with_an_unparsable_filter_is_invalid_argument(cs):
    assert code(listed, cs, "digest==") == C.INVALID_ARGUMENT


def test_list_batches_hold_at_most_100_blobs(new_daemon):
    d = new_daemon().start()
    cs = own(d)
    for i in range(230):
        ingest(cs, f"r{i}", b"%d" % i)
    sizes = [len(b.info) for b in cs.List(cpb.ListContentRequest())]
    assert sizes == [100, 100, 30]


def test_list_messages_stay_under_4_mib_for_clients_with_default_limits(new_daemon):
    d = new_daemon().start()
    cs = own(d)  # the fixture's channel keeps grpc's 4 MiB receive limit
    big = {f"label-{j:04d}": "v" * 4000 for j in range(300)}  # about 1.2 MB per Info
    for i in range(4):
        ingest(cs, f"r{i}", b"%d" % i, labels=big)
    batches = list(cs.List(cpb.ListContentRequest()))
    assert sum(len(b.info) for b in batches) == 4
    assert len(batches) > 1
    assert all(b.ByteSize() < 4 * MiB for b in batches)


def test_delete_while_a_list_stream_is_half_read_is_not_blocked(new_daemon):
    d = new_daemon().start()
    cs = own(d)
    digests = [ingest(cs, f"r{i}", b"blob %d" % i) for i in range(150)]
    stream = cs.List(cpb.ListContentRequest())
    first = next(stream)
    assert len(first.info) == 100
    victim = first.info[0].digest
    cs.Delete(cpb.DeleteContentRequest(digest=victim), timeout=5)
    rest = [i.digest for b in stream for i in b.info]
    assert len(rest) == 50
    assert code(cs.Info, cpb.InfoRequest(digest=victim)) == C.NOT_FOUND
    assert {i.digest for i in listed(cs)} == set(digests) - {victim}


# --------------------------------------------------------------------------- Delete


def test_delete_removes_the_blob_and_its_file(d, cs, k):
    digest = ingest(cs, k("a"), k().encode())
    assert blob_file(d, digest).exists()
    cs.Delete(cpb.DeleteContentRequest(digest=digest))
    assert code(cs.Info, cpb.InfoRequest(digest=digest)) == C.NOT_FOUND
    assert code(read, cs, digest) == C.NOT_FOUND
    assert not blob_file(d, digest).exists()


def test_delete_of_an_absent_blob_is_not_found(cs):
    assert code(cs.Delete, cpb.DeleteContentRequest(digest=sha(b"absent"))) == C.NOT_FOUND


def test_deleted_content_can_be_written_again(cs, k):
    data = k().encode()
    digest = ingest(cs, k("a"), data)
    cs.Delete(cpb.DeleteContentRequest(digest=digest))
    assert ingest(cs, k("b"), data) == digest
    assert read(cs, digest) == data


# --------------------------------------------------------------------------- Read

BLOB = bytes(range(256)) * (10 * 1024) + b"tail"  # 2.5 MiB + 4 bytes: three chunks
N = len(BLOB)


@pytest.fixture(scope="module")
def blob(shared: Daemon) -> str:
    return ingest(ContentStub(shared.channel), "read-edges", BLOB)


@pytest.mark.parametrize("offset,size,start,end", [
    (0, 0, 0, N),
    (-7, 0, 0, N),
    (0, -1, 0, N),
    (10, 100, 10, 110),
    (0, N, 0, N),
    (0, N + 1, 0, N),
    (100, N, 100, N),
    (MiB - 1, 2, MiB - 1, MiB + 1),
    (N - 1, 0, N - 1, N),
    (N - 1, 1, N - 1, N),
    (N, 0, N, N),
    (N, 10, N, N),
], ids=["all", "negative-offset", "negative-size", "middle", "exact-size", "size-past-end",
        "offset-and-size-past-end", "across-a-chunk-boundary", "last-byte", "last-byte-sized",
        "offset-at-end", "offset-at-end-sized"])
def test_read_of_offset_and_size_gives_exactly_that_range(cs, blob, offset, size, start, end):
    assert read(cs, blob, offset, size) == BLOB[start:end]


@pytest.mark.parametrize("offset,size,start,end", [
    (0, 0, 0, N), (-7, 0, 0, N), (MiB - 1, 2, MiB - 1, MiB + 1), (N, 0, N, N), (N - 1, 1, N - 1, N),
], ids=["all", "negative-offset", "across-a-chunk-boundary", "offset-at-end", "last-byte"])
def test_the_clis_read_without_protobuf_objects_gives_the_same_chunks(shared, cs, blob, offset,
                                                                        size, start, end):
    request = cpb.ReadContentRequest(digest=blob, offset=offset, size=size)
    fast = list(ContentClient(shared.channel).read(request))
    assert [(o, bytes(d)) for o, d in fast] == [(r.offset, r.data) for r in cs.Read(request)]
    assert b"".join(d for _, d in fast) == BLOB[start:end]


@pytest.mark.parametrize("offset", [N + 1, N + MiB])
def test_read_past_the_end_is_out_of_range(cs, blob, offset):
    assert code(read, cs, blob, offset) == C.OUT_OF_RANGE


def test_read_sends_contiguous_chunks_of_at_most_1_mib_with_absolute_offsets(cs, blob):
    chunks = list(cs.Read(cpb.ReadContentRequest(digest=blob, offset=5)))
    assert all(0 < len(c.data) <= MiB for c in chunks)
    assert len(chunks) == 3
    pos = 5
    for c in chunks:
        assert c.offset == pos
        pos += len(c.data)
    assert pos == N


def test_read_of_an_absent_blob_is_not_found(cs):
    assert code(read, cs, sha(b"absent")) == C.NOT_FOUND


def test_an_empty_blob_is_committed_and_reads_back_empty(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    resp = s.send(action=COMMIT, offset=0)
    assert (resp.digest, resp.offset) == (EMPTY, 0)
    assert info(cs, EMPTY).size == 0
    assert list(cs.Read(cpb.ReadContentRequest(digest=EMPTY))) == []


# --------------------------------------------------------------------------- Status / ListStatuses


def test_an_ingest_is_visible_from_its_first_message(cs, k):
    s = WriteStream(cs)
    before = time.time_ns()
    s.send(action=STAT, ref=k("a"), total=42)
    st = status(cs, k("a"))
    assert (st.ref, st.offset, st.total) == (k("a"), 0, 42)
    assert before <= st.started_at.ToNanoseconds() <= st.updated_at.ToNanoseconds()
    assert [x.ref for x in statuses(cs, f'ref=="{k("a")}"')] == [k("a")]
    s.cancel()


def test_status_reports_the_bytes_written_while_the_stream_is_open(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"x" * 1000)
    first = status(cs, k("a"))
    s.send(action=WRITE, offset=1000, data=b"y" * 10)
    second = status(cs, k("a"))
    assert (first.offset, second.offset) == (1000, 1010)
    assert second.updated_at.ToNanoseconds() >= first.updated_at.ToNanoseconds()
    s.cancel()


def test_status_records_the_expected_digest_the_ingest_was_created_with(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"), expected=sha(k().encode()))
    assert status(cs, k("a")).expected == sha(k().encode())
    s.cancel()


def test_status_of_an_unknown_ref_is_not_found(cs, k):
    assert code(cs.Status, cpb.StatusRequest(ref=k("never"))) == C.NOT_FOUND


def test_status_after_commit_is_not_found(cs, k):
    ingest(cs, k("a"), k().encode())
    assert code(cs.Status, cpb.StatusRequest(ref=k("a"))) == C.NOT_FOUND


def test_list_statuses_filters_on_ref(cs, k):
    for name in ("layer-1", "layer-2", "config-1"):
        partial(cs, k(name), b"x")
    mine = f'ref~="^{k()}"'
    assert [s.ref for s in statuses(cs, mine)] == [k("config-1"), k("layer-1"), k("layer-2")]
    assert [s.ref for s in statuses(cs, f'ref=="{k("layer-2")}"')] == [k("layer-2")]
    assert [s.ref for s in statuses(cs, f'ref~="^{k("layer")}"')] == [k("layer-1"), k("layer-2")]
    assert all(s.offset == 1 for s in statuses(cs, mine))


def test_list_statuses_with_an_unparsable_filter_is_invalid_argument(cs):
    assert code(statuses, cs, "ref==") == C.INVALID_ARGUMENT


# --------------------------------------------------------------------------- Abort


def test_abort_removes_the_ingest_and_its_bytes(d, cs, k):
    partial(cs, k("a"), b"abc")
    before = ingest_files(d)
    cs.Abort(cpb.AbortRequest(ref=k("a")))
    assert code(cs.Status, cpb.StatusRequest(ref=k("a"))) == C.NOT_FOUND
    assert len(ingest_files(d)) == len(before) - 2  # its directory and data file


def test_abort_of_an_unknown_ref_is_ok(cs, k):
    cs.Abort(cpb.AbortRequest(ref=k("never")))


def test_abort_while_a_stream_is_open_fails_that_streams_next_message_with_not_found(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    cs.Abort(cpb.AbortRequest(ref=k("a")))
    assert code(cs.Status, cpb.StatusRequest(ref=k("a"))) == C.NOT_FOUND
    assert s.fails(action=WRITE, offset=3, data=b"def") == C.NOT_FOUND
    assert code(cs.Status, cpb.StatusRequest(ref=k("a"))) == C.NOT_FOUND


def test_abort_while_a_stream_is_open_frees_the_ref_for_a_new_ingest(cs, k):
    old = WriteStream(cs)
    old.send(action=STAT, ref=k("a"))
    old.send(action=WRITE, offset=0, data=b"old bytes")
    cs.Abort(cpb.AbortRequest(ref=k("a")))
    new = WriteStream(cs)
    assert new.send(action=STAT, ref=k("a")).offset == 0
    new.send(action=WRITE, offset=0, data=k().encode())
    assert old.fails(action=COMMIT, offset=9) == C.NOT_FOUND
    assert new.send(action=COMMIT, offset=len(k())).digest == sha(k().encode())


# --------------------------------------------------------------------------- Write: opening


def test_a_first_message_without_ref_is_invalid_argument(cs):
    assert WriteStream(cs).fails(action=STAT) == C.INVALID_ARGUMENT


def test_a_stream_closed_before_any_message_ends_ok(cs):
    assert WriteStream(cs).finish() == C.OK


def test_stat_of_an_empty_ingest_gives_the_sha256_of_empty_input(cs, k):
    s = WriteStream(cs)
    resp = s.send(action=STAT, ref=k("a"), total=5)
    assert (resp.action, resp.offset, resp.total, resp.digest) == (STAT, 0, 5, EMPTY)
    assert resp.started_at.ToNanoseconds() > 0 and resp.updated_at.ToNanoseconds() > 0
    s.cancel()


def test_a_message_without_action_is_a_stat(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    resp = s.send(data=b"ignored")
    assert (resp.action, resp.offset, resp.digest) == (STAT, 3, sha(b"abc"))
    s.cancel()


def test_an_unknown_action_is_invalid_argument(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    assert s.fails(action=7) == C.INVALID_ARGUMENT


def test_a_second_writer_on_a_locked_ref_is_unavailable(cs, k):
    first = WriteStream(cs)
    first.send(action=STAT, ref=k("a"))
    second = WriteStream(cs)
    with pytest.raises(grpc.RpcError) as err:
        second.send(action=STAT, ref=k("a"))
    second.release()
    assert err.value.code() == C.UNAVAILABLE
    assert f"ref {k('a')} locked for" in err.value.details()
    first.send(action=WRITE, offset=0, data=b"still mine")
    assert first.finish() == C.OK
    assert WriteStream(cs).send(action=STAT, ref=k("a")).offset == len(b"still mine")


def test_the_lock_is_released_when_the_stream_ends_with_an_error(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    assert s.fails(action=WRITE, offset=5, data=b"x") == C.OUT_OF_RANGE
    again = WriteStream(cs)
    assert again.send(action=STAT, ref=k("a")).offset == 0
    assert again.finish() == C.OK


def test_expected_digest_already_committed_on_the_first_message_is_already_exists(cs, k):
    digest = ingest(cs, k("a"), k().encode())
    partial(cs, k("b"), b"partial")
    assert WriteStream(cs).fails(action=STAT, ref=k("b"), expected=digest) == C.ALREADY_EXISTS
    assert code(cs.Status, cpb.StatusRequest(ref=k("b"))) == C.NOT_FOUND


def test_expected_digest_already_committed_on_a_later_message_is_already_exists(cs, k):
    digest = ingest(cs, k("a"), k().encode())
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("b"))
    s.send(action=WRITE, offset=0, data=b"partial")
    assert s.fails(action=WRITE, offset=7, data=b"more", expected=digest) == C.ALREADY_EXISTS
    assert code(cs.Status, cpb.StatusRequest(ref=k("b"))) == C.NOT_FOUND


def test_resume_with_a_different_total_restarts_the_ingest_empty(cs, k):
    partial(cs, k("a"), b"abc", total=10)
    s = WriteStream(cs)
    resp = s.send(action=STAT, ref=k("a"), total=20)
    assert (resp.offset, resp.digest, resp.total) == (0, EMPTY, 20)
    assert s.finish() == C.OK
    st = status(cs, k("a"))
    assert (st.offset, st.total) == (0, 20)


def test_resume_with_the_same_or_no_total_keeps_the_bytes(cs, k):
    partial(cs, k("a"), b"abc", total=10)
    for total in (10, 0):
        s = WriteStream(cs)
        resp = s.send(action=STAT, ref=k("a"), total=total)
        assert (resp.offset, resp.digest) == (3, sha(b"abc"))
        assert s.finish() == C.OK


# --------------------------------------------------------------------------- Write: writing


def test_every_write_response_carries_the_running_digest_and_offset(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    data = b""
    for piece in (b"a", b"bc", b"", b"def" * 1000):
        resp = s.send(action=WRITE, offset=len(data), data=piece)
        data += piece
        assert (resp.action, resp.offset, resp.digest) == (WRITE, len(data), sha(data))
    s.cancel()


def test_write_at_an_offset_other_than_the_current_one_is_out_of_range(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    assert s.fails(action=WRITE, offset=2, data=b"x") == C.OUT_OF_RANGE
    assert status(cs, k("a")).offset == 3


def test_write_at_offset_zero_over_stored_bytes_restarts_the_ingest(d, cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"old bytes, longer than the new ones" + data)
    resp = s.send(action=WRITE, offset=0, data=data)
    assert (resp.offset, resp.digest) == (len(data), sha(data))
    assert status(cs, k("a")).offset == len(data)
    assert s.send(action=COMMIT, offset=len(data)).digest == sha(data)
    assert blob_file(d, sha(data)).read_bytes() == data


def test_write_with_a_negative_offset_appends_at_the_current_offset(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    assert s.send(action=WRITE, offset=-1, data=b"de").digest == sha(b"abcde")
    s.cancel()


def test_write_of_empty_data_at_offset_zero_over_stored_bytes_truncates(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    assert s.send(action=WRITE, offset=0).offset == 0
    s.cancel()


def test_write_chunks_of_8_mib_are_accepted(cs, k):
    data = os.urandom(8 * MiB)
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    resp = s.send(action=WRITE, offset=0, data=data)
    assert (resp.offset, resp.digest) == (len(data), sha(data))
    assert s.send(action=COMMIT, offset=len(data)).digest == sha(data)
    assert read(cs, sha(data)) == data


def test_proxy_role_serves_requests_with_namespace_and_lease_headers(new_daemon, k):
    # As containerd's proxy backend (spec §1.3): the lease lives in containerd.
    cs = ContentStub(new_daemon(args=("--role", "proxy")).start().channel)
    md = [("containerd-namespace", "default"), ("containerd-lease", "no-such-lease")]
    s = WriteStream(cs, metadata=md)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=k().encode())
    digest = s.send(action=COMMIT, offset=len(k())).digest
    assert cs.Info(cpb.InfoRequest(digest=digest), metadata=md).info.size == len(k())


# --------------------------------------------------------------------------- Write: commit


def test_commit_stores_the_blob_under_its_digest_with_its_labels(d, cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=data)
    resp = s.send(action=COMMIT, offset=len(data), labels={"a": "1", "empty": ""})
    assert (resp.action, resp.offset, resp.digest) == (COMMIT, len(data), sha(data))
    assert dict(info(cs, sha(data)).labels) == {"a": "1"}
    assert blob_file(d, sha(data)).read_bytes() == data
    assert code(cs.Status, cpb.StatusRequest(ref=k("a"))) == C.NOT_FOUND


def test_commit_ends_the_stream_with_ok_without_waiting_for_the_client(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=COMMIT, offset=0, data=k().encode())
    assert s.ended_ok()


def test_commit_with_data_writes_it_first(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"head-")
    resp = s.send(action=COMMIT, offset=5, data=k().encode())
    assert resp.digest == sha(b"head-" + k().encode())
    assert read(cs, resp.digest) == b"head-" + k().encode()


def test_commit_at_offset_zero_restarts_the_ingest_like_a_write(cs, k):
    """Spec §3.4: COMMIT applies its data exactly as WRITE does, offset rules included."""
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"discarded")
    resp = s.send(action=COMMIT, offset=0, data=k().encode())
    assert (resp.offset, resp.digest) == (len(k()), sha(k().encode()))
    assert read(cs, resp.digest) == k().encode()


def test_commit_at_a_wrong_offset_is_out_of_range(cs, k):
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=b"abc")
    assert s.fails(action=COMMIT, offset=2) == C.OUT_OF_RANGE
    assert status(cs, k("a")).offset == 3


def test_wrong_expected_size_is_failed_precondition_and_the_ingest_stays_resumable(cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=data)
    assert s.fails(action=COMMIT, offset=len(data), total=len(data) + 1) == C.FAILED_PRECONDITION
    assert code(cs.Info, cpb.InfoRequest(digest=sha(data))) == C.NOT_FOUND
    again = WriteStream(cs)
    assert again.send(action=STAT, ref=k("a")).offset == len(data)
    again.send(action=WRITE, offset=len(data), data=b"!")
    resp = again.send(action=COMMIT, offset=len(data) + 1, total=len(data) + 1)
    assert resp.digest == sha(data + b"!")


def test_wrong_expected_digest_is_failed_precondition_and_the_ingest_stays_resumable(cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=data)
    wrong = sha(b"something else")
    assert s.fails(action=COMMIT, offset=len(data), expected=wrong) == C.FAILED_PRECONDITION
    assert code(cs.Info, cpb.InfoRequest(digest=sha(data))) == C.NOT_FOUND
    assert status(cs, k("a")).offset == len(data)
    again = WriteStream(cs)
    assert again.send(action=STAT, ref=k("a")).digest == sha(data)
    assert again.send(action=COMMIT, offset=len(data), expected=sha(data)).digest == sha(data)


def test_an_oversized_commit_label_is_invalid_argument_and_the_ingest_stays(cs, k):
    data = k().encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"))
    s.send(action=WRITE, offset=0, data=data)
    assert s.fails(action=COMMIT, offset=len(data), labels={"a": "x" * 4096}) == \
        C.INVALID_ARGUMENT
    assert status(cs, k("a")).offset == len(data)
    assert code(cs.Info, cpb.InfoRequest(digest=sha(data))) == C.NOT_FOUND


def test_commit_of_content_already_present_is_already_exists_and_removes_the_ingest(d, cs, k):
    data = k().encode()
    ingest(cs, k("first"), data)
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("second"))
    last = s.send(action=WRITE, offset=0, data=data)
    assert s.fails(action=COMMIT, offset=len(data)) == C.ALREADY_EXISTS
    assert last.digest == sha(data)  # what the daemon takes as the result (spec §9.4)
    assert code(cs.Status, cpb.StatusRequest(ref=k("second"))) == C.NOT_FOUND
    assert blob_file(d, sha(data)).read_bytes() == data


def test_two_refs_committing_the_same_digest_concurrently_make_exactly_one_blob(d, cs, k):
    data = os.urandom(3 * MiB)
    streams = []
    for ref in (k("a"), k("b")):
        s = WriteStream(cs)
        s.send(action=STAT, ref=ref)
        s.send(action=WRITE, offset=0, data=data)
        streams.append(s)
    barrier = threading.Barrier(2)

    def commit(s: WriteStream) -> grpc.StatusCode:
        barrier.wait()
        try:
            s.send(action=COMMIT, offset=len(data), expected=sha(data))
        except grpc.RpcError as err:
            return err.code()
        return C.OK

    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(commit, streams), key=str)
    assert codes == sorted([C.OK, C.ALREADY_EXISTS], key=str)
    assert [i.digest for i in listed(cs, f"digest=={sha(data)}")] == [sha(data)]
    assert statuses(cs, f'ref~="^{k()}"') == []
    assert read(cs, sha(data)) == data


# --------------------------------------------------------------------------- resumption


def test_a_half_closed_stream_ends_ok_and_keeps_its_ingest_for_resumption(cs, k):
    digest = partial(cs, k("a"), b"abc")
    s = WriteStream(cs)
    resp = s.send(action=STAT, ref=k("a"))
    assert (resp.offset, resp.digest) == (3, digest)
    s.send(action=WRITE, offset=3, data=b"def")
    assert s.send(action=COMMIT, offset=6).digest == sha(b"abcdef")


def test_a_cancelled_write_is_resumed_from_the_status_offset_in_a_new_stream(cs, k):
    data = os.urandom(3 * MiB + 17)
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("a"), total=len(data))
    s.send(action=WRITE, offset=0, data=data[:MiB])
    s.send(action=WRITE, offset=MiB, data=data[MiB:2 * MiB + 5])
    s.cancel()
    offset = status(cs, k("a")).offset
    assert offset == 2 * MiB + 5
    again, resp = reopen(cs, action=STAT, ref=k("a"), total=len(data))
    assert (resp.offset, resp.digest) == (offset, sha(data[:offset]))
    again.send(action=WRITE, offset=offset, data=data[offset:])
    resp = again.send(action=COMMIT, offset=len(data), total=len(data), expected=sha(data))
    assert resp.digest == sha(data)
    assert read(cs, sha(data)) == data


def test_a_write_is_resumed_after_the_daemon_is_killed_and_restarted(new_daemon):
    d = new_daemon().start()
    data = os.urandom(2 * MiB + 3)
    s = WriteStream(own(d))
    s.send(action=STAT, ref="default/1/layer-sha256:x", total=len(data))
    s.send(action=WRITE, offset=0, data=data[:MiB + 1])
    d.kill()
    d2 = new_daemon(d.root, d.socket).start()
    cs = own(d2)
    st = status(cs, "default/1/layer-sha256:x")
    assert (st.offset, st.total) == (MiB + 1, len(data))
    again = WriteStream(cs)
    resp = again.send(action=STAT, ref="default/1/layer-sha256:x", total=len(data))
    assert (resp.offset, resp.digest) == (MiB + 1, sha(data[:MiB + 1]))
    again.send(action=WRITE, offset=MiB + 1, data=data[MiB + 1:])
    assert again.send(action=COMMIT, offset=len(data), expected=sha(data)).digest == sha(data)
    assert read(cs, sha(data)) == data


def test_a_restart_keeps_committed_blobs_and_their_labels(new_daemon):
    d = new_daemon().start()
    digest = ingest(own(d), "a", b"kept", labels={"x": "y"})
    d.kill()
    cs = own(new_daemon(d.root, d.socket).start())
    assert dict(info(cs, digest).labels) == {"x": "y"}
    assert read(cs, digest) == b"kept"


# --------------------------------------------------------------------------- the Go clients


def test_the_go_content_proxy_client_sequence_works(cs, k):
    """content/proxy (spec §3.4): Writer, Status, Write ×2, Truncate(0) + Write, Commit, Close."""
    data = k().encode() * 50
    s = WriteStream(cs)
    # Writer(ref, size, expected)
    resp = s.send(action=STAT, ref=k("a"), total=len(data), expected=sha(data))
    offset = resp.offset
    assert offset == 0
    # Status()
    resp = s.send(action=STAT)
    assert (resp.offset, resp.total) == (0, len(data))
    assert resp.started_at.ToNanoseconds() > 0 and resp.updated_at.ToNanoseconds() > 0
    # Write(p), twice; then Truncate(0) and write everything again
    for piece in (data[:10], data[10:25]):
        resp = s.send(action=WRITE, offset=offset, data=piece)
        assert resp.offset - offset == len(piece) and resp.digest
        offset = resp.offset
    offset = 0
    resp = s.send(action=WRITE, offset=offset, data=data)
    assert resp.offset - offset == len(data)
    offset = resp.offset
    # Commit(size, expected, labels), then Close() = half-close
    resp = s.send(action=COMMIT, total=len(data), offset=offset, expected=sha(data),
                  labels={"containerd.io/gc.root": "x"})
    assert resp.offset == len(data) and resp.digest == sha(data)
    assert s.finish() == C.OK
    assert dict(info(cs, sha(data)).labels) == {"containerd.io/gc.root": "x"}


def test_the_containerd_daemon_proxy_sequence_works(cs, k):
    """The daemon's metadata layer (spec §9.4): STAT, WRITEs, STAT, COMMIT(total=offset,
    offset, expected, no labels), half-close."""
    ref = f"default/1/layer-{k()}"
    data = os.urandom(MiB + 100)
    s = WriteStream(cs)
    resp = s.send(action=STAT, ref=ref, total=len(data), expected="")
    assert resp.offset == 0
    for pos in range(0, len(data), MiB):
        resp = s.send(action=WRITE, offset=pos, data=data[pos:pos + MiB])
        assert resp.digest == sha(data[:resp.offset])
    stat = s.send(action=STAT)
    assert stat.offset == len(data)
    resp = s.send(action=COMMIT, total=stat.offset, offset=stat.offset, expected=sha(data))
    assert (resp.offset, resp.digest) == (len(data), sha(data))
    assert s.finish() == C.OK
    assert read(cs, sha(data)) == data
    assert [st.ref for st in statuses(cs, f'ref=="{ref}"')] == []


def test_the_daemons_commit_of_a_blob_written_in_another_namespace_is_already_exists(cs, k):
    data = k().encode()
    ingest(cs, f"ns1/1/{k()}", data)
    s = WriteStream(cs)
    s.send(action=STAT, ref=f"ns2/1/{k()}", total=len(data), expected="")
    last = s.send(action=WRITE, offset=0, data=data)
    stat = s.send(action=STAT)
    assert s.fails(action=COMMIT, total=stat.offset, offset=stat.offset,
                   expected=sha(data)) == C.ALREADY_EXISTS
    assert last.digest == sha(data)
    assert statuses(cs, f'ref~="{k()}"') == []


def test_gc_sweep_deletes_and_aborts_everything_listed_without_headers(new_daemon):
    """The daemon's GC (spec §9.4): List, Delete each inside the open stream, then
    ListStatuses and Abort each."""
    d = new_daemon().start()
    cs = own(d)
    for i in range(120):
        ingest(cs, f"r{i}", b"gc %d" % i)
    for i in range(3):
        partial(cs, f"p{i}", b"x")
    for batch in cs.List(cpb.ListContentRequest()):
        for i in batch.info:
            cs.Delete(cpb.DeleteContentRequest(digest=i.digest), timeout=5)
    for st in statuses(cs):
        cs.Abort(cpb.AbortRequest(ref=st.ref))
    assert listed(cs) == [] and statuses(cs) == []
    assert list((d.root / "content" / "blobs" / "sha256").iterdir()) == []
    assert ingest_files(d) == []
