"""`fusesnap gc`: one garbage collection now (spec §8), through fusesnap's own
GC service; the daemon serves it in the direct role only.

    fusesnap gc [--dry-run] [--json]

Prints one line per object removed, then a summary:

    content sha256:4a1b…
    ingest layer-3
    snapshot build/1
    lease default/tmp-123 (expired)
    removed 1 blob, 1 ingest, 1 snapshot, 1 expired lease in 0.004s

With ``--dry-run`` nothing is removed and the summary says "would remove".
Roots are every namespace's unexpired leases and images and objects labelled
``containerd.io/gc.root``; everything they do not reach is removed.

JSON shape (``--json``): ``{"dry_run", "content", "ingests", "snapshots",
"leases": [{"namespace", "id"}], "seconds"}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from fusesnap.cli import add_socket_option, common
from fusesnap.cli.leases import direct_only
from fusesnap.pb import gc_pb2
from fusesnap.pb.gc_pb2_grpc import GCStub


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def report_json(resp: gc_pb2.CollectResponse) -> dict[str, Any]:
    return {
        "dry_run": resp.dry_run,
        "content": list(resp.content),
        "ingests": list(resp.ingests),
        "snapshots": list(resp.snapshots),
        "leases": [{"namespace": lease.namespace, "id": lease.id} for lease in resp.leases],
        "seconds": resp.duration.ToNanoseconds() / 1e9,
    }


def report_lines(resp: gc_pb2.CollectResponse) -> list[str]:
    """The object lines and the summary line of a collection."""
    lines = [f"content {d}" for d in resp.content]
    lines += [f"ingest {ref}" for ref in resp.ingests]
    lines += [f"snapshot {key}" for key in resp.snapshots]
    lines += [f"lease {lease.namespace}/{lease.id} (expired)" for lease in resp.leases]
    counts = ", ".join([_count(len(resp.content), "blob"), _count(len(resp.ingests), "ingest"),
                        _count(len(resp.snapshots), "snapshot"),
                        _count(len(resp.leases), "expired lease")])
    verb = "would remove" if resp.dry_run else "removed"
    lines.append(f"{verb} {counts} in {resp.duration.ToNanoseconds() / 1e9:.3f}s")
    return lines


def _gc(args: argparse.Namespace, stub: GCStub) -> None:
    resp = stub.Collect(gc_pb2.CollectRequest(dry_run=args.dry_run))
    if args.json:
        common.print_json(report_json(resp))
    else:
        print("\n".join(report_lines(resp)))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gc", help="collect garbage now and print what was removed",
                       description="Run one garbage collection across all namespaces and "
                                   "print what it removed and how long it took.")
    add_socket_option(p)
    common.add_json_option(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be removed, removing nothing")
    fn = direct_only("garbage collection", _gc)
    p.set_defaults(func=lambda args: common.run(args, lambda channel: fn(args, GCStub(channel))))
