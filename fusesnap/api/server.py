"""The gRPC server on the unix socket, with containerd's message limits."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

from fusesnap.api.content import ContentServicer
from fusesnap.api.namespaces import NamespacesServicer
from fusesnap.api.snapshots import SnapshotsServicer
from fusesnap.bridge import TrioBridge
from fusesnap.content.store import ContentStore
from fusesnap.pb import content_pb2_grpc, namespaces_pb2_grpc, snapshots_pb2_grpc
from fusesnap.snapshots.snapshotter import Snapshotter

# containerd's clients send up to 16 MiB (spec §1.1); leave room for framing.
MAX_MESSAGE = 16 * 1024 * 1024 + 64 * 1024


def make_server(bridge: TrioBridge, snapshotter: Snapshotter, content: ContentStore,
                socket: Path, workers: int = 16) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(
        SnapshotsServicer(bridge, snapshotter), server)
    content_pb2_grpc.add_ContentServicer_to_server(ContentServicer(bridge, content), server)
    namespaces_pb2_grpc.add_NamespacesServicer_to_server(NamespacesServicer(), server)
    if server.add_insecure_port(f"unix:{socket}") == 0:
        raise OSError(f"cannot listen on {socket}")
    return server
