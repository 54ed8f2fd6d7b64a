"""One DEBUG log line per gRPC call: the method, the namespace, the request's
names (key, parent, name, digest, ref, id: whichever the request has), the
status and the time the call took. Payloads (data, labels, mounts) are never
logged. Off unless the `fusesnap.grpc` logger is at DEBUG (``serve --log-level
DEBUG``): then each call costs a clock read and a line.

    DEBUG fusesnap.grpc: /containerd.services.snapshots.v1.Snapshots/Prepare
        namespace=default key=work parent=base -> OK 812us
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fusesnap.api.badrequests import NON_BLOCKING

log = logging.getLogger("fusesnap.grpc")

NAMES = ("key", "parent", "name", "digest", "ref", "id", "snapshotter")
"""The request fields a line shows (strings naming objects, never payloads)."""
NAMESPACE_HEADER = "containerd-namespace"


def _names(request: Any) -> str:
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    shown = []
    for name in NAMES:
        if name in fields:
            value = getattr(request, name)
            if isinstance(value, str) and value:
                shown.append(f"{name}={value}")
    return " ".join(shown)


def _namespace(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return f"namespace={value}"
    return ""


def _status(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(getattr(code, "name", code))


def _line(method: str, context: grpc.ServicerContext, request: Any, started: float,
          failed: bool) -> None:
    what = " ".join(p for p in (_namespace(context), _names(request) if request is not None
                                else "stream") if p)
    log.debug("%s %s -> %s %dus", method, what, _status(context, failed),
              (time.monotonic() - started) * 1e6)


def logged(behavior: Callable[..., Any], method: str, client_streaming: bool,
           server_streaming: bool) -> Callable[..., Any]:
    """`behavior` (a method handler's function) with a DEBUG line per call.
    A behaviour that answers through a callback instead of returning
    (grpcio-health-checking's Watch: grpcio's non-blocking handlers) is left
    as it is, unlogged."""
    if any(hasattr(behavior, name) for name in NON_BLOCKING):
        return behavior
    if server_streaming:
        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not log.isEnabledFor(logging.DEBUG):
                yield from behavior(request, context)
                return
            started, failed = time.monotonic(), True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                _line(method, context, None if client_streaming else request, started, failed)
        return streaming

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        if not log.isEnabledFor(logging.DEBUG):
            return behavior(request, context)
        started, failed = time.monotonic(), True
        try:
            result = behavior(request, context)
            failed = False
            return result
        finally:
            _line(method, context, None if client_streaming else request, started, failed)
    return unary
