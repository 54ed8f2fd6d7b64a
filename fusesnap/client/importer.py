"""Images from the client side, through the daemon's gRPC APIs and its mount.

:func:`import_archive` puts an archive's images (an OCI layout or a
docker-archive, see :mod:`fusesnap.client.archive`) into a daemon: every blob
into the content store with containerd's ``gc.ref`` labels, each layer into a
snapshot named by its chain ID (Prepare on the parent chain ID, the daemon's
Applier service applies the layer blob straight into the snapshot's layer,
Commit), an image record per image; all
of it under one lease (its own, unless the caller's channel carries one) so
that no collection takes a half-made image. :func:`top_chain_id` finds the
snapshot an image record unpacks to, for ``images prepare``/``mount``.

The pieces a later ``images commit``/``export`` reuses are :class:`Client`
(the stubs with the lease header), :meth:`Client.put_blob` and
:class:`StoreSource` (a :class:`BlobSource` over the content store).
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Protocol

import grpc

from fusesnap.client.archive import (
    Archive,
    ArchiveDescriptor,
    ArchiveError,
    BlobSource,
    Resolved,
    local_archive,
    resolve,
    verify,
    walk,
)
from fusesnap.labels import REMOTE_INGEST
from fusesnap.layertar import Applied, LayerError
from fusesnap.pb import apply_pb2 as apb
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import descriptor_pb2
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.apply_pb2_grpc import ApplierStub
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.images_pb2_grpc import ImagesStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub

SNAPSHOTTER = "fusesnap"
REF_SNAPSHOT = f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"
EXPIRE_LABEL = "containerd.io/gc.expire"
LEASE_TTL = datetime.timedelta(hours=24)
CHUNK = 1 << 20


class ImportFailed(Exception):
    """An import failed; what it made is gone (or left to its lease's expiry)."""


class Progress(Protocol):
    def update(self, done: int, *, final: bool = False) -> None: ...


ProgressFactory = Callable[[str, int], Progress]
"""``(label, total bytes) -> bar``; the CLI draws one on a terminal."""


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    return err.code() if isinstance(err, grpc.Call) else None


# ---------------------------------------------------------------------- the daemon


@dataclass
class Client:
    """The daemon's stubs; every call carries `metadata` (the import's lease)."""

    channel: grpc.Channel
    lease: str | None = None
    """The lease objects join: also added to existing objects the import uses."""
    lease_header: bool = False
    """Whether the calls must add the lease header (the channel does not)."""
    content: ContentStub = field(init=False)
    snapshots: SnapshotsStub = field(init=False)
    images: ImagesStub = field(init=False)
    leases: LeasesStub = field(init=False)
    applier: ApplierStub = field(init=False)

    def __post_init__(self) -> None:
        self.applier = ApplierStub(self.channel)
        self.content = ContentStub(self.channel)
        self.snapshots = SnapshotsStub(self.channel)
        self.images = ImagesStub(self.channel)
        self.leases = LeasesStub(self.channel)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("containerd-lease", self.lease)] if self.lease and self.lease_header else []

    def hold(self, resource_type: str, resource_id: str) -> None:
        """Add an object that exists already to the lease, so that it outlives
        any collection until the image record references it."""
        if self.lease:
            self.leases.AddResource(lpb.AddResourceRequest(
                id=self.lease, resource=lpb.Resource(id=resource_id, type=resource_type)))

    def put_blob(self, desc: ArchiveDescriptor, open_data: Callable[[], IO[bytes]],
                 labels: dict[str, str], progress: ProgressFactory | None = None) -> bool:
        """Store a blob with `labels` unless it is there (then add the labels it
        lacks); joins the lease either way. Returns whether bytes were sent."""
        return self.store_blob(desc, lambda _offset: open_data(), labels, progress)

    def store_blob(self, desc: ArchiveDescriptor, open_from: Callable[[int], IO[bytes]],
                   labels: dict[str, str], progress: ProgressFactory | None = None,
                   ref: str | None = None) -> bool:
        """:meth:`put_blob` from ``open_from(offset)``, the blob's bytes from
        `offset` on. Without `ref` the ingest is ``import-DIGEST``, restarted
        from 0; with `ref`, an ingest of that name an earlier attempt left
        resumes at its offset (an ingest whose bytes do not commit to the
        digest is aborted, so that the next attempt starts afresh)."""
        try:
            info = self.content.Info(cpb.InfoRequest(digest=desc.digest),
                                     metadata=self.metadata).info
        except grpc.RpcError as err:
            if _code(err) != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            self._relabel(desc.digest, dict(info.labels), labels)
            return False
        offset = self._ingest_offset(ref, desc.size) if ref else 0
        bar = progress(f"{'fetch' if ref else 'upload'} {short(desc.digest)}", desc.size) \
            if progress else None
        broke: list[BaseException] = []
        with open_from(offset) as data:
            try:
                for _ in self.content.Write(
                        self._writes(desc, data, labels, bar, ref or f"import-{desc.digest}",
                                     offset, broke), metadata=self.metadata):
                    pass
            except grpc.RpcError as err:
                if broke:
                    raise broke[0] from None
                if _code(err) == grpc.StatusCode.ALREADY_EXISTS:
                    self._relabel(desc.digest, {}, labels)
                    return False
                if ref and _code(err) in (grpc.StatusCode.FAILED_PRECONDITION,
                                          grpc.StatusCode.INVALID_ARGUMENT):
                    self._abort(ref)
                raise
        if broke:
            raise broke[0]
        if bar is not None:
            bar.update(desc.size, final=True)
        return True

    def _ingest_offset(self, ref: str, size: int) -> int:
        try:
            status = self.content.Status(cpb.StatusRequest(ref=ref),
                                         metadata=self.metadata).status
        except grpc.RpcError as err:
            if _code(err) != grpc.StatusCode.NOT_FOUND:
                raise
            return 0
        if status.offset > size:
            self._abort(ref)
            return 0
        return int(status.offset)

    def _abort(self, ref: str) -> None:
        try:
            self.content.Abort(cpb.AbortRequest(ref=ref), metadata=self.metadata)
        except grpc.RpcError as err:
            if _code(err) != grpc.StatusCode.NOT_FOUND:
                raise

    def _writes(self, desc: ArchiveDescriptor, data: IO[bytes], labels: dict[str, str],
                bar: Progress | None, ref: str, offset: int,
                broke: list[BaseException]) -> Iterator[cpb.WriteContentRequest]:
        # WRITE at offset 0 restarts an ingest an earlier import left behind.
        # A source that fails ends the stream without a commit (the ingest
        # keeps what it has); the failure is kept in `broke` for the caller.
        first = True
        while True:
            try:
                chunk = data.read(CHUNK)
            except Exception as e:  # noqa: BLE001 (raised again by store_blob)
                broke.append(e)
                return
            if not chunk:
                break
            yield cpb.WriteContentRequest(action=cpb.WRITE, ref=ref if first else "",
                                          offset=offset, data=chunk, total=desc.size,
                                          expected=desc.digest)
            first = False
            offset += len(chunk)
            if bar is not None:
                bar.update(offset)
        yield cpb.WriteContentRequest(action=cpb.COMMIT, ref=ref if first else "",
                                      offset=offset, total=desc.size, expected=desc.digest,
                                      labels=labels)

    def _relabel(self, digest: str, have: dict[str, str], want: dict[str, str]) -> None:
        self.hold("content", digest)
        missing = {k: v for k, v in want.items() if have.get(k) != v}
        if missing:
            self.content.Update(cpb.UpdateRequest(
                info=cpb.Info(digest=digest, labels=missing),
                update_mask={"paths": [f"labels.{k}" for k in missing]}),
                metadata=self.metadata)

    def committed(self, name: str) -> bool:
        """Whether committed snapshot `name` exists (then it joins the lease)."""
        try:
            info = self.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER,
                                                                key=name)).info
        except grpc.RpcError as err:
            if _code(err) == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        if info.kind != spb.COMMITTED:
            raise ImportFailed(f"snapshot {name} exists but is not committed")
        self.hold(f"snapshots/{SNAPSHOTTER}", name)
        return True

    def directory(self, key: str, mounts: Sequence[object]) -> str:
        for m in mounts:
            source = getattr(m, "source", "")
            if source:
                return str(source)
        raise ImportFailed(f"the daemon returned no mount for {key}")


