"""Offline builder of OCI image archives for the tests.

An :class:`Image` is a list of :class:`Layer` s, each a list of tar entries
(files, directories, symlinks, hard links, fifos, device nodes, whiteouts, opaque markers;
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
import struct
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
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
    """A second name for `target`, a file written earlier in the same layer.
    Its header repeats the file's mode and owner, as tar writers do: appliers
    (containerd's among them) chown and chmod the link, that is the file."""
    path: str
    target: str


@dataclass(frozen=True)
class Fifo:
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Device:
    """A character (`block` False) or block device node."""
    path: str
    major: int
    minor: int
    block: bool = False
    mode: int = 0o666
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


Member = File | Dir | Symlink | HardLink | Fifo | Device | Whiteout | Opaque


@dataclass(frozen=True)
class Layer:
    """`zstd` (Debian's zstd program compresses) wins over `gzip`."""
    entries: Sequence[Member]
    gzip: bool = True
    zstd: bool = False


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


def layer_tar(entries: Sequence[Member]) -> bytes:
    """The uncompressed tar of one layer, entries in the given order."""
    buf = io.BytesIO()
    files: dict[str, File] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            data: bytes | None = None
            if isinstance(e, File):
                info = _info(_name(e.path), tarfile.REGTYPE, e.mode, e.uid, e.gid)
                info.size = len(e.content)
                info.pax_headers = _pax(e.xattrs)
                data = e.content
                files[info.name] = e
            elif isinstance(e, Dir):
                info = _info(_name(e.path), tarfile.DIRTYPE, e.mode, e.uid, e.gid)
                info.pax_headers = _pax(e.xattrs)
            elif isinstance(e, Symlink):
                info = _info(_name(e.path), tarfile.SYMTYPE, 0o777, e.uid, e.gid)
                info.linkname = e.target
            elif isinstance(e, HardLink):
                f = files[_name(e.target)]
                info = _info(_name(e.path), tarfile.LNKTYPE, f.mode, f.uid, f.gid)
                info.linkname = _name(e.target)
            elif isinstance(e, Fifo):
                info = _info(_name(e.path), tarfile.FIFOTYPE, e.mode, e.uid, e.gid)
            elif isinstance(e, Device):
                kind = tarfile.BLKTYPE if e.block else tarfile.CHRTYPE
                info = _info(_name(e.path), kind, e.mode, e.uid, e.gid)
                info.devmajor, info.devminor = e.major, e.minor
            elif isinstance(e, Whiteout):
                p = PurePosixPath(_name(e.path))
                info = _info(str(p.parent / (WHITEOUT_PREFIX + p.name)), tarfile.REGTYPE)
            elif isinstance(e, Opaque):
                info = _info(str(PurePosixPath(_name(e.path)) / OPAQUE), tarfile.REGTYPE)
            else:
                raise TypeError(f"not a layer entry: {e!r}")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def zstd_bytes(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                          check=True).stdout


def compressed(layer: Layer, raw: bytes) -> tuple[bytes, str]:
    """The layer's blob and its media type."""
    if layer.zstd:
        return zstd_bytes(raw), MEDIA_LAYER_ZSTD
    if layer.gzip:
        return gzip_bytes(raw), MEDIA_LAYER_GZIP
    return raw, MEDIA_LAYER


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


def image_config(image: Image, diff_ids: Sequence[str]) -> bytes:
    """The config blob of `image` whose layers have `diff_ids`."""
    return _json({
        **host_platform(),
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": list(image.env), "Cmd": list(image.cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"tests/oci.py layer {i}"}
                    for i in range(len(image.layers))],
    })


