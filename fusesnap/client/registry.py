"""A client of an OCI distribution registry: what ``fusesnap images pull``
reads and ``fusesnap images push`` writes (HEAD, uploads, mounts and manifest
PUTs at the end of the class; a pushing client asks for tokens of scope
``pull,push``). The HTTP, references and auth are fusesnap/distribution.py's.

:class:`Registry` is a :class:`BlobSource`, so
:func:`fusesnap.client.archive.resolve` walks an image in the registry as it
walks an archive; documents (indexes, manifests, configs) are read whole,
capped at 4 MiB, and checked against their digests; layers are streamed
(:meth:`Registry.open_blob`), from an offset with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import threading
import urllib.parse
from collections.abc import Iterable
from typing import IO, Any, cast

from fusesnap.client.archive import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    ArchiveDescriptor,
    ArchiveError,
    verify,
)
from fusesnap.distribution import (
    MAX_DOCUMENT,
    Body,
    Reference,
    RegistryError,
    Session,
    docker_credentials,
)

ACCEPT = ", ".join(sorted(INDEX_TYPES | MANIFEST_TYPES))


class Registry(Session):
    """One repository of one registry, as a source of images and a target of
    pushes. Thread-safe: every request has its own connection."""

    def __init__(self, ref: Reference, **options: Any) -> None:
        super().__init__(ref, **options)
        self._documents: dict[str, bytes] = {}

    def target(self) -> ArchiveDescriptor:
        """The descriptor of the reference's manifest or index (its bytes kept
        for :meth:`read_blob`), checked against the reference's digest or the
        registry's ``Docker-Content-Digest``."""
        ref = self.ref.digest or self.ref.tag
        resp = self.get(f"manifests/{ref}", {"Accept": ACCEPT})
        said = resp.getheader("Docker-Content-Digest", "")
        media_type = resp.getheader("Content-Type", "").partition(";")[0].strip()
        data = self._read_capped(resp, f"manifest {ref}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        for expected in (self.ref.digest, said):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise RegistryError(f"manifest {ref}: its bytes are {digest}, the "
                                    f"registry says {expected}")
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            try:
                media_type = str(json.loads(data).get("mediaType") or media_type)
            except (ValueError, AttributeError):
                pass
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            raise RegistryError(f"manifest {ref}: unsupported media type {media_type!r}")
        with self._lock:
            self._documents[digest] = data
        return ArchiveDescriptor(media_type, digest, len(data))

    def read_blob(self, desc: ArchiveDescriptor) -> bytes:
        """An index, manifest or config, whole, checked (ArchiveError if not)."""
        with self._lock:
            data = self._documents.get(desc.digest)
        if data is None:
            if desc.size > MAX_DOCUMENT:
                raise ArchiveError(f"{desc.digest}: a document larger than {MAX_DOCUMENT} "
                                   "bytes")
            kind = "manifests" if desc.is_index or desc.is_manifest else "blobs"
            headers = {"Accept": ACCEPT} if kind == "manifests" else {}
            data = self._read_capped(self.get(f"{kind}/{desc.digest}", headers),
                                     f"{kind[:-1]} {desc.digest}")
            verify(data, desc)
            with self._lock:
                self._documents[desc.digest] = data
        return verify(data, desc)

    def has_blob(self, digest: str) -> bool:
        """Whether the pull has read this document (an index's other children
        are not fetched, so no label names them)."""
        with self._lock:
            return digest in self._documents

    def open_blob(self, desc: ArchiveDescriptor, offset: int = 0,
                  stop: threading.Event | None = None) -> IO[bytes]:
        """A stream of the blob's bytes from `offset` (a Range request; a
        registry that ignores it has the first bytes skipped); once `stop` is
        set, its next read raises RegistryError."""
        with self._lock:
            data = self._documents.get(desc.digest)
        if data is not None:
            return io.BytesIO(data[offset:])
        if offset >= desc.size:  # all there, not committed: nothing to ask for (a 416)
            return io.BytesIO(b"")
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.get(f"blobs/{desc.digest}", headers)
        if offset and resp.status == 200:
            left = offset
            while left > 0:
                chunk = resp.read(min(left, 1 << 20))
                if not chunk:
                    resp.close()
                    raise RegistryError(f"blob {desc.digest}: shorter than {offset} bytes")
                left -= len(chunk)
        return cast(IO[bytes], Body(resp, desc.digest, desc.size - offset, stop))

    # push ---------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        """HEAD ``blobs/DIGEST``: whether the repository has the blob."""
        resp = self.request("HEAD", f"blobs/{digest}", ok=(200, 404))
        resp.close()
        return resp.status == 200

    def _location(self, resp: http.client.HTTPResponse, url: str) -> str:
        location = resp.getheader("Location", "")
        resp.read(65536)
        resp.close()
        if not location:
            raise RegistryError(f"{self.ref.api_host}: an upload answer without a Location")
        return urllib.parse.urljoin(url, location)

    def mount_blob(self, digest: str, source: str) -> bool:
        """POST ``blobs/uploads/?mount=DIGEST&from=SOURCE``: True if the
        registry mounted the blob from repository `source` (201); an upload
        it started instead (202) is left to expire."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        resp = self.request("POST", f"blobs/uploads/?{query}", body=b"", ok=(201, 202))
        resp.read(65536)
        resp.close()
        return resp.status == 201

    def upload_blob(self, digest: str, size: int, chunks: Iterable[bytes],
                    chunked: bool) -> int:
        """Upload a blob: one PUT of the one chunk when not `chunked`, else a
        PATCH per chunk (Content-Range) and an empty PUT to finish. Checks the
        registry's ``Docker-Content-Digest``; returns the number of PATCHes."""
        start = self.request("POST", "blobs/uploads/", body=b"", ok=(202,))
        location = self._location(start, self._url("blobs/uploads/"))
        patches = offset = 0
        whole: list[bytes] = []
        for chunk in chunks:
            if not chunked:
                whole.append(chunk)
                continue
            resp = self.request("PATCH", location, {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                body=chunk, ok=(202,))
            location = self._location(resp, location)
            offset += len(chunk)
            patches += 1
        final = b"".join(whole)
        sep = "&" if urllib.parse.urlsplit(location).query else "?"
        url = location + sep + urllib.parse.urlencode({"digest": digest})
        resp = self.request("PUT", url, {"Content-Type": "application/octet-stream"},
                            body=final, ok=(201,))
        said = resp.getheader("Docker-Content-Digest", "")
        resp.read(65536)
        resp.close()
        if said and said != digest:
            raise RegistryError(f"blob {digest}: the registry stored it as {said}")
        if not chunked and len(final) != size:
            raise RegistryError(f"blob {digest}: {len(final)} bytes read, {size} expected")
        return patches

    def put_manifest(self, ref: str, data: bytes, media_type: str) -> str:
        """PUT ``manifests/REF`` (a tag or a digest) with these exact bytes;
        returns their digest, checked against the registry's."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = self.request("PUT", f"manifests/{ref}", {"Content-Type": media_type},
                            body=data, ok=(201,))
        said = resp.getheader("Docker-Content-Digest", "")
        resp.read(65536)
        resp.close()
        if said and said != digest:
            raise RegistryError(f"manifest {ref}: the registry stored it as {said}, "
                                f"its bytes are {digest}")
        return digest



__all__ = ["Reference", "Registry", "RegistryError", "docker_credentials"]
