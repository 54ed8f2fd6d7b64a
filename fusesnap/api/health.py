"""grpc.health.v1.Health: Check and Watch, overall ("") and per service.

Ours rather than grpcio-health-checking's HealthServicer, whose Watch sends
its first response while holding the servicer's lock (grpc_health/v1/health.py,
`Watch`: `with self._lock: ... send_response_callback(...)`). A send waits for
grpcio's polling thread to complete it, and that thread runs the close
callback of a watch that ends, which takes the same lock: one watch opening
while another closes froze every call of the daemon
(tests/test_status.py, test_watches_opened_while_others_close_never_freeze_the_server).

Here no lock is held while a response is sent. A watch is a `_Watch` with a
lock of its own that only senders take, and a sender always sends the
service's current status, so two senders racing cannot leave an older status
last. Watch is a grpcio non-blocking handler: an open watch holds no worker
thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _Watch:
    def __init__(self, health: Health, service: str, send: Callable[[Any], None]) -> None:
        self._health = health
        self._service = service
        self._send = send
        self._lock = threading.Lock()
        self._sent: int | None = None

    def push(self) -> None:
        """Send the service's current status, unless it was the last one sent."""
        with self._lock:
            status = self._health.status(self._service)
            if status != self._sent:
                self._sent = status
                self._send(health_pb2.HealthCheckResponse(status=status))


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()  # never held while sending
        self._statuses: dict[str, int] = {"": SERVING}
        self._watches: dict[str, set[_Watch]] = {}
        self._final = False

    def status(self, service: str) -> int:
        with self._lock:
            return self._statuses.get(service, SERVICE_UNKNOWN)

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: Callable[[Any], None] | None = None) -> None:
        assert send_response_callback is not None, "grpcio calls Watch non-blocking"
        service = request.service
        watch = _Watch(self, service, send_response_callback)
        with self._lock:
            self._watches.setdefault(service, set()).add(watch)
        context.add_callback(lambda: self._forget(service, watch))
        watch.push()

    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    def _forget(self, service: str, watch: _Watch) -> None:
        # Runs on grpcio's polling thread when the watch's call ends.
        with self._lock:
            watches = self._watches.get(service)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[service]

    def set(self, service: str, status: int) -> None:
        """Set `service`'s status and tell its watchers; ignored once
        `enter_graceful_shutdown` has been called."""
        with self._lock:
            if self._final:
                return
            self._statuses[service] = status
            watches = list(self._watches.get(service, ()))
        for watch in watches:
            watch.push()

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on, whatever `set` is called with."""
        with self._lock:
            if self._final:
                return
            self._final = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            watches = [w for ws in self._watches.values() for w in ws]
        for watch in watches:
            watch.push()
