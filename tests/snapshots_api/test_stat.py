"""Stat: the info of each kind and its times; empty keys for every keyed RPC."""

from __future__ import annotations

import time

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import ACTIVE, COMMITTED, KINDS, VIEW, committed, make
from tests.snapshots_api.rpc import code, mounts, prepare, remove, stat, usage, view


def test_stat_of_a_missing_key_is_not_found(d, k):
    assert code(stat, d, k("nope")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [stat, mounts, usage, remove],
                         ids=["stat", "mounts", "usage", "remove"])
def test_an_empty_key_is_invalid_argument(d, rpc):
    assert code(rpc, d, "") == grpc.StatusCode.INVALID_ARGUMENT


def test_stat_of_an_active_returns_its_info(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"), {"l": "1"})
    info = stat(d, k("a"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("a"), k("p"), ACTIVE, {"l": "1"})


def test_stat_of_a_view_returns_its_info(d, k):
    committed(d, k("p"))
    view(d, k("v"), k("p"), {"l": "2"})
    info = stat(d, k("v"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("v"), k("p"), VIEW, {"l": "2"})


def test_stat_of_a_committed_returns_its_info(d, k):
    committed(d, k("p"))
    committed(d, k("c"), k("p"), labels={"l": "3"})
    info = stat(d, k("c"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("c"), k("p"), COMMITTED, {"l": "3"})


@KINDS
def test_stat_timestamps_are_set_and_recent(d, k, kind):
    before = time.time_ns()
    make(d, kind, k("x"))
    after = time.time_ns()
    info = stat(d, k("x"))
    assert info.HasField("created_at") and info.HasField("updated_at")
    for ts in (info.created_at, info.updated_at):
        assert before <= ts.ToNanoseconds() <= after
    assert info.created_at == info.updated_at


@KINDS
def test_stat_response_always_carries_info_with_a_known_kind(d, k, kind):
    make(d, kind, k("x"))
    resp = d.snapshots.Stat(spb.StatSnapshotRequest(key=k("x")))
    assert resp.HasField("info")
    assert resp.info.kind == kind != spb.UNKNOWN
