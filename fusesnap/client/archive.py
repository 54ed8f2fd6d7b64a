"""OCI image layouts and the documents in them: pure code, no gRPC.

An :class:`Archive` is a tar of an OCI image layout (``oci-layout``,
``index.json``, ``blobs/<alg>/<hex>``), as ``ctr images export``, ``skopeo``
and ``docker save`` (Docker 25+) write, or such a layout unpacked in a
directory. Its blobs are read in place, never extracted. A docker-archive
(``manifest.json``, ``<id>.json``, ``<id>/layer.tar``, as ``docker save``
wrote before Docker 25) reads as the same images in Docker v2 schema 2
manifests made while opening it (:data:`DOCKER_MANIFEST`).
:func:`local_archive` turns standard input or a gzip/zstd archive into a
file an Archive reads.

The document model — :class:`ArchiveDescriptor`, :func:`resolve` (index → manifest
for a platform → config → diff_ids), :func:`chain_ids` — reads from any
:class:`BlobSource`, so the same code walks an archive before an import and the
content store after it (``fusesnap images prepare``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from fusesnap.images import store
from fusesnap.layertar import LayerError, compression, decompressed

INDEX_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
})
REF_NAME = "org.opencontainers.image.ref.name"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
"""A docker-archive's image becomes a Docker v2 schema 2 manifest of these
types, as containerd's importer makes it: the config file is the config blob,
each ``layer.tar`` an uncompressed layer blob (its digest is its diff_id)."""

MAX_DOCUMENT = 4 << 20
"""Largest index, manifest or config read into memory."""


class ArchiveError(Exception):
    """The archive or an image document in it is missing, truncated or invalid."""


# ---------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Mapping[str, Any]) -> bool:
        """Whether a descriptor's ``platform`` object runs here (its variant
        only counts when both name one; arm64's default variant is v8)."""
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        theirs = other.get("variant") or ""
        if self.architecture == "arm64":
            theirs = theirs or "v8"
        return not (theirs and self.variant) or theirs == self.variant


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def host_platform() -> Platform:
    machine = platform.machine()
    arch = _ARCH.get(machine, machine)
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class ArchiveDescriptor(store.Descriptor):
    """An OCI descriptor as an archive holds it: a target plus its platform."""

    platform: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, doc: Any, where: str) -> ArchiveDescriptor:
        if not isinstance(doc, dict):
            raise ArchiveError(f"{where}: a descriptor must be an object")
        digest, size = doc.get("digest"), doc.get("size")
        if not isinstance(digest, str) or ":" not in digest:
            raise ArchiveError(f"{where}: descriptor without a valid digest")
        if not isinstance(size, int) or size < 0:
            raise ArchiveError(f"{where}: descriptor of {digest} without a valid size")
        annotations = doc.get("annotations") or {}
        plat = doc.get("platform")
        return cls(str(doc.get("mediaType") or ""), digest, size, dict(annotations),
                   plat if isinstance(plat, dict) else None)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def is_manifest(self) -> bool:
        return self.media_type in MANIFEST_TYPES


class BlobSource(Protocol):
    def read_blob(self, desc: ArchiveDescriptor) -> bytes:
        """The bytes of `desc`, checked against its digest and size."""

    def has_blob(self, digest: str) -> bool: ...


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ArchiveError(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ArchiveError(f"{what} is not a JSON object")
    return doc


def _descriptors(doc: dict[str, Any], key: str, what: str) -> list[ArchiveDescriptor]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise ArchiveError(f"{what} has no {key} list")
    return [ArchiveDescriptor.parse(d, f"{what} {key}[{i}]") for i, d in enumerate(items)]


@dataclass
class Resolved:
    """One image, from its target down to its layers, for one platform."""

    target: ArchiveDescriptor
    indexes: list[tuple[ArchiveDescriptor, list[ArchiveDescriptor]]]
    """Every index on the way, with its children (other platforms included)."""
    manifest: ArchiveDescriptor
    config: ArchiveDescriptor
    layers: list[ArchiveDescriptor]
    diff_ids: list[str]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)


