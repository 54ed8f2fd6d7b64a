"""`fusesnap debug`: what the daemon can tell about its own work.

    fusesnap debug fuse-stats [--reset] [--json]

prints the FUSE requests the daemon served since it started (or since the
last ``--reset``), one row per opcode, busiest first:

    OPCODE       COUNT  TOTAL_MS  MEAN_US  MEDIAN_US  P90_US
    LOOKUP       12000     612.0     51.0       46.0    80.0
    ...
    ALL          40000    2010.4     50.3

Times are the daemon's own per request (pyfuse3's dispatch is not in them);
a median or percentile is within 19 % (a histogram, not samples).

JSON shape (``--json``): ``{"elapsed_s", "opcodes": [{"opcode", "count",
"total_ns", "median_ns", "p90_ns"}]}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from fusesnap.cli import common
from fusesnap.pb import debug_pb2
from fusesnap.pb.debug_pb2_grpc import DebugStub


def stats_json(resp: debug_pb2.FuseStatsResponse) -> dict[str, Any]:
    return {"elapsed_s": resp.elapsed_ns / 1e9,
            "opcodes": [{"opcode": o.opcode, "count": o.count, "total_ns": o.total_ns,
                         "median_ns": o.median_ns, "p90_ns": o.p90_ns}
                        for o in resp.opcodes]}


def stats_rows(resp: debug_pb2.FuseStatsResponse) -> list[list[str]]:
    ops = sorted(resp.opcodes, key=lambda o: (-o.total_ns, o.opcode))
    rows = [[o.opcode, str(o.count), f"{o.total_ns / 1e6:.1f}",
             f"{o.total_ns / o.count / 1e3:.1f}", f"{o.median_ns / 1e3:.1f}",
             f"{o.p90_ns / 1e3:.1f}"] for o in ops if o.count]
    count = sum(o.count for o in ops)
    total = sum(o.total_ns for o in ops)
    rows.append(["ALL", str(count), f"{total / 1e6:.1f}",
                 f"{total / count / 1e3:.1f}" if count else "-", "", ""])
    return rows


def _fuse_stats(args: argparse.Namespace, stub: DebugStub) -> None:
    resp = stub.FuseStats(debug_pb2.FuseStatsRequest(reset=args.reset))
    if args.json:
        common.print_json(stats_json(resp))
        return
    common.print_table(["opcode", "count", "total_ms", "mean_us", "median_us", "p90_us"],
                       stats_rows(resp))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("debug", help="what the daemon can tell about its own work")
    command = common.subcommands(group, "debug_command", DebugStub)
    p = command("fuse-stats", _fuse_stats,
                "the FUSE requests served since start or the last --reset, by opcode: "
                "count, total, mean, median and 90th percentile of the daemon's time "
                "per request", json=True)
    p.add_argument("--reset", action="store_true",
                   help="start counting afresh after this report")
