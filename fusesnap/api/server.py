"""The gRPC server on the unix socket, with containerd's message limits."""

from __future__ import annotations

from collections.abc import Collection
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from fusesnap.api.apply import ApplierServicer
from fusesnap.api.content import ContentServicer
from fusesnap.api.diff import DiffServicer
from fusesnap.api.headers import Headers
from fusesnap.api.images import ImagesServicer
from fusesnap.api.leases import GCServicer, LeasesServicer
from fusesnap.api.namespaces import NamespacesServicer
from fusesnap.api.snapshots import SnapshotsServicer
from fusesnap.bridge import TrioBridge
from fusesnap.config import Role
from fusesnap.content.store import ContentStore
from fusesnap.images.store import ImageStore
from fusesnap.leases.gc import Collector
from fusesnap.pb import (
    apply_pb2_grpc,
    diff_pb2_grpc,
    gc_pb2_grpc,
    images_pb2_grpc,
    leases_pb2_grpc,
    namespaces_pb2_grpc,
    snapshots_pb2_grpc,
)
from fusesnap.pb import content_pb2 as cpb
from fusesnap.snapshots.snapshotter import Snapshotter

# containerd's clients send up to 16 MiB (spec §1.1); leave room for framing.
MAX_MESSAGE = 16 * 1024 * 1024 + 64 * 1024


def _encoded(message: bytes) -> bytes:
    return message


def _add_servicer(server: grpc.Server, service: ServiceDescriptor, servicer: object,
                  encoded: Collection[str] = ()) -> None:
    """Register `servicer`'s methods for `service` as the generated
    add_*Servicer_to_server does, except that the methods named in `encoded`
    return (or yield) their responses already encoded as bytes."""
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {}
    for method in service.methods:
        make = kinds[method.client_streaming, method.server_streaming]
        output = GetMessageClass(method.output_type)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=_encoded if method.name in encoded else output.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def make_server(bridge: TrioBridge, socket: Path, role: Role, snapshotter: Snapshotter,
                content: ContentStore, collector: Collector, workers: int = 16) -> grpc.Server:
    """Snapshots, Content and Namespaces in both roles; Leases, Images and GC
    only in the direct role (as a proxy, containerd owns them: spec §9.2)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    headers = Headers(role)
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(
        SnapshotsServicer(bridge, snapshotter, headers), server)
    _add_servicer(server, cpb.DESCRIPTOR.services_by_name["Content"],
                  ContentServicer(bridge, content, headers), encoded={"Read"})
    namespaces_pb2_grpc.add_NamespacesServicer_to_server(NamespacesServicer(), server)
    apply_pb2_grpc.add_ApplierServicer_to_server(
        ApplierServicer(bridge, snapshotter, content), server)
    diff_pb2_grpc.add_DifferServicer_to_server(DiffServicer(bridge, snapshotter), server)
    if role is Role.DIRECT:
        leases = snapshotter.leases
        leases_pb2_grpc.add_LeasesServicer_to_server(
            LeasesServicer(bridge, leases, collector), server)
        images_pb2_grpc.add_ImagesServicer_to_server(
            ImagesServicer(bridge, ImageStore(snapshotter.db, leases), headers, collector),
            server)
        gc_pb2_grpc.add_GCServicer_to_server(GCServicer(bridge, collector), server)
    if server.add_insecure_port(f"unix:{socket}") == 0:
        raise OSError(f"cannot listen on {socket}")
    return server
