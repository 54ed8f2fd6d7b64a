"""Requests whose bytes do not parse: InvalidArgument, and at most one
rate-limited log line each.

grpcio logs a full traceback for every request its deserializer cannot parse
and aborts the call with INTERNAL. In a client-streaming call the servicer
then sees its requests end, returns, and grpcio sends a second status, a batch
gRPC does not complete while the client keeps its side of the stream open: the
call never ends, and neither does `server.stop()`. A deserializer returning
None is aborted the same way, only without the traceback. So here the
deserializer never fails: it returns a `Malformed` in place of the message,
and the method's behaviour, wrapped by `checked`, ends the call with one
InvalidArgument status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fusesnap.errors import InvalidArgument

log = logging.getLogger(__name__)

LINES = 10
WINDOW = 60.0


class RateLimitedLog:
    """Logs at most `lines` warnings per `window` seconds; the first warning
    after a window with suppressed ones is preceded by one line counting them.
    Safe to call from any thread."""

    def __init__(self, lines: int = LINES, window: float = WINDOW) -> None:
        self.lines = lines
        self.window = window
        self._lock = threading.Lock()
        self._start = -window
        self._logged = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                if self._suppressed:
                    log.warning("suppressed %d more malformed requests after the first %d "
                                "in %g s", self._suppressed, self.lines, self.window)
                self._start, self._logged, self._suppressed = now, 0, 0
            if self._logged >= self.lines:
                self._suppressed += 1
                return
            self._logged += 1
        log.warning(message, *args)


MALFORMED_LOG = RateLimitedLog()


class Malformed:
    """Stands in for a request message that did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """A request deserializer for `method` that returns `parse(data)`, or a
    Malformed (logged through MALFORMED_LOG) if `parse` raises."""
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            MALFORMED_LOG.warning("malformed request to %s (%d bytes): %s",
                                  method, len(data), reason)
            return Malformed(reason)
    return deserialize


def _malformed(method: str, request: Malformed) -> InvalidArgument:
    return InvalidArgument(f"malformed request to {method}: {request.reason}")


NON_BLOCKING = ("experimental_non_blocking", "experimental_thread_pool")
"""grpcio's attributes of a behaviour that sends its responses through a
callback, given as a third argument, instead of returning them."""


def checked(behavior: Callable[..., Any], method: str,
            client_streaming: bool) -> Callable[..., Any]:
    """Wrap `behavior` (a servicer method taking a request, or an iterator of
    requests, and a context) so that a Malformed request ends the call with
    InvalidArgument. In a stream, the requests before it are served first; the
    servicer's own error mapping (api/errors.py) turns it into the status."""
    if client_streaming:
        def requests(iterator: Iterator[Any]) -> Iterator[Any]:
            for request in iterator:
                if type(request) is Malformed:
                    raise _malformed(method, request)
                yield request

        def stream(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(requests(request_iterator), context)
        return stream

    def unary(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
        if type(request) is Malformed:
            # grpcio sends the status set by abort() without logging.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(_malformed(method, request)))
        return behavior(request, context, *callback)
    # A server-streaming behaviour that sends its responses through a callback
    # instead of returning them (grpcio-health-checking's Watch) stays so.
    for name in NON_BLOCKING:
        if hasattr(behavior, name):
            setattr(unary, name, getattr(behavior, name))
    return unary
