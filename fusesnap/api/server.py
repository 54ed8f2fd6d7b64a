"""The gRPC server on the unix socket, with containerd's message limits."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Collection
from concurrent import futures
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.reflection import SERVICE_NAME as REFLECTION
from grpc_reflection.v1alpha.reflection import ReflectionServicer

from fusesnap.api.apply import ApplierServicer
from fusesnap.api.badrequests import checked, tolerant
from fusesnap.api.calllog import logged
from fusesnap.api.content import ContentServicer
from fusesnap.api.debug import DebugServicer, Report
from fusesnap.api.diff import DiffServicer
from fusesnap.api.errors import rpc
from fusesnap.api.headers import Headers
from fusesnap.api.health import Health
from fusesnap.api.images import ImagesServicer
from fusesnap.api.info import InfoServicer, Requests, Started
from fusesnap.api.leases import GCServicer, LeasesServicer
from fusesnap.api.namespaces import NamespacesServicer
from fusesnap.api.snapshots import SnapshotsServicer
from fusesnap.bridge import TrioBridge
from fusesnap.config import Config, Role
from fusesnap.content.store import ContentStore
from fusesnap.errors import FailedPrecondition
from fusesnap.gc import Collector
from fusesnap.images.store import ImageStore
from fusesnap.pb import (
    apply_pb2,
    debug_pb2,
    diff_pb2,
    gc_pb2,
    images_pb2,
    info_pb2,
    leases_pb2,
    namespaces_pb2,
    snapshots_pb2,
)
from fusesnap.pb import content_pb2 as cpb
from fusesnap.remote import RemoteLayers
from fusesnap.snapshots.snapshotter import Snapshotter

# containerd's clients send up to 16 MiB (spec §1.1); leave room for framing.
MAX_MESSAGE = 16 * 1024 * 1024 + 64 * 1024


def _encoded(message: bytes) -> bytes:
    return message


_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler,
          (False, True): grpc.unary_stream_rpc_method_handler,
          (True, False): grpc.stream_unary_rpc_method_handler,
          (True, True): grpc.stream_stream_rpc_method_handler}


def _register(server: grpc.Server, service: ServiceDescriptor,
              behavior: Callable[[MethodDescriptor], Callable[..., Any]],
              encoded: Collection[str] = ()) -> None:
    """Register `behavior(method)` for each method of `service`, as a generated
    add_*Servicer_to_server would, except that a request that does not parse
    ends its call with InvalidArgument and at most one rate-limited log line
    (api/badrequests.py), each call is logged at DEBUG (api/calllog.py), and
    the methods named in `encoded` return (or yield) their responses already
    encoded as bytes."""
    handlers = {}
    for method in service.methods:
        make = _KINDS[method.client_streaming, method.server_streaming]
        output = GetMessageClass(method.output_type)
        path = f"/{service.full_name}/{method.name}"
        handlers[method.name] = make(
            logged(checked(behavior(method), path, method.client_streaming),
                   path, method.client_streaming, method.server_streaming),
            request_deserializer=tolerant(GetMessageClass(method.input_type).FromString, path),
            response_serializer=_encoded if method.name in encoded else output.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _add_servicer(server: grpc.Server, module: ModuleType, name: str, servicer: object,
                  encoded: Collection[str] = ()) -> str:
    """Register `servicer`'s methods for the service `name` of the generated
    `module` (a *_pb2); returns the service's full name."""
    service: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    _register(server, service, lambda method: getattr(servicer, method.name), encoded)
    return str(service.full_name)


def _refuse(server: grpc.Server, module: ModuleType, name: str, why: str) -> str:
    """Register every method of the service `name` of `module` to end its call
    with FailedPrecondition saying `why` (rather than gRPC's Unimplemented
    "Method not found!"); returns the service's full name."""
    service: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    message = str(FailedPrecondition(
        f"{why}; the {name} API is served by a direct-role daemon (serve --role direct)"))

    def refusal(method: MethodDescriptor) -> Callable[..., Any]:
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        return refuse

    _register(server, service, refusal)
    return str(service.full_name)


class _Reflection(ReflectionServicer):
    """grpcio-reflection's servicer, its errors mapped as ours are (a malformed
    request in its stream ends the call with one InvalidArgument)."""

    ServerReflectionInfo = rpc(ReflectionServicer.ServerReflectionInfo)


