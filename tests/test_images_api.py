"""The gRPC contract of containerd.services.images.v1.Images (spec §5), RPC by RPC.

Every test talks to one real daemon over its unix socket and keeps to a
namespace of its own, so tests never see each other's images.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import descriptor_pb2
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.images_pb2_grpc import ImagesStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from tests.conftest import Daemon, module_daemon
from tests.content_client import ingest, sha

C = grpc.StatusCode
NAMESPACE = "containerd-namespace"
LEASE = "containerd-lease"
EXPIRE = "containerd.io/gc.expire"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
GO_ZERO_TIME = Timestamp(seconds=-62135596800, nanos=0)


def target(digest: str = D1, size: int = 100, media_type: str = INDEX,
           annotations: dict[str, str] | None = None) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size,
                                     annotations=annotations or {})


def image(name: str, labels: dict[str, str] | None = None, **kw: Any) -> ipb.Image:
    return ipb.Image(name=name, labels=labels or {}, target=target(**kw))


def ns_of(t: Timestamp) -> int:
    return t.seconds * 1_000_000_000 + t.nanos


def timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class Images:
    """The Images stub with one namespace (and optionally a lease) on every call."""

    def __init__(self, channel: grpc.Channel, namespace: str, lease: str = "") -> None:
        self.stub = ImagesStub(channel)
        self.metadata = [(NAMESPACE, namespace)] + ([(LEASE, lease)] if lease else [])

    def create(self, img: ipb.Image, **kw: Any) -> ipb.Image:
        resp = self.stub.Create(ipb.CreateImageRequest(image=img, **kw), metadata=self.metadata)
        assert resp.HasField("image")
        return resp.image

    def get(self, name: str) -> ipb.Image:
        resp = self.stub.Get(ipb.GetImageRequest(name=name), metadata=self.metadata)
        assert resp.HasField("image")
        return resp.image

    def update(self, img: ipb.Image, *paths: str, **kw: Any) -> ipb.Image:
        resp = self.stub.Update(ipb.UpdateImageRequest(
            image=img, update_mask=FieldMask(paths=paths), **kw), metadata=self.metadata)
        assert resp.HasField("image")
        return resp.image

    def names(self, *filters: str) -> list[str]:
        resp = self.stub.List(ipb.ListImagesRequest(filters=filters), metadata=self.metadata)
        return [i.name for i in resp.images]

    def delete(self, name: str, **kw: Any) -> None:
        self.stub.Delete(ipb.DeleteImageRequest(name=name, **kw), metadata=self.metadata)

    def fails(self, method: str, request: Any) -> grpc.RpcError:
        """The error of a call that must fail."""
        with pytest.raises(grpc.RpcError) as err:
            getattr(self.stub, method)(request, metadata=self.metadata)
        return err.value


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "images")


_serial = itertools.count(1)


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"test-{next(_serial)}"


@pytest.fixture
def api(shared: Daemon, ns: str) -> Images:
    assert shared.channel is not None
    return Images(shared.channel, ns)


@pytest.fixture
def leases(shared: Daemon, ns: str) -> Callable[[str], str]:
    """Create a lease in the test's namespace (skips while no Leases service runs)."""
    stub = LeasesStub(shared.channel)

    def create(lease_id: str) -> str:
        try:
            stub.Create(lpb.CreateRequest(id=lease_id), metadata=[(NAMESPACE, ns)])
        except grpc.RpcError as err:
            if err.code() == C.UNIMPLEMENTED:
                pytest.skip("the daemon serves no Leases service yet")
            raise
        return lease_id

    return create


def resources(shared: Daemon, ns: str, lease_id: str) -> list[tuple[str, str]]:
    resp = LeasesStub(shared.channel).ListResources(
        lpb.ListResourcesRequest(id=lease_id), metadata=[(NAMESPACE, ns)])
    return [(r.type, r.id) for r in resp.resources]


# --------------------------------------------------------------------------- namespace

