"""``fusesnap images export NAME ARCHIVE``: an image as a tar of an OCI image
layout, read from the content store.

The archive holds ``oci-layout``, an ``index.json`` naming the image's
manifest for this platform (with the ``org.opencontainers.image.ref.name``
annotation set to NAME and the platform of its config), and the manifest,
config and layer blobs; ``ctr images import``, ``umoci`` and ``fusesnap
images import`` read it. Layers are streamed from the daemon, never held in
memory; the archive appears under its name only once complete.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import IO

import grpc

from fusesnap.client.archive import REF_NAME, ArchiveDescriptor, parse_json, resolve
from fusesnap.client.importer import Client, StoreSource
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb.content_pb2_grpc import ContentStub

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CHUNK = 1 << 20


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte strings."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def blob_stream(content: ContentStub, digest: str) -> IO[bytes]:
    """A blob of the content store as a stream (read once, never held whole)."""
    data = (r.data for r in content.Read(cpb.ReadContentRequest(digest=digest)))
    return io.BufferedReader(_Chunks(data), CHUNK)


def _member(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def export_image(channel: grpc.Channel, name: str, out: IO[bytes]) -> ArchiveDescriptor:
    """Write image `name` as a tar stream to `out` (see the module
    docstring); returns the manifest descriptor index.json names. Raises
    ArchiveError (an invalid document), grpc.RpcError (NotFound: no such
    image or a missing blob) or OSError. Where the tar goes (a file replaced
    whole, a pipe) is the caller's."""
    client = Client(channel)
    t = client.images.Get(ipb.GetImageRequest(name=name)).image.target
    source = StoreSource(client.content)
    image = resolve(source, ArchiveDescriptor(t.media_type, t.digest, t.size, dict(t.annotations)))
    source.require(image.layers)  # before a byte is written
    config = parse_json(source.read_blob(image.config), f"config {image.config.digest}")
    platform = {k: config[k] for k in ("architecture", "os", "variant") if config.get(k)}
    entry = {"mediaType": image.manifest.media_type, "digest": image.manifest.digest,
             "size": image.manifest.size, "annotations": {REF_NAME: name}}
    if platform:
        entry["platform"] = platform
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE,
                        "manifests": [entry]}, indent=2).encode()
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    blobs = {d.digest: d for d in (image.manifest, image.config, *image.layers)}

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member("oci-layout", len(layout)), io.BytesIO(layout))
        tar.addfile(_member("index.json", len(index)), io.BytesIO(index))
        algorithms = sorted({d.partition(":")[0] for d in blobs})
        tar.addfile(_member("blobs", directory=True))
        for alg in algorithms:
            tar.addfile(_member(f"blobs/{alg}", directory=True))
        for digest in sorted(blobs):
            desc = blobs[digest]
            alg, _, hexdigest = digest.partition(":")
            tar.addfile(_member(f"blobs/{alg}/{hexdigest}", desc.size),
                        blob_stream(client.content, digest))
    return image.manifest
