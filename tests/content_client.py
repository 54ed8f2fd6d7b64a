"""A test client for containerd.services.content.v1.Content: a Write stream driven
message by message, and a few one-call helpers. No mocks: everything goes over
the daemon's real socket."""

from __future__ import annotations

import hashlib
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub

STAT, WRITE, COMMIT = cpb.STAT, cpb.WRITE, cpb.COMMIT
MiB = 1 << 20
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def code(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.StatusCode:
    """The status code of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code()


class WriteStream:
    """One Write stream; `send` puts one request and returns its one response."""

    def __init__(self, stub: ContentStub, timeout: float = 60,
                 metadata: Sequence[tuple[str, str]] | None = None) -> None:
        self._queue: queue.Queue[cpb.WriteContentRequest | None] = queue.Queue()
        self.call = stub.Write(iter(self._queue.get, None), timeout=timeout,
                               metadata=metadata)
        self._responses: Iterator[cpb.WriteContentResponse] = self.call

    def put(self, **fields: Any) -> None:
        self._queue.put(cpb.WriteContentRequest(**fields))

    def recv(self) -> cpb.WriteContentResponse:
        return next(self._responses)

    def send(self, **fields: Any) -> cpb.WriteContentResponse:
        self.put(**fields)
        return self.recv()

    def fails(self, **fields: Any) -> grpc.StatusCode:
        """Send one request that must end the stream with an error; its code."""
        with pytest.raises(grpc.RpcError) as err:
            self.send(**fields)
        self.release()
        return err.value.code()

    def ended_ok(self) -> bool:
        """True if the daemon ends the stream with OK without sending more."""
        with pytest.raises(StopIteration):
            self.recv()
        self.release()
        return self.call.code() == grpc.StatusCode.OK

    def finish(self) -> grpc.StatusCode:
        """Half-close, read to the end, return the final status code."""
        self._queue.put(None)
        for _ in self._responses:
            pass
        return self.call.code()

    def cancel(self) -> None:
        self.call.cancel()
        self.release()

    def release(self) -> None:
        """Unblock grpc's request-sending thread once the stream is over."""
        self._queue.put(None)


def reopen(stub: ContentStub, timeout: float = 10,
           **first: Any) -> tuple[WriteStream, cpb.WriteContentResponse]:
    """Open a stream and send its first message, retrying while the ref is still
    locked by a stream this client just cancelled (the daemon learns of a
    cancellation asynchronously; Go's content.OpenWriter retries the same way)."""
    deadline = time.monotonic() + timeout
    while True:
        s = WriteStream(stub)
        try:
            return s, s.send(**first)
        except grpc.RpcError as err:
            s.release()
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def ingest(stub: ContentStub, ref: str, data: bytes, labels: dict[str, str] | None = None,
           chunk: int = MiB) -> str:
    """Write `data` as one blob through ref (STAT, WRITEs, COMMIT); its digest."""
    s = WriteStream(stub)
    s.send(action=STAT, ref=ref, total=len(data))
    for pos in range(0, len(data), chunk):
        s.send(action=WRITE, offset=pos, data=data[pos:pos + chunk])
    resp = s.send(action=COMMIT, offset=len(data), total=len(data), expected=sha(data),
                  labels=labels or {})
    assert s.ended_ok()
    return resp.digest


def read(stub: ContentStub, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join(r.data for r in stub.Read(
        cpb.ReadContentRequest(digest=digest, offset=offset, size=size)))


def info(stub: ContentStub, digest: str) -> cpb.Info:
    resp = stub.Info(cpb.InfoRequest(digest=digest))
    assert resp.HasField("info")
    return resp.info


def status(stub: ContentStub, ref: str) -> cpb.Status:
    resp = stub.Status(cpb.StatusRequest(ref=ref))
    assert resp.HasField("status")
    return resp.status


def statuses(stub: ContentStub, *filters: str) -> list[cpb.Status]:
    return list(stub.ListStatuses(cpb.ListStatusesRequest(filters=filters)).statuses)


def listed(stub: ContentStub, *filters: str) -> list[cpb.Info]:
    return [i for b in stub.List(cpb.ListContentRequest(filters=filters)) for i in b.info]
