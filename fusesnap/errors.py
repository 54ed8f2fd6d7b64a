"""Domain errors raised by the core.

Each class corresponds to one containerd error class (spec §1.5). They are
translated exactly once: to gRPC status codes in `fusesnap.api.errors` and to
errno values in `fusesnap.layerfs`. Messages follow containerd's convention
"<context>: <class string>" when rendered with `str()`.
"""

from __future__ import annotations


class FusesnapError(Exception):
    """Base class; `kind` is containerd's class string."""

    kind = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message}: {self.kind}"


class InvalidArgument(FusesnapError):
    kind = "invalid argument"


class NotFound(FusesnapError):
    kind = "not found"


class AlreadyExists(FusesnapError):
    kind = "already exists"


class FailedPrecondition(FusesnapError):
    kind = "failed precondition"


class Unavailable(FusesnapError):
    kind = "unavailable"


class NotImplementedYet(FusesnapError):
    """containerd's ErrNotImplemented (gRPC Unimplemented)."""

    kind = "not implemented"


class OutOfRange(FusesnapError):
    kind = "out of range"


class DataLoss(FusesnapError):
    kind = "data loss"


class ResourceExhausted(FusesnapError):
    """The store's disk is full (gRPC ResourceExhausted, errno ENOSPC)."""

    kind = "resource exhausted"
