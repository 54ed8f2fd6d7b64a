"""fusesnap.services.diff.v1.Differ over :mod:`fusesnap.snapshots.diff`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from fusesnap.api.errors import rpc
from fusesnap.bridge import TrioBridge
from fusesnap.errors import Unavailable
from fusesnap.pb import diff_pb2, diff_pb2_grpc
from fusesnap.remote import RemoteLayers
from fusesnap.snapshots.diff import layer_diff
from fusesnap.snapshots.snapshotter import Snapshotter


class DiffServicer(diff_pb2_grpc.DifferServicer):
    def __init__(self, bridge: TrioBridge, snapshotter: Snapshotter,
                 remote: RemoteLayers) -> None:
        self.bridge = bridge
        self.call = bridge.call
        self.core = snapshotter
        self.remote = remote

    @rpc
    def Diff(self, request: diff_pb2.DiffRequest,
             context: grpc.ServicerContext) -> Iterator[diff_pb2.DiffResponse]:
        # The metadata in one call on the trio thread; the bytes read here.
        diff = self.call(layer_diff, self.core, request.key)
        # A file whose bytes are still in a lazy layer's registry (shown
        # through a hard link or a metadata change) is fetched first: the
        # tar never holds the zeros of a sparse backing file.
        try:
            if diff.files and self.remote.pending:
                self.bridge.run(self.remote.ensure_all, diff.files)
        except OSError as e:
            raise Unavailable(f"diff of {request.key}: a file's bytes are in a lazy layer "
                              f"that its registry cannot serve now ({e.strerror}); the "
                              "daemon's log names it") from None
        for chunk in diff.chunks():
            yield diff_pb2.DiffResponse(data=chunk)