_REQUESTS: dict[str, Any] = {
    "Get": ipb.GetImageRequest(name="x"),
    "List": ipb.ListImagesRequest(),
    "Create": ipb.CreateImageRequest(image=image("x")),
    "Update": ipb.UpdateImageRequest(image=image("x")),
    "Delete": ipb.DeleteImageRequest(name="x"),
}


@pytest.mark.parametrize("method", sorted(_REQUESTS))
@pytest.mark.parametrize("metadata", [[], [(NAMESPACE, "")]], ids=["missing", "empty"])
def test_every_rpc_without_a_namespace_is_failed_precondition(shared, method, metadata):
    with pytest.raises(grpc.RpcError) as err:
        getattr(ImagesStub(shared.channel), method)(_REQUESTS[method], metadata=metadata)
    assert err.value.code() == C.FAILED_PRECONDITION
    assert "namespace is required" in err.value.details()


@pytest.mark.parametrize("method", sorted(_REQUESTS))
@pytest.mark.parametrize("namespace", ["bad/ns", "-x", "a" * 77, "a..b"])
def test_every_rpc_with_a_malformed_namespace_is_invalid_argument(shared, method, namespace):
    api = Images(shared.channel, namespace)
    assert api.fails(method, _REQUESTS[method]).code() == C.INVALID_ARGUMENT


def test_a_create_without_a_namespace_stores_nothing(shared, api):
    with pytest.raises(grpc.RpcError):
        ImagesStub(shared.channel).Create(ipb.CreateImageRequest(image=image("x")))
    assert api.names() == []


def test_the_same_name_in_two_namespaces_is_two_images(shared, ns):
    a, b = Images(shared.channel, ns + "-a"), Images(shared.channel, ns + "-b")
    a.create(image("docker.io/library/busybox:latest", {"who": "a"}, digest=D1))
    b.create(image("docker.io/library/busybox:latest", {"who": "b"}, digest=D2))
    assert a.get("docker.io/library/busybox:latest").target.digest == D1
    assert b.get("docker.io/library/busybox:latest").target.digest == D2
    a.update(image("docker.io/library/busybox:latest", {"who": "a2"}), "labels")
    assert dict(b.get("docker.io/library/busybox:latest").labels) == {"who": "b"}
    a.delete("docker.io/library/busybox:latest")
    assert a.names() == []
    assert b.names() == ["docker.io/library/busybox:latest"]


def test_an_image_is_invisible_from_another_namespace(shared, api, ns):
    api.create(image("only-here"))
    other = Images(shared.channel, ns + "-other")
    assert other.names() == []
    assert other.fails("Get", ipb.GetImageRequest(name="only-here")).code() == C.NOT_FOUND
    assert other.fails("Delete", ipb.DeleteImageRequest(name="only-here")).code() == C.NOT_FOUND


# --------------------------------------------------------------------------- Create


def test_create_returns_the_stored_image_with_server_times(api):
    before = time.time_ns()
    made = api.create(image("img", {"a": "1"}, digest=D1, size=523, media_type=MANIFEST,
                            annotations={"org.opencontainers.image.ref.name": "latest"}))
    after = time.time_ns()
    assert made.name == "img"
    assert dict(made.labels) == {"a": "1"}
    assert made.target == target(D1, 523, MANIFEST,
                                 {"org.opencontainers.image.ref.name": "latest"})
    assert before <= ns_of(made.created_at) <= after
    assert made.updated_at == made.created_at
    assert api.get("img") == made


def test_create_ignores_the_client_timestamps(api):
    img = image("img")
    img.created_at.CopyFrom(Timestamp(seconds=1000))
    img.updated_at.CopyFrom(GO_ZERO_TIME)
    made = api.create(img)
    assert ns_of(made.created_at) > time.time_ns() - 60 * 10**9
    assert made.updated_at == made.created_at


def test_create_with_source_date_epoch_takes_it_as_both_times(api):
    epoch = timestamp(1_700_000_000_123_456_789)
    made = api.create(image("img"), source_date_epoch=epoch)
    assert made.created_at == epoch and made.updated_at == epoch
    assert api.get("img").created_at == epoch


