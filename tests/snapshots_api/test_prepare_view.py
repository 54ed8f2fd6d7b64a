"""Prepare and View: the mount they return, the directory it shows, existing keys
and parents, label sizes, the snapshotter field and the proxy role's headers."""

from __future__ import annotations

import errno
import os

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import (
    ACTIVE,
    COMMITTED,
    KINDS,
    REF,
    VIEW,
    committed,
    expect_mount,
    make,
    mine,
    world,
)
from tests.snapshots_api.rpc import batches, code, commit, names, prepare, source, stat, view


def test_prepare_returns_exactly_one_rbind_rw_mount_of_the_snapshot_directory(d, k):
    resp = prepare(d, k("a"))
    sid = expect_mount(resp.mounts, d, "rw")
    assert sid in os.listdir(d.mountpoint)


def test_view_returns_exactly_one_rbind_ro_mount_of_the_snapshot_directory(d, k):
    committed(d, k("base"))
    resp = view(d, k("v"), k("base"))
    sid = expect_mount(resp.mounts, d, "ro")
    assert sid in os.listdir(d.mountpoint)


def test_each_snapshot_gets_its_own_directory(d, k):
    a = source(prepare(d, k("a")))
    b = source(prepare(d, k("b")))
    assert a != b


def test_prepared_directory_exists_and_is_empty(d, k):
    path = source(prepare(d, k("a")))
    assert path.is_dir()
    assert os.listdir(path) == []


def test_prepared_child_directory_shows_the_parent_content(d, k):
    committed(d, k("base"), files={"etc/hostname": b"box\n"})
    path = source(prepare(d, k("child"), k("base")))
    assert (path / "etc" / "hostname").read_bytes() == b"box\n"


def test_view_directory_shows_the_parent_content(d, k):
    committed(d, k("base"), files={"etc/hostname": b"box\n"})
    path = source(view(d, k("v"), k("base")))
    assert sorted(os.listdir(path)) == ["etc"]
    assert (path / "etc" / "hostname").read_bytes() == b"box\n"


def test_view_directory_is_read_only(d, k):
    committed(d, k("base"), files={"f": b"x"})
    path = source(view(d, k("v"), k("base")))
    with pytest.raises(OSError) as err:
        (path / "new").write_bytes(b"y")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        with open(path / "f", "r+b") as f:
            f.write(b"y")
    assert err.value.errno == errno.EROFS


def test_view_without_parent_is_an_empty_read_only_directory(d, k):
    resp = view(d, k("v"))
    expect_mount(resp.mounts, d, "ro")
    path = source(resp)
    assert os.listdir(path) == []
    with pytest.raises(OSError) as err:
        (path / "new").write_bytes(b"y")
    assert err.value.errno == errno.EROFS
    info = stat(d, k("v"))
    assert (info.kind, info.parent) == (VIEW, "")


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@KINDS
def test_prepare_or_view_of_an_existing_key_of_any_kind_is_already_exists(d, k, rpc, kind):
    make(d, kind, k("x"))
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, k("x"), k("p")) == grpc.StatusCode.ALREADY_EXISTS
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_prepare_or_view_with_a_missing_parent_is_not_found(d, k, rpc):
    assert code(rpc, d, k("x"), k("nope")) == grpc.StatusCode.NOT_FOUND
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@pytest.mark.parametrize("kind", [ACTIVE, VIEW], ids=["active", "view"])
def test_prepare_or_view_over_a_parent_that_is_not_committed_is_invalid_argument(
        d, k, rpc, kind):
    make(d, kind, k("p"))
    assert code(rpc, d, k("x"), k("p")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_prepare_or_view_with_an_empty_key_is_invalid_argument(d, k, rpc):
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, "", k("p")) == grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@pytest.mark.parametrize("label", [
    {"k": "v" * 4096},                  # 1 + 4096 bytes
    {"k" * 4096: "v"},
    {"é": "v" * 4095},                  # 4096 characters, 4097 bytes
], ids=["long-value", "long-key", "utf8-bytes"])
def test_a_label_over_4096_bytes_is_invalid_argument(d, k, rpc, label):
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, k("x"), k("p"), {"ok": "fine", **label}) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_a_label_of_exactly_4096_bytes_is_accepted(d, k, rpc):
    committed(d, k("p"))
    lbls = {"k": "v" * 4095, "é": "w" * 4094}
    rpc(d, k("x"), k("p"), lbls)
    assert dict(stat(d, k("x")).labels) == lbls


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_labels_with_empty_values_are_not_stored(d, k, rpc):
    committed(d, k("p"))
    rpc(d, k("x"), k("p"), {"keep": "1", "drop": ""})
    assert dict(stat(d, k("x")).labels) == {"keep": "1"}
    assert names(d, mine(k) + ",labels.drop") == []


def test_prepare_stores_its_labels(d, k):
    lbls = {REF: "sha256:abc", "containerd.io/snapshot/remote.x": "y"}
    prepare(d, k("x"), labels=lbls)
    assert dict(stat(d, k("x")).labels) == lbls


@pytest.mark.parametrize("snapshotter", ["", "overlayfs", "anything"])
def test_the_snapshotter_field_is_accepted_whatever_its_value(d, k, snapshotter):
    s = d.snapshots
    s.Prepare(spb.PrepareSnapshotRequest(snapshotter=snapshotter, key=k("a")))
    s.Mounts(spb.MountsRequest(snapshotter=snapshotter, key=k("a")))
    s.Usage(spb.UsageRequest(snapshotter=snapshotter, key=k("a")))
    s.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter, name=k("c"), key=k("a")))
    s.View(spb.ViewSnapshotRequest(snapshotter=snapshotter, key=k("v"), parent=k("c")))
    s.Update(spb.UpdateSnapshotRequest(snapshotter=snapshotter,
                                       info=spb.Info(name=k("v"), labels={"a": "b"})))
    info = s.Stat(spb.StatSnapshotRequest(snapshotter=snapshotter, key=k("v"))).info
    assert (info.parent, dict(info.labels)) == (k("c"), {"a": "b"})
    listed = list(s.List(spb.ListSnapshotsRequest(snapshotter=snapshotter, filters=[mine(k)])))
    assert sorted(i.name for r in listed for i in r.info) == [k("c"), k("v")]
    s.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=k("v")))
    s.Cleanup(spb.CleanupRequest(snapshotter=snapshotter))
    assert code(stat, d, k("v")) == grpc.StatusCode.NOT_FOUND


def test_proxy_role_accepts_and_ignores_namespace_and_lease_headers(new_daemon, k):
    # As containerd's proxy backend (spec §1.3): the lease lives in containerd.
    d = new_daemon(args=("--role", "proxy")).start()
    md = (("containerd-namespace", "default"), ("containerd-lease", "no-such-lease"))
    prepare(d, k("a"), metadata=md)
    commit(d, k("c"), k("a"), metadata=md)
    view(d, k("v"), k("c"), metadata=md)
    # Data is not partitioned by namespace: no header, or another one, sees it all.
    assert stat(d, k("c")).kind == COMMITTED
    other = (("containerd-namespace", "other"),)
    assert stat(d, k("v"), metadata=other).parent == k("c")
    assert sorted(i.name for b in batches(d, mine(k), metadata=other) for i in b) == \
        [k("c"), k("v")]
