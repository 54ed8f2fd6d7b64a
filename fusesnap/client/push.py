"""``fusesnap images push NAME REF``: an image of the content store to an
OCI distribution registry, the reverse of :mod:`fusesnap.client.pull`.

The image's target is resolved as export resolves it: the manifest for this
platform, or, when the target is an index all of whose manifests (with their
configs and layers) the store has, the index and every manifest. For each
blob (configs and layers, each once) a HEAD asks the registry whether the
repository has it: if so it is skipped; else, if its SOURCE_LABEL names
another repository of the host, a cross-repository mount is asked for; else
it is uploaded from the content store (Content Read): in one PUT when it is
at most :data:`CHUNK` bytes, else in PATCHes of :data:`CHUNK` bytes and a
final PUT, each chunk held in memory so that a request answered with a 401
can be sent again. The registry's
``Docker-Content-Digest`` is checked. Then the manifests are PUT with their
exact stored bytes (so their digests do not change): the children of an
index by digest, the index (or the one manifest) last, by REF's tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from fusesnap.client.archive import ArchiveDescriptor, parse_json, resolve
from fusesnap.client.importer import (
    Client,
    Progress,
    ProgressFactory,
    StoreSource,
    short,
)
from fusesnap.client.pull import SOURCE_LABEL, PullOptions
from fusesnap.client.registry import Reference, Registry, RegistryError, docker_credentials
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import images_pb2 as ipb

CHUNK = 16 << 20
"""Blobs up to this size go in one PUT; larger ones in PATCHes of this size."""


@dataclass
class Pushed:
    reference: str
    target: ArchiveDescriptor
    uploaded: list[str] = field(default_factory=list)
    """Digests of the blobs sent."""
    skipped: list[str] = field(default_factory=list)
    """Digests of the blobs the registry had."""
    patches: int = 0
    """PATCH requests of chunked uploads."""
    mounted: list[str] = field(default_factory=list)
    """Digests of the blobs mounted from another repository."""


def _mounted(client: Client, registry: Registry, digest: str) -> bool:
    """Whether the registry mounted the blob from a repository of the same
    host that its SOURCE_LABEL names (a refusal of any kind: not mounted)."""
    ref = registry.ref
    labels = client.content.Info(cpb.InfoRequest(digest=digest)).info.labels
    for repo in labels.get(SOURCE_LABEL + ref.host, "").split(","):
        if repo and repo != ref.repository:
            try:
                if registry.mount_blob(digest, repo):
                    return True
            except RegistryError:
                pass
    return False


def _descriptor(d: object, what: str) -> ArchiveDescriptor:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) \
            or not isinstance(d.get("size"), int):
        raise RegistryError(f"{what}: a descriptor without digest or size")
    return ArchiveDescriptor(str(d.get("mediaType", "")), d["digest"], d["size"])


def _blobs(source: StoreSource, manifest: ArchiveDescriptor) -> list[ArchiveDescriptor]:
    doc = parse_json(source.read_blob(manifest), f"manifest {manifest.digest}")
    what = f"manifest {manifest.digest}"
    layers = doc.get("layers")
    return [_descriptor(doc.get("config"), what),
            *(_descriptor(d, what) for d in (layers if isinstance(layers, list) else []))]


def _chunks(client: Client, desc: ArchiveDescriptor,
            bar: Progress | None = None) -> Iterator[bytes]:
    """The blob from the content store, CHUNK bytes at a time (the last may
    be less); `bar` shows the bytes handed on."""
    offset = 0
    while offset < desc.size:
        size = min(CHUNK, desc.size - offset)
        data = b"".join(r.data for r in client.content.Read(
            cpb.ReadContentRequest(digest=desc.digest, offset=offset, size=size)))
        if len(data) != size:
            raise RegistryError(f"blob {desc.digest}: the store gave {len(data)} bytes at "
                                f"{offset}, {size} expected")
        yield data
        offset += size
        if bar is not None:
            bar.update(offset)


def push_image(channel: grpc.Channel, name: str, reference: str, *,
               options: PullOptions | None = None,
               progress: ProgressFactory | None = None) -> Pushed:
    """Push image `name` to `reference` (see the module docstring). Raises
    RegistryError, ArchiveError (an invalid document) or grpc.RpcError
    (NotFound: no such image, or a blob missing from the store)."""
    options = options or PullOptions()
    ref = Reference.parse(reference)
    client = Client(channel)
    t = client.images.Get(ipb.GetImageRequest(name=name)).image.target
    source = StoreSource(client.content)
    image = resolve(source, ArchiveDescriptor(t.media_type, t.digest, t.size,
                                              dict(t.annotations)))
    top, manifests = image.manifest, [image.manifest]
    if len(image.indexes) == 1 and all(c.is_manifest for c in image.indexes[0][1]):
        index, children = image.indexes[0]
        if all(source.has_blob(c.digest) and all(source.has_blob(b.digest)
                                                 for b in _blobs(source, c))
               for c in children):
            top, manifests = index, children
    if ref.digest and ref.digest != top.digest:
        raise RegistryError(f"{reference}: {name} is {top.digest}, not {ref.digest}")
    creds = options.creds if options.creds is not None else docker_credentials(ref.host)
    registry = Registry(ref, creds=creds, ca=options.ca, plain_http=options.plain_http,
                        push=True)
    done = Pushed(str(ref), top)
    seen: set[str] = set()
    for manifest in manifests:
        for blob in _blobs(source, manifest):
            if blob.digest in seen:
                continue
            seen.add(blob.digest)
            if registry.blob_exists(blob.digest):
                done.skipped.append(blob.digest)
                continue
            source.require([blob])  # a lazy layer still downloading: say so
            if _mounted(client, registry, blob.digest):
                done.mounted.append(blob.digest)
                continue
            bar = progress(f"push {short(blob.digest)}", blob.size) if progress else None
            done.patches += registry.upload_blob(blob.digest, blob.size,
                                                 _chunks(client, blob, bar),
                                                 chunked=blob.size > CHUNK)
            if bar is not None:
                bar.update(blob.size, final=True)
            done.uploaded.append(blob.digest)
    for manifest in manifests:
        if manifest is not top:
            registry.put_manifest(manifest.digest, source.read_blob(manifest),
                                  manifest.media_type)
    registry.put_manifest(ref.tag or ref.digest, source.read_blob(top), top.media_type)
    return done


__all__ = ["CHUNK", "Pushed", "push_image"]