def test_create_drops_labels_and_annotations_with_empty_values(api):
    made = api.create(image("img", {"a": "1", "gone": ""}, annotations={"x": "", "y": "2"}))
    assert dict(made.labels) == {"a": "1"}
    assert dict(made.target.annotations) == {"y": "2"}


@pytest.mark.parametrize("name", ["docker.io/library/busybox:latest", "a b", "x@sha256:" + "1" * 64,
                                  "ünïcode/..", "-"])
def test_image_names_are_opaque_strings(api, name):
    api.create(image(name))
    assert api.get(name).name == name
    assert api.names() == [name]


def test_create_of_an_existing_name_is_already_exists_and_keeps_the_first(api):
    first = api.create(image("img", {"v": "1"}, digest=D1))
    err = api.fails("Create", ipb.CreateImageRequest(image=image("img", {"v": "2"}, digest=D2)))
    assert err.code() == C.ALREADY_EXISTS
    assert api.get("img") == first


def test_create_without_a_name_is_invalid_argument_image_name_required(api):
    err = api.fails("Create", ipb.CreateImageRequest(image=image("")))
    assert err.code() == C.INVALID_ARGUMENT
    assert "Image.Name required" in err.details()
    assert api.names() == []


_INVALID_TARGETS = {
    "no digest": {"digest": ""},
    "no algorithm": {"digest": "1" * 64},
    "short digest": {"digest": "sha256:1234"},
    "upper-case hex": {"digest": "sha256:" + "A" * 64},
    "unknown algorithm": {"digest": "md5:" + "1" * 32},
    "zero size": {"size": 0},
    "negative size": {"size": -1},
    "no media type": {"media_type": ""},
}


@pytest.mark.parametrize("fields", _INVALID_TARGETS.values(), ids=_INVALID_TARGETS.keys())
def test_create_with_an_invalid_target_is_invalid_argument_and_stores_nothing(api, fields):
    err = api.fails("Create", ipb.CreateImageRequest(image=image("img", **fields)))
    assert err.code() == C.INVALID_ARGUMENT
    assert api.names() == []


def test_create_without_a_target_is_invalid_argument(api):
    assert api.fails("Create", ipb.CreateImageRequest(image=ipb.Image(name="img"))).code() \
        == C.INVALID_ARGUMENT
    assert api.names() == []


def test_create_with_an_oversized_label_is_invalid_argument_and_stores_nothing(api):
    err = api.fails("Create", ipb.CreateImageRequest(image=image("img", {"k": "v" * 4096})))
    assert err.code() == C.INVALID_ARGUMENT
    assert "label key and value greater than maximum size (4096 bytes)" in err.details()
    assert api.names() == []


def test_a_label_of_exactly_4096_bytes_is_accepted(api):
    api.create(image("img", {"k": "v" * 4095}))
    assert api.get("img").labels["k"] == "v" * 4095


# --------------------------------------------------------------------------- Get and List


def test_get_of_a_missing_image_is_not_found(api):
    assert api.fails("Get", ipb.GetImageRequest(name="nope")).code() == C.NOT_FOUND


def test_list_returns_every_image_of_the_namespace_by_name(api):
    for name in ["b", "a", "c/d", "C"]:
        api.create(image(name))
    assert api.names() == ["C", "a", "b", "c/d"]
    assert api.names("") == ["C", "a", "b", "c/d"]


@pytest.fixture
def catalogue(api: Images) -> Images:
    api.create(image("docker.io/library/busybox:latest", {"team": "infra", "a.b": "dotted"},
                     digest=D1, media_type=INDEX,
                     annotations={"org.opencontainers.image.ref.name": "latest"}))
    api.create(image("docker.io/library/alpine:3", {"containerd.io/gc.root": "x"},
                     digest=D2, media_type=MANIFEST))
    api.create(image("quay.io/x/y:1", digest=D2, media_type=MANIFEST,
                     annotations={"k": "v"}))
    return api


