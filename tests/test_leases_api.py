"""The gRPC contract of containerd.services.leases.v1.Leases (spec §4), RPC by
RPC, and the ``containerd-lease`` header on Snapshots and Content (spec §1.3).

Every test talks to a real daemon over its unix socket. Most share one daemon
(module scope) and keep to a namespace, snapshot keys and content of their
own; that daemon waits an hour before the collection a lease deletion asks
for, so nothing is collected under the other tests. The tests of deletion
and collection start daemons of their own, as do those of the proxy role.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import gc_pb2
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.gc_pb2_grpc import GCStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub
from tests.conftest import Daemon, module_daemon
from tests.content_client import COMMIT, STAT, WRITE, WriteStream, code, ingest, sha, statuses

C = grpc.StatusCode
NAMESPACE = "containerd-namespace"
LEASE = "containerd-lease"
EXPIRE = "containerd.io/gc.expire"
SN = "fusesnap"
SNAPSHOTS = f"snapshots/{SN}"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D512 = "sha512:" + "5" * 128
MALFORMED_NAMESPACES = ["bad/ns", "-x", "a" * 77, "a..b"]


class Leases:
    """The Leases stub with one namespace on every call."""

    def __init__(self, channel: grpc.Channel, namespace: str) -> None:
        self.stub = LeasesStub(channel)
        self.metadata = [(NAMESPACE, namespace)]

    def create(self, lease_id: str = "", labels: dict[str, str] | None = None) -> lpb.Lease:
        resp = self.stub.Create(lpb.CreateRequest(id=lease_id, labels=labels or {}),
                                metadata=self.metadata)
        assert resp.HasField("lease")
        return resp.lease

    def list(self, *filters: str) -> list[lpb.Lease]:
        return list(self.stub.List(lpb.ListRequest(filters=filters),
                                   metadata=self.metadata).leases)

    def ids(self, *filters: str) -> list[str]:
        return [lease.id for lease in self.list(*filters)]

    def delete(self, lease_id: str, sync: bool = False) -> None:
        self.stub.Delete(lpb.DeleteRequest(id=lease_id, sync=sync), metadata=self.metadata)

    def add(self, lease_id: str, rtype: str, rid: str) -> None:
        self.stub.AddResource(lpb.AddResourceRequest(
            id=lease_id, resource=lpb.Resource(type=rtype, id=rid)), metadata=self.metadata)

    def remove(self, lease_id: str, rtype: str, rid: str) -> None:
        self.stub.DeleteResource(lpb.DeleteResourceRequest(
            id=lease_id, resource=lpb.Resource(type=rtype, id=rid)), metadata=self.metadata)

    def resources(self, lease_id: str) -> list[tuple[str, str]]:
        resp = self.stub.ListResources(lpb.ListResourcesRequest(id=lease_id),
                                       metadata=self.metadata)
        return [(r.type, r.id) for r in resp.resources]

    def fails(self, method: str, request: Any) -> grpc.RpcError:
        """The error of a call that must fail."""
        with pytest.raises(grpc.RpcError) as err:
            getattr(self.stub, method)(request, metadata=self.metadata)
        return err.value


def lease_md(namespace: str, lease: str) -> list[tuple[str, str]]:
    return [(NAMESPACE, namespace), (LEASE, lease)]


def prepare(d: Daemon, key: str, parent: str = "",
            metadata: list[tuple[str, str]] | None = None) -> None:
    SnapshotsStub(d.channel).Prepare(
        spb.PrepareSnapshotRequest(snapshotter=SN, key=key, parent=parent), metadata=metadata)


def view(d: Daemon, key: str, parent: str,
         metadata: list[tuple[str, str]] | None = None) -> None:
    SnapshotsStub(d.channel).View(
        spb.ViewSnapshotRequest(snapshotter=SN, key=key, parent=parent), metadata=metadata)


def commit(d: Daemon, name: str, key: str,
           metadata: list[tuple[str, str]] | None = None) -> None:
    SnapshotsStub(d.channel).Commit(
        spb.CommitSnapshotRequest(snapshotter=SN, name=name, key=key), metadata=metadata)


def remove(d: Daemon, key: str, metadata: list[tuple[str, str]] | None = None) -> None:
    SnapshotsStub(d.channel).Remove(
        spb.RemoveSnapshotRequest(snapshotter=SN, key=key), metadata=metadata)


def kind(d: Daemon, key: str) -> int:
    return SnapshotsStub(d.channel).Stat(spb.StatSnapshotRequest(snapshotter=SN, key=key)).info.kind


def stat_code(d: Daemon, key: str) -> grpc.StatusCode:
    return code(SnapshotsStub(d.channel).Stat, spb.StatSnapshotRequest(snapshotter=SN, key=key))


def exists(cs: ContentStub, digest: str) -> bool:
    try:
        cs.Info(cpb.InfoRequest(digest=digest))
    except grpc.RpcError as err:
        assert err.code() == C.NOT_FOUND
        return False
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "leases", args=("--gc-delay", "3600"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "leases-proxy", args=("--role", "proxy"))


_serial = itertools.count(1)


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"leases-{next(_serial)}"


@pytest.fixture
def k(ns: str) -> Callable[[str], str]:
    """Snapshot keys and ingest refs private to the test: k("a") -> "leases-7/a"."""
    return lambda suffix="": f"{ns}/{suffix}"


@pytest.fixture
def api(shared: Daemon, ns: str) -> Leases:
    assert shared.channel is not None
    return Leases(shared.channel, ns)


@pytest.fixture
def cs(shared: Daemon) -> ContentStub:
    return ContentStub(shared.channel)


# --------------------------------------------------------------------------- namespace

_REQUESTS: dict[str, Any] = {
    "Create": lpb.CreateRequest(id="x"),
    "Delete": lpb.DeleteRequest(id="x"),
    "List": lpb.ListRequest(),
    "AddResource": lpb.AddResourceRequest(id="x", resource=lpb.Resource(type="content", id=D1)),
    "DeleteResource": lpb.DeleteResourceRequest(
        id="x", resource=lpb.Resource(type="content", id=D1)),
    "ListResources": lpb.ListResourcesRequest(id="x"),
}


@pytest.mark.parametrize("method", sorted(_REQUESTS))
@pytest.mark.parametrize("metadata", [[], [(NAMESPACE, "")]], ids=["missing", "empty"])
def test_every_rpc_without_a_namespace_is_failed_precondition(shared, method, metadata):
    with pytest.raises(grpc.RpcError) as err:
        getattr(LeasesStub(shared.channel), method)(_REQUESTS[method], metadata=metadata)
    assert err.value.code() == C.FAILED_PRECONDITION
    assert "namespace is required" in err.value.details()


@pytest.mark.parametrize("method", sorted(_REQUESTS))
@pytest.mark.parametrize("namespace", MALFORMED_NAMESPACES)
def test_every_rpc_with_a_malformed_namespace_is_invalid_argument(shared, method, namespace):
    api = Leases(shared.channel, namespace)
    assert api.fails(method, _REQUESTS[method]).code() == C.INVALID_ARGUMENT


def test_a_create_without_a_namespace_stores_nothing(shared, api):
    with pytest.raises(grpc.RpcError):
        LeasesStub(shared.channel).Create(lpb.CreateRequest(id="x"))
    assert api.ids() == []


# --------------------------------------------------------------------------- Create


def test_create_with_an_id_returns_the_lease_with_its_labels_and_creation_time(api):
    before = time.time_ns()
    lease = api.create("build-1", {"team": "infra", EXPIRE: "2100-01-01T00:00:00Z"})
    assert lease.id == "build-1"
    assert dict(lease.labels) == {"team": "infra", EXPIRE: "2100-01-01T00:00:00Z"}
    assert before <= lease.created_at.ToNanoseconds() <= time.time_ns()


def test_create_without_an_id_generates_a_fresh_one_each_time(api):
    made = [api.create().id for _ in range(50)]
    assert all(made)
    assert len(set(made)) == 50
    assert sorted(api.ids()) == sorted(made)


def test_create_of_an_existing_id_is_already_exists_and_keeps_the_first(api):
    first = api.create("dup", {"v": "1"})
    err = api.fails("Create", lpb.CreateRequest(id="dup", labels={"v": "2"}))
    assert err.code() == C.ALREADY_EXISTS
    [kept] = api.list()
    assert (dict(kept.labels), kept.created_at) == ({"v": "1"}, first.created_at)


def test_create_drops_labels_with_empty_values(api):
    assert dict(api.create("l", {"a": "1", "gone": ""}).labels) == {"a": "1"}
    assert dict(api.list()[0].labels) == {"a": "1"}


def test_lease_ids_are_opaque_strings(api):
    odd = "default/12/extract-123456789-Ab3d sha256:0123 ünï"
    assert api.create(odd).id == odd
    assert api.ids() == [odd]
    api.add(odd, "content", D1)
    assert api.resources(odd) == [("content", D1)]


def test_the_same_id_in_two_namespaces_is_two_leases(shared, ns):
    a, b = Leases(shared.channel, ns + "-a"), Leases(shared.channel, ns + "-b")
    a.create("same", {"who": "a"})
    b.create("same", {"who": "b"})
    a.add("same", "content", D1)
    assert [dict(x.labels) for x in b.list()] == [{"who": "b"}]
    assert b.resources("same") == []
    a.delete("same")
    assert a.ids() == []
    assert b.ids() == ["same"]


# --------------------------------------------------------------------------- List


def test_list_returns_the_namespace_leases_with_their_labels_and_creation_time(shared, api,
                                                                             ns):
    made = [api.create(i, {"n": i}) for i in ("b", "a")]
    Leases(shared.channel, ns + "-other").create("c")
    listed = api.list()
    assert [x.id for x in listed] == ["a", "b"]
    assert [dict(x.labels) for x in listed] == [{"n": "a"}, {"n": "b"}]
    assert [x.created_at for x in listed] == [made[1].created_at, made[0].created_at]


def test_list_of_an_unused_namespace_is_empty(api):
    assert api.list() == []


def test_list_filters_by_id(api):
    for i in ("x1", "x2", "y1"):
        api.create(i)
    assert api.ids("id==x2") == ["x2"]
    assert api.ids("id~=^x") == ["x1", "x2"]
    assert api.ids("id!=x1") == ["x2", "y1"]
    assert api.ids("id==none") == []


def test_list_filters_by_label_presence_value_and_quoted_key(api):
    api.create("plain")
    api.create("team", {"team": "infra"})
    api.create("other-team", {"team": "web"})
    api.create("expiring", {EXPIRE: "2100-01-01T00:00:00Z"})
    assert api.ids("labels.team") == ["other-team", "team"]
    assert api.ids("labels.team==infra") == ["team"]
    assert api.ids(f'labels."{EXPIRE}"') == ["expiring"]
    assert api.ids("labels.team!=infra") == ["expiring", "other-team", "plain"]


def test_list_filters_are_or_ed_and_selectors_and_ed(api):
    api.create("a", {"k": "1"})
    api.create("b", {"k": "2"})
    api.create("c", {"k": "1"})
    assert api.ids("id==a", "id==b") == ["a", "b"]
    assert api.ids("labels.k==1,id!=a") == ["c"]
    assert api.ids("") == ["a", "b", "c"]


@pytest.mark.parametrize("flt", ["id==", "id==x ", "id=!x", "id==x , id==y",
                                 'labels."unterminated'])
def test_list_with_an_invalid_filter_is_invalid_argument(api, flt):
    api.create("a")
    assert api.fails("List", lpb.ListRequest(filters=[flt])).code() == C.INVALID_ARGUMENT


# --------------------------------------------------------------------------- Delete


def test_delete_removes_the_lease_and_its_resources(api):
    api.create("gone")
    api.add("gone", "content", D1)
    api.delete("gone")
    assert api.ids() == []
    assert api.fails("ListResources", lpb.ListResourcesRequest(id="gone")).code() == C.NOT_FOUND
    api.create("gone")  # the id is free again, with nothing in it
    assert api.resources("gone") == []


def test_delete_of_a_missing_lease_is_not_found(api):
    err = api.fails("Delete", lpb.DeleteRequest(id="never"))
    assert err.code() == C.NOT_FOUND
    assert "lease does not exist" in err.details()


def test_delete_from_another_namespace_is_not_found_and_keeps_the_lease(shared, api, ns):
    api.create("mine")
    other = Leases(shared.channel, ns + "-other")
    assert other.fails("Delete", lpb.DeleteRequest(id="mine")).code() == C.NOT_FOUND
    assert api.ids() == ["mine"]


def test_sync_delete_returns_after_what_the_lease_held_is_collected(new_daemon):
    d = new_daemon(args=("--gc-delay", "3600")).start()
    cs, api = ContentStub(d.channel), Leases(d.channel, "default")
    api.create("l")
    digest = ingest_under(cs, "default", "l", "ref", b"held by l only")
    prepare(d, "snap", metadata=lease_md("default", "l"))
    api.delete("l", sync=True)
    assert not exists(cs, digest)
    assert stat_code(d, "snap") == C.NOT_FOUND


def test_delete_without_sync_collects_in_the_background_after_the_gc_delay(new_daemon):
    d = new_daemon(args=("--gc-delay", "1.5")).start()
    cs, api = ContentStub(d.channel), Leases(d.channel, "default")
    api.create("l")
    digest = ingest_under(cs, "default", "l", "ref", b"held by l only")
    api.delete("l")
    assert exists(cs, digest)  # not before the delay
    wait_for(lambda: not exists(cs, digest))


def test_a_blob_held_by_a_lease_survives_a_collection(new_daemon):
    d = new_daemon(args=("--gc-delay", "3600")).start()
    cs, api = ContentStub(d.channel), Leases(d.channel, "default")
    api.create("keep")
    kept = ingest_under(cs, "default", "keep", "r1", b"kept")
    loose = ingest(cs, "r2", b"loose")
    report = GCStub(d.channel).Collect(gc_pb2.CollectRequest())
    assert list(report.content) == [loose]
    assert exists(cs, kept) and not exists(cs, loose)


# ------------------------------------------------------------- AddResource / ListResources


def test_add_resource_of_every_type_is_listed_content_ingests_then_snapshots(api):
    api.create("l")
    api.add("l", "snapshots/overlayfs", "key-b")
    api.add("l", SNAPSHOTS, "key-a")
    api.add("l", "ingests", "ref-1")
    api.add("l", "content", D2)
    api.add("l", "content", D1)
    assert api.resources("l") == [
        ("content", D1), ("content", D2), ("ingests", "ref-1"),
        (SNAPSHOTS, "key-a"), ("snapshots/overlayfs", "key-b")]


def test_image_resources_are_accepted_and_listed_after_content_as_in_containerd_2(api):
    api.create("l")
    api.add("l", SNAPSHOTS, "k")
    api.add("l", "ingests", "r")
    api.add("l", "images", "docker.io/library/busybox:latest")
    api.add("l", "content", D1)
    assert api.resources("l") == [("content", D1), ("images", "docker.io/library/busybox:latest"),
                                  ("ingests", "r"), (SNAPSHOTS, "k")]
    api.remove("l", "images", "docker.io/library/busybox:latest")
    assert ("images", "docker.io/library/busybox:latest") not in api.resources("l")


def test_add_resource_is_idempotent(api):
    api.create("l")
    for _ in range(3):
        api.add("l", "content", D1)
        api.add("l", SNAPSHOTS, "k")
    assert api.resources("l") == [("content", D1), (SNAPSHOTS, "k")]


def test_resources_of_objects_that_do_not_exist_are_allowed(api, shared):
    api.create("l")
    api.add("l", "content", D512)
    api.add("l", SNAPSHOTS, "no such snapshot")
    api.add("l", "ingests", "no such ingest")
    assert stat_code(shared, "no such snapshot") == C.NOT_FOUND
    assert len(api.resources("l")) == 3


def test_content_resource_ids_are_stored_as_the_digest(api):
    api.create("l")
    api.add("l", "content", D512)
    assert api.resources("l") == [("content", D512)]


@pytest.mark.parametrize("rid", ["notadigest", "sha256:xyz", "sha256:" + "A" * 64,
                                 "sha256:" + "1" * 63, "md5:" + "1" * 32, ""])
def test_add_content_that_is_not_a_digest_is_invalid_argument(api, rid):
    api.create("l")
    err = api.fails("AddResource", lpb.AddResourceRequest(
        id="l", resource=lpb.Resource(type="content", id=rid)))
    assert err.code() == C.INVALID_ARGUMENT
    assert api.resources("l") == []


BAD_TYPES = ["content/x", "ingests/x", "images/x", "snapshots", "snapshots/a/b"]
UNKNOWN_TYPES = ["containers", "leases", "foo/bar", ""]


@pytest.mark.parametrize("method", ["AddResource", "DeleteResource"])
@pytest.mark.parametrize("rtype", BAD_TYPES)
def test_a_malformed_resource_type_is_invalid_argument(api, method, rtype):
    api.create("l")
    request = getattr(lpb, f"{method}Request")(
        id="l", resource=lpb.Resource(type=rtype, id=D1))
    assert api.fails(method, request).code() == C.INVALID_ARGUMENT
    assert api.resources("l") == []


@pytest.mark.parametrize("method", ["AddResource", "DeleteResource"])
@pytest.mark.parametrize("rtype", UNKNOWN_TYPES)
def test_an_unknown_resource_type_is_unimplemented(api, method, rtype):
    api.create("l")
    request = getattr(lpb, f"{method}Request")(
        id="l", resource=lpb.Resource(type=rtype, id="x"))
    err = api.fails(method, request)
    assert err.code() == C.UNIMPLEMENTED
    assert "not supported" in err.details()


@pytest.mark.parametrize("rtype", ["ingests", SNAPSHOTS])
def test_an_empty_resource_id_is_invalid_argument(api, rtype):
    api.create("l")
    err = api.fails("AddResource", lpb.AddResourceRequest(
        id="l", resource=lpb.Resource(type=rtype, id="")))
    assert err.code() == C.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["AddResource", "DeleteResource", "ListResources"])
def test_resource_calls_on_a_missing_lease_are_not_found(api, method):
    request = _REQUESTS[method]
    err = api.fails(method, request)
    assert err.code() == C.NOT_FOUND
    assert "lease does not exist" in err.details()


@pytest.mark.parametrize("method", ["AddResource", "DeleteResource"])
def test_a_missing_lease_is_not_found_before_the_resource_is_validated(api, method):
    # containerd looks the lease up first, then parses the resource.
    request = getattr(lpb, f"{method}Request")(
        id="never", resource=lpb.Resource(type="content/x", id="x"))
    assert api.fails(method, request).code() == C.NOT_FOUND


def test_resources_of_a_lease_in_another_namespace_are_not_found(shared, api, ns):
    api.create("l")
    other = Leases(shared.channel, ns + "-other")
    assert other.fails("ListResources", lpb.ListResourcesRequest(id="l")).code() == C.NOT_FOUND
    assert other.fails("AddResource", _REQUESTS["AddResource"]).code() == C.NOT_FOUND


def test_resources_belong_to_their_lease(api):
    api.create("a")
    api.create("b")
    api.add("a", "content", D1)
    api.add("b", "content", D2)
    api.remove("a", "content", D2)
    assert api.resources("a") == [("content", D1)]
    assert api.resources("b") == [("content", D2)]


# --------------------------------------------------------------------------- DeleteResource


def test_delete_resource_drops_only_that_reference(api):
    api.create("l")
    api.add("l", "content", D1)
    api.add("l", "ingests", "r")
    api.add("l", SNAPSHOTS, "k")
    api.remove("l", "ingests", "r")
    api.remove("l", SNAPSHOTS, "k")
    assert api.resources("l") == [("content", D1)]


def test_delete_resource_that_is_not_there_is_ok(api):
    api.create("l")
    api.add("l", "content", D1)
    api.remove("l", "content", D2)
    api.remove("l", "ingests", "never")
    api.remove("l", "snapshots/other", "never")
    assert api.resources("l") == [("content", D1)]


def test_delete_resource_of_content_that_is_not_a_digest_is_invalid_argument(api):
    api.create("l")
    err = api.fails("DeleteResource", lpb.DeleteResourceRequest(
        id="l", resource=lpb.Resource(type="content", id="nope")))
    assert err.code() == C.INVALID_ARGUMENT


def test_delete_resource_asks_for_a_background_collection(new_daemon):
    d = new_daemon(args=("--gc-delay", "0.2")).start()
    cs, api = ContentStub(d.channel), Leases(d.channel, "default")
    api.create("l")
    digest = ingest_under(cs, "default", "l", "ref", b"dropped")
    api.remove("l", "content", digest)
    wait_for(lambda: not exists(cs, digest))
    assert api.resources("l") == []


# ------------------------------------------------------------- the lease header: snapshots


def test_prepare_with_a_lease_header_adds_the_snapshot(shared, api, ns, k):
    api.create("l")
    prepare(shared, k("a"), metadata=lease_md(ns, "l"))
    assert api.resources("l") == [(SNAPSHOTS, k("a"))]


def test_the_snapshot_resource_is_named_for_the_request_snapshotter(shared, api, ns, k):
    api.create("l")
    SnapshotsStub(shared.channel).Prepare(
        spb.PrepareSnapshotRequest(snapshotter="other", key=k("a")),
        metadata=lease_md(ns, "l"))
    assert api.resources("l") == [("snapshots/other", k("a"))]


def test_view_with_a_lease_header_adds_the_view(shared, api, ns, k):
    api.create("l")
    prepare(shared, k("a"))
    commit(shared, k("c"), k("a"))
    view(shared, k("v"), k("c"), metadata=lease_md(ns, "l"))
    assert api.resources("l") == [(SNAPSHOTS, k("v"))]


def test_commit_with_a_lease_header_swaps_the_key_for_the_name(shared, api, ns, k):
    api.create("l")
    md = lease_md(ns, "l")
    prepare(shared, k("a"), metadata=md)
    commit(shared, k("c"), k("a"), metadata=md)
    assert api.resources("l") == [(SNAPSHOTS, k("c"))]


def test_commit_with_a_lease_header_adds_the_name_of_an_unleased_key(shared, api, ns, k):
    api.create("l")
    prepare(shared, k("a"))
    commit(shared, k("c"), k("a"), metadata=lease_md(ns, "l"))
    assert api.resources("l") == [(SNAPSHOTS, k("c"))]


def test_remove_with_a_lease_header_drops_the_snapshot_from_the_lease(shared, api, ns, k):
    api.create("l")
    md = lease_md(ns, "l")
    prepare(shared, k("a"), metadata=md)
    prepare(shared, k("b"), metadata=md)
    remove(shared, k("a"), metadata=md)
    assert api.resources("l") == [(SNAPSHOTS, k("b"))]


def test_remove_without_a_lease_header_leaves_the_reference(shared, api, ns, k):
    api.create("l")
    prepare(shared, k("a"), metadata=lease_md(ns, "l"))
    remove(shared, k("a"))
    assert api.resources("l") == [(SNAPSHOTS, k("a"))]


def test_snapshot_calls_under_another_lease_leave_this_one_alone(shared, api, ns, k):
    api.create("mine")
    api.create("theirs")
    prepare(shared, k("a"), metadata=lease_md(ns, "mine"))
    remove(shared, k("a"), metadata=lease_md(ns, "theirs"))
    assert api.resources("mine") == [(SNAPSHOTS, k("a"))]


def test_prepare_with_an_unknown_lease_is_not_found_and_creates_nothing(shared, api, ns, k):
    with pytest.raises(grpc.RpcError) as err:
        prepare(shared, k("a"), metadata=lease_md(ns, "never"))
    assert err.value.code() == C.NOT_FOUND
    assert "lease does not exist" in err.value.details()
    assert stat_code(shared, k("a")) == C.NOT_FOUND
    prepare(shared, k("a"))  # the key is free


def test_view_with_an_unknown_lease_is_not_found_and_creates_nothing(shared, ns, k):
    prepare(shared, k("a"))
    commit(shared, k("c"), k("a"))
    with pytest.raises(grpc.RpcError) as err:
        view(shared, k("v"), k("c"), metadata=lease_md(ns, "never"))
    assert err.value.code() == C.NOT_FOUND
    assert stat_code(shared, k("v")) == C.NOT_FOUND


def test_commit_with_an_unknown_lease_is_not_found_and_commits_nothing(shared, ns, k):
    prepare(shared, k("a"))
    with pytest.raises(grpc.RpcError) as err:
        commit(shared, k("c"), k("a"), metadata=lease_md(ns, "never"))
    assert err.value.code() == C.NOT_FOUND
    assert kind(shared, k("a")) == spb.ACTIVE
    assert stat_code(shared, k("c")) == C.NOT_FOUND


def test_a_lease_of_another_namespace_is_not_found(shared, api, ns, k):
    api.create("l")
    with pytest.raises(grpc.RpcError) as err:
        prepare(shared, k("a"), metadata=lease_md(ns + "-other", "l"))
    assert err.value.code() == C.NOT_FOUND
    assert stat_code(shared, k("a")) == C.NOT_FOUND


def test_remove_with_an_unknown_lease_removes_the_snapshot(shared, ns, k):
    # containerd: removing from a lease that is not there is nothing to do.
    prepare(shared, k("a"))
    remove(shared, k("a"), metadata=lease_md(ns, "never"))
    assert stat_code(shared, k("a")) == C.NOT_FOUND


def test_snapshot_calls_need_no_namespace_without_a_lease_header(shared, k):
    prepare(shared, k("a"))
    commit(shared, k("c"), k("a"))
    view(shared, k("v"), k("c"), metadata=[(LEASE, "")])
    remove(shared, k("v"))
    assert kind(shared, k("c")) == spb.COMMITTED


@pytest.mark.parametrize("call", ["prepare", "view", "commit", "remove"])
@pytest.mark.parametrize("namespace,expected", [("", C.FAILED_PRECONDITION),
                                                ("bad/ns", C.INVALID_ARGUMENT)],
                         ids=["missing", "malformed"])
def test_a_lease_header_needs_a_valid_namespace_on_snapshot_calls(shared, api, k, call,
                                                                  namespace, expected):
    api.create("l")
    prepare(shared, k("a"))
    commit(shared, k("c"), k("a"))
    prepare(shared, k("active"))
    md = [(LEASE, "l")] + ([(NAMESPACE, namespace)] if namespace else [])
    attempts = {
        "prepare": lambda: prepare(shared, k("new"), metadata=md),
        "view": lambda: view(shared, k("new"), k("c"), metadata=md),
        "commit": lambda: commit(shared, k("new"), k("active"), metadata=md),
        "remove": lambda: remove(shared, k("active"), metadata=md),
    }
    with pytest.raises(grpc.RpcError) as err:
        attempts[call]()
    assert err.value.code() == expected
    assert stat_code(shared, k("new")) == C.NOT_FOUND
    assert kind(shared, k("active")) == spb.ACTIVE
    assert api.resources("l") == []


# ------------------------------------------------------------- the lease header: content


def ingest_under(cs: ContentStub, namespace: str, lease: str, ref: str, data: bytes) -> str:
    """Write `data` through `ref` with a lease header; its digest."""
    s = WriteStream(cs, metadata=lease_md(namespace, lease))
    s.send(action=STAT, ref=ref, total=len(data))
    s.send(action=WRITE, offset=0, data=data)
    digest = s.send(action=COMMIT, offset=len(data), total=len(data), expected=sha(data)).digest
    assert s.ended_ok()
    return digest


def test_a_writer_joins_the_lease_at_its_first_message(cs, api, ns, k):
    api.create("l")
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    s.send(action=STAT, ref=k("r"))
    assert api.resources("l") == [("ingests", k("r"))]
    s.cancel()


def test_commit_swaps_the_ingest_for_the_content_digest(cs, api, ns, k):
    api.create("l")
    data = k().encode() + b" committed"
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    s.send(action=STAT, ref=k("r"))
    s.send(action=WRITE, offset=0, data=data)
    assert api.resources("l") == [("ingests", k("r"))]
    assert s.send(action=COMMIT, offset=len(data)).digest == sha(data)
    assert s.ended_ok()
    assert api.resources("l") == [("content", sha(data))]


def test_resuming_an_ingest_under_a_lease_adds_it_to_the_lease(cs, api, ns, k):
    api.create("l")
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("r"))
    s.send(action=WRITE, offset=0, data=b"half")
    assert s.finish() == C.OK
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    assert s.send(action=STAT, ref=k("r")).offset == 4
    assert api.resources("l") == [("ingests", k("r"))]
    s.cancel()


def test_a_writer_for_existing_expected_content_adds_it_then_is_already_exists(cs, api, ns, k):
    data = k().encode() + b" existing"
    digest = ingest(cs, k("first"), data)
    api.create("l")
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    assert s.fails(action=STAT, ref=k("r"), expected=digest) == C.ALREADY_EXISTS
    assert api.resources("l") == [("content", digest)]
    assert statuses(cs, f'ref=="{k("r")}"') == []


def test_committing_bytes_that_exist_adds_the_content_then_is_already_exists(cs, api, ns, k):
    data = k().encode() + b" twice"
    digest = ingest(cs, k("first"), data)
    api.create("l")
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    s.send(action=STAT, ref=k("r"))
    s.send(action=WRITE, offset=0, data=data)
    assert s.fails(action=COMMIT, offset=len(data)) == C.ALREADY_EXISTS
    assert api.resources("l") == [("content", digest)]


def test_a_writer_with_an_unknown_lease_is_not_found_and_starts_no_ingest(cs, ns, k):
    s = WriteStream(cs, metadata=lease_md(ns, "never"))
    assert s.fails(action=STAT, ref=k("r")) == C.NOT_FOUND
    assert statuses(cs, f'ref=="{k("r")}"') == []


def test_commit_after_the_lease_is_deleted_is_not_found_and_stores_nothing(cs, api, ns, k):
    api.create("l")
    data = k().encode() + b" orphan"
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    s.send(action=STAT, ref=k("r"))
    s.send(action=WRITE, offset=0, data=data)
    api.delete("l")
    assert s.fails(action=COMMIT, offset=len(data)) == C.NOT_FOUND
    assert not exists(cs, sha(data))


@pytest.mark.parametrize("namespace,expected", [("", C.FAILED_PRECONDITION),
                                                ("bad/ns", C.INVALID_ARGUMENT)],
                         ids=["missing", "malformed"])
def test_a_lease_header_needs_a_valid_namespace_on_content_calls(cs, api, k, namespace,
                                                                 expected):
    api.create("l")
    data = k().encode() + b" kept"
    digest = ingest(cs, k("blob"), data)
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("kept"))
    assert s.finish() == C.OK
    md = [(LEASE, "l")] + ([(NAMESPACE, namespace)] if namespace else [])
    w = WriteStream(cs, metadata=md)
    assert w.fails(action=STAT, ref=k("new")) == expected
    assert code(cs.Delete, cpb.DeleteContentRequest(digest=digest), metadata=md) == expected
    assert code(cs.Abort, cpb.AbortRequest(ref=k("kept")), metadata=md) == expected
    assert statuses(cs, f'ref=="{k("new")}"') == []
    assert [st.ref for st in statuses(cs, f'ref=="{k("kept")}"')] == [k("kept")]
    assert exists(cs, digest)


def test_content_delete_with_a_lease_header_drops_it_from_the_lease(cs, api, ns, k):
    api.create("l")
    digest = ingest_under(cs, ns, "l", k("r"), k().encode() + b" deleted")
    api.add("l", "content", D1)
    cs.Delete(cpb.DeleteContentRequest(digest=digest), metadata=lease_md(ns, "l"))
    assert not exists(cs, digest)
    assert api.resources("l") == [("content", D1)]


def test_abort_with_a_lease_header_drops_the_ingest_from_the_lease(cs, api, ns, k):
    api.create("l")
    s = WriteStream(cs, metadata=lease_md(ns, "l"))
    s.send(action=STAT, ref=k("r"))
    assert s.finish() == C.OK
    api.add("l", "ingests", k("other"))
    cs.Abort(cpb.AbortRequest(ref=k("r")), metadata=lease_md(ns, "l"))
    assert api.resources("l") == [("ingests", k("other"))]
    assert statuses(cs, f'ref=="{k("r")}"') == []


def test_delete_and_abort_with_an_unknown_lease_still_work(cs, ns, k):
    digest = ingest(cs, k("r"), k().encode() + b" unleased")
    s = WriteStream(cs)
    s.send(action=STAT, ref=k("i"))
    assert s.finish() == C.OK
    md = lease_md(ns, "never")
    cs.Delete(cpb.DeleteContentRequest(digest=digest), metadata=md)
    cs.Abort(cpb.AbortRequest(ref=k("i")), metadata=md)
    assert not exists(cs, digest)
    assert statuses(cs, f'ref=="{k("i")}"') == []


# --------------------------------------------------------------------------- GC service


def test_collect_dry_run_reports_without_removing(new_daemon):
    d = new_daemon(args=("--gc-delay", "3600")).start()
    cs, api = ContentStub(d.channel), Leases(d.channel, "ns1")
    api.create("old", {EXPIRE: "2000-01-01T00:00:00Z"})
    digest = ingest_under(cs, "ns1", "old", "r", b"expired with its lease")
    gc = GCStub(d.channel)
    dry = gc.Collect(gc_pb2.CollectRequest(dry_run=True))
    assert dry.dry_run
    assert (list(dry.content), [(x.namespace, x.id) for x in dry.leases]) == \
        ([digest], [("ns1", "old")])
    assert exists(cs, digest) and api.ids() == ["old"]
    real = gc.Collect(gc_pb2.CollectRequest())
    assert not real.dry_run
    assert (list(real.content), [(x.namespace, x.id) for x in real.leases]) == \
        ([digest], [("ns1", "old")])
    assert real.HasField("duration")
    assert not exists(cs, digest) and api.ids() == []


# --------------------------------------------------------------------------- the proxy role


@pytest.mark.parametrize("method", sorted(_REQUESTS))
def test_proxy_role_serves_no_leases(proxy, method):
    md = [(NAMESPACE, "default")]
    with pytest.raises(grpc.RpcError) as err:
        getattr(LeasesStub(proxy.channel), method)(_REQUESTS[method], metadata=md)
    assert err.value.code() == C.FAILED_PRECONDITION
    assert err.value.details().startswith("fusesnap serves role proxy: containerd owns leases")


def test_proxy_role_serves_no_gc(proxy):
    assert code(GCStub(proxy.channel).Collect, gc_pb2.CollectRequest()) == \
        C.FAILED_PRECONDITION


def test_proxy_role_ignores_a_lease_header_without_a_namespace(proxy, k):
    md = [(LEASE, "no-such-lease")]
    prepare(proxy, k("a"), metadata=md)
    commit(proxy, k("c"), k("a"), metadata=md)
    view(proxy, k("v"), k("c"), metadata=md)
    remove(proxy, k("v"), metadata=md)
    cs = ContentStub(proxy.channel)
    s = WriteStream(cs, metadata=md)
    s.send(action=STAT, ref=k("r"))
    data = k().encode()
    s.send(action=WRITE, offset=0, data=data)
    assert s.send(action=COMMIT, offset=len(data)).digest == sha(data)
    assert exists(cs, sha(data))
    cs.Delete(cpb.DeleteContentRequest(digest=sha(data)), metadata=md)
    assert kind(proxy, k("c")) == spb.COMMITTED
