"""``fusesnap images commit NAME KEY``: an active snapshot's changes as a new
image, one layer on top of the image it was prepared from.

:func:`commit_image` streams the snapshot's diff (the daemon's ``Differ``),
gzips it into a layer blob, writes a config with the layer's diff_id and a
history entry appended and a manifest with the layer appended (both from the
base image's documents in the content store), commits the snapshot under the
new layer's chain ID — no bytes move, so ``images prepare NAME`` starts from
it at once — and points image NAME at the new manifest. Every blob carries
containerd's ``gc.ref`` labels, and all of it happens under a lease (its own,
expiring in 24 h and deleted at the end, or the caller's), so no collection
takes a half-made image.

The base image is ``base`` or the one ``images prepare`` named in the
snapshot's :data:`BASE_LABEL`; its top layer must be the snapshot's parent.
What is written to the snapshot between the diff and the commit is in the
snapshot but not in the layer: commit a snapshot nothing writes to.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import grpc

from fusesnap.client.archive import (
    ArchiveDescriptor,
    Resolved,
    chain_ids,
    parse_json,
    resolve,
)
from fusesnap.client.importer import (
    REF_SNAPSHOT,
    SNAPSHOTTER,
    Client,
    ImportFailed,
    StoreSource,
    leased,
    record_image,
)
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.diff_pb2 import DiffRequest
from fusesnap.pb.diff_pb2_grpc import DifferStub

BASE_LABEL = "fusesnap.io/image.base"
"""Snapshot label: the image ``images prepare`` made the snapshot from."""
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class CommitFailed(ImportFailed):
    """The snapshot or its base image is not fit for a commit."""


@dataclass
class Committed:
    name: str
    target: ArchiveDescriptor
    layer: ArchiveDescriptor
    diff_id: str
    chain_id: str


class _HashingFile:
    """A file that hashes what is written to it (the gzip stream's sink)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_layer(differ: DifferStub, key: str, path: str) -> tuple[ArchiveDescriptor, str]:
    """Stream the diff of `key` gzipped into `path`; (blob descriptor without
    media type, diff_id). The gzip header has no name and no time, so the same
    diff gives the same blob."""
    raw = hashlib.sha256()
    sink = _HashingFile(path)
    try:
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0,  # type: ignore[arg-type]
                           compresslevel=6) as gz:
            for resp in differ.Diff(DiffRequest(key=key)):
                raw.update(resp.data)
                gz.write(resp.data)
    finally:
        sink.close()
    blob = ArchiveDescriptor("", "sha256:" + sink.hash.hexdigest(), sink.size)
    return blob, "sha256:" + raw.hexdigest()


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _base(client: Client, key: str, base: str | None) -> tuple[spb.Info, str, Resolved]:
    info = client.snapshots.Stat(spb.StatSnapshotRequest(snapshotter=SNAPSHOTTER,
                                                         key=key)).info
    if info.kind != spb.ACTIVE:
        raise CommitFailed(f"snapshot {key} is not active")
    name = base or info.labels.get(BASE_LABEL)
    if not name:
        raise CommitFailed(f"snapshot {key} was not made by `images prepare`: "
                           "name its image with --base")
    image = client.images.Get(ipb.GetImageRequest(name=name)).image
    t = image.target
    resolved = resolve(StoreSource(client.content),
                       ArchiveDescriptor(t.media_type, t.digest, t.size, dict(t.annotations)))
    top = resolved.chain_ids[-1] if resolved.layers else ""
    if info.parent != top:
        raise CommitFailed(f"snapshot {key} is not on the top layer of image {name} "
                           f"(its parent is {info.parent or 'none'}, the image's top is "
                           f"{top or 'none'})")
    return info, name, resolved


def commit_image(channel: grpc.Channel, key: str, name: str, *, base: str | None = None,
                 lease: str | None = None) -> Committed:
    """Make image `name` from active snapshot `key` (see the module docstring).
    Raises CommitFailed, ArchiveError (a base document is invalid) or grpc.RpcError."""
    with leased(Client(channel), lease, "commit") as client:
        _, base_name, image = _base(client, key, base)
        source = StoreSource(client.content)
        manifest = parse_json(source.read_blob(image.manifest), f"manifest of {base_name}")
        config = parse_json(source.read_blob(image.config), f"config of {base_name}")
        with tempfile.TemporaryDirectory(prefix="fusesnap-commit-") as tmp:
            path = os.path.join(tmp, "layer")
            blob, diff_id = write_layer(DifferStub(channel), key, path)
            docker = image.manifest.media_type == DOCKER_MANIFEST
            layer = ArchiveDescriptor(DOCKER_LAYER_GZIP if docker else LAYER_GZIP, blob.digest,
                               blob.size)
            client.put_blob(layer, lambda: open(path, "rb"), {UNCOMPRESSED_LABEL: diff_id})
        chain_id = chain_ids([*image.diff_ids, diff_id])[-1]

        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace(
            "+00:00", "Z")
        config["created"] = now
        config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = [*image.diff_ids,
                                                                      diff_id]
        config["history"] = [*config.get("history", []),
                             {"created": now, "created_by": f"fusesnap images commit {key}"}]
        config_data = _json(config)
        config_desc = ArchiveDescriptor(image.config.media_type,
                                 "sha256:" + hashlib.sha256(config_data).hexdigest(),
                                 len(config_data))
        client.put_blob(config_desc, lambda: io.BytesIO(config_data), {REF_SNAPSHOT: chain_id})

        layers = [*manifest.get("layers", []),
                  {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}]
        manifest["config"] = {**manifest["config"], "digest": config_desc.digest,
                              "size": config_desc.size}
        manifest["layers"] = layers
        manifest_data = _json(manifest)
        target = ArchiveDescriptor(image.manifest.media_type,
                            "sha256:" + hashlib.sha256(manifest_data).hexdigest(),
                            len(manifest_data))
        client.put_blob(target, lambda: io.BytesIO(manifest_data), {
            "containerd.io/gc.ref.content.config": config_desc.digest,
            **{f"containerd.io/gc.ref.content.l.{i}": d["digest"]
               for i, d in enumerate(layers)}})

        if not client.committed(chain_id):
            client.snapshots.Commit(spb.CommitSnapshotRequest(
                snapshotter=SNAPSHOTTER, name=chain_id, key=key), metadata=client.metadata)
        record_image(client, name, target)
        return Committed(name, target, layer, diff_id, chain_id)