_FILTERS = {
    "name==docker.io/library/alpine:3": ["docker.io/library/alpine:3"],
    "name~=^docker.io/": ["docker.io/library/alpine:3", "docker.io/library/busybox:latest"],
    "name~=/busy.*/": ["docker.io/library/busybox:latest"],
    f"target.digest=={D2}": ["docker.io/library/alpine:3", "quay.io/x/y:1"],
    f"target.mediatype=={INDEX}": ["docker.io/library/busybox:latest"],
    "labels.team==infra": ["docker.io/library/busybox:latest"],
    "labels.a.b==dotted": ["docker.io/library/busybox:latest"],
    'labels."containerd.io/gc.root"': ["docker.io/library/alpine:3"],
    "labels.team!=infra": ["docker.io/library/alpine:3", "quay.io/x/y:1"],
    'annotations."org.opencontainers.image.ref.name"==latest':
        ["docker.io/library/busybox:latest"],
    "annotations.k": ["quay.io/x/y:1"],
    f"target.digest=={D2},annotations.k==v": ["quay.io/x/y:1"],
    "target.size==100": [],
    "name": ["docker.io/library/alpine:3", "docker.io/library/busybox:latest",
             "quay.io/x/y:1"],
}


@pytest.mark.parametrize("flt", _FILTERS)
def test_list_filters(catalogue, flt):
    assert catalogue.names(flt) == _FILTERS[flt]


def test_list_filters_are_or_ed(catalogue):
    assert catalogue.names("name==quay.io/x/y:1", "labels.team==infra") == \
        ["docker.io/library/busybox:latest", "quay.io/x/y:1"]


@pytest.mark.parametrize("flt", ["name==", "name==a ", "labels.'x'", "name=~x"])
def test_list_with_a_filter_that_does_not_parse_is_invalid_argument(api, flt):
    assert api.fails("List", ipb.ListImagesRequest(filters=[flt])).code() == C.INVALID_ARGUMENT


# --------------------------------------------------------------------------- Update


@pytest.fixture
def stored(api: Images) -> ipb.Image:
    return api.create(image("img", {"a": "1", "b": "2"}, digest=D1, size=100,
                            media_type=INDEX, annotations={"x": "1", "y": "2"}))


def test_update_of_a_missing_image_is_not_found(api):
    assert api.fails("Update", ipb.UpdateImageRequest(
        image=image("nope"), update_mask=FieldMask(paths=["labels"]))).code() == C.NOT_FOUND


def test_update_without_a_name_is_invalid_argument(api, stored):
    err = api.fails("Update", ipb.UpdateImageRequest(image=image("")))
    assert err.code() == C.INVALID_ARGUMENT
    assert "Image.Name required" in err.details()


def test_update_of_the_labels_path_replaces_every_label(api, stored):
    got = api.update(ipb.Image(name="img", labels={"c": "3"}), "labels")
    assert dict(got.labels) == {"c": "3"}
    assert got.target == stored.target


def test_update_of_a_label_path_sets_or_removes_that_label_only(api, stored):
    got = api.update(ipb.Image(name="img", labels={"a": "9", "c": "3", "containerd.io/x.y": "z"}),
                     "labels.a", "labels.b", "labels.containerd.io/x.y")
    assert dict(got.labels) == {"a": "9", "containerd.io/x.y": "z"}
    assert got.target == stored.target


def test_update_of_the_annotations_path_replaces_the_annotations_only(api, stored):
    got = api.update(ipb.Image(name="img", target=target(D2, 5, "ignored", {"z": "26"})),
                     "annotations")
    assert got.target == target(D1, 100, INDEX, {"z": "26"})
    assert dict(got.labels) == {"a": "1", "b": "2"}


def test_update_of_an_annotation_path_sets_or_removes_that_annotation(api, stored):
    got = api.update(ipb.Image(name="img", target=target(annotations={"x": "9", "w": "0"})),
                     "annotations.x", "annotations.y", "annotations.w")
    assert dict(got.target.annotations) == {"x": "9", "w": "0"}
    assert got.target.digest == D1


def test_update_of_the_target_path_replaces_the_descriptor_with_its_annotations(api, stored):
    got = api.update(ipb.Image(name="img", labels={"ignored": "y"},
                               target=target(D2, 7, MANIFEST, {"n": "1"})), "target")
    assert got.target == target(D2, 7, MANIFEST, {"n": "1"})
    assert dict(got.labels) == {"a": "1", "b": "2"}


