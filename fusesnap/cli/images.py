"""`fusesnap images …`: the Images API from the shell, in the style of
`ctr images` (spec §5). Images live in the namespace of the global
``--namespace/-n`` option.

    fusesnap images ls [FILTER…]              NAME TYPE DIGEST SIZE AGE LABELS
    fusesnap images get NAME
    fusesnap images create NAME --digest D --size N --media-type T
                           [--label k=v…] [--annotation k=v…]
    fusesnap images label NAME k=v…           `k=` removes label k
    fusesnap images rm NAME… [--sync]         `--sync` returns after a garbage collection
    fusesnap images import ARCHIVE [--name NAME]
                                              an OCI archive or a docker-archive (tar,
                                              tar.gz, tar.zst; - is standard input):
                                              blobs, snapshots, records
    fusesnap images pull REF [--name NAME] [--platform OS/ARCH] [--creds USER:PASS]
                         [--ca FILE] [--plain-http]
                                              from an OCI distribution registry
                                              (README, "Registries")
    fusesnap images push NAME REF [--creds USER:PASS] [--ca FILE] [--plain-http]
                                              to an OCI distribution registry: blobs
                                              it has are skipped
    fusesnap images prepare NAME KEY          prints the directory of a new active
                                              snapshot on the image's top layer
    fusesnap images mount NAME [--key KEY]    prints the directory of a read-only view
    fusesnap images commit NAME KEY [--base IMAGE]
                                              active snapshot KEY's changes as a new
                                              image: the base image plus one layer
    fusesnap images export NAME ARCHIVE       the image as a tar of an OCI layout
    fusesnap images convert --estargz NAME NEWNAME [--force]
                                              NAME with its layers as eStargz, as NEWNAME

`import` reads a tar of an OCI image layout (or such a directory) or a
docker-archive (``manifest.json``, as ``docker save`` wrote before Docker 25:
each image becomes a Docker v2 schema 2 manifest of its config and
uncompressed layers, named by its RepoTags), plain or gzip- or
zstd-compressed (by the magic bytes). ARCHIVE ``-`` is standard input (never
a terminal); standard input and compressed archives are spooled to a private
temporary directory (``$TMPDIR``, default /tmp) that is removed afterwards,
since a tar's members are read in any order. It stores every blob of the
archive (with containerd's ``gc.ref`` labels), applies each layer into a
snapshot named by its chain ID (layers whose snapshot exists are not applied
again), records one image per entry of the archive's index.json (named by
``org.opencontainers.image.ref.name``, or per RepoTags name, or
``--name``), and prints ``NAME DIGEST`` for each. It works under a lease of
its own, deleted at the end, or under the global ``--lease``. Progress bars,
one per layer, go to stderr when it is a terminal.

`prepare` and `mount` put the new snapshot under the global ``--lease`` if
given, else label it ``containerd.io/gc.root`` so that garbage collection
keeps it (``--no-gc-root``: neither): ``fusesnap snapshots rm KEY`` removes it.

`commit` diffs KEY against its parent (the top layer of the image `prepare`
made it from, or ``--base``), stores the gzipped layer, a config with its
diff_id and a history entry, and a manifest with the layer on top, commits KEY
as the new layer's snapshot (KEY is gone afterwards; `prepare NAME` starts
from it), points image NAME at the new manifest and prints ``NAME DIGEST``.
`export` writes the image's manifest for this platform, its config and
layers, with an index.json naming it NAME, as ``ctr images import`` reads;
ARCHIVE ``-`` is standard output, a pipe or device is written in place, and an
existing file is replaced only with ``--force``.

`convert --estargz` writes each layer of NAME (for this platform) as an
eStargz layer (stargz-snapshotter's lazily pullable gzip layout: each file's
content in gzip members of its own, 4 MiB chunks, a TOC ``stargz.index.json``
and a footer), a config with the new diff_ids and a manifest with the
``containerd.io/snapshot/stargz/toc.digest`` and
``io.containers.estargz.uncompressed-size`` annotations, unpacks the layers
and records NEWNAME (replacing an existing one only with ``--force``); it
prints ``NEWNAME DIGEST``. eStargz is the only conversion.

An image is a record only: `create` neither checks nor fetches its target.
SIZE is the size of the target descriptor (a manifest or an index), not of
the image's layers as `ctr images ls` computes it. With the global
``--lease``, an image labelled ``containerd.io/gc.expire`` joins that lease.

JSON shape (``--json``): an image is ``{"name", "target": {"media_type",
"digest", "size", "annotations"}, "labels", "created_at", "updated_at"}``
(size in bytes, RFC 3339 UTC times).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any, cast

import grpc

from fusesnap.cli import add_socket_option, common
from fusesnap.cli.content import ProgressBar, age, labels_text
from fusesnap.cli.snapshots import directory, mount_json
from fusesnap.pb import descriptor_pb2
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.images_pb2_grpc import ImagesStub

# The client modules (registries, archives, eStargz, layers) are imported by
# the handlers that use them, when they run: each command pays at start-up
# only for its own code (every `fusesnap` process starts anew).

_COLUMNS = ["name", "type", "digest", "size", "age", "labels"]


def image_json(image: ipb.Image) -> dict[str, Any]:
    target = image.target
    return {
        "name": image.name,
        "target": {
            "media_type": target.media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": dict(target.annotations),
        },
        "labels": dict(image.labels),
        "created_at": common.rfc3339(image.created_at),
        "updated_at": common.rfc3339(image.updated_at),
    }


def _row(image: ipb.Image) -> tuple[str, ...]:
    return (image.name, image.target.media_type, image.target.digest,
            common.human_size(image.target.size), age(image.created_at),
            labels_text(dict(image.labels)))


def _show(args: argparse.Namespace, images: list[ipb.Image]) -> None:
    if args.json:
        common.print_json([image_json(i) for i in images])
    else:
        common.print_table(_COLUMNS, [_row(i) for i in images])


def _ls(args: argparse.Namespace, stub: ImagesStub) -> None:
    images = list(stub.List(ipb.ListImagesRequest(filters=args.filters)).images)
    if args.quiet:
        for image in images:
            print(image.name)
    else:
        _show(args, images)


def _get(args: argparse.Namespace, stub: ImagesStub) -> None:
    image = stub.Get(ipb.GetImageRequest(name=args.name)).image
    if args.json:
        common.print_json(image_json(image))
    else:
        _show(args, [image])


def _create(args: argparse.Namespace, stub: ImagesStub) -> None:
    target = descriptor_pb2.Descriptor(media_type=args.media_type, digest=args.digest,
                                       size=args.size,
                                       annotations=common.labels_of(args.annotation))
    image = stub.Create(ipb.CreateImageRequest(image=ipb.Image(
        name=args.name, target=target, labels=common.labels_of(args.label)))).image
    if args.json:
        common.print_json(image_json(image))
    else:
        _show(args, [image])


def _label(args: argparse.Namespace, stub: ImagesStub) -> None:
    wanted = common.labels_of(args.labels)
    image = stub.Update(ipb.UpdateImageRequest(
        image=ipb.Image(name=args.name, labels={k: v for k, v in wanted.items() if v}),
        update_mask={"paths": [f"labels.{k}" for k in wanted]})).image
    if args.json:
        common.print_json(dict(image.labels))
    else:
        common.print_labels(image.labels)


def _rm(args: argparse.Namespace, stub: ImagesStub) -> None:
    for name in args.names:
        try:
            stub.Delete(ipb.DeleteImageRequest(name=name, sync=args.sync))
        except grpc.RpcError as err:
            if common.is_connect_failure(err):
                raise
            raise common.CommandError(f"rm {name}: {common.describe(err)}") from err


def _import(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.importer import ImportFailed, LayerError, import_archive

    def bar(label: str, total: int) -> ProgressBar:
        return ProgressBar(sys.stderr, label, 0, total)

    if args.archive == "-" and sys.stdin.isatty():
        raise common.CommandError("reading the archive from standard input, which is a "
                                  "terminal: redirect a file (fusesnap images import - < FILE)")
    try:
        done = import_archive(channel, args.archive, name=args.name, lease=args.lease,
                              progress=bar if sys.stderr.isatty() else None)
    except (ArchiveError, LayerError, ImportFailed) as err:
        raise common.CommandError(f"import {args.archive}: {err}") from err
    if args.json:
        common.print_json([{"name": i.name, "digest": i.target.digest,
                            "media_type": i.target.media_type, "chain_ids": i.chain_ids,
                            "applied": i.applied} for i in done])
    else:
        for i in done:
            print(f"{i.name} {i.target.digest}")



class _Lines:
    """ProgressBars of parallel downloads, one line each, redrawn together."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.texts: list[str] = []
        self.drawn = 0
        self.lock = threading.Lock()

    def bar(self, label: str, total: int) -> ProgressBar:
        with self.lock:
            self.texts.append("")
            line = _Line(self, len(self.texts) - 1)
        return ProgressBar(cast(IO[str], line), label, 0, total)

    def set(self, i: int, text: str) -> None:
        with self.lock:
            self.texts[i] = text
            up = f"\x1b[{self.drawn}A" if self.drawn else ""
            self.out.write("\r" + up + "".join(f"\x1b[K{t}\n" for t in self.texts))
            self.out.flush()
            self.drawn = len(self.texts)