def short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


class StoreSource:
    """The content store as a :class:`BlobSource` (documents only: read whole)."""

    def __init__(self, content: ContentStub) -> None:
        self.content = content

    def read_blob(self, desc: ArchiveDescriptor) -> bytes:
        data = b"".join(r.data for r in self.content.Read(
            cpb.ReadContentRequest(digest=desc.digest)))
        return verify(data, desc)

    def has_blob(self, digest: str) -> bool:
        try:
            self.content.Info(cpb.InfoRequest(digest=digest))
        except grpc.RpcError as err:
            if _code(err) == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def require(self, layers: Sequence[ArchiveDescriptor]) -> None:
        """ArchiveError naming the first of `layers` not in the store; for
        one a lazy pull's background download is still writing, how far it is."""
        for d in layers:
            if self.has_blob(d.digest):
                continue
            try:
                status = self.content.Status(cpb.StatusRequest(
                    ref=REMOTE_INGEST + d.digest)).status
            except grpc.RpcError as err:
                if _code(err) != grpc.StatusCode.NOT_FOUND:
                    raise
                raise ArchiveError(f"layer {d.digest} is not in the content store") from None
            raise ArchiveError(
                f"layer {d.digest} was pulled lazily and its background download is not "
                f"complete ({status.offset} of {status.total} bytes); try again once it "
                "is (the daemon's log says when)")


