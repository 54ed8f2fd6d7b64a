"""fusesnap.services.diff.v1.Differ over :mod:`fusesnap.snapshots.diff`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from fusesnap.api.errors import rpc
from fusesnap.bridge import TrioBridge
from fusesnap.pb import diff_pb2, diff_pb2_grpc
from fusesnap.snapshots.diff import layer_diff
from fusesnap.snapshots.snapshotter import Snapshotter


class DiffServicer(diff_pb2_grpc.DifferServicer):
    def __init__(self, bridge: TrioBridge, snapshotter: Snapshotter) -> None:
        self.call = bridge.call
        self.core = snapshotter

    @rpc
    def Diff(self, request: diff_pb2.DiffRequest,
             context: grpc.ServicerContext) -> Iterator[diff_pb2.DiffResponse]:
        # The metadata in one call on the trio thread; the bytes read here.
        diff = self.call(layer_diff, self.core, request.key)
        for chunk in diff.chunks():
            yield diff_pb2.DiffResponse(data=chunk)