class _Workers(futures.Executor):
    """Runs gRPC's calls on `count` daemon threads.

    Unlike ThreadPoolExecutor's threads, which the interpreter joins at exit,
    a call stuck for good (one gRPC's stop abandoned) cannot keep the process
    alive once the daemon has stopped."""

    def __init__(self, count: int) -> None:
        self._queue: queue.SimpleQueue[tuple[futures.Future[Any], Callable[..., Any],
                                             tuple[Any, ...], dict[str, Any]] | None]
        self._queue = queue.SimpleQueue()
        self._count = count
        for i in range(count):
            threading.Thread(target=self._work, name=f"grpc_{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the idle threads end; never waits (`wait` is ignored)."""
        for _ in range(self._count):
            self._queue.put(None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            _run(*job)
            job = None  # an idle thread keeps no finished call alive


def _run(future: futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...],
         kwargs: dict[str, Any]) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)


class Server:
    """The gRPC server and the health it reports (grpc.health.v1.Health)."""

    def __init__(self, server: grpc.Server, health: Health) -> None:
        self.server = server
        self.health = health

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float) -> threading.Event:
        """Health says NOT_SERVING from now on; calls in flight get `grace`
        seconds (grpc.Server.stop)."""
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace)


def make_server(bridge: TrioBridge, config: Config, snapshotter: Snapshotter,
                content: ContentStore, collector: Collector, fuse_stats: Report,
                fuse_requests: Requests, started: Started, remote: RemoteLayers,
                workers: int = 16) -> Server:
    """Snapshots, Content, Namespaces, Applier, Differ, Debug and Info in both
    roles; Leases, Images and GC in the direct role, while in the proxy role
    (containerd owns leases and images and collects: spec §9.2) their calls
    end with FailedPrecondition naming the role. Health (overall and per
    service: NOT_SERVING for the refused ones) and server reflection of every
    service registered, in both roles."""
    server = grpc.server(
        _Workers(workers),  # grpcio only calls its submit()
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    role = config.role
    headers = Headers(role)
    serving = [
        _add_servicer(server, snapshots_pb2, "Snapshots",
                      SnapshotsServicer(bridge, snapshotter, headers, remote)),
        _add_servicer(server, cpb, "Content",
                      ContentServicer(bridge, content, headers), encoded={"Read"}),
        _add_servicer(server, namespaces_pb2, "Namespaces", NamespacesServicer()),
        _add_servicer(server, apply_pb2, "Applier",
                      ApplierServicer(bridge, snapshotter, content)),
        _add_servicer(server, diff_pb2, "Differ", DiffServicer(bridge, snapshotter, remote)),
        _add_servicer(server, debug_pb2, "Debug", DebugServicer(bridge, fuse_stats)),
        _add_servicer(server, info_pb2, "Info",
                      InfoServicer(bridge, config, snapshotter.db, fuse_requests, started)),
    ]
    refused = []
    if role is Role.DIRECT:
        leases = snapshotter.leases
        serving += [
            _add_servicer(server, leases_pb2, "Leases",
                          LeasesServicer(bridge, leases, collector)),
            _add_servicer(server, images_pb2, "Images",
                          ImagesServicer(bridge, ImageStore(snapshotter.db, leases), headers,
                                         collector)),
            _add_servicer(server, gc_pb2, "GC", GCServicer(bridge, collector)),
        ]
    else:
        proxy = f"fusesnap serves role {role.value}"
        refused += [
            _refuse(server, leases_pb2, "Leases", f"{proxy}: containerd owns leases"),
            _refuse(server, images_pb2, "Images", f"{proxy}: containerd owns images"),
            _refuse(server, gc_pb2, "GC", f"{proxy}: containerd collects garbage"),
        ]
    health = Health()
    serving.append(_add_servicer(server, health_pb2, "Health", health))
    serving.append(REFLECTION)
    _add_servicer(server, reflection_pb2, "ServerReflection", _Reflection(serving + refused))
    for name in serving:
        health.set(name, health_pb2.HealthCheckResponse.SERVING)
    for name in refused:
        health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if server.add_insecure_port(f"unix:{config.socket}") == 0:
        raise OSError(f"cannot listen on {config.socket}")
    return Server(server, health)
