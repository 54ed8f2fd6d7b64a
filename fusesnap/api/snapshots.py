"""containerd.services.snapshots.v1.Snapshots over the snapshotter core."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.empty_pb2 import Empty

from fusesnap.api.convert import batches, timestamp
from fusesnap.api.errors import rpc
from fusesnap.api.headers import Headers
from fusesnap.bridge import TrioBridge
from fusesnap.errors import InvalidArgument
from fusesnap.pb import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from fusesnap.remote import RemoteLayers
from fusesnap.snapshots.snapshotter import Mount, Snapshotter
from fusesnap.store.metastore import SnapshotRecord


def _mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def _info(rec: SnapshotRecord) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=rec.key, parent=rec.parent, kind=snapshots_pb2.Kind.Value(rec.kind.name),
        created_at=timestamp(rec.created_ns), updated_at=timestamp(rec.updated_ns),
        labels=rec.labels,
    )


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    """The `snapshotter` field is accepted whatever its value (spec §2.3). In
    the direct role, a lease header makes created snapshots join that lease."""

    def __init__(self, bridge: TrioBridge, snapshotter: Snapshotter, headers: Headers,
                 remote: RemoteLayers) -> None:
        self.call = bridge.call
        self.core = snapshotter
        self.headers = headers
        self.remote = remote

    @rpc
    def Prepare(self, request: snapshots_pb2.PrepareSnapshotRequest,
                context: grpc.ServicerContext) -> snapshots_pb2.PrepareSnapshotResponse:
        labels = dict(request.labels)
        holder = self.headers.holder(context, request.snapshotter)
        # A remote-snapshot Prepare of a lazy layer raises AlreadyExists (spec §2.5).
        self.remote.prepare(self.call, request.key, request.parent, labels, holder)
        mounts = self.call(self.core.prepare, request.key, request.parent, labels, holder)
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

    @rpc
    def View(self, request: snapshots_pb2.ViewSnapshotRequest,
             context: grpc.ServicerContext) -> snapshots_pb2.ViewSnapshotResponse:
        mounts = self.call(self.core.view, request.key, request.parent, dict(request.labels),
                           self.headers.holder(context, request.snapshotter))
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

    @rpc
    def Mounts(self, request: snapshots_pb2.MountsRequest,
               context: grpc.ServicerContext) -> snapshots_pb2.MountsResponse:
        mounts = self.call(self.core.mounts, request.key)
        return snapshots_pb2.MountsResponse(mounts=_mounts(mounts))

    @rpc
    def Commit(self, request: snapshots_pb2.CommitSnapshotRequest,
               context: grpc.ServicerContext) -> Empty:
        self.call(self.core.commit, request.name, request.key, dict(request.labels),
                  request.parent, self.headers.holder(context, request.snapshotter))
        return Empty()

    @rpc
    def Remove(self, request: snapshots_pb2.RemoveSnapshotRequest,
               context: grpc.ServicerContext) -> Empty:
        self.call(self.core.remove, request.key,
                  self.headers.holder(context, request.snapshotter))
        return Empty()

    @rpc
    def Stat(self, request: snapshots_pb2.StatSnapshotRequest,
             context: grpc.ServicerContext) -> snapshots_pb2.StatSnapshotResponse:
        rec = self.call(self.core.stat, request.key)
        return snapshots_pb2.StatSnapshotResponse(info=_info(rec))

    @rpc
    def Update(self, request: snapshots_pb2.UpdateSnapshotRequest,
               context: grpc.ServicerContext) -> snapshots_pb2.UpdateSnapshotResponse:
        if not request.info.name:
            raise InvalidArgument("snapshot name must not be empty")
        rec = self.call(self.core.update, request.info.name, dict(request.info.labels),
                        list(request.update_mask.paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(rec))

    @rpc
    def List(self, request: snapshots_pb2.ListSnapshotsRequest,
             context: grpc.ServicerContext) -> Iterator[snapshots_pb2.ListSnapshotsResponse]:
        # Taken in one call, streamed outside the trio thread: a slow reader
        # holds nothing other RPCs need.
        records = self.call(self.core.list, list(request.filters))
        for batch in batches(_info(rec) for rec in records):
            yield snapshots_pb2.ListSnapshotsResponse(info=batch)

    @rpc
    def Usage(self, request: snapshots_pb2.UsageRequest,
              context: grpc.ServicerContext) -> snapshots_pb2.UsageResponse:
        size, inodes = self.call(self.core.usage, request.key)
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    @rpc
    def Cleanup(self, request: snapshots_pb2.CleanupRequest,
                context: grpc.ServicerContext) -> Empty:
        self.call(self.core.cleanup)
        return Empty()
