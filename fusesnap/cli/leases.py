"""`fusesnap leases …`: the Leases API from the shell, in the style of
`ctr leases` (spec §4). Leases live in the namespace of the global
``--namespace/-n`` option; the daemon serves them in the direct role only.

    fusesnap leases create [--id ID] [--label k=v…] [--expire DURATION]
                                                  prints the lease id
    fusesnap leases ls [FILTER…]                  ID CREATED LABELS
    fusesnap leases rm ID… [--sync]               `--sync` returns after a garbage collection
    fusesnap leases add ID TYPE RESOURCE-ID       e.g. `add L content sha256:…`,
                                                  `add L snapshots/fusesnap KEY`
    fusesnap leases remove ID TYPE RESOURCE-ID
    fusesnap leases resources ID                  TYPE ID

Resource types are ``content`` (a digest), ``ingests`` (an ingest ref) and
``snapshots/<snapshotter>`` (a snapshot key or name); a lease may reference
objects that do not exist. ``--expire 24h`` (Go durations: ``1h30m``,
``90s``…) sets ``containerd.io/gc.expire`` to that much after now, in RFC 3339
UTC; once it has passed the lease stops protecting anything and the next
garbage collection deletes it. With the global ``--lease ID``, the snapshots
and content other commands create join that lease.

JSON shapes (``--json``): a lease is ``{"id", "created_at", "labels"}`` (RFC
3339 UTC time); a resource is ``{"type", "id"}``.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.cli import add_socket_option, common
from fusesnap.cli.content import labels_text
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.leases_pb2_grpc import LeasesStub

EXPIRE_LABEL = "containerd.io/gc.expire"

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")


# ---------------------------------------------------------------------- conversions


def duration_arg(text: str) -> float:
    """argparse ``type=`` for a Go-style duration of hours, minutes and seconds
    (``24h``, ``30m``, ``90s``, ``1h30m``, ``0s``): its seconds."""
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 24h, 30m, 90s or 1h30m, got {text!r}")
    return seconds


def expiry(seconds: float, now: float | None = None) -> str:
    """RFC 3339 UTC time `seconds` after `now`, rounded up to a whole second
    (a lease never expires before it was asked to)."""
    when = math.ceil((time.time() if now is None else now) + seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def created_text(ts: Timestamp) -> str:
    """RFC 3339 UTC to the second, as `ctr leases ls` prints."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))


def lease_json(lease: lpb.Lease) -> dict[str, Any]:
    return {"id": lease.id, "created_at": common.rfc3339(lease.created_at),
            "labels": dict(lease.labels)}


def resource_json(resource: lpb.Resource) -> dict[str, Any]:
    return {"type": resource.type, "id": resource.id}


# ---------------------------------------------------------------------- the proxy role

Stub = TypeVar("Stub")


PROXY_REFUSAL = "fusesnap serves role proxy:"
"""How a daemon in the proxy role begins its FailedPrecondition answer to a
Leases, Images or GC call (api/server.py)."""


def is_unserved(err: grpc.RpcError) -> bool:
    """True when the daemon does not serve the call's service, as a daemon in
    the proxy role answers: FailedPrecondition naming the role, or (an older
    fusesnap) grpc's own answer for an unregistered method."""
    if not isinstance(err, grpc.Call):
        return False
    details = err.details() or ""
    return (err.code() == grpc.StatusCode.FAILED_PRECONDITION
            and details.startswith(PROXY_REFUSAL)) or (
        err.code() == grpc.StatusCode.UNIMPLEMENTED and details == "Method not found!")


def direct_only(what: str, fn: Callable[[argparse.Namespace, Stub], int | None]
                ) -> Callable[[argparse.Namespace, Stub], int | None]:
    """`fn`, saying in one line why it fails against a daemon in the proxy role."""

    def wrapped(args: argparse.Namespace, stub: Stub) -> int | None:
        try:
            return fn(args, stub)
        except grpc.RpcError as err:
            if is_unserved(err):
                raise common.CommandError(
                    f"the daemon does not serve {what}: it runs in the proxy role "
                    f"(containerd owns {what} there)") from err
            raise

    return wrapped


# ---------------------------------------------------------------------- commands


