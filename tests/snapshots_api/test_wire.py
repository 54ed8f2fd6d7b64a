"""Wire details: messages over the default 4 MiB limit, unknown request fields, and
the containerd class string at the end of error details."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import COMMITTED, committed, expect_mount
from tests.snapshots_api.rpc import batches, mounts, prepare, stat


def test_prepare_with_5_mib_of_labels_is_accepted(new_daemon):
    d = new_daemon().start()
    lbls = {f"containerd.io/snapshot/label-{i:04d}": f"{i:04d}" * 1000 for i in range(1300)}
    req = spb.PrepareSnapshotRequest(key="big", labels=lbls)
    assert req.ByteSize() > 5 << 20
    resp = d.snapshots.Prepare(req)
    expect_mount(resp.mounts, d, "rw")
    with grpc.insecure_channel(f"unix:{d.socket}", options=[
            ("grpc.max_receive_message_length", 32 << 20)]) as channel:
        stub = type(d.snapshots)(channel)
        info = stub.Stat(spb.StatSnapshotRequest(key="big")).info
    assert dict(info.labels) == lbls


def test_list_messages_stay_within_the_default_4_mib_client_limit(new_daemon):
    # Go clients that dial with grpc defaults cannot receive more (spec §1.1).
    d = new_daemon().start()
    lbls = {f"containerd.io/snapshot/l{i:03d}": "v" * 4000 for i in range(130)}  # ~520 KiB
    for i in range(12):
        prepare(d, f"s{i:02d}", labels=lbls)
    got = batches(d)  # a default channel: 4 MiB receive limit
    assert sorted(i.name for b in got for i in b) == [f"s{i:02d}" for i in range(12)]


def _with_unknown_fields(msg: Any) -> bytes:
    # field 99 varint 1, field 100 bytes "abc": numbers no containerd version uses
    return msg.SerializeToString() + b"\x98\x06\x01" + b"\xa2\x06\x03abc"


def test_unknown_request_fields_are_ignored(d, k):
    def raw(method: str, msg: Any, reply: Any) -> Any:
        call = d.channel.unary_unary(f"/containerd.services.snapshots.v1.Snapshots/{method}",
                                     request_serializer=None,
                                     response_deserializer=reply.FromString)
        return call(_with_unknown_fields(msg))

    resp = raw("Prepare", spb.PrepareSnapshotRequest(key=k("a"), labels={"l": "1"}),
               spb.PrepareSnapshotResponse)
    expect_mount(resp.mounts, d, "rw")
    raw("Commit", spb.CommitSnapshotRequest(name=k("c"), key=k("a")), Empty)
    info = raw("Stat", spb.StatSnapshotRequest(key=k("c")), spb.StatSnapshotResponse).info
    assert (info.name, info.kind) == (k("c"), COMMITTED)


@pytest.mark.parametrize("call, status, cls", [
    (lambda d, k: stat(d, k("nope")), grpc.StatusCode.NOT_FOUND, "not found"),
    (lambda d, k: [committed(d, k("c")), committed(d, k("c"))],
     grpc.StatusCode.ALREADY_EXISTS, "already exists"),
    (lambda d, k: [committed(d, k("c")), mounts(d, k("c"))],
     grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"),
    (lambda d, k: prepare(d, ""), grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
], ids=["not-found", "already-exists", "failed-precondition", "invalid-argument"])
def test_error_details_end_with_the_containerd_class_string(d, k, call, status, cls):
    with pytest.raises(grpc.RpcError) as err:
        call(d, k)
    assert err.value.code() == status
    assert err.value.details().endswith(f": {cls}")