class _Line:
    def __init__(self, lines: _Lines, i: int) -> None:
        self.lines = lines
        self.i = i

    def write(self, text: str) -> None:
        self.lines.set(self.i, text.replace("\r\x1b[K", "").rstrip("\n"))

    def flush(self) -> None:
        pass


def _creds(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.creds is None:
        return None
    user, sep, password = args.creds.partition(":")
    if not sep or not user:
        raise common.CommandError("--creds: expected USER:PASSWORD")
    return user, password


@contextlib.contextmanager
def _reported(what: str, *errors: type[Exception]) -> Iterator[None]:
    """`errors` and the daemon's refusals as one line ``WHAT: …``; a daemon
    that cannot be reached is left to common.run."""
    try:
        yield
    except errors as err:
        raise common.CommandError(f"{what}: {err}") from err
    except grpc.RpcError as err:
        if common.is_connect_failure(err):
            raise
        raise common.CommandError(f"{what}: {common.describe(err)}") from err


def _pull(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.importer import ImportFailed, LayerError
    from fusesnap.client.pull import PullOptions, parse_platform, pull_image
    from fusesnap.client.registry import RegistryError

    lines = _Lines(sys.stderr)
    bar = lines.bar
    creds = _creds(args)
    with _reported(f"pull {args.reference}", RegistryError, ArchiveError, LayerError,
                   ImportFailed):
        options = PullOptions(platform=parse_platform(args.platform) if args.platform else None,
                              creds=creds, ca=args.ca, plain_http=args.plain_http,
                              lazy=args.lazy)
        done = pull_image(channel, args.reference, name=args.name, options=options,
                          lease=args.lease, progress=bar if sys.stderr.isatty() else None)
    if args.json:
        common.print_json({"name": done.name, "digest": done.target.digest,
                           "media_type": done.target.media_type, "chain_ids": done.chain_ids,
                           "applied": done.applied})
    else:
        print(f"{done.name} {done.target.digest}")


def _push(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.pull import PullOptions
    from fusesnap.client.push import push_image
    from fusesnap.client.registry import RegistryError

    bar = _Lines(sys.stderr).bar
    options = PullOptions(creds=_creds(args), ca=args.ca, plain_http=args.plain_http)
    with _reported(f"push {args.name}", RegistryError, ArchiveError):
        done = push_image(channel, args.name, args.reference, options=options,
                          progress=bar if sys.stderr.isatty() else None)
    if args.json:
        common.print_json({"reference": done.reference, "digest": done.target.digest,
                           "media_type": done.target.media_type,
                           "uploaded": done.uploaded, "skipped": done.skipped,
                           "mounted": done.mounted,
                           "patches": done.patches})
    else:
        print(f"{done.reference} {done.target.digest}")


def _on_image(args: argparse.Namespace, channel: grpc.Channel, key: str, view: bool) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.commit import BASE_LABEL
    from fusesnap.client.importer import SNAPSHOTTER, Client, top_chain_id

    client = Client(channel)
    try:
        parent = top_chain_id(client, args.name)
    except ArchiveError as err:
        raise common.CommandError(f"image {args.name}: {err}") from err
    labels = common.kept(args, {BASE_LABEL: args.name})
    if view:
        mounts = client.snapshots.View(spb.ViewSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=key, parent=parent, labels=labels)).mounts
    else:
        mounts = client.snapshots.Prepare(spb.PrepareSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=key, parent=parent, labels=labels)).mounts
    path = directory(key, mounts)
    if args.json:
        common.print_json({"key": key, "parent": parent, "path": path,
                           "mounts": [mount_json(m) for m in mounts]})
    else:
        print(path)


def _prepare(args: argparse.Namespace, channel: grpc.Channel) -> None:
    _on_image(args, channel, args.key, view=False)


def _mount(args: argparse.Namespace, channel: grpc.Channel) -> None:
    _on_image(args, channel, args.key or f"{args.name}-view-{secrets.token_hex(4)}", view=True)


def _commit(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.commit import CommitFailed, commit_image

    try:
        done = commit_image(channel, args.key, args.name, base=args.base, lease=args.lease)
    except (ArchiveError, CommitFailed) as err:
        raise common.CommandError(f"commit {args.key}: {err}") from err
    if args.json:
        common.print_json({"name": done.name, "digest": done.target.digest,
                           "media_type": done.target.media_type, "layer": done.layer.digest,
                           "diff_id": done.diff_id, "chain_id": done.chain_id})
    else:
        print(f"{done.name} {done.target.digest}")


def _convert(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.convert import ConvertFailed, convert_image
    from fusesnap.client.importer import LayerError

    if not args.estargz:
        raise common.CommandError("convert: give --estargz (eStargz is the only conversion)")
    try:
        done = convert_image(channel, args.name, args.new_name, force=args.force,
                             lease=args.lease)
    except (ArchiveError, ConvertFailed, LayerError) as err:
        raise common.CommandError(f"convert {args.name}: {err}") from err
    if args.json:
        common.print_json({"name": done.name, "digest": done.target.digest,
                           "media_type": done.target.media_type,
                           "layers": [d.digest for d in done.layers],
                           "diff_ids": done.diff_ids})
    else:
        print(f"{done.name} {done.target.digest}")


def _export(args: argparse.Namespace, channel: grpc.Channel) -> None:
    from fusesnap.client.archive import ArchiveError
    from fusesnap.client.export import export_image

    # The image must exist before anything is created or replaced.
    ImagesStub(channel).Get(ipb.GetImageRequest(name=args.name))
    with common.output(args.archive, args.force, "an image archive") as out:
        try:
            export_image(channel, args.name, out)
        except (ArchiveError, OSError) as err:
            raise common.CommandError(f"export {args.name}: {err}") from err


# ---------------------------------------------------------------------- parser


def _positive_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes > 0, got {text!r}")
    return value


def _registry_options(p: argparse.ArgumentParser) -> None:
    """--creds, --ca and --plain-http, of pull and push."""
    p.add_argument("--creds", default=None, metavar="USER:PASSWORD",
                   help="registry credentials (default: the Docker config file's, "
                        "$DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    p.add_argument("--ca", default=None, metavar="FILE",
                   help="a PEM file of CA certificates to trust for the registry's TLS")
    p.add_argument("--plain-http", action="store_true",
                   help="talk plain HTTP to the registry, not HTTPS")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("images", aliases=["image"],
                           help="manage images (like `ctr images`)",
                           description="Image records (name -> target descriptor) of the "
                                       "fusesnap daemon, per namespace.")
    add_socket_option(group)
    command = common.subcommands(group, "images_command", ImagesStub)

    p = command("ls", _ls, "list images (filters are OR-ed, e.g. name~=^docker.io/)",
                aliases=["list"], json=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the names")
    p.add_argument("filters", metavar="FILTER", nargs="*",
                   help="containerd filters, e.g. name==example.com/app:1, labels.k==v")

    p = command("get", _get, "show one image", json=True)
    p.add_argument("name", metavar="NAME",
                   help="the image's name")

    p = command("create", _create, "record an image pointing at a target descriptor",
                json=True)
    p.add_argument("name", metavar="NAME",
                   help="the new image's name (a reference such as example.com/app:1)")
    p.add_argument("--digest", required=True, metavar="DIGEST", help="target digest")
    p.add_argument("--size", required=True, type=_positive_size, metavar="N",
                   help="target size in bytes")
    p.add_argument("--media-type", required=True, metavar="TYPE", help="target media type")
    p.add_argument("--label", action="append", type=common.label_arg, default=[],
                   metavar="KEY=VALUE", help="image label (repeatable)")
    p.add_argument("--annotation", action="append", type=common.label_arg, default=[],
                   metavar="KEY=VALUE", help="target annotation (repeatable)")

    p = command("label", _label, "set labels (KEY= removes one) and print the result",
                json=True)
    p.add_argument("name", metavar="NAME",
                   help="the image's name")
    p.add_argument("labels", metavar="KEY=VALUE", nargs="+", type=common.label_arg,
                   help="labels to set; KEY= removes KEY")

    p = command("rm", _rm, "delete images, stopping at the first failure",
                aliases=["remove", "delete"])
    p.add_argument("names", metavar="NAME", nargs="+",
                   help="images to delete")
    p.add_argument("--sync", action="store_true",
                   help="return after the garbage collection that follows")

    def on_channel(p: argparse.ArgumentParser, fn: Any) -> None:
        p.set_defaults(func=lambda args: common.run(args, lambda channel: fn(args, channel)))

    p = command("import", _import, "import the images of an OCI archive (tar of an OCI "
                "layout) or a docker-archive, plain, gzip or zstd, and unpack their layers "
                "into snapshots", json=True)
    p.add_argument("archive", metavar="ARCHIVE", help="the archive: - for standard input")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="image name (for an archive of one image; default: its "
                        "org.opencontainers.image.ref.name annotation, or a "
                        "docker-archive's RepoTags)")
    on_channel(p, _import)

    p = command("pull", _pull, "pull an image from an OCI distribution registry (v2 API) "
                "and unpack its layers into snapshots", json=True)
    p.add_argument("reference", metavar="REF",
                   help="the image: [HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST] (no host: "
                        "docker.io)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="image name (default: the normalized REF)")
    p.add_argument("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                   help="the manifest to pick from an index (default: this machine's)")
    p.add_argument("--lazy", action="store_true",
                   help="eStargz images: download no layer; the daemon makes each from its "
                        "table of contents and fetches a file's bytes when it is first opened, "
                        "the rest in the background (the daemon reaches the registry itself: "
                        "see serve --insecure-registry and --registry-ca)")
    _registry_options(p)
    on_channel(p, _pull)

    p = command("push", _push, "push an image to an OCI distribution registry (v2 API): "
                "blobs it has are skipped, the others uploaded, then the manifest",
                json=True)
    p.add_argument("name", metavar="NAME", help="the image to push")
    p.add_argument("reference", metavar="REF",
                   help="where to: [HOST[:PORT]/]REPOSITORY[:TAG] (no host: docker.io; "
                        "no tag: latest)")
    _registry_options(p)
    on_channel(p, _push)

    p = command("prepare", _prepare, "create an active snapshot on an image's top layer "
                "and print its directory", json=True)
    p.add_argument("name", metavar="NAME",
                   help="the image whose top layer the new snapshot goes on")
    p.add_argument("key", metavar="KEY",
                   help="the new active snapshot's key (a name you choose)")
    common.add_keep_option(p)
    on_channel(p, _prepare)

    p = command("mount", _mount, "create a read-only view of an image and print its "
                "directory", json=True)
    p.add_argument("name", metavar="NAME",
                   help="the image to view")
    p.add_argument("--key", default=None, metavar="KEY",
                   help="key of the view (default: NAME-view-RANDOM)")
    common.add_keep_option(p)
    on_channel(p, _mount)

    p = command("commit", _commit, "make image NAME from active snapshot KEY: its "
                "changes as one more layer on the image it was prepared from", json=True)
    p.add_argument("name", metavar="NAME", help="the image to record (new, or moved to the "
                   "new manifest), first as in `snapshots commit NAME KEY`")
    p.add_argument("key", metavar="KEY", help="the active snapshot (from `images prepare`); "
                   "it becomes the new layer's committed snapshot")
    p.add_argument("--base", default=None, metavar="IMAGE",
                   help="the image KEY was prepared from (default: as `images prepare` "
                        "recorded it)")
    on_channel(p, _commit)

    p = command("convert", _convert, "make image NEWNAME from image NAME with its layers "
                "converted (--estargz: eStargz, lazily pullable)", json=True)
    p.add_argument("name", metavar="NAME", help="the image to convert (kept as it is)")
    p.add_argument("new_name", metavar="NEWNAME", help="the image to record")
    p.add_argument("--estargz", action="store_true",
                   help="convert the layers to eStargz (the only conversion; required)")
    p.add_argument("--force", "-f", action="store_true",
                   help="replace an existing image NEWNAME")
    on_channel(p, _convert)

    p = command("export", _export, "write an image to a tar of an OCI image layout")
    p.add_argument("name", metavar="NAME",
                   help="the image to export")
    p.add_argument("archive", metavar="ARCHIVE",
                   help="the tar to write: - for standard output; a pipe or device is "
                        "written in place; an existing file is replaced only with --force")
    p.add_argument("--force", "-f", action="store_true", help="replace an existing ARCHIVE")
    on_channel(p, _export)
