"""`fusesnap status`: what the daemon is, where it keeps things and how much
it holds, from fusesnap's own Info service (served in both roles).

    fusesnap status [--json]

prints one aligned ``key: value`` line each:

    version:        0.1.0
    role:           direct
    root:           /var/lib/fusesnap
    mountpoint:     /var/lib/fusesnap/mnt
    socket:         /run/fusesnap/fusesnap.sock
    pid:            4242
    started:        2024-05-01T12:00:00Z
    uptime:         2h 5m 13s
    snapshots:      12 (3 active, 8 committed, 1 view)
    blobs:          40 (512.3 MiB)
    ingests:        0
    leases:         2
    images:         3
    fuse requests:  123456

Leases and images are counted in all namespaces (a daemon in the proxy role
keeps none); FUSE requests since the daemon started.

JSON shape (``--json``): ``{"version", "role", "root", "mountpoint", "socket",
"pid", "started_at", "uptime_s", "snapshots": {"active", "committed", "view"},
"blobs", "blob_bytes", "ingests", "leases", "images", "fuse_requests",
"fuse_requests_by_opcode": {OPCODE: count}}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.cli import add_socket_option, common
from fusesnap.pb import info_pb2
from fusesnap.pb.info_pb2_grpc import InfoStub


def status_json(resp: info_pb2.StatusResponse) -> dict[str, Any]:
    s = resp.snapshots
    return {
        "version": resp.version, "role": resp.role, "root": resp.root,
        "mountpoint": resp.mountpoint, "socket": resp.socket, "pid": resp.pid,
        "started_at": common.rfc3339(resp.started_at),
        "uptime_s": resp.uptime.ToNanoseconds() / 1e9,
        "snapshots": {"active": s.active, "committed": s.committed, "view": s.view},
        "blobs": resp.blobs, "blob_bytes": resp.blob_bytes, "ingests": resp.ingests,
        "leases": resp.leases, "images": resp.images, "fuse_requests": resp.fuse_requests,
        "fuse_requests_by_opcode": dict(sorted(resp.fuse_requests_by_opcode.items())),
    }


def duration_text(seconds: int) -> str:
    """``3d 2h 5m 13s``, from the largest unit present (``0s`` for none)."""
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size or parts:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    parts.append(f"{seconds}s")
    return " ".join(parts)


def status_lines(resp: info_pb2.StatusResponse) -> list[str]:
    s = resp.snapshots
    fields = [
        ("version", resp.version), ("role", resp.role), ("root", resp.root),
        ("mountpoint", resp.mountpoint), ("socket", resp.socket), ("pid", str(resp.pid)),
        ("started", Timestamp(seconds=resp.started_at.seconds).ToJsonString()),
        ("uptime", duration_text(resp.uptime.seconds)),
        ("snapshots", f"{s.active + s.committed + s.view} ({s.active} active, "
                      f"{s.committed} committed, {s.view} view)"),
        ("blobs", f"{resp.blobs} ({common.human_size(resp.blob_bytes)})"),
        ("ingests", str(resp.ingests)), ("leases", str(resp.leases)),
        ("images", str(resp.images)), ("fuse requests", str(resp.fuse_requests)),
    ]
    width = max(len(key) for key, _ in fields) + 2
    return [f"{key + ':':<{width}}{value}" for key, value in fields]


def _status(args: argparse.Namespace, stub: InfoStub) -> None:
    resp = stub.Status(info_pb2.StatusRequest())
    if args.json:
        common.print_json(status_json(resp))
    else:
        print("\n".join(status_lines(resp)))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="what the daemon is, where it keeps things and how "
                                      "much it holds",
                       description="Print the daemon's version, role, root, mountpoint, "
                                   "socket, pid and uptime, and the counts of snapshots, "
                                   "blobs, ingests, leases, images and FUSE requests.")
    add_socket_option(p)
    common.add_json_option(p)
    p.set_defaults(func=lambda args: common.run(args, lambda channel: _status(
        args, InfoStub(channel))))