def test_update_paths_apply_in_order(api, stored):
    req = ipb.Image(name="img", labels={"a": "new"}, target=target(D2, 7, MANIFEST, {"n": "1"}))
    got = api.update(req, "annotations.x", "target", "labels", "labels.a")
    assert dict(got.target.annotations) == {"n": "1"}  # target came after annotations.x
    assert dict(got.labels) == {"a": "new"}


@pytest.mark.parametrize("with_mask", [True, False], ids=["empty mask", "no mask"])
def test_update_without_paths_replaces_the_whole_image_but_its_creation_time(
        api, stored, with_mask):
    new = image("img", {"only": "this"}, digest=D2, size=9, media_type=MANIFEST,
                annotations={"n": "1"})
    new.created_at.CopyFrom(Timestamp(seconds=5))
    request = ipb.UpdateImageRequest(image=new)
    if with_mask:
        request.update_mask.CopyFrom(FieldMask())
    got = api.stub.Update(request, metadata=api.metadata).image
    assert got.target == new.target
    assert dict(got.labels) == {"only": "this"}
    assert got.created_at == stored.created_at
    assert ns_of(got.updated_at) >= ns_of(stored.updated_at)
    assert api.get("img") == got


def test_update_sets_updated_at_and_keeps_created_at(api, stored):
    time.sleep(0.01)
    got = api.update(ipb.Image(name="img", labels={"c": "3"}), "labels.c")
    assert got.created_at == stored.created_at
    assert ns_of(got.updated_at) > ns_of(stored.updated_at)


def test_update_with_source_date_epoch_takes_it_as_the_update_time(api, stored):
    epoch = timestamp(1_600_000_000_000_000_001)
    got = api.update(ipb.Image(name="img", labels={"c": "3"}), "labels.c",
                     source_date_epoch=epoch)
    assert got.updated_at == epoch
    assert got.created_at == stored.created_at


def test_update_accepts_and_ignores_go_zero_timestamps(api, stored):
    img = ipb.Image(name="img", labels={"c": "3"}, created_at=GO_ZERO_TIME,
                    updated_at=GO_ZERO_TIME)
    got = api.update(img, "labels.c")
    assert got.created_at == stored.created_at
    assert got.updated_at != GO_ZERO_TIME


@pytest.mark.parametrize("path", ["name", "created_at", "updated_at", "target.digest",
                                  "Labels", "label.a", "annotation", ""])
def test_update_of_another_path_is_invalid_argument_and_changes_nothing(api, stored, path):
    err = api.fails("Update", ipb.UpdateImageRequest(
        image=ipb.Image(name="img", labels={"a": "changed"}),
        update_mask=FieldMask(paths=["labels.a", path])))
    assert err.code() == C.INVALID_ARGUMENT
    assert "cannot update" in err.details()
    assert api.get("img") == stored


_INVALID_RESULTS = {
    "bad digest by target": (image("img", digest="sha256:x"), ["target"]),
    "zero size by target": (image("img", size=0), ["target"]),
    "no target by target": (ipb.Image(name="img"), ["target"]),
    "no media type by empty mask": (image("img", media_type=""), []),
    "no target by empty mask": (ipb.Image(name="img", labels={"a": "1"}), []),
    "oversized label": (ipb.Image(name="img", labels={"big": "v" * 4096}), ["labels.big"]),
    "oversized label by empty mask": (image("img", {"big": "v" * 4096}), []),
}


@pytest.mark.parametrize("request_, paths", _INVALID_RESULTS.values(),
                         ids=_INVALID_RESULTS.keys())
def test_update_to_an_invalid_image_is_invalid_argument_and_changes_nothing(
        api, stored, request_, paths):
    err = api.fails("Update", ipb.UpdateImageRequest(image=request_,
                                                     update_mask=FieldMask(paths=paths)))
    assert err.code() == C.INVALID_ARGUMENT
    assert api.get("img") == stored


