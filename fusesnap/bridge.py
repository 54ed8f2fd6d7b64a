"""The one boundary between gRPC's worker threads and the trio thread.

Snapshot and filesystem state has exactly one owner, the trio thread; a
servicer running in a gRPC thread reaches it through `TrioBridge.call`, once
per RPC. Nothing else in fusesnap knows that threads exist.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from fusesnap.errors import Unavailable

T = TypeVar("T")


class TrioBridge:
    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the trio thread and return its result."""
        try:
            return trio.from_thread.run_sync(
                functools.partial(fn, *args, **kwargs), trio_token=self.token
            )
        except (trio.RunFinishedError, trio.Cancelled):
            raise Unavailable("fusesnap is shutting down") from None

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the async `fn(*args)` on the trio thread and return its result."""
        try:
            return trio.from_thread.run(fn, *args, trio_token=self.token)
        except (trio.RunFinishedError, trio.Cancelled):
            raise Unavailable("fusesnap is shutting down") from None