def resolve(source: BlobSource, target: ArchiveDescriptor,
            plat: Platform | None = None) -> Resolved:
    """Walk `target` (an index or a manifest) to the manifest for `plat` (the
    host by default), its config and layers. ArchiveError if a document is
    missing or invalid, no manifest fits, or layers and diff_ids disagree."""
    plat = plat or host_platform()
    indexes: list[tuple[ArchiveDescriptor, list[ArchiveDescriptor]]] = []
    desc = target
    while desc.is_index:
        if len(indexes) > 8:
            raise ArchiveError(f"indexes nested too deep under {target.digest}")
        children = _descriptors(parse_json(source.read_blob(desc), desc.digest),
                                "manifests", f"index {desc.digest}")
        indexes.append((desc, children))
        desc = _pick(children, plat, desc.digest)
    if not desc.is_manifest:
        raise ArchiveError(f"{desc.digest}: unsupported media type {desc.media_type!r}")
    manifest = parse_json(source.read_blob(desc), f"manifest {desc.digest}")
    config = ArchiveDescriptor.parse(manifest.get("config"), f"manifest {desc.digest} config")
    layers = _descriptors(manifest, "layers", f"manifest {desc.digest}")
    cfg = parse_json(source.read_blob(config), f"config {config.digest}")
    rootfs = cfg.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ArchiveError(f"config {config.digest} has no rootfs.diff_ids list")
    if len(diff_ids) != len(layers):
        raise ArchiveError(f"manifest {desc.digest} has {len(layers)} layers but its config "
                           f"{len(diff_ids)} diff_ids")
    return Resolved(target, indexes, desc, config, layers, list(diff_ids))


def _pick(children: Sequence[ArchiveDescriptor], plat: Platform, where: str) -> ArchiveDescriptor:
    candidates = [c for c in children if c.is_index or c.is_manifest]
    if len(candidates) == 1 and candidates[0].platform is None:
        return candidates[0]
    for child in candidates:
        if child.platform is not None and plat.matches(child.platform):
            return child
    found = sorted({f"{c.platform.get('os')}/{c.platform.get('architecture')}"
                    for c in candidates if c.platform})
    raise ArchiveError(f"index {where} has no manifest for {plat} "
                       f"(it has: {', '.join(found) or 'none'})")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor_json(desc: ArchiveDescriptor) -> dict[str, Any]:
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain IDs: chain(L0) = diff(L0); chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def verify(data: bytes, desc: ArchiveDescriptor) -> bytes:
    """`data` if it has `desc`'s size and digest, else ArchiveError."""
    alg, _, want = desc.digest.partition(":")
    if alg not in ("sha256", "sha384", "sha512"):
        raise ArchiveError(f"{desc.digest}: unsupported digest algorithm")
    if len(data) != desc.size:
        raise ArchiveError(f"blob {desc.digest}: {len(data)} bytes, the descriptor says "
                           f"{desc.size}")
    if hashlib.new(alg, data).hexdigest() != want:
        raise ArchiveError(f"blob {desc.digest}: content does not match its digest")
    return data


# ---------------------------------------------------------------------- archives


@dataclass(frozen=True)
class IndexEntry:
    """One image index.json names: its target and the name it gives it (if any)."""

    target: ArchiveDescriptor
    name: str | None


