"""The gRPC server on the unix socket, with containerd's message limits."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

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
    content_pb2_grpc,
    diff_pb2_grpc,
    gc_pb2_grpc,
    images_pb2_grpc,
    leases_pb2_grpc,
    namespaces_pb2_grpc,
    snapshots_pb2_grpc,
)
from fusesnap.snapshots.snapshotter import Snapshotter

# containerd's clients send up to 16 MiB (spec §1.1); leave room for framing.
MAX_MESSAGE = 16 * 1024 * 1024 + 64 * 1024


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
    content_pb2_grpc.add_ContentServicer_to_server(
        ContentServicer(bridge, content, headers), server)
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
