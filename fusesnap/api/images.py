"""containerd.services.images.v1.Images over the image store (spec §5).

Every RPC requires the namespace header (spec §1.3); Create and Update honour
the lease header, and Delete triggers the garbage collector.
"""

from __future__ import annotations

import grpc
from google.protobuf.empty_pb2 import Empty

from fusesnap.api.convert import timestamp
from fusesnap.api.errors import rpc
from fusesnap.api.headers import Headers, namespace
from fusesnap.api.leases import collect
from fusesnap.bridge import TrioBridge
from fusesnap.gc import Collector
from fusesnap.images.store import Descriptor, Image, ImageStore
from fusesnap.pb import descriptor_pb2, images_pb2_grpc
from fusesnap.pb import images_pb2 as ipb


def _to_pb(image: Image) -> ipb.Image:
    target = image.target
    return ipb.Image(
        name=image.name, labels=image.labels,
        target=descriptor_pb2.Descriptor(media_type=target.media_type, digest=target.digest,
                                         size=target.size, annotations=target.annotations),
        created_at=timestamp(image.created_ns), updated_at=timestamp(image.updated_ns))


def _from_pb(image: ipb.Image) -> Image:
    """The request's image; its timestamps are ignored (spec §6.3)."""
    target = image.target
    return Image(image.name, Descriptor(target.media_type, target.digest, target.size,
                                        dict(target.annotations)), dict(image.labels))


def _epoch(request: ipb.CreateImageRequest | ipb.UpdateImageRequest) -> int | None:
    if request.HasField("source_date_epoch"):
        return request.source_date_epoch.ToNanoseconds()
    return None


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    """Images live in the namespace of the request's header (direct role only)."""

    def __init__(self, bridge: TrioBridge, images: ImageStore, headers: Headers,
                 collector: Collector) -> None:
        self.bridge = bridge
        self.call = bridge.call
        self.images = images
        self.headers = headers
        self.collector = collector

    @rpc
    def Get(self, request: ipb.GetImageRequest,
            context: grpc.ServicerContext) -> ipb.GetImageResponse:
        image = self.call(self.images.get, namespace(context), request.name)
        return ipb.GetImageResponse(image=_to_pb(image))

    @rpc
    def List(self, request: ipb.ListImagesRequest,
             context: grpc.ServicerContext) -> ipb.ListImagesResponse:
        found = self.call(self.images.list, namespace(context), list(request.filters))
        return ipb.ListImagesResponse(images=[_to_pb(image) for image in found])

    @rpc
    def Create(self, request: ipb.CreateImageRequest,
               context: grpc.ServicerContext) -> ipb.CreateImageResponse:
        ns = namespace(context)
        image = self.call(self.images.create, ns, _from_pb(request.image),
                          self.headers.holder(context), _epoch(request))
        return ipb.CreateImageResponse(image=_to_pb(image))

    @rpc
    def Update(self, request: ipb.UpdateImageRequest,
               context: grpc.ServicerContext) -> ipb.UpdateImageResponse:
        ns = namespace(context)
        image = self.call(self.images.update, ns, _from_pb(request.image),
                          list(request.update_mask.paths), self.headers.holder(context),
                          _epoch(request))
        return ipb.UpdateImageResponse(image=_to_pb(image))

    @rpc
    def Delete(self, request: ipb.DeleteImageRequest, context: grpc.ServicerContext) -> Empty:
        digest = request.target.digest if request.HasField("target") else ""
        self.call(self.images.delete, namespace(context), request.name, digest)
        # As containerd: a sync delete answers after a collection, any other
        # only schedules one.
        if request.sync:
            collect(self.bridge, self.collector)
        else:
            self.call(self.collector.request)
        return Empty()