def _write_tar(path: Path, dirs: Sequence[str], members: Sequence[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        for name, data in members:
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_docker_archive(image: Image, path: Path,
                         config_diff_ids: Sequence[str] | None = None,
                         repo_tags: Sequence[str] | None = None) -> Built:
    """Write `image` as a docker-archive, the format `docker save` wrote before
    Docker 25: ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``),
    ``<hex>.json`` (the config, the same bytes as :func:`write_archive`'s),
    ``<id>/layer.tar`` (uncompressed, whatever the Layer says), ``<id>/VERSION``,
    ``<id>/json`` and ``repositories``. `repo_tags` default to the image's
    name; `config_diff_ids` replaces the real diff_ids in the config. The
    Built has no manifest (the importer makes it): ``manifest`` is ""."""
    raws = [layer_tar(layer.entries) for layer in image.layers]
    diff_ids = [digest(raw) for raw in raws]
    config = image_config(image, config_diff_ids or diff_ids)
    config_name = f"{digest(config).removeprefix('sha256:')}.json"
    layer_ids = [chain.removeprefix("sha256:") for chain in chain_ids(diff_ids)]
    tags = [image.name] if repo_tags is None else list(repo_tags)
    manifest = _json([{"Config": config_name, "RepoTags": tags,
                       "Layers": [f"{i}/layer.tar" for i in layer_ids]}])
    repositories: dict[str, dict[str, str]] = {}
    for tag in tags:
        repo, _, version = tag.rpartition(":")
        repositories.setdefault(repo, {})[version] = layer_ids[-1] if layer_ids else ""
    members = [(config_name, config)]
    for i, (layer_id, raw) in enumerate(zip(layer_ids, raws, strict=True)):
        members += [(f"{layer_id}/VERSION", b"1.0"),
                    (f"{layer_id}/json", _json({"id": layer_id,
                                                **({"parent": layer_ids[i - 1]} if i else {})})),
                    (f"{layer_id}/layer.tar", raw)]
    members += [("manifest.json", manifest), ("repositories", _json(repositories))]
    _write_tar(path, layer_ids, members)
    return Built(path=path, name=image.name, manifest="", config=digest(config),
                 layers=diff_ids, diff_ids=diff_ids, chain_ids=chain_ids(diff_ids),
                 sizes={**{digest(r): len(r) for r in raws}, digest(config): len(config)})


def write_archive(image: Image, path: Path,
                  config_diff_ids: Sequence[str] | None = None) -> Built:
    """Write `image` as a tar of an OCI image layout to `path`.
    `config_diff_ids` replaces the real diff_ids in the config (a lying image)."""
    blobs: dict[str, bytes] = {}
    layer_descs: list[dict[str, str | int]] = []
    layers: list[str] = []
    diff_ids: list[str] = []
    for layer in image.layers:
        raw = layer_tar(layer.entries)
        diff_ids.append(digest(raw))
        blob, media_type = compressed(layer, raw)
        blobs[digest(blob)] = blob
        layers.append(digest(blob))
        layer_descs.append({"mediaType": media_type, "digest": digest(blob), "size": len(blob)})
    plat = host_platform()
    config = image_config(image, config_diff_ids or diff_ids)
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
    _write_tar(path, ["blobs", "blobs/sha256"], members)
    return Built(path=path, name=image.name, manifest=digest(manifest), config=digest(config),
                 layers=layers, diff_ids=diff_ids,
                 chain_ids=chain_ids(diff_ids), sizes={d: len(b) for d, b in blobs.items()})


# --------------------------------------------------------------------------- images


def busybox_layer(applets: Sequence[str] = APPLETS, gzip: bool = True) -> Layer:
    """A root filesystem: the host's static busybox as /bin/busybox, applet
    symlinks in /bin, /etc/passwd and /etc/group with root and an ordinary
    user 1000, and a sticky /tmp."""
    entries: list[Member] = [
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


def pause_image(name: str = "fusesnap.test/pause:1") -> Image:
    """A CRI pod's sandbox image: busybox whose command keeps running."""
    return Image(name, [busybox_layer()], cmd=("/bin/busybox", "sleep", "3600"))


BIG_SIZE = 100 * 2**20


def big_content(size: int = BIG_SIZE) -> bytes:
    """`size` bytes of a repeated 4099-byte pattern: cheap, deterministic, and
    misaligned with every page and block size."""
    unit = bytes(range(256)) * 16 + b"end"
    return (unit * (size // len(unit) + 1))[:size]


def capability(*caps: int) -> bytes:
    """A security.capability value (VFS_CAP_REVISION_2, effective) permitting `caps`."""
    permitted = sum(1 << c for c in caps)
    return struct.pack("<5I", 0x02000000 | 0x1, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)


CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13


def rich_image(name: str = "fusesnap.test/rich:1") -> Image:
    """The busybox layer and nine layers that overwrite, delete (files,
    directories, a symlink), turn a directory into a file and a file into a
    directory, make a directory opaque, recreate a deleted directory, change
    modes and owners only, add hard links (and break one later), symlinks,
    setuid/setgid files, a fifo, `user.*` and `security.capability` xattrs,
    empty directories and a 100 MB file (an uncompressed layer: gzip of 100 MB
    in Python would take seconds)."""
    d = "data"
    return Image(name, [
        busybox_layer(),
        Layer([  # 1: what later layers change
            Dir(d),
            File(f"{d}/over", b"first\n"),
            File(f"{d}/del", b"deleted later\n"),
            Dir(f"{d}/deldir"), Dir(f"{d}/deldir/sub"), File(f"{d}/deldir/sub/f", b"gone\n"),
            Dir(f"{d}/d2f"), File(f"{d}/d2f/x", b"in a directory that becomes a file\n"),
            File(f"{d}/f2d", b"a file that becomes a directory\n"),
            Dir(f"{d}/opq"), File(f"{d}/opq/a", b"hidden by opaque\n"),
            Dir(f"{d}/opq/sub"), File(f"{d}/opq/sub/b", b"hidden too\n"),
            File(f"{d}/chmod", b"metadata changes only\n", 0o644),
            Dir(f"{d}/recreate"), File(f"{d}/recreate/old", b"must not come back\n"),
            Dir(f"{d}/partial"), File(f"{d}/partial/keep", b"kept\n"),
            File(f"{d}/partial/gone", b"deleted\n"),
            Dir(f"{d}/owned", 0o750, 1000, 2000),
            File(f"{d}/owned/f", b"owned\n", 0o640, 1234, 5678),
        ]),
        Layer([  # 2: overwrite, whiteouts, metadata-only change (uncompressed)
            File(f"{d}/over", b"second, longer than the first\n", 0o600, 1000, 1000),
            Whiteout(f"{d}/del"),
            Whiteout(f"{d}/deldir"),
            Whiteout(f"{d}/partial/gone"),
            File(f"{d}/chmod", b"metadata changes only\n", 0o755, 1000, 1000),
        ], gzip=False),
        Layer([  # 3: directory -> file, file -> directory
            File(f"{d}/d2f", b"now a file\n"),
            Dir(f"{d}/f2d", 0o700), File(f"{d}/f2d/inside", b"now a directory\n"),
        ]),
        Layer([  # 4: opaque directory; delete a directory that layer 5 recreates
            Dir(f"{d}/opq", 0o711), Opaque(f"{d}/opq"), File(f"{d}/opq/c", b"after opaque\n"),
            Whiteout(f"{d}/recreate"),
        ]),
        Layer([  # 5: recreated directory, hard links, symlinks, setuid, setgid, sticky
            Dir(f"{d}/recreate", 0o770), File(f"{d}/recreate/new", b"new\n"),
            Dir(f"{d}/links"),
            File(f"{d}/links/orig", b"three names\n", 0o640, 1000, 1000),
            HardLink(f"{d}/links/hl1", f"{d}/links/orig"),
            HardLink(f"{d}/links/hl2", f"{d}/links/orig"),
            Symlink(f"{d}/links/rel", "orig"),
            Symlink(f"{d}/links/abs", f"/{d}/links/orig"),
            Symlink(f"{d}/links/dangling", "nowhere"),
            Symlink(f"{d}/links/dirlink", "../opq", 1000, 1000),
            Dir("usr"), Dir("usr/local"), Dir("usr/local/bin"),
            File("usr/local/bin/suid", b"#!/bin/sh\necho setuid\n", 0o4755),
            File("usr/local/bin/sgid", b"#!/bin/sh\necho setgid\n", 0o2755, 0, 50),
            Dir(f"{d}/sticky", 0o1777),
        ]),
        Layer([  # 6: fifo, xattrs, empty directories
            Fifo(f"{d}/fifo", 0o640, 1000, 1000),
            Dir(f"{d}/xattr"),
            File(f"{d}/xattr/user", b"user xattrs\n",
                 xattrs={"user.comment": b"hello", "user.binary": b"\x00\x01\xfe\xff"}),
            File(f"{d}/xattr/cap", b"#!/bin/sh\n", 0o755,
                 xattrs={"security.capability": capability(CAP_NET_BIND_SERVICE)}),
            File(f"{d}/xattr/dropped", b"xattr dropped later\n", xattrs={"user.old": b"1"}),
            Dir(f"{d}/xattr/dir", xattrs={"user.dir": b"on a directory"}),
            Dir(f"{d}/empty"),
            Dir(f"{d}/empty2", 0o700), Dir(f"{d}/empty2/deeper"),
        ]),
        Layer([  # 7: 100 MB (uncompressed)
            File(f"{d}/big", big_content()),
        ], gzip=False),
        Layer([  # 8: break one hard link, rewrite without xattr, delete a symlink
            File(f"{d}/links/hl1", b"replaced: one name\n"),
            File(f"{d}/xattr/dropped", b"rewritten without xattr\n"),
            Whiteout(f"{d}/links/dangling"),
            File(f"{d}/xattr/cap", b"#!/bin/sh\n", 0o755,
                 xattrs={"security.capability": capability(CAP_NET_BIND_SERVICE, CAP_NET_RAW)}),
        ]),
        Layer([  # 9: change an xattr's value on a directory; file where a whiteout was
            Dir(f"{d}/xattr/dir", xattrs={"user.dir": b"changed"}),
            File(f"{d}/del", b"back as a new file\n", 0o444, 7, 7),
        ]),
    ])


MANY = 61


def many_layers_image(name: str = "fusesnap.test/many:1", count: int = MANY) -> Image:
    """The busybox layer and `count` small layers over /many: each adds a file,
    rewrites a counter (changing its mode and owner now and then) and deletes a
    file of three layers before; every 7th adds a directory and deletes the one
    of 7 layers before, every 9th repoints a symlink, every 10th makes a
    directory opaque, every 13th adds a hard link."""
    layers = [busybox_layer()]
    for i in range(1, count + 1):
        m = "many"
        entries: list[Member] = [
            Dir(m),
            File(f"{m}/f{i:02}", f"layer {i}\n".encode()),
            File(f"{m}/counter", f"{i}\n".encode(), 0o600 if i % 6 == 0 else 0o644,
                 i % 4, i % 3),
        ]
        if i > 3 and (i - 3) % 5:
            entries.append(Whiteout(f"{m}/f{i - 3:02}"))
        if i % 7 == 0:
            entries += [Dir(f"{m}/d{i:02}"), File(f"{m}/d{i:02}/x", f"dir {i}\n".encode())]
            if i > 7:
                entries.append(Whiteout(f"{m}/d{i - 7:02}"))
        if i % 9 == 0:
            entries.append(Symlink(f"{m}/latest", f"f{i:02}"))
        if i % 10 == 0:
            entries += [Dir(f"{m}/opq"), Opaque(f"{m}/opq"),
                        File(f"{m}/opq/from{i:02}", b"opaque\n")]
        elif i % 10 == 5:
            entries += [Dir(f"{m}/opq"), File(f"{m}/opq/x{i:02}", b"hidden at the next tenth\n")]
        if i % 13 == 0:
            entries.append(HardLink(f"{m}/hl{i:02}", f"{m}/f{i:02}"))
        layers.append(Layer(entries, gzip=i % 2 == 0))
    return Image(name, layers)


# --------------------------------------------------------------------------- umoci


def umoci_unpack(archive: Path, work: Path) -> Path:
    """The root filesystem `umoci unpack` makes of the image in `archive` (a
    tar of an OCI layout holding one image), under `work`."""
    layout, bundle = work / "layout", work / "bundle"
    layout.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True)
    # umoci tags cannot hold a registry name: tag the one manifest "test".
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"][REF_NAME] = "test"
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run(["umoci", "--log", "error", "unpack", "--image", f"{layout}:test",
                    str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"