# ---------------------------------------------------------------------- import


@dataclass
class Imported:
    name: str
    target: ArchiveDescriptor
    chain_ids: list[str]
    applied: list[str] = field(default_factory=list)
    """Chain IDs this import applied; the others existed already."""


def unpack(client: Client, archive: BlobSource, image: Resolved,
           progress: ProgressFactory | None = None) -> list[str]:
    """Make the snapshot chain of `image`; returns the chain IDs it applied."""
    applied: list[str] = []
    parent = ""
    chain = image.chain_ids
    for i, (layer, diff_id, chain_id) in enumerate(zip(image.layers, image.diff_ids, chain,
                                                       strict=True)):
        if not client.committed(chain_id):
            label = f"layer {i + 1}/{len(chain)} {short(layer.digest)}"
            bar = progress(label, layer.size) if progress else None
            apply_into(client, chain_id, parent, layer, diff_id)
            if bar is not None:
                bar.update(layer.size, final=True)
            applied.append(chain_id)
        parent = chain_id
    return applied


def apply_into(client: Client, chain_id: str, parent: str, layer: ArchiveDescriptor,
               diff_id: str) -> Applied:
    """Prepare an extract snapshot on `parent`, have the daemon apply the layer
    blob `layer` (in its content store) straight into it (the Applier
    service), commit it as `chain_id`. On any failure the extract snapshot is
    removed; a concurrent commit of the same chain ID counts as success.
    LayerError if the daemon refuses the layer."""
    def apply(key: str, directory: str) -> Applied:
        try:
            resp = client.applier.Apply(apb.ApplyRequest(
                key=key, digest=layer.digest, media_type=layer.media_type, diff_id=diff_id),
                metadata=client.metadata)
        except grpc.RpcError as err:
            if _code(err) in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.FAILED_PRECONDITION):
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                raise LayerError(f"layer {layer.digest}: {details}") from None
            raise
        return Applied(diff_id=resp.diff_id, size=resp.size, skipped=list(resp.skipped))
    return extract_layer(client, chain_id, parent, diff_id, apply)


def extract_layer(client: Client, chain_id: str, parent: str, diff_id: str,
             apply: Callable[[str, str], Applied]) -> Applied:
    """Prepare, `apply(key, directory)`, Commit; Remove on failure."""
    key = f"{chain_id}-extract-{secrets.token_hex(6)}"
    resp = client.snapshots.Prepare(spb.PrepareSnapshotRequest(
        snapshotter=SNAPSHOTTER, key=key, parent=parent), metadata=client.metadata)
    try:
        result = apply(key, client.directory(key, resp.mounts))
        client.snapshots.Commit(spb.CommitSnapshotRequest(
            snapshotter=SNAPSHOTTER, name=chain_id, key=key), metadata=client.metadata)
        return result
    except BaseException as err:
        _remove_quietly(client, key)
        if isinstance(err, grpc.RpcError) and _code(err) == grpc.StatusCode.ALREADY_EXISTS:
            return Applied(diff_id=diff_id, size=0)
        raise


def _remove_quietly(client: Client, key: str) -> None:
    try:
        client.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=key),
                                metadata=client.metadata)
    except grpc.RpcError as err:
        if _code(err) != grpc.StatusCode.NOT_FOUND:
            raise


def pb_descriptor(desc: ArchiveDescriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest,
                                     size=desc.size, annotations=dict(desc.annotations))


def record_image(client: Client, name: str, target: ArchiveDescriptor) -> None:
    """Create image `name` pointing at `target`, or point the existing one there."""
    image = ipb.Image(name=name, target=pb_descriptor(target))
    try:
        client.images.Create(ipb.CreateImageRequest(image=image), metadata=client.metadata)
    except grpc.RpcError as err:
        if _code(err) != grpc.StatusCode.ALREADY_EXISTS:
            raise
        client.images.Update(ipb.UpdateImageRequest(image=image, update_mask={"paths": ["target"]}),
                             metadata=client.metadata)