def test_update_of_labels_needs_no_target_in_the_request(api, stored):
    got = api.update(ipb.Image(name="img", labels={"c": "3"}), "labels.c")
    assert got.target == stored.target


# --------------------------------------------------------------------------- Delete


def test_delete_removes_the_image(api, stored):
    assert api.stub.Delete(ipb.DeleteImageRequest(name="img"), metadata=api.metadata) == Empty()
    assert api.fails("Get", ipb.GetImageRequest(name="img")).code() == C.NOT_FOUND
    assert api.names() == []


def test_delete_of_a_missing_image_is_not_found(api):
    assert api.fails("Delete", ipb.DeleteImageRequest(name="nope")).code() == C.NOT_FOUND


def test_delete_with_the_stored_target_digest_removes_the_image(api, stored):
    api.delete("img", target=target(D1))
    assert api.names() == []


def test_delete_with_another_target_digest_is_not_found_and_keeps_the_image(api, stored):
    err = api.fails("Delete", ipb.DeleteImageRequest(name="img", target=target(D2)))
    assert err.code() == C.NOT_FOUND
    assert api.get("img") == stored


def test_delete_with_a_target_without_digest_ignores_it(api, stored):
    api.delete("img", target=descriptor_pb2.Descriptor(media_type=MANIFEST))
    assert api.names() == []


def test_delete_then_create_makes_a_new_image(api, stored):
    api.delete("img")
    again = api.create(image("img", digest=D2))
    assert again.target.digest == D2
    assert dict(again.labels) == {}


def test_sync_delete_returns_after_the_collection(shared, api):
    cs = ContentStub(shared.channel)
    kept_data, dropped_data = b"target of the kept image\n", b"target of the deleted image\n"
    # The images come first: a blob on no image and no lease may be collected
    # at any time by a background collection.
    api.create(image("keeper", digest=sha(kept_data), size=len(kept_data)))
    api.create(image("dropper", digest=sha(dropped_data), size=len(dropped_data)))
    kept = ingest(cs, f"{api.metadata[0][1]}-kept", kept_data)
    dropped = ingest(cs, f"{api.metadata[0][1]}-dropped", dropped_data)
    api.delete("dropper", sync=True)
    assert api.names() == ["keeper"]
    with pytest.raises(grpc.RpcError) as err:
        cs.Info(cpb.InfoRequest(digest=dropped))
    assert err.value.code() == C.NOT_FOUND
    assert cs.Info(cpb.InfoRequest(digest=kept)).info.digest == kept


# --------------------------------------------------------------------------- leases


def test_create_under_a_missing_lease_is_not_found_and_stores_nothing(shared, ns):
    api = Images(shared.channel, ns, lease="no-such-lease")
    err = api.fails("Create", ipb.CreateImageRequest(image=image("img")))
    assert err.code() == C.NOT_FOUND
    assert Images(shared.channel, ns).names() == []


def test_update_under_a_missing_lease_is_not_found_and_changes_nothing(shared, api, stored, ns):
    leased = Images(shared.channel, ns, lease="no-such-lease")
    err = leased.fails("Update", ipb.UpdateImageRequest(
        image=ipb.Image(name="img", labels={"c": "3"}), update_mask=FieldMask(paths=["labels"])))
    assert err.code() == C.NOT_FOUND
    assert api.get("img") == stored


def test_an_image_that_can_expire_joins_the_request_lease(shared, ns, leases):
    lease = leases("pull")
    api = Images(shared.channel, ns, lease=lease)
    api.create(image("expiring", {EXPIRE: "2999-01-01T00:00:00Z"}))
    api.create(image("lasting"))
    assert resources(shared, ns, lease) == [("images", "expiring")]


def test_an_image_labelled_to_expire_by_update_joins_the_request_lease(shared, ns, leases):
    lease = leases("pull")
    Images(shared.channel, ns).create(image("img"))
    api = Images(shared.channel, ns, lease=lease)
    api.update(ipb.Image(name="img", labels={EXPIRE: "2999-01-01T00:00:00Z"}),
               f"labels.{EXPIRE}")
    assert resources(shared, ns, lease) == [("images", "img")]
