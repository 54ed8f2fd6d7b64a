"""containerd.services.content.v1.Content over the content store (spec §3).

Metadata calls cross into the store's thread through the bridge; bytes — a
Write stream's data and hashing, a Read's chunks — stay in the gRPC thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
from google.protobuf.empty_pb2 import Empty

from fusesnap import digests
from fusesnap.api.convert import batches, timestamp
from fusesnap.api.errors import rpc
from fusesnap.api.headers import Headers
from fusesnap.bridge import TrioBridge
from fusesnap.content import reader
from fusesnap.content.ingest import IngestStatus, Writer, ingest_status
from fusesnap.content.store import BlobRecord, ContentStore
from fusesnap.errors import InvalidArgument, NotFound
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import content_pb2_grpc
from fusesnap.quoting import quote


def _info(rec: BlobRecord) -> cpb.Info:
    return cpb.Info(digest=rec.digest, size=rec.size, created_at=timestamp(rec.created_ns),
                    updated_at=timestamp(rec.updated_ns), labels=rec.labels)


def _status(p: IngestStatus) -> cpb.Status:
    return cpb.Status(ref=p.ref, offset=p.offset, total=p.total, expected=p.expected,
                      started_at=timestamp(p.started_ns), updated_at=timestamp(p.updated_ns))


def _requests(iterator: Iterable[cpb.WriteContentRequest]) -> Iterator[cpb.WriteContentRequest]:
    """The stream's requests; ends quietly when the client cancels (no status
    can reach it any more, and the caller's cleanup still runs)."""
    try:
        yield from iterator
    except grpc.RpcError:
        return


def _step(writer: Writer, request: cpb.WriteContentRequest) -> cpb.WriteContentResponse:
    """Apply one Write message and describe the ingest after it (spec §3.4)."""
    writer.check()
    action = request.action
    if action not in (cpb.STAT, cpb.WRITE, cpb.COMMIT):
        raise InvalidArgument(f"{action} is not a valid action")
    if request.expected:
        writer.expect(request.expected, recheck=action == cpb.COMMIT)
    if request.total > 0:
        writer.total = request.total
    if action != cpb.STAT:
        writer.write(request.offset, request.data)
    if action == cpb.COMMIT:
        writer.commit(request.labels)
    return cpb.WriteContentResponse(
        action=action, started_at=timestamp(writer.started_ns),
        updated_at=timestamp(writer.updated_ns), offset=writer.offset, total=writer.total,
        digest=writer.digest)


class ContentServicer(content_pb2_grpc.ContentServicer):
    """No namespace is required and content is not partitioned by one (spec §1.3).
    In the direct role, a lease header makes ingests and blobs join that lease."""

    def __init__(self, bridge: TrioBridge, store: ContentStore, headers: Headers) -> None:
        self.call = bridge.call
        self.store = store
        self.headers = headers

    @rpc
    def Info(self, request: cpb.InfoRequest, context: grpc.ServicerContext) -> cpb.InfoResponse:
        return cpb.InfoResponse(info=_info(self.call(self.store.info, request.digest)))

    @rpc
    def Update(self, request: cpb.UpdateRequest,
               context: grpc.ServicerContext) -> cpb.UpdateResponse:
        rec = self.call(self.store.update, request.info.digest, dict(request.info.labels),
                        list(request.update_mask.paths))
        return cpb.UpdateResponse(info=_info(rec))

    @rpc
    def List(self, request: cpb.ListContentRequest,
             context: grpc.ServicerContext) -> Iterator[cpb.ListContentResponse]:
        # Taken in one call and streamed from here: an open List holds nothing
        # (the daemon's GC deletes blobs from inside its List loop, spec §9.4).
        records = self.call(self.store.list, list(request.filters))
        for batch in batches(_info(rec) for rec in records):
            yield cpb.ListContentResponse(info=batch)

    @rpc
    def Delete(self, request: cpb.DeleteContentRequest, context: grpc.ServicerContext) -> Empty:
        self.call(self.store.delete, request.digest, self.headers.holder(context))
        return Empty()

    @rpc
    def Read(self, request: cpb.ReadContentRequest,
             context: grpc.ServicerContext) -> Iterator[bytes]:
        # No crossing into the trio thread: the blob's file is its existence
        # and its size (reader.messages). Every ReadAt of a Go client is one
        # Read. The responses are encoded already (content/wire.py; the server
        # registers Read so).
        path = self.store.blob_path(digests.parse(request.digest))
        yield from reader.messages(path, request.offset, request.size)

    @rpc
    def Status(self, request: cpb.StatusRequest,
               context: grpc.ServicerContext) -> cpb.StatusResponse:
        found = ingest_status(self.call(self.store.ingest, request.ref))
        if found is None:
            raise NotFound(f"could not get status for ref {quote(request.ref)}")
        return cpb.StatusResponse(status=_status(found))

    @rpc
    def ListStatuses(self, request: cpb.ListStatusesRequest,
                     context: grpc.ServicerContext) -> cpb.ListStatusesResponse:
        records = self.call(self.store.ingest_list, list(request.filters))
        found = [p for p in map(ingest_status, records) if p is not None]
        return cpb.ListStatusesResponse(statuses=[_status(p) for p in found])

    @rpc
    def Write(self, request_iterator: Iterator[cpb.WriteContentRequest],
              context: grpc.ServicerContext) -> Iterator[cpb.WriteContentResponse]:
        # Lock-step: one response per request, in order. The ref is locked
        # until this generator ends, however it ends (EOF, error, cancel).
        requests = _requests(request_iterator)
        request = next(requests, None)
        if request is None:
            return
        writer = Writer.open(self.store, self.call, request.ref, request.total,
                             request.expected, self.headers.holder(context))
        try:
            while request is not None:
                yield _step(writer, request)
                if request.action == cpb.COMMIT:
                    return  # OK at once: the client may not read or send again
                request = next(requests, None)
        finally:
            writer.close()

    @rpc
    def Abort(self, request: cpb.AbortRequest, context: grpc.ServicerContext) -> Empty:
        self.call(self.store.abort, request.ref, self.headers.holder(context))
        return Empty()
