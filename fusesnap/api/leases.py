"""containerd.services.leases.v1.Leases over the lease store (spec §4), and
fusesnap's own GC service. Served in the direct role only."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.empty_pb2 import Empty

from fusesnap.api.convert import timestamp
from fusesnap.api.errors import rpc
from fusesnap.api.headers import namespace
from fusesnap.bridge import TrioBridge
from fusesnap.gc import Collector, Report
from fusesnap.leases.store import Lease, LeaseStore, Resource
from fusesnap.pb import gc_pb2, gc_pb2_grpc, leases_pb2, leases_pb2_grpc


def _lease(rec: Lease) -> leases_pb2.Lease:
    return leases_pb2.Lease(id=rec.id, created_at=timestamp(rec.created_ns), labels=rec.labels)


def _resource(r: leases_pb2.Resource) -> Resource:
    return Resource(r.type, r.id)


def collect(bridge: TrioBridge, collector: Collector, dry_run: bool = False) -> Report:
    """Collect now, on the trio thread; the layer data of removed snapshots is
    deleted here, in the caller's thread, before returning."""
    report = bridge.call(collector.collect, dry_run)
    report.finish()
    return report


class LeasesServicer(leases_pb2_grpc.LeasesServicer):
    """Every call needs the namespace header; leases live in their namespace."""

    def __init__(self, bridge: TrioBridge, leases: LeaseStore, collector: Collector) -> None:
        self.bridge = bridge
        self.call = bridge.call
        self.leases = leases
        self.collector = collector

    @rpc
    def Create(self, request: leases_pb2.CreateRequest,
               context: grpc.ServicerContext) -> leases_pb2.CreateResponse:
        rec = self.call(self.leases.create, namespace(context), request.id, dict(request.labels))
        return leases_pb2.CreateResponse(lease=_lease(rec))

    @rpc
    def Delete(self, request: leases_pb2.DeleteRequest, context: grpc.ServicerContext) -> Empty:
        self.call(self.leases.delete, namespace(context), request.id)
        if request.sync:
            collect(self.bridge, self.collector)
        else:
            self.call(self.collector.request)
        return Empty()

    @rpc
    def List(self, request: leases_pb2.ListRequest,
             context: grpc.ServicerContext) -> leases_pb2.ListResponse:
        found = self.call(self.leases.list, namespace(context), list(request.filters))
        return leases_pb2.ListResponse(leases=[_lease(rec) for rec in found])

    @rpc
    def AddResource(self, request: leases_pb2.AddResourceRequest,
                    context: grpc.ServicerContext) -> Empty:
        self.call(self.leases.add_resource, namespace(context), request.id,
                  _resource(request.resource))
        return Empty()

    @rpc
    def DeleteResource(self, request: leases_pb2.DeleteResourceRequest,
                       context: grpc.ServicerContext) -> Empty:
        self.call(self.leases.delete_resource, namespace(context), request.id,
                  _resource(request.resource))
        self.call(self.collector.request)
        return Empty()

    @rpc
    def ListResources(self, request: leases_pb2.ListResourcesRequest,
                      context: grpc.ServicerContext) -> leases_pb2.ListResourcesResponse:
        found = self.call(self.leases.resources, namespace(context), request.id)
        return leases_pb2.ListResourcesResponse(
            resources=[leases_pb2.Resource(id=r.id, type=r.type) for r in found])


class GCServicer(gc_pb2_grpc.GCServicer):
    """`fusesnap gc`: one collection now, across all namespaces."""

    def __init__(self, bridge: TrioBridge, collector: Collector) -> None:
        self.bridge = bridge
        self.collector = collector

    @rpc
    def Collect(self, request: gc_pb2.CollectRequest,
                context: grpc.ServicerContext) -> gc_pb2.CollectResponse:
        report = collect(self.bridge, self.collector, request.dry_run)
        duration = Duration()
        duration.FromNanoseconds(int(report.seconds * 1e9))
        return gc_pb2.CollectResponse(
            dry_run=report.dry_run, content=report.content, ingests=report.ingests,
            snapshots=report.snapshots, duration=duration,
            leases=[gc_pb2.ExpiredLease(namespace=ns, id=i) for ns, i in report.leases])
