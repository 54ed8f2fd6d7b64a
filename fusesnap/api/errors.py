"""The one mapping of domain errors to gRPC status codes (spec §1.5)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from fusesnap import errors
from fusesnap.store.space import NO_SPACE

log = logging.getLogger(__name__)

CODES: dict[type[errors.FusesnapError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, errors.FusesnapError):
        context.abort(CODES.get(type(exc), grpc.StatusCode.UNKNOWN), str(exc))
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"no space left on device: {exc}")
    log.exception("unexpected error in RPC")
    context.abort(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (unary or streaming) so domain errors become statuses."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                _abort(context, exc)
        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc)
    return unary