class Archive:
    """An OCI image layout in a tar file or a directory. Use as a context manager.

    Opening checks the layout (``oci-layout``, ``index.json``) and, for a tar,
    that no member runs past the end of the file (a truncated archive).
    """

    def __init__(self, path: str | os.PathLike[str], label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        """What the messages call the archive (the file the user named)."""
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._docker: list[IndexEntry] | None = None
        """The images of a docker-archive (None for an OCI layout)."""
        self._memory: dict[str, bytes] = {}
        """Blobs made while opening (a docker-archive's manifests), by digest."""
        self._aliases: dict[str, str] = {}
        """Members that are blobs under another name (a docker-archive's), by digest."""
        self._hashed: dict[str, tuple[str, int]] = {}
        """The digest and size of each of those members, by name (hashed once)."""
        if self.path.is_dir():
            self._check_layout()
            return
        try:
            self._tar = tarfile.open(self.path, "r:")
        except FileNotFoundError:
            raise ArchiveError(f"{self.label}: no such file") from None
        except (tarfile.TarError, OSError) as e:
            raise ArchiveError(f"{self.label}: not a tar archive ({e})") from None
        try:
            end = os.path.getsize(self.path)
            for m in self._tar.getmembers():
                name = os.path.normpath(m.name).lstrip("/")
                if m.offset_data + (m.size if m.isreg() else 0) > end:
                    raise ArchiveError(f"{self.label} is truncated: {m.name} needs "
                                       f"{m.offset_data + m.size} bytes, the file has {end}")
                if m.isreg():
                    self._members[name] = m
            self._check_end(end)
            self._check_layout()
        except tarfile.TarError as e:
            self.close()
            raise ArchiveError(f"{self.label} is truncated or corrupt ({e})") from None
        except BaseException:
            self.close()
            raise

    def _check_end(self, end: int) -> None:
        """A tar ends with zero blocks; tarfile stops quietly at a cut header."""
        assert self._tar is not None
        offset = self._tar.offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            block = f.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
            raise ArchiveError(f"{self.label} is truncated: it ends at byte {end} without "
                               "the end-of-archive blocks")

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def _check_layout(self) -> None:
        if not self._exists("oci-layout") and not self._exists("index.json") \
                and self._exists("manifest.json"):
            self._docker = self._docker_entries()
            return
        if not self._exists("oci-layout"):
            raise ArchiveError(f"{self.label}: no oci-layout file nor manifest.json: neither "
                               "an OCI image layout nor a docker-archive")
        layout = parse_json(self._read("oci-layout", MAX_DOCUMENT), "oci-layout")
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise ArchiveError(f"{self.label}: unsupported imageLayoutVersion "
                               f"{layout.get('imageLayoutVersion')!r}")
        if not self._exists("index.json"):
            raise ArchiveError(f"{self.label}: no index.json")

    # docker-archive --------------------------------------------------------

    def _docker_entries(self) -> list[IndexEntry]:
        """The images of a docker-archive's manifest.json, each as the Docker
        v2 schema 2 manifest made of it (see :data:`DOCKER_MANIFEST`)."""
        try:
            doc = json.loads(self._read("manifest.json", MAX_DOCUMENT))
        except ValueError as e:
            raise ArchiveError(f"{self.label}: manifest.json is not JSON: {e}") from None
        if not isinstance(doc, list) or not doc:
            raise ArchiveError(f"{self.label}: manifest.json is not a list of images")
        out = []
        for i, item in enumerate(doc):
            where = f"{self.label}: manifest.json[{i}]"
            if not isinstance(item, dict):
                raise ArchiveError(f"{where} is not an object")
            config_name, layer_names = item.get("Config"), item.get("Layers")
            tags = item.get("RepoTags") or []
            if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                    or not all(isinstance(n, str) for n in layer_names) \
                    or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ArchiveError(f"{where} needs Config, Layers (a list) and RepoTags "
                                   "(a list of names)")
            config = self._docker_blob(config_name, DOCKER_CONFIG, MAX_DOCUMENT)
            cfg = parse_json(self.read_blob(config), f"{where} config {config_name}")
            rootfs = cfg.get("rootfs")
            diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
                raise ArchiveError(f"{where}: {len(layer_names)} layers but the config's "
                                   f"rootfs.diff_ids is {diff_ids!r:.80}")
            layers = []
            for n, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
                layer = self._docker_blob(name, DOCKER_LAYER, None)
                if layer.digest != diff_id:
                    raise ArchiveError(f"{where}: layer {name} is {layer.digest}, the config's "
                                       f"rootfs.diff_ids[{n}] says {diff_id}")
                layers.append(layer)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": _descriptor_json(config),
                "layers": [_descriptor_json(d) for d in layers],
            }, sort_keys=True, separators=(",", ":")).encode()
            target = ArchiveDescriptor(DOCKER_MANIFEST, _sha256(manifest), len(manifest))
            self._memory[target.digest] = manifest
            out += [IndexEntry(target, tag) for tag in tags] or [IndexEntry(target, None)]
        return out

    def _docker_blob(self, name: str, media_type: str, limit: int | None) -> ArchiveDescriptor:
        """Member `name` of a docker-archive as a blob (its digest computed)."""
        name = os.path.normpath(name).lstrip("/")
        if name == "." or name.startswith("../") or name == "..":
            raise ArchiveError(f"{self.label}: manifest.json names {name!r}, outside the archive")
        if name in self._hashed:
            digest, size = self._hashed[name]
            return ArchiveDescriptor(media_type, digest, size)
        if not self._exists(name):
            raise ArchiveError(f"{self.label}: manifest.json names {name}, which is not there")
        size = self._size(name)
        if limit is not None and size > limit:
            raise ArchiveError(f"{self.label}: {name} is larger than {limit} bytes")
        h = hashlib.sha256()
        with self._open(name) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        self._aliases[digest] = name
        self._hashed[name] = digest, size
        return ArchiveDescriptor(media_type, digest, size)

    # files ---------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        if self._tar is None:
            return (self.path / name).is_file()
        return name in self._members

    def _size(self, name: str) -> int:
        if self._tar is None:
            return (self.path / name).stat().st_size
        return self._members[name].size

    def _open(self, name: str) -> IO[bytes]:
        if self._tar is None:
            return open(self.path / name, "rb")
        f = self._tar.extractfile(self._members[name])
        assert f is not None
        return f

    def _read(self, name: str, limit: int) -> bytes:
        if self._size(name) > limit:
            raise ArchiveError(f"{self.label}: {name} is larger than {limit} bytes")
        with self._open(name) as f:
            return f.read()

    @staticmethod
    def _blob_name(digest: str) -> str:
        alg, _, hexpart = digest.partition(":")
        if not alg.isalnum() or not hexpart.isalnum():
            raise ArchiveError(f"invalid digest {digest!r}")
        return f"blobs/{alg}/{hexpart}"

    # blobs ---------------------------------------------------------------

    def _blob_member(self, digest: str) -> str:
        return self._aliases.get(digest) or self._blob_name(digest)

    def has_blob(self, digest: str) -> bool:
        return digest in self._memory or self._exists(self._blob_member(digest))

    def blob_size(self, digest: str) -> int:
        if digest in self._memory:
            return len(self._memory[digest])
        return self._size(self._blob_member(digest))

    def open_blob(self, desc: ArchiveDescriptor) -> IO[bytes]:
        """A reader of the blob's bytes (not verified: the content store and
        the layer's diff_id check them). ArchiveError if it is missing or has
        another size."""
        if desc.digest in self._memory:
            return io.BytesIO(self._memory[desc.digest])
        name = self._blob_member(desc.digest)
        if not self._exists(name):
            raise ArchiveError(f"{self.label}: blob {desc.digest} is missing")
        if self._size(name) != desc.size:
            raise ArchiveError(f"{self.label}: blob {desc.digest} has {self._size(name)} "
                               f"bytes, its descriptor says {desc.size}")
        return self._open(name)

    def read_blob(self, desc: ArchiveDescriptor) -> bytes:
        if desc.size > MAX_DOCUMENT:
            raise ArchiveError(f"{desc.digest}: a document larger than {MAX_DOCUMENT} bytes")
        with self.open_blob(desc) as f:
            return verify(f.read(), desc)

    # images --------------------------------------------------------------

    def entries(self) -> list[IndexEntry]:
        """The images index.json lists, each with its ref name annotation; of a
        docker-archive, one per RepoTags name (or one unnamed)."""
        if self._docker is not None:
            return self._docker
        index = parse_json(self._read("index.json", MAX_DOCUMENT), "index.json")
        out = [IndexEntry(d, d.annotations.get(REF_NAME) or None)
               for d in _descriptors(index, "manifests", "index.json")]
        if not out:
            raise ArchiveError(f"{self.label}: index.json lists no image")
        return out


