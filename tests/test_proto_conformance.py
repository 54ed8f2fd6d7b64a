"""Our protos must describe the same wire as containerd's upstream .proto files.

Upstream is containerd 1.6.20 as shipped by Debian's golang-github-containerd-containerd-dev
(gogoproto options from golang-github-gogo-protobuf-dev). Both are compiled with the pinned
grpc_tools protoc into a FileDescriptorSet and loaded into a private descriptor pool; every
message, enum and service defined in our generated modules is compared with it by full name.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc_tools
import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_tools import protoc

import fusesnap.pb

GOCODE = pathlib.Path("/usr/share/gocode/src")
CONTAINERD_API = GOCODE / "github.com" / "containerd" / "containerd" / "api"
GOGO_PROTO = GOCODE / "github.com" / "gogo" / "protobuf" / "gogoproto" / "gogo.proto"
WELL_KNOWN_PROTO_ROOT = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
UPSTREAM_FILES = (
    "types/mount.proto",
    "types/descriptor.proto",
    "services/snapshots/v1/snapshots.proto",
    "services/content/v1/content.proto",
    "services/leases/v1/leases.proto",
    "services/images/v1/images.proto",
    "services/namespaces/v1/namespace.proto",
)

# Fields we carry from API versions newer than containerd 1.6.20, keyed by message full name.
# When upstream has such a field it is compared like any other.
NEWER_FIELDS: dict[str, set[str]] = {
    "containerd.services.snapshots.v1.CommitSnapshotRequest": {"parent"},  # api v1.10
    "containerd.services.images.v1.CreateImageRequest": {"source_date_epoch"},  # 1.7
    "containerd.services.images.v1.UpdateImageRequest": {"source_date_epoch"},  # 1.7
    "containerd.services.images.v1.DeleteImageRequest": {"target"},  # api v1.8
}

# Services we implement only in part; every other service must have every upstream method.
PARTIAL_SERVICES = {"containerd.services.namespaces.v1.Namespaces"}

T = TypeVar("T")


# Only containerd's packages have their upstream here. fusesnap's own services
# (gc.proto) have none; Kubernetes' CRI subset (cri.proto, runtime.v1, which
# only tests/ and bench/ use) has no upstream on this machine (Debian 12
# packages no k8s.io/cri-api): tests/test_cri.py proves its wire against a
# real containerd's CRI plugin instead.
UPSTREAM_PACKAGE = "containerd."


def _our_files() -> list[descriptor.FileDescriptor]:
    files = []
    for info in pkgutil.iter_modules(fusesnap.pb.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"fusesnap.pb.{info.name}")
            if module.DESCRIPTOR.package.startswith(UPSTREAM_PACKAGE):
                files.append(module.DESCRIPTOR)
    return sorted(files, key=lambda f: f.name)


def _walk_messages(
    messages: list[descriptor.Descriptor],
) -> Iterator[descriptor.Descriptor]:
    for message in messages:
        yield message
        yield from _walk_messages(list(message.nested_types))


def _our_messages() -> list[descriptor.Descriptor]:
    out: list[descriptor.Descriptor] = []
    for f in _our_files():
        out.extend(_walk_messages(list(f.message_types_by_name.values())))
    return out


def _our_enums() -> list[descriptor.EnumDescriptor]:
    out: list[descriptor.EnumDescriptor] = []
    for f in _our_files():
        out.extend(f.enum_types_by_name.values())
    for message in _our_messages():
        out.extend(message.enum_types)
    return out


def _our_services() -> list[descriptor.ServiceDescriptor]:
    return [s for f in _our_files() for s in f.services_by_name.values()]


OUR_MESSAGES = {m.full_name: m for m in _our_messages()}
OUR_ENUMS = {e.full_name: e for e in _our_enums()}
OUR_SERVICES = {s.full_name: s for s in _our_services()}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    if not CONTAINERD_API.is_dir():
        pytest.skip(
            f"{CONTAINERD_API} is missing: install the Debian package "
            "golang-github-containerd-containerd-dev (vagrant/provision.sh does)"
        )
    if not GOGO_PROTO.is_file():
        pytest.skip(
            f"{GOGO_PROTO} is missing: install the Debian package golang-github-gogo-protobuf-dev "
            "(a dependency of golang-github-containerd-containerd-dev)"
        )
    out = tmp_path_factory.mktemp("upstream") / "containerd.binpb"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={GOCODE}",
            f"--proto_path={GOGO_PROTO.parent.parent}",
            f"--proto_path={WELL_KNOWN_PROTO_ROOT}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *(str(CONTAINERD_API / name) for name in UPSTREAM_FILES),
        ]
    )
    assert status == 0, "protoc could not compile the upstream containerd protos"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in fds.file:
        pool.Add(file_proto)
    return pool


def _lookup(find: Callable[[str], T], full_name: str, kind: str) -> T:
    try:
        return find(full_name)
    except KeyError:
        pass
    pytest.fail(f"upstream containerd has no {kind} {full_name}")


def _type_name(d: descriptor.Descriptor | descriptor.EnumDescriptor | None) -> str | None:
    return None if d is None else d.full_name


def _field_shape(field: descriptor.FieldDescriptor) -> dict[str, object]:
    return {
        "number": field.number,
        "type": field.type,
        "repeated": field.is_repeated,
        "required": field.is_required,
        "message_type": _type_name(field.message_type),
        "enum_type": _type_name(field.enum_type),
    }


@pytest.mark.parametrize("full_name", sorted(OUR_MESSAGES))
def test_message_matches_upstream(full_name: str, upstream: descriptor_pool.DescriptorPool) -> None:
    ours = OUR_MESSAGES[full_name]
    theirs = _lookup(upstream.FindMessageTypeByName, full_name, "message")

    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry

    their_fields = theirs.fields_by_name
    extras = NEWER_FIELDS.get(full_name, set())
    for name, field in ours.fields_by_name.items():
        if name not in their_fields:
            assert name in extras, f"{full_name}.{name} does not exist upstream"
            assert field.number not in theirs.fields_by_number, (
                f"{full_name}.{name} reuses upstream field number {field.number}"
            )
            continue
        assert _field_shape(field) == _field_shape(their_fields[name]), f"{full_name}.{name}"

    missing = sorted(set(their_fields) - set(ours.fields_by_name))
    assert not missing, f"{full_name} lacks upstream fields {missing}"


@pytest.mark.parametrize(
    ("full_name", "field"),
    sorted((m, f) for m, fields in NEWER_FIELDS.items() for f in fields),
)
def test_newer_field_allowance_is_needed(
    full_name: str, field: str, upstream: descriptor_pool.DescriptorPool
) -> None:
    """Each allowance names a field we define that upstream 1.6.20 really lacks."""
    assert field in OUR_MESSAGES[full_name].fields_by_name
    theirs = upstream.FindMessageTypeByName(full_name)
    assert field not in theirs.fields_by_name, (
        f"upstream now defines {full_name}.{field}: drop it from NEWER_FIELDS"
    )


@pytest.mark.parametrize("full_name", sorted(OUR_ENUMS))
def test_enum_matches_upstream(full_name: str, upstream: descriptor_pool.DescriptorPool) -> None:
    ours = OUR_ENUMS[full_name]
    theirs = _lookup(upstream.FindEnumTypeByName, full_name, "enum")
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def _method_shape(method: descriptor.MethodDescriptor) -> dict[str, object]:
    return {
        "input": method.input_type.full_name,
        "output": method.output_type.full_name,
        "client_streaming": method.client_streaming,
        "server_streaming": method.server_streaming,
    }


@pytest.mark.parametrize("full_name", sorted(OUR_SERVICES))
def test_service_matches_upstream(full_name: str, upstream: descriptor_pool.DescriptorPool) -> None:
    ours = OUR_SERVICES[full_name]
    theirs = _lookup(upstream.FindServiceByName, full_name, "service")

    their_methods = theirs.methods_by_name
    for name, method in ours.methods_by_name.items():
        assert name in their_methods, f"{full_name}/{name} does not exist upstream"
        assert _method_shape(method) == _method_shape(their_methods[name]), f"{full_name}/{name}"

    if full_name not in PARTIAL_SERVICES:
        missing = sorted(set(their_methods) - set(ours.methods_by_name))
        assert not missing, f"{full_name} lacks upstream methods {missing}"
