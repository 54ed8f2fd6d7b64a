"""Counts of the FUSE requests the daemon serves, by opcode, with the time
each took: the instrument of the data path (`fusesnap debug fuse-stats`,
bench/fs.py).

Cheap enough to stay on: per request, two monotonic clock reads, a dict
lookup and three integer updates. Times go into a histogram with four
buckets per power of two, so a median or percentile is known within 19 %
without keeping samples. The time is the handler's own, from the call to
its return: pyfuse3's dispatch (reading /dev/fuse, decoding, replying) is not
in it. Requests the kernel or pyfuse3 answer without a handler of ours
(INIT, ACCESS, INTERRUPT, anything ENOSYS'd once) are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

BUCKETS = 4 * 64


def _bucket(ns: int) -> int:
    b = ns.bit_length()
    if b < 3:
        return ns
    return (b << 2) | ((ns >> (b - 3)) & 3)


def _value(index: int) -> int:
    """A bucket's middle, in ns."""
    if index < 12:
        return index
    b, sub = index >> 2, index & 3
    low = (4 | sub) << (b - 3)
    return low + (1 << (b - 3)) // 2


class _Opcode:
    __slots__ = ("count", "total", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.buckets = [0] * BUCKETS

    def quantile(self, q: float) -> int:
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if n and seen >= rank:
                return _value(i)
        return 0


@dataclass(frozen=True)
class OpcodeReport:
    opcode: str
    count: int
    total_ns: int
    median_ns: int
    p90_ns: int


class FuseStats:
    """Per-opcode counters, on the trio thread (the one that serves FUSE)."""

    def __init__(self) -> None:
        self._ops: dict[str, _Opcode] = {}
        self._since = time.monotonic_ns()
        self._before_reset: dict[str, int] = {}
        """Requests counted before the last reset, by opcode."""

    def record(self, opcode: str, ns: int) -> None:
        op = self._ops.get(opcode)
        if op is None:
            op = self._ops[opcode] = _Opcode()
        op.count += 1
        op.total += ns
        op.buckets[_bucket(ns)] += 1

    def report(self, reset: bool = False) -> tuple[int, list[OpcodeReport]]:
        """Nanoseconds since counting started, and each opcode's figures by
        opcode name; with `reset`, counting starts afresh."""
        now = time.monotonic_ns()
        out = [OpcodeReport(name, op.count, op.total, op.quantile(0.5), op.quantile(0.9))
               for name, op in sorted(self._ops.items())]
        elapsed = now - self._since
        if reset:
            self._before_reset = self.requests()
            self._ops = {}
            self._since = now
        return elapsed, out

    def requests(self) -> dict[str, int]:
        """Requests served since the daemon started, by opcode (a reset does
        not reset these)."""
        out = dict(self._before_reset)
        for name, op in self._ops.items():
            out[name] = out.get(name, 0) + op.count
        return out

    def timed(self, opcode: str,
              handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`handler`, counted as `opcode` (errors too)."""
        clock = time.monotonic_ns
        record = self.record

        async def counted(*args: Any) -> Any:
            start = clock()
            try:
                return await handler(*args)
            finally:
                record(opcode, clock() - start)

        return counted