@contextmanager
def local_archive(path: str, stdin: IO[bytes]) -> Iterator[tuple[Path, str]]:
    """``(file, label)``: a file or directory :class:`Archive` reads with random
    access, holding the archive `path` names, and what messages call it.

    `path` ``-`` is `stdin`. An archive that is gzip or zstd (by its magic
    bytes, not its name) is decompressed. Standard input and compressed
    archives are spooled, streamed through the decompressor, into a file in a
    private (0700) temporary directory under ``$TMPDIR`` (default /tmp),
    removed on the way out whatever happens (an error, Ctrl-C): a tar's
    members are read in any order, which a pipe cannot do. A plain tar file
    or a directory is read in place. ArchiveError for a missing file or a
    corrupt compressed stream."""
    if path == "-":
        label = "standard input"
        with _spooled(stdin, label) as spool:
            yield spool, label
        return
    try:
        if os.path.isdir(path):
            yield Path(path), path
            return
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file") from None
    except OSError as e:
        raise ArchiveError(f"{path}: {e.strerror}") from None
    with f:
        compressed = compression(f.read(4))
        f.seek(0)
        if not compressed:
            yield Path(path), path
            return
        with _spooled(f, path) as spool:
            yield spool, path


class _OneRead:
    """`source` whose ``read(n)`` is ``read1(n)``: one system call at most, so
    that Python runs its Ctrl-C handler between two. (A SIGINT that comes while
    C code loops over reads to fill a buffer is seen only once that buffer is
    full: from a pipe that has stopped, never.)"""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.read1 = getattr(source, "read1", source.read)

    def read(self, n: int = -1) -> bytes:
        return bytes(self.read1(n))


