"""``fusesnap images convert --estargz NAME NEWNAME``: an image whose layers
are eStargz (:mod:`fusesnap.estargz`), made from an ordinary one.

:func:`convert_image` reads each layer blob of NAME's manifest for this
platform from the content store (uncompressed, gzip or zstd), checks it
against its diff_id, writes its eStargz form, and stores it with containerd's
``containerd.io/uncompressed`` label; then a config whose rootfs.diff_ids are
the new layers' (the TOC and landmark entries make them differ from the
old), and a manifest of the same media type whose layers are gzip layers
(OCI or Docker, as the manifest is) carrying the annotations
``containerd.io/snapshot/stargz/toc.digest`` and
``io.containers.estargz.uncompressed-size``, as stargz-snapshotter's converter
sets them. The new layers are applied into snapshots (the daemon's Applier,
as an import does), so ``images mount NEWNAME`` works at once, and NEWNAME
points at the new manifest (an index, if NAME is one, is not carried over).
All of it happens under a lease, with ``gc.ref`` labels, as ``images commit``
does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import grpc

from fusesnap.client.archive import ArchiveDescriptor, chain_ids, parse_json, resolve
from fusesnap.client.commit import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    LAYER_GZIP,
    UNCOMPRESSED_LABEL,
)
from fusesnap.client.export import blob_stream
from fusesnap.client.importer import (
    REF_SNAPSHOT,
    Client,
    ImportFailed,
    StoreSource,
    apply_into,
    leased,
    record_image,
)
from fusesnap.estargz import EstargzError, write_estargz
from fusesnap.layertar import decompressed
from fusesnap.pb import images_pb2 as ipb


class ConvertFailed(ImportFailed):
    """The image cannot be converted (its layers or the names given)."""


@dataclass
class Converted:
    name: str
    target: ArchiveDescriptor
    layers: list[ArchiveDescriptor]
    diff_ids: list[str]


def _exists(client: Client, name: str) -> bool:
    try:
        client.images.Get(ipb.GetImageRequest(name=name))
    except grpc.RpcError as err:
        if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def _convert_layer(client: Client, layer: ArchiveDescriptor, diff_id: str, tmp: str,
                   docker: bool) -> tuple[ArchiveDescriptor, str]:
    plain = os.path.join(tmp, "layer.tar")
    raw = hashlib.sha256()
    try:
        with blob_stream(client.content, layer.digest) as blob, decompressed(blob) as stream, \
                open(plain, "wb") as out:
            while data := stream.read(1 << 20):
                raw.update(data)
                out.write(data)
    except (EOFError, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise ConvertFailed(f"layer {layer.digest}: {err}") from None
    if "sha256:" + raw.hexdigest() != diff_id:
        raise ConvertFailed(f"layer {layer.digest} is not the diff_id {diff_id} its config "
                            "names")
    path = os.path.join(tmp, "estargz")
    try:
        with open(path, "wb") as out:
            written = write_estargz(plain, out)
    except EstargzError as err:
        raise ConvertFailed(f"layer {layer.digest}: {err}") from None
    desc = ArchiveDescriptor(DOCKER_LAYER_GZIP if docker else LAYER_GZIP, written.digest,
                             written.size, {**layer.annotations, **written.annotations})
    client.put_blob(desc, lambda: open(path, "rb"), {UNCOMPRESSED_LABEL: written.diff_id})
    return desc, written.diff_id


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _put_document(client: Client, media_type: str, doc: Any,
                  labels: dict[str, str]) -> ArchiveDescriptor:
    data = _json(doc)
    desc = ArchiveDescriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    client.put_blob(desc, lambda: io.BytesIO(data), labels)
    return desc


def convert_image(channel: grpc.Channel, name: str, new_name: str, *, force: bool = False,
                  lease: str | None = None) -> Converted:
    """Make image `new_name` of eStargz layers from image `name` (see the
    module docstring). An existing `new_name` is replaced only with `force`.
    Raises ConvertFailed, ArchiveError (an invalid document) or grpc.RpcError
    (NotFound: no image `name`, or a blob missing)."""
    if new_name == name:
        raise ConvertFailed("NEWNAME must differ from NAME (the image converted is kept)")
    with leased(Client(channel), lease, "convert") as client:
        t = client.images.Get(ipb.GetImageRequest(name=name)).image.target
        if not force and _exists(client, new_name):
            raise ConvertFailed(f"image {new_name} exists (--force replaces it)")
        source = StoreSource(client.content)
        image = resolve(source, ArchiveDescriptor(t.media_type, t.digest, t.size,
                                                  dict(t.annotations)))
        source.require(image.layers)
        manifest = parse_json(source.read_blob(image.manifest), f"manifest of {name}")
        config = parse_json(source.read_blob(image.config), f"config of {name}")
        docker = image.manifest.media_type == DOCKER_MANIFEST
        layers: list[ArchiveDescriptor] = []
        diff_ids: list[str] = []
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            with tempfile.TemporaryDirectory(prefix="fusesnap-convert-") as tmp:
                desc, new_id = _convert_layer(client, layer, diff_id, tmp, docker)
            layers.append(desc)
            diff_ids.append(new_id)
        chain = chain_ids(diff_ids)

        config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
        config_desc = _put_document(client, image.config.media_type, config,
                                    {REF_SNAPSHOT: chain[-1]} if chain else {})
        manifest["config"] = {**manifest["config"], "digest": config_desc.digest,
                              "size": config_desc.size}
        manifest["layers"] = [{"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                               **({"annotations": dict(d.annotations)} if d.annotations
                                  else {})} for d in layers]
        target = _put_document(client, image.manifest.media_type, manifest, {
            "containerd.io/gc.ref.content.config": config_desc.digest,
            **{f"containerd.io/gc.ref.content.l.{i}": d.digest for i, d in enumerate(layers)}})

        parent = ""
        for layer, diff_id, chain_id in zip(layers, diff_ids, chain, strict=True):
            if not client.committed(chain_id):
                apply_into(client, chain_id, parent, layer, diff_id)
            parent = chain_id
        record_image(client, new_name, target)
        return Converted(new_name, target, layers, diff_ids)