def _create(args: argparse.Namespace, stub: LeasesStub) -> None:
    labels = common.labels_of(args.label)
    if args.expire is not None:
        labels[EXPIRE_LABEL] = expiry(args.expire)
    lease = stub.Create(lpb.CreateRequest(id=args.id or "", labels=labels)).lease
    if args.json:
        common.print_json(lease_json(lease))
    else:
        print(lease.id)


def _ls(args: argparse.Namespace, stub: LeasesStub) -> None:
    leases = stub.List(lpb.ListRequest(filters=args.filters)).leases
    if args.json:
        common.print_json([lease_json(lease) for lease in leases])
    elif args.quiet:
        for lease in leases:
            print(lease.id)
    else:
        common.print_table(["id", "created", "labels"],
                           [(lease.id, created_text(lease.created_at),
                             labels_text(dict(lease.labels))) for lease in leases])


def _rm(args: argparse.Namespace, stub: LeasesStub) -> None:
    for lease_id in args.ids:
        try:
            stub.Delete(lpb.DeleteRequest(id=lease_id, sync=args.sync))
        except grpc.RpcError as err:
            if common.is_connect_failure(err) or is_unserved(err):
                raise
            raise common.CommandError(f"rm {lease_id}: {common.describe(err)}") from err


def _resource(args: argparse.Namespace) -> lpb.Resource:
    return lpb.Resource(type=args.type, id=args.resource)


def _add(args: argparse.Namespace, stub: LeasesStub) -> None:
    stub.AddResource(lpb.AddResourceRequest(id=args.id, resource=_resource(args)))


def _remove(args: argparse.Namespace, stub: LeasesStub) -> None:
    stub.DeleteResource(lpb.DeleteResourceRequest(id=args.id, resource=_resource(args)))


def _resources(args: argparse.Namespace, stub: LeasesStub) -> None:
    found = stub.ListResources(lpb.ListResourcesRequest(id=args.id)).resources
    if args.json:
        common.print_json([resource_json(r) for r in found])
    elif args.quiet:
        for r in found:
            print(f"{r.type} {r.id}")
    else:
        common.print_table(["type", "id"], [(r.type, r.id) for r in found])


# ---------------------------------------------------------------------- parser


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("leases", aliases=["lease"],
                           help="manage leases (like `ctr leases`)",
                           description="Leases of the fusesnap daemon, per namespace: what "
                                       "they reference is safe from garbage collection.")
    add_socket_option(group)
    raw = common.subcommands(group, "leases_command", LeasesStub)

    def command(name: str, fn: Callable[[argparse.Namespace, LeasesStub], int | None],
                help: str, **kw: Any) -> argparse.ArgumentParser:
        return raw(name, direct_only("leases", fn), help, **kw)

    p = command("create", _create, "create a lease and print its id", json=True)
    p.add_argument("--id", default="", metavar="ID",
                   help="the lease id (default: a generated one)")
    p.add_argument("--label", action="append", type=common.label_arg, default=[],
                   metavar="KEY=VALUE", help="lease label (repeatable)")
    p.add_argument("--expire", type=duration_arg, default=None, metavar="DURATION",
                   help=f"set {EXPIRE_LABEL} to now + DURATION (e.g. 24h, 30m, 90s)")

    p = command("ls", _ls, "list leases (filters are OR-ed, e.g. labels.team==infra)",
                aliases=["list"], json=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the ids")
    p.add_argument("filters", metavar="FILTER", nargs="*",
                   help="containerd filters, e.g. id==build, labels.k==v")

    p = command("rm", _rm, "delete leases, stopping at the first failure",
                aliases=["delete"])
    p.add_argument("ids", metavar="ID", nargs="+", help="leases to delete")
    p.add_argument("--sync", action="store_true",
                   help="return after the garbage collection that follows")

    for name, fn, verb in (("add", _add, "reference a resource from a lease (idempotent)"),
                           ("remove", _remove, "drop a lease's reference to a resource")):
        p = command(name, fn, verb)
        p.add_argument("id", metavar="ID", help="the lease")
        p.add_argument("type", metavar="TYPE",
                       help="content, ingests or snapshots/<snapshotter>")
        p.add_argument("resource", metavar="RESOURCE-ID",
                       help="a digest, an ingest ref or a snapshot key")

    p = command("resources", _resources, "list what a lease references", json=True)
    p.add_argument("id", metavar="ID", help="the lease")
    common.add_quiet_option(p, "TYPE ID of each resource")