@contextmanager
def _spooled(source: IO[bytes], label: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fusesnap-import-") as tmp:
        spool = Path(tmp) / "archive.tar"
        try:
            with decompressed(cast(IO[bytes], _OneRead(source))) as stream, \
                    open(spool, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        except (EOFError, zlib.error, gzip.BadGzipFile, LayerError) as e:
            raise ArchiveError(f"{label}: corrupt or truncated compressed stream "
                               f"({e})") from None
        except OSError as e:
            raise ArchiveError(f"{label}: copying it to {tmp}: {e.strerror}") from None
        yield spool


def walk(source: BlobSource, resolved: Resolved
         ) -> Iterator[tuple[ArchiveDescriptor, dict[str, str]]]:
    """Every blob of `resolved` that `source` has, children first, each with
    containerd's ``gc.ref.content`` labels naming its children (``.m.<i>`` on
    an index, ``.config`` and ``.l.<i>`` on a manifest)."""
    yield from ((layer, {}) for layer in resolved.layers)
    yield resolved.config, {}
    yield resolved.manifest, {**{"containerd.io/gc.ref.content.config": resolved.config.digest},
                              **{f"containerd.io/gc.ref.content.l.{i}": layer.digest
                                 for i, layer in enumerate(resolved.layers)}}
    for desc, children in reversed(resolved.indexes):
        yield desc, {f"containerd.io/gc.ref.content.m.{i}": child.digest
                     for i, child in enumerate(children) if source.has_blob(child.digest)}
