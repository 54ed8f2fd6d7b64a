"""`fusesnap snapshots …`: the Snapshots API from the shell, in the style of
`ctr snapshots` (spec §2).

    fusesnap snapshots prepare KEY [PARENT]     prints the new snapshot's directory
    fusesnap snapshots view KEY PARENT          prints the read-only view's directory
    fusesnap snapshots mounts KEY
    fusesnap snapshots path KEY                 prints any snapshot's directory
    fusesnap snapshots commit NAME KEY
    fusesnap snapshots rm KEY…
    fusesnap snapshots ls [FILTER…]
    fusesnap snapshots info KEY                 always JSON, like ctr
    fusesnap snapshots usage [KEY]
    fusesnap snapshots label KEY k=v…           `k=` removes label k
    fusesnap snapshots tree
    fusesnap snapshots diff KEY > layer.tar     the snapshot's changes as an OCI layer
    fusesnap snapshots mknod KEY PATH TYPE [MAJOR MINOR] [--mode M] [--owner U:G]
                                                record a device node or FIFO

What `prepare`, `view` and `commit` make is labelled ``containerd.io/gc.root``
(the time), so that garbage collection keeps it until `rm`, unless the global
``--lease`` holds it or ``--no-gc-root`` is given.

JSON shapes (``--json``): an Info is ``{"name", "parent", "kind", "labels",
"created_at", "updated_at"}`` with kind ``active``/``committed``/``view`` (the
filter spelling) and RFC 3339 UTC times; a mount is ``{"type", "source",
"target", "options"}``; usage is ``{"key", "size", "inodes"}`` (sizes in bytes);
a tree node is ``{"name", "kind", "children"}``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import grpc

from fusesnap.cli import add_socket_option, common
from fusesnap.pb import info_pb2, mount_pb2
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.diff_pb2 import DiffRequest
from fusesnap.pb.diff_pb2_grpc import DifferStub
from fusesnap.pb.info_pb2_grpc import InfoStub
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub

SNAPSHOTTER = "fusesnap"



# ---------------------------------------------------------------------- conversions


def kind_name(kind: int) -> str:
    """``active``, ``committed``, ``view`` or ``unknown`` (filter and JSON spelling)."""
    try:
        return str(spb.Kind.Name(kind)).lower()
    except ValueError:
        return "unknown"


def info_json(info: spb.Info) -> dict[str, Any]:
    return {
        "name": info.name,
        "parent": info.parent,
        "kind": kind_name(info.kind),
        "labels": dict(info.labels),
        "created_at": common.rfc3339(info.created_at),
        "updated_at": common.rfc3339(info.updated_at),
    }


def mount_json(mount: mount_pb2.Mount) -> dict[str, Any]:
    return {"type": mount.type, "source": mount.source, "target": mount.target,
            "options": list(mount.options)}


def mount_text(mount: mount_pb2.Mount) -> str:
    return f"{mount.type} {mount.source} {','.join(mount.options)}".rstrip()


def directory(key: str, mounts: Iterable[mount_pb2.Mount]) -> str:
    """The snapshot's directory: the source of its (bind) mount."""
    for mount in mounts:
        if mount.source:
            return mount.source
    raise common.CommandError(f"the daemon returned no mount for {key}")


def list_all(stub: SnapshotsStub, filters: Iterable[str] = ()) -> list[spb.Info]:
    infos: list[spb.Info] = []
    for batch in stub.List(spb.ListSnapshotsRequest(snapshotter=SNAPSHOTTER,
                                                    filters=list(filters))):
        infos.extend(batch.info)
    return infos


# ---------------------------------------------------------------------- commands


def _created(args: argparse.Namespace, key: str,
             mounts: Iterable[mount_pb2.Mount]) -> None:
    path = directory(key, mounts)
    if args.json:
        common.print_json({"key": key, "path": path,
                           "mounts": [mount_json(m) for m in mounts]})
    else:
        print(path)


