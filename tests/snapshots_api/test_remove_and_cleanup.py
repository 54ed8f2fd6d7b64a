"""Remove (children first, directories gone, keys reusable) and Cleanup (keeps
everything)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import ACTIVE, COMMITTED, KINDS, VIEW, committed, make, mine, world
from tests.snapshots_api.rpc import code, mounts, names, prepare, remove, source, stat, view


def test_remove_of_a_missing_key_is_not_found(d, k):
    assert code(remove, d, k("nope")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("child", [ACTIVE, VIEW, COMMITTED], ids=["active", "view", "committed"])
def test_remove_of_a_snapshot_with_children_is_failed_precondition_and_changes_nothing(
        d, k, child):
    path = committed(d, k("p"), files={"f": b"p"})
    make(d, child, k("child"), k("p"))
    before = world(d)
    assert code(remove, d, k("p")) == grpc.StatusCode.FAILED_PRECONDITION
    assert world(d) == before
    assert (path / "f").read_bytes() == b"p"
    assert (source(view(d, k("v2"), k("p"))) / "f").read_bytes() == b"p"


@KINDS
def test_remove_deletes_a_snapshot_of_each_kind(d, k, kind):
    make(d, kind, k("x"))
    remove(d, k("x"))
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND
    assert k("x") not in names(d, mine(k))


@KINDS
def test_removed_snapshot_directory_disappears_from_the_mountpoint(d, k, kind):
    if kind == COMMITTED:
        path = committed(d, k("x"), files={"f": b"x"})
    else:
        make(d, kind, k("x"))
        path = Path(mounts(d, k("x"))[0][1])
        assert path.is_dir()
    assert path.name in os.listdir(d.mountpoint)
    remove(d, k("x"))
    assert path.name not in os.listdir(d.mountpoint)
    assert not path.exists()


def test_remove_of_children_then_parent_succeeds(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    view(d, k("v"), k("p"))
    remove(d, k("a"))
    assert code(remove, d, k("p")) == grpc.StatusCode.FAILED_PRECONDITION
    remove(d, k("v"))
    remove(d, k("p"))
    assert names(d, mine(k)) == []


def test_a_removed_key_can_be_prepared_again_and_starts_empty(d, k):
    path = source(prepare(d, k("a")))
    (path / "old").write_bytes(b"old")
    remove(d, k("a"))
    path2 = source(prepare(d, k("a")))
    assert os.listdir(path2) == []
    assert stat(d, k("a")).kind == ACTIVE


def test_cleanup_returns_empty(d, k):
    prepare(d, k("a"))
    before = world(d)
    assert d.snapshots.Cleanup(spb.CleanupRequest()).ByteSize() == 0
    assert world(d) == before


def test_cleanup_keeps_every_snapshot_data(d, k):
    path = committed(d, k("p"), files={"f": b"kept"})
    active = source(prepare(d, k("a"), k("p")))
    (active / "g").write_bytes(b"also kept")
    d.snapshots.Cleanup(spb.CleanupRequest())
    assert (path / "f").read_bytes() == b"kept"
    assert (active / "g").read_bytes() == b"also kept"
