"""fusesnap's own Info service: what the daemon is, where it keeps things and
how much it holds (`fusesnap status`). Served in both roles."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration

from fusesnap import __version__
from fusesnap.api.convert import timestamp
from fusesnap.api.errors import rpc
from fusesnap.bridge import TrioBridge
from fusesnap.config import Config
from fusesnap.pb import info_pb2, info_pb2_grpc
from fusesnap.store import census
from fusesnap.store.db import Database
from fusesnap.store.metastore import Kind, MetaStore

Requests = Callable[[], Mapping[str, int]]
"""The FUSE requests served since start, by opcode (layerfs/stats.py)."""


@dataclass(frozen=True)
class Started:
    """When the daemon started: the wall clock, and the monotonic clock its
    uptime is measured with."""

    wall_ns: int = field(default_factory=time.time_ns)
    monotonic_ns: int = field(default_factory=time.monotonic_ns)


class InfoServicer(info_pb2_grpc.InfoServicer):
    def __init__(self, bridge: TrioBridge, config: Config, db: Database,
                 fuse_requests: Requests, started: Started) -> None:
        self.bridge = bridge
        self.config = config
        self.db = db
        self.fuse_requests = fuse_requests
        self.started = started

    def _read(self) -> tuple[census.Census, dict[str, int]]:
        return census.count(self.db), dict(self.fuse_requests())

    @rpc
    def Path(self, request: info_pb2.PathRequest,
             context: grpc.ServicerContext) -> info_pb2.PathResponse:
        rec = self.bridge.call(MetaStore(self.db).get, request.key)
        return info_pb2.PathResponse(path=str(self.config.mountpoint / str(rec.id)),
                                     kind=rec.kind.label)

    @rpc
    def Status(self, request: info_pb2.StatusRequest,
               context: grpc.ServicerContext) -> info_pb2.StatusResponse:
        counts, requests = self.bridge.call(self._read)
        uptime = Duration()
        uptime.FromNanoseconds(time.monotonic_ns() - self.started.monotonic_ns)
        config = self.config
        return info_pb2.StatusResponse(
            version=__version__, role=config.role.value, root=str(config.root),
            mountpoint=str(config.mountpoint), socket=str(config.socket), pid=os.getpid(),
            started_at=timestamp(self.started.wall_ns), uptime=uptime,
            snapshots=info_pb2.SnapshotCounts(
                active=counts.snapshots.get(Kind.ACTIVE, 0),
                committed=counts.snapshots.get(Kind.COMMITTED, 0),
                view=counts.snapshots.get(Kind.VIEW, 0)),
            blobs=counts.blobs, blob_bytes=counts.blob_bytes, ingests=counts.ingests,
            leases=counts.leases, images=counts.images,
            fuse_requests=sum(requests.values()), fuse_requests_by_opcode=requests)