def _prepare(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    resp = stub.Prepare(spb.PrepareSnapshotRequest(
        snapshotter=SNAPSHOTTER, key=args.key, parent=args.parent or "",
        labels=common.kept(args, common.labels_of(args.label))))
    _created(args, args.key, resp.mounts)


def _view(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    resp = stub.View(spb.ViewSnapshotRequest(
        snapshotter=SNAPSHOTTER, key=args.key, parent=args.parent,
        labels=common.kept(args, {})))
    _created(args, args.key, resp.mounts)


def _mounts(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    resp = stub.Mounts(spb.MountsRequest(snapshotter=SNAPSHOTTER, key=args.key))
    if args.json:
        common.print_json([mount_json(m) for m in resp.mounts])
    else:
        for mount in resp.mounts:
            print(mount_text(mount))


def _commit(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    stub.Commit(spb.CommitSnapshotRequest(
        snapshotter=SNAPSHOTTER, name=args.name, key=args.key,
        labels=common.kept(args, common.labels_of(args.label))))
    if args.json:
        info = stub.Stat(spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=args.name)).info
        common.print_json(info_json(info))


def _rm(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    for key in args.keys:
        try:
            stub.Remove(spb.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key))
        except grpc.RpcError as err:
            if common.is_connect_failure(err):
                raise
            raise common.CommandError(f"rm {key}: {common.describe(err)}") from err


def _path(args: argparse.Namespace, channel: grpc.Channel) -> None:
    resp = InfoStub(channel).Path(info_pb2.PathRequest(key=args.key))
    if args.json:
        common.print_json({"key": args.key, "path": resp.path, "kind": resp.kind})
    else:
        print(resp.path)


def _ls(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    infos = list_all(stub, args.filters)
    if args.json:
        common.print_json([info_json(i) for i in infos])
    elif args.quiet:
        for i in infos:
            print(i.name)
    else:
        common.print_table(["key", "parent", "kind"],
                           [(i.name, i.parent, kind_name(i.kind).capitalize())
                            for i in infos])


def _info(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    resp = stub.Stat(spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER, key=args.key))
    common.print_json(info_json(resp.info))


def _usage(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    def usage(key: str) -> dict[str, Any]:
        resp = stub.Usage(spb.UsageRequest(snapshotter=SNAPSHOTTER, key=key))
        return {"key": key, "size": resp.size, "inodes": resp.inodes}

    if args.key is not None:
        rows = [usage(args.key)]
    else:
        rows = []
        for info in list_all(stub):
            try:
                rows.append(usage(info.name))
            except grpc.RpcError as err:
                # Removed between List and Usage: it is simply gone.
                if not (isinstance(err, grpc.Call)
                        and err.code() == grpc.StatusCode.NOT_FOUND):
                    raise
    if args.json:
        common.print_json(rows[0] if args.key is not None else rows)
    else:
        common.print_table(["key", "size", "inodes"],
                           [(r["key"], common.human_size(r["size"]), r["inodes"])
                            for r in rows])


def _label(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    wanted = common.labels_of(args.labels)
    resp = stub.Update(spb.UpdateSnapshotRequest(
        snapshotter=SNAPSHOTTER,
        info=spb.Info(name=args.key, labels={k: v for k, v in wanted.items() if v}),
        update_mask={"paths": [f"labels.{k}" for k in wanted]}))
    if args.json:
        common.print_json(dict(resp.info.labels))
    else:
        common.print_labels(resp.info.labels)


def forest(infos: Iterable[spb.Info]) -> list[dict[str, Any]]:
    """Parent→child trees of `infos`, roots (and orphans) first, names sorted."""
    by_name = {i.name: i for i in infos}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for info in by_name.values():
        if info.parent and info.parent in by_name and info.parent != info.name:
            children.setdefault(info.parent, []).append(info.name)
        else:
            roots.append(info.name)

    def node(name: str, seen: frozenset[str]) -> dict[str, Any]:
        kids = [node(c, seen | {c}) for c in sorted(children.get(name, ())) if c not in seen]
        return {"name": name, "kind": kind_name(by_name[name].kind), "children": kids}

    return [node(r, frozenset({r})) for r in sorted(roots)]


def tree_lines(nodes: Iterable[dict[str, Any]], depth: int = 0) -> Iterable[str]:
    for n in nodes:
        yield "  " * depth + n["name"]
        yield from tree_lines(n["children"], depth + 1)


def _tree(args: argparse.Namespace, stub: SnapshotsStub) -> None:
    trees = forest(list_all(stub))
    if args.json:
        common.print_json(trees)
    else:
        for line in tree_lines(trees):
            print(line)


def _diff(args: argparse.Namespace, channel: grpc.Channel) -> None:
    out = sys.stdout.buffer
    if out.isatty():
        raise common.CommandError("refusing to write a tar to a terminal: redirect it "
                                  f"(fusesnap snapshots diff {args.key} > layer.tar)")
    for resp in DifferStub(channel).Diff(DiffRequest(key=args.key)):
        out.write(resp.data)
    out.flush()


def _owner(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise argparse.ArgumentTypeError(f"expected UID:GID in numbers, got {text!r}")
    return int(uid), int(gid)


def _mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an octal mode, got {text!r}") from None


def _mknod(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.nodes import NodeError, make_node, node_tar

    numbers = args.numbers or []
    if len(numbers) not in (0, 2) or (args.type in ("c", "b") and not numbers):
        raise common.CommandError("a device needs MAJOR and MINOR (a FIFO, type p, none)")
    try:
        major, minor = numbers or (0, 0)
        uid, gid = args.owner
        layer = node_tar(args.path, args.type, major, minor, args.mode, uid, gid)
    except NodeError as e:
        raise common.CommandError(str(e)) from None
    make_node(channel, args.key, layer)


# ---------------------------------------------------------------------- parser



def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("snapshots", aliases=["snapshot"],
                           help="manage snapshots (like `ctr snapshots`)",
                           description="Snapshots of the fusesnap daemon.")
    add_socket_option(group)
    command = common.subcommands(group, "snapshots_command", SnapshotsStub)

    def label_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label", action="append", type=common.label_arg, default=[],
                       metavar="KEY=VALUE", help="label to set (repeatable)")

    p = command("prepare", _prepare, "create an active snapshot and print its directory",
                json=True)
    p.add_argument("key", metavar="KEY", help="the new snapshot's key (a name you choose)")
    p.add_argument("parent", metavar="PARENT", nargs="?", default="",
                   help="committed parent (default: empty)")
    label_option(p)
    common.add_keep_option(p)

    p = command("view", _view, "create a read-only view of PARENT and print its directory",
                json=True)
    p.add_argument("key", metavar="KEY", help="the new view's key (a name you choose)")
    p.add_argument("parent", metavar="PARENT", help="the committed snapshot to view")
    common.add_keep_option(p)

    p = command("mounts", _mounts, "print the mounts of an active snapshot or view",
                json=True)
    p.add_argument("key", metavar="KEY", help="an active snapshot's or a view's key")

    p = command("path", _path, "print the directory of any snapshot on the mount (an "
                "active one writable; a committed one or a view read-only)", json=True)
    p.add_argument("key", metavar="KEY", help="the snapshot's key or name")
    p.set_defaults(func=lambda args: common.run(args, lambda channel: _path(args, channel)))

    p = command("commit", _commit, "commit active snapshot KEY as NAME (--json: print "
                "the committed snapshot's info)", json=True)
    p.add_argument("name", metavar="NAME", help="the committed snapshot's name (new)")
    p.add_argument("key", metavar="KEY", help="the active snapshot to commit (it goes)")
    label_option(p)
    common.add_keep_option(p)

    p = command("rm", _rm, "remove snapshots, stopping at the first failure",
                aliases=["remove"])
    p.add_argument("keys", metavar="KEY", nargs="+",
                   help="snapshots to remove (a parent only once its children are gone)")

    p = command("ls", _ls, "list snapshots (filters are OR-ed, e.g. kind==active)",
                aliases=["list"], json=True)
    p.add_argument("filters", metavar="FILTER", nargs="*",
                   help="containerd filters, e.g. kind==active, parent==base, labels.k==v")
    common.add_quiet_option(p, "the keys")

    p = command("info", _info, "print a snapshot's info as JSON (--json: the same)",
                json=True)
    p.add_argument("key", metavar="KEY", help="the snapshot's key or name")

    p = command("usage", _usage, "print the disk usage of one or all snapshots", json=True)
    p.add_argument("key", metavar="KEY", nargs="?", default=None,
                   help="one snapshot (default: every snapshot)")

    p = command("label", _label, "set labels (KEY= removes one) and print the result",
                json=True)
    p.add_argument("key", metavar="KEY", help="the snapshot's key or name")
    p.add_argument("labels", metavar="KEY=VALUE", nargs="+", type=common.label_arg,
                   help="labels to set; KEY= removes KEY")

    command("tree", _tree, "print snapshots as a parent/child tree", json=True)

    p = command("diff", _diff, "write the changes of snapshot KEY (active or committed) "
                "relative to its parent to stdout as an uncompressed OCI layer tar")
    p.add_argument("key", metavar="KEY", help="an active or committed snapshot")
    p.set_defaults(func=lambda args: common.run(args, lambda channel: _diff(args, channel)))

    p = command("mknod", _mknod, "record a device node or FIFO at PATH in active snapshot "
                "KEY, as a layer would hold it: for a user namespace's root, whom the "
                "kernel refuses mknod(2) of devices")
    p.add_argument("key", metavar="KEY", help="the active snapshot")
    p.add_argument("path", metavar="PATH", help="inside the snapshot; its directory must "
                   "exist and the path must not")
    p.add_argument("type", metavar="TYPE", choices=["c", "b", "p"],
                   help="c: character device, b: block device, p: FIFO")
    p.add_argument("numbers", metavar="MAJOR MINOR", nargs="*", type=int,
                   help="the device's numbers (not for a FIFO)")
    p.add_argument("--mode", type=_mode, default=0o666, help="permission bits, octal "
                   "(default 0666)")
    p.add_argument("--owner", type=_owner, default=(0, 0), metavar="UID:GID",
                   help="owner (default 0:0)")
    p.set_defaults(func=lambda args: common.run(args, lambda channel: _mknod(args, channel)))