def _plan(archive: Archive, name: str | None) -> list[tuple[str, Resolved]]:
    entries = archive.entries()
    if name is not None:  # one image, maybe under several names (a docker-archive's tags)
        entries = list({e.target.digest: e for e in entries}.values())
    if name is not None and len(entries) != 1:
        raise ArchiveError(f"--name needs an archive of one image; this one has {len(entries)}")
    plan = []
    for entry in entries:
        image_name = name or entry.name
        if not image_name:
            raise ArchiveError(f"image {entry.target.digest} has no name (no "
                               "org.opencontainers.image.ref.name annotation, no RepoTags): "
                               "give --name")
        plan.append((image_name, resolve(archive, entry.target)))
    return plan


def import_archive(channel: grpc.Channel, path: str | os.PathLike[str], *,
                   name: str | None = None, lease: str | None = None,
                   progress: ProgressFactory | None = None,
                   stdin: IO[bytes] | None = None) -> list[Imported]:
    """Import the archive at `path` (see the module docstring): an OCI layout
    or a docker-archive, a tar (plain, gzip or zstd) or a directory; ``-`` is
    `stdin` (standard input by default), spooled to a temporary file
    (:func:`local_archive`). `lease`: the
    lease the channel's calls already carry (the CLI's ``--lease``); without
    one the import creates its own (expiring in 24 h) and deletes it at the
    end, whether it succeeded or not. Raises ArchiveError, LayerError,
    ImportFailed or grpc.RpcError."""
    with local_archive(str(path), stdin or sys.stdin.buffer) as (local, label), \
            Archive(local, label) as archive:
        plan = _plan(archive, name)  # every document read and checked before any change
        with leased(Client(channel), lease, "import") as client:
            return _import(client, archive, plan, progress)


@contextmanager
def leased(client: Client, lease: str | None, purpose: str,
           keep_on_failure: bool = False) -> Iterator[Client]:
    """`client` under `lease` (the channel carries it already), or under a new
    lease of its own that expires in 24 h and is deleted on the way out (with
    `keep_on_failure`, only on success: what a failed attempt stored, its
    ingests included, stays until the lease expires, for the next attempt)."""
    if lease is not None:
        client.lease = lease
        yield client
        return
    client.lease = f"fusesnap-{purpose}-{secrets.token_hex(8)}"
    client.lease_header = True
    expire = datetime.datetime.now(datetime.UTC) + LEASE_TTL
    client.leases.Create(lpb.CreateRequest(id=client.lease, labels={
        EXPIRE_LABEL: expire.isoformat(timespec="seconds").replace("+00:00", "Z")}))
    ok = False
    try:
        yield client
        ok = True
    finally:
        if ok or not keep_on_failure:
            client.leases.Delete(lpb.DeleteRequest(id=client.lease))


def _import(client: Client, archive: Archive, plan: list[tuple[str, Resolved]],
            progress: ProgressFactory | None) -> list[Imported]:
    done: list[Imported] = []
    for image_name, image in plan:
        for desc, labels in walk(archive, image):
            if desc == image.config and image.layers:
                labels = {**labels, REF_SNAPSHOT: image.chain_ids[-1]}
            client.put_blob(desc, _opener(archive, desc), labels, progress)
        applied = unpack(client, archive, image, progress)
        record_image(client, image_name, image.target)
        done.append(Imported(image_name, image.target, image.chain_ids, applied))
    return done


def _opener(archive: Archive, desc: ArchiveDescriptor) -> Callable[[], IO[bytes]]:
    return lambda: archive.open_blob(desc)


# ---------------------------------------------------------------------- image records


def top_chain_id(client: Client, name: str) -> str:
    """The chain ID of the top layer of image `name` for this platform ("" for
    an image without layers), from its documents in the content store."""
    image = client.images.Get(ipb.GetImageRequest(name=name)).image
    t = image.target
    target = ArchiveDescriptor(t.media_type, t.digest, t.size, dict(t.annotations))
    chain = resolve(StoreSource(client.content), target).chain_ids
    return chain[-1] if chain else ""


__all__ = ["ArchiveError", "Client", "ImportFailed", "Imported", "LayerError", "StoreSource",
           "apply_into", "extract_layer", "import_archive", "leased", "record_image",
           "top_chain_id", "unpack"]
