"""fusesnap's own Debug service: the FUSE request counts (`fusesnap debug`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from fusesnap.api.errors import rpc
from fusesnap.bridge import TrioBridge
from fusesnap.pb import debug_pb2, debug_pb2_grpc


class OpcodeFigures(Protocol):
    @property
    def opcode(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def total_ns(self) -> int: ...
    @property
    def median_ns(self) -> int: ...
    @property
    def p90_ns(self) -> int: ...


Report = Callable[[bool], tuple[int, Sequence[OpcodeFigures]]]
"""The FUSE counters' report (layerfs/stats.py): elapsed ns and each opcode's
figures; True resets them."""


class DebugServicer(debug_pb2_grpc.DebugServicer):
    def __init__(self, bridge: TrioBridge, report: Report) -> None:
        self.bridge = bridge
        self.report = report

    @rpc
    def FuseStats(self, request: debug_pb2.FuseStatsRequest,
                  context: grpc.ServicerContext) -> debug_pb2.FuseStatsResponse:
        elapsed, ops = self.bridge.call(self.report, request.reset)
        return debug_pb2.FuseStatsResponse(elapsed_ns=elapsed, opcodes=[
            debug_pb2.OpcodeStats(opcode=o.opcode, count=o.count, total_ns=o.total_ns,
                                  median_ns=o.median_ns, p90_ns=o.p90_ns) for o in ops])
