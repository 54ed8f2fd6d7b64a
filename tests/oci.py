"""Offline builder of OCI image archives for the tests.

An :class:`Image` is a list of :class:`Layer` s, each a list of tar entries
(files, directories, symlinks, hard links, fifos, whiteouts, opaque markers;
xattrs as PAX ``SCHILY.xattr.*`` records). :func:`write_archive` writes a tar
of an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``)
that ``ctr images import`` and ``umoci`` read; the index names the image with
``org.opencontainers.image.ref.name``. The output is a function of the
description only: every timestamp is 0, gzip headers carry no name or time,
entries come in a fixed order.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"

# The host's busybox (Debian's busybox-static) and the applets the tests use.
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "stat", "sha256sum", "echo", "id", "mkdir", "rm", "mv", "ln",
           "touch", "find", "readlink", "test", "true", "false", "wc", "head", "tail", "sort",
           "dd", "chmod", "chown", "grep", "sed", "env", "sleep", "du",
           "df", "mount", "uname", "printf", "tr", "xargs", "awk", "cut", "md5sum", "diff",
           "su")

# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class File:
    path: str
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class HardLink:
    """A second name for `target`, a file written earlier in the same layer."""
    path: str
    target: str


@dataclass(frozen=True)
class Fifo:
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Whiteout:
    """Deletes `path` of the lower layers (``dir/.wh.name``)."""
    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything the lower layers have under directory `path`
    (``path/.wh..wh..opq``); the directory itself must be in this layer too."""
    path: str


Entry = File | Dir | Symlink | HardLink | Fifo | Whiteout | Opaque


@dataclass(frozen=True)
class Layer:
    entries: Sequence[Entry]
    gzip: bool = True


@dataclass(frozen=True)
class Image:
    """`name` is a full reference (``registry/repo:tag``), so that ``ctr images
    import`` keeps it as it is."""
    name: str
    layers: Sequence[Layer]
    cmd: Sequence[str] = ("/bin/sh",)
    env: Sequence[str] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)


# --------------------------------------------------------------------------- tar


def _name(path: str) -> str:
    """The tar member name of an absolute or relative path."""
    name = str(PurePosixPath("/", path).relative_to("/"))
    if name == ".":
        raise ValueError("the root is not an entry")
    return name


def _pax(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    # tarfile writes a str holding surrogates back as the original bytes (and
    # adds hdrcharset=BINARY), so binary values like security.capability survive.
    return {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
            for k, v in sorted(xattrs.items())}


def _info(name: str, kind: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """The uncompressed tar of one layer, entries in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            data: bytes | None = None
            if isinstance(e, File):
                info = _info(_name(e.path), tarfile.REGTYPE, e.mode, e.uid, e.gid)
                info.size = len(e.content)
                info.pax_headers = _pax(e.xattrs)
                data = e.content
            elif isinstance(e, Dir):
                info = _info(_name(e.path), tarfile.DIRTYPE, e.mode, e.uid, e.gid)
                info.pax_headers = _pax(e.xattrs)
            elif isinstance(e, Symlink):
                info = _info(_name(e.path), tarfile.SYMTYPE, 0o777, e.uid, e.gid)
                info.linkname = e.target
            elif isinstance(e, HardLink):
                info = _info(_name(e.path), tarfile.LNKTYPE)
                info.linkname = _name(e.target)
            elif isinstance(e, Fifo):
                info = _info(_name(e.path), tarfile.FIFOTYPE, e.mode, e.uid, e.gid)
            elif isinstance(e, Whiteout):
                p = PurePosixPath(_name(e.path))
                info = _info(str(p.parent / (WHITEOUT_PREFIX + p.name)), tarfile.REGTYPE)
            elif isinstance(e, Opaque):
                info = _info(str(PurePosixPath(_name(e.path)) / OPAQUE), tarfile.REGTYPE)
            else:
                raise TypeError(f"not a layer entry: {e!r}")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


# --------------------------------------------------------------------------- image


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def host_platform() -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}[platform.machine()]
    return {"architecture": arch, "os": "linux"}


@dataclass
class Built:
    """An archive and the digests a test checks the stores against."""
    path: Path
    name: str
    manifest: str
    config: str
    layers: list[str]      # blob digests, lowest first
    diff_ids: list[str]    # digests of the uncompressed layer tars
    chain_ids: list[str]   # snapshot names of containerd's unpacker
    sizes: dict[str, int]  # of every blob, by digest

    @property
    def blobs(self) -> list[str]:
        return [self.manifest, self.config, *self.layers]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """identity.ChainIDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i])."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else digest(f"{out[-1]} {d}".encode()))
    return out


def write_archive(image: Image, path: Path) -> Built:
    """Write `image` as a tar of an OCI image layout to `path`."""
    blobs: dict[str, bytes] = {}
    layer_descs: list[dict[str, str | int]] = []
    layers: list[str] = []
    diff_ids: list[str] = []
    for layer in image.layers:
        raw = layer_tar(layer.entries)
        diff_ids.append(digest(raw))
        blob = gzip_bytes(raw) if layer.gzip else raw
        blobs[digest(blob)] = blob
        layers.append(digest(blob))
        layer_descs.append({"mediaType": MEDIA_LAYER_GZIP if layer.gzip else MEDIA_LAYER,
                            "digest": digest(blob), "size": len(blob)})
    plat = host_platform()
    config = _json({
        **plat,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": list(image.env), "Cmd": list(image.cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"tests/oci.py layer {i}"}
                    for i in range(len(image.layers))],
    })
    blobs[digest(config)] = config
    manifest = _json({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": layer_descs,
    })
    blobs[digest(manifest)] = manifest
    index = _json({
        "schemaVersion": 2, "mediaType": MEDIA_INDEX,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": digest(manifest),
                       "size": len(manifest), "platform": plat,
                       "annotations": {REF_NAME: image.name}}],
    })
    members = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]
    members += [(f"blobs/sha256/{d.removeprefix('sha256:')}", blobs[d]) for d in sorted(blobs)]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        for name, data in members:
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Built(path=path, name=image.name, manifest=digest(manifest), config=digest(config),
                 layers=layers, diff_ids=diff_ids,
                 chain_ids=chain_ids(diff_ids), sizes={d: len(b) for d, b in blobs.items()})


# --------------------------------------------------------------------------- images


def busybox_layer(applets: Sequence[str] = APPLETS, gzip: bool = True) -> Layer:
    """A root filesystem: the host's static busybox as /bin/busybox, applet
    symlinks in /bin, /etc/passwd and /etc/group with root and an ordinary
    user 1000, and a sticky /tmp."""
    entries: list[Entry] = [
        Dir("bin"),
        File("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        *(Symlink(f"bin/{a}", "busybox") for a in sorted(set(applets))),
        Dir("etc"),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                           b"user:x:1000:1000:user:/home/user:/bin/sh\n"),
        File("etc/group", b"root:x:0:\nuser:x:1000:\n"),
        Dir("home"),
        Dir("home/user", 0o755, 1000, 1000),
        Dir("root", 0o700),
        Dir("tmp", 0o1777),
    ]
    return Layer(entries, gzip=gzip)


def busybox_image(name: str = "fusesnap.test/busybox:1") -> Image:
    """The small image: one busybox layer."""
    return Image(name, [busybox_layer()])
