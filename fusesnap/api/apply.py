"""fusesnap.services.apply.v1.Applier over fusesnap.snapshots.apply.

The blob is read, decompressed and written out in the gRPC thread; the
snapshot's metadata changes cross into the trio thread in batches.
"""

from __future__ import annotations

import io
from typing import IO

import grpc

from fusesnap import digests
from fusesnap.api.errors import rpc
from fusesnap.bridge import TrioBridge
from fusesnap.content.store import ContentStore
from fusesnap.errors import NotFound
from fusesnap.pb import apply_pb2, apply_pb2_grpc
from fusesnap.snapshots.apply import Applier
from fusesnap.snapshots.snapshotter import Snapshotter


class ApplierServicer(apply_pb2_grpc.ApplierServicer):
    def __init__(self, bridge: TrioBridge, snapshotter: Snapshotter,
                 content: ContentStore) -> None:
        self.applier = Applier(snapshotter, bridge.call)
        self.content = content

    @rpc
    def Apply(self, request: apply_pb2.ApplyRequest,
              context: grpc.ServicerContext) -> apply_pb2.ApplyResponse:
        blob: IO[bytes]
        if request.layer and not request.digest:
            blob = io.BytesIO(request.layer)
        else:
            path = self.content.blob_path(digests.parse(request.digest))
            try:
                blob = open(path, "rb")  # noqa: SIM115 (closed below, whatever happens)
            except FileNotFoundError:
                raise NotFound(f"content {request.digest}") from None
        with blob:
            applied = self.applier.apply(request.key, blob, request.diff_id,
                                         create_only=request.create_only)
        return apply_pb2.ApplyResponse(diff_id=applied.diff_id, size=applied.size,
                                       skipped=applied.skipped)
