"""eStargz layers: writing one from an ordinary layer, and reading one by ranges.

eStargz (stargz-snapshotter's ``estargz`` package and docs/estargz.md) is a
gzip layer that a reader can use without downloading it whole. The blob is
a sequence of gzip members whose concatenation is an ordinary layer tar:

- the first entry is the landmark ``.no.prefetch.landmark`` (one byte,
  0x0f), as stargz-snapshotter's converter writes it when no files are to be
  prefetched;
- every regular file's content starts a gzip member of its own; a file
  larger than :data:`CHUNK_SIZE` is cut into chunks of that size, each in a
  member of its own; the tar headers (and a chunk's padding) go into the
  member that is open (the previous file's last one);
- the TOC, the tar entry ``stargz.index.json`` (JSON: ``{"version": 1,
  "entries": [...]}``, one entry per tar entry and one ``chunk`` entry per
  further chunk), with the tar's end blocks, is one member;
- the footer is a 51-byte gzip member of nothing whose header's extra field
  holds subfield ``SG`` = the TOC member's offset as 16 hex digits and
  ``STARGZ``.

A TOC entry's ``offset`` is the blob offset of the gzip member that
decompresses to the file's (or chunk's) bytes first; ``chunkDigest`` is the
sha256 of those bytes, ``digest`` that of the whole file. The manifest's layer
descriptor carries :data:`TOC_DIGEST_ANNOTATION` (sha256 of the TOC JSON) and
:data:`UNCOMPRESSED_SIZE_ANNOTATION`.

:func:`write_estargz` copies the original layer's tar headers byte for byte
(as estargz's lossless mode), so the new layer's tar is the old one with the
landmark in front and the TOC at the end; an existing landmark or TOC entry
is dropped, so converting an eStargz layer again works. :func:`read_toc`,
:func:`chunks` and :func:`read_chunk` read a blob through a ``read_range``
function, as an HTTP Range client would.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

CHUNK_SIZE = 4 << 20
"""stargz-snapshotter's default chunk size."""
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENT = b"\x0f"
FOOTER_SIZE = 51
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
RESERVED = frozenset({TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
"""Names the converter drops from its input (it writes its own)."""
MAX_TOC = 64 << 20

_BLOCK = tarfile.BLOCKSIZE
_IO = 1 << 20


class EstargzError(Exception):
    """A layer cannot be converted, or a blob is not a valid eStargz blob."""


# ---------------------------------------------------------------------- gzip members


def _gzip_header(extra: bytes = b"") -> bytes:
    # ID1 ID2 CM=deflate FLG MTIME=0 XFL=0 OS=255 (unknown), as Go's gzip writes.
    flags = 0x04 if extra else 0
    head = bytes([0x1F, 0x8B, 8, flags, 0, 0, 0, 0, 0, 0xFF])
    return head + (struct.pack("<H", len(extra)) + extra if extra else b"")


def footer(toc_offset: int) -> bytes:
    """The 51-byte footer naming the TOC member at `toc_offset`."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    # An empty final stored block, then CRC32 = 0 and ISIZE = 0.
    data = _gzip_header(extra) + b"\x01\x00\x00\xff\xff" + bytes(8)
    assert len(data) == FOOTER_SIZE
    return data


def parse_footer(data: bytes) -> int:
    """The TOC offset a footer names; EstargzError if it is not one."""
    if len(data) != FOOTER_SIZE or data[:4] != bytes([0x1F, 0x8B, 8, 0x04]):
        raise EstargzError("no eStargz footer (the last 51 bytes are no gzip header "
                           "with an extra field)")
    (xlen,) = struct.unpack("<H", data[10:12])
    extra = data[12:12 + xlen]
    if xlen != 26 or extra[:2] != b"SG" or struct.unpack("<H", extra[2:4])[0] != 22 \
            or extra[20:26] != b"STARGZ":
        raise EstargzError("no eStargz footer (no SG subfield ending in STARGZ)")
    try:
        return int(extra[4:20], 16)
    except ValueError:
        raise EstargzError(f"eStargz footer: bad TOC offset {extra[4:20]!r}") from None


class _Members:
    """Gzip members written one after the other to `out`; counts and hashes
    the blob and the uncompressed tar (the new layer's diff_id)."""

    def __init__(self, out: IO[bytes], level: int) -> None:
        self.out = out
        self.level = level
        self.size = 0
        self.blob_hash = hashlib.sha256()
        self.tar_hash = hashlib.sha256()
        self.tar_size = 0
        self._z: Any = None
        self._crc = 0
        self._isize = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.blob_hash.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        if self._z is None:
            self._emit(_gzip_header())
            self._z = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)
            self._crc = self._isize = 0
        self._emit(self._z.compress(data))
        self._crc = zlib.crc32(data, self._crc)
        self._isize += len(data)
        self.tar_hash.update(data)
        self.tar_size += len(data)

    def close_member(self) -> None:
        if self._z is not None:
            self._emit(self._z.flush())
            self._emit(struct.pack("<II", self._crc, self._isize & 0xFFFFFFFF))
            self._z = None

    def emit_raw(self, data: bytes) -> None:
        """Bytes outside any member (the footer); not part of the tar."""
        self.close_member()
        self._emit(data)


# ---------------------------------------------------------------------- writing


@dataclass
class Written:
    """The eStargz blob written: what its descriptor and config need."""

    digest: str
    size: int
    diff_id: str
    """sha256 of the new layer's uncompressed tar."""
    uncompressed_size: int
    toc_digest: str

    @property
    def annotations(self) -> dict[str, str]:
        return {TOC_DIGEST_ANNOTATION: self.toc_digest,
                UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size)}


def _modtime(mtime: float) -> str:
    seconds = round(mtime)
    if seconds == 0:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_TYPES = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
          tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


class _Toc:
    """TOC entries in the field order and with the omissions of estargz's
    Go struct (``omitempty``: zero values are left out)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._unames: dict[int, str] = {}
        self._gnames: dict[int, str] = {}

    @staticmethod
    def _if_changed(names: dict[int, str], ident: int, name: str) -> str:
        # estargz names an owner only where the name of that id changes.
        if not name or names.get(ident) == name:
            return ""
        names[ident] = name
        return name

    def entry(self, member: tarfile.TarInfo, kind: str) -> dict[str, Any]:
        xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(
            v.encode("utf-8", "surrogateescape")).decode()
            for k, v in sorted(member.pax_headers.items()) if k.startswith("SCHILY.xattr.")}
        fields: list[tuple[str, Any]] = [
            ("size", member.size if kind == "reg" else 0),
            ("modtime", _modtime(member.mtime)),
            ("linkName", member.linkname if kind in ("symlink", "hardlink") else ""),
            ("mode", member.mode),
            ("uid", member.uid),
            ("gid", member.gid),
            ("userName", self._if_changed(self._unames, member.uid, member.uname)),
            ("groupName", self._if_changed(self._gnames, member.gid, member.gname)),
            ("devMajor", member.devmajor if kind in ("char", "block") else 0),
            ("devMinor", member.devminor if kind in ("char", "block") else 0),
            ("xattrs", xattrs),
        ]
        ent: dict[str, Any] = {"name": member.name, "type": kind}
        ent.update((k, v) for k, v in fields if v)
        self.entries.append(ent)
        return ent

    def json(self) -> bytes:
        order = ["name", "type", "size", "modtime", "linkName", "mode", "uid", "gid",
                 "userName", "groupName", "offset", "devMajor", "devMinor", "xattrs",
                 "digest", "chunkOffset", "chunkSize", "chunkDigest"]
        entries = [{k: e[k] for k in order if k in e} for e in self.entries]
        return json.dumps({"version": 1, "entries": entries}, indent="\t",
                          ensure_ascii=False).encode()


def _block(n: int) -> int:
    return -n % _BLOCK


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _landmark() -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(NO_PREFETCH_LANDMARK)
    info.size, info.mode, info.mtime = len(LANDMARK_CONTENT), 0, 0
    info.uname = info.gname = ""
    return info, info.tobuf(tarfile.USTAR_FORMAT)


def _members(src: IO[bytes]) -> Iterator[tuple[tarfile.TarInfo, int]]:
    """The members of the tar `src` (seekable), each with where its headers
    start (extended headers included). EstargzError for a corrupt tar, sparse
    files and entry types a layer cannot hold."""
    if not src.read(_BLOCK).strip(b"\0"):
        return  # empty, or only the end blocks: no entries
    src.seek(0)
    try:
        tar = tarfile.open(fileobj=src, mode="r:")  # noqa: SIM115 - the caller closes src
        pos = 0
        while (member := tar.next()) is not None:
            if member.issparse() or not (member.isreg() or member.type in _TYPES):
                raise EstargzError(f"{member.name}: unsupported tar entry type {member.type!r}")
            size = member.size if member.isreg() else 0
            start, pos = pos, member.offset_data + size + _block(size)
            yield member, start
            tar.members.clear()  # type: ignore[attr-defined]  # a layer may hold millions
    except (tarfile.TarError, EOFError) as e:
        raise EstargzError(f"not a valid layer tar: {e}") from None


def write_estargz(tar_path: str, out: IO[bytes], *, chunk_size: int = CHUNK_SIZE,
                  level: int = 6) -> Written:
    """Write the eStargz form of the uncompressed layer tar at `tar_path` to
    `out` (see the module docstring). EstargzError for a tar it cannot
    convert (a corrupt one, sparse files, unknown entry types)."""
    blob = _Members(out, level)
    toc = _Toc()
    with open(tar_path, "rb") as src:
        def pieces(start: int, length: int) -> Iterator[bytes]:
            src.seek(start)
            while length > 0:
                data = src.read(min(_IO, length))
                if not data:
                    raise EstargzError("the layer tar ends inside an entry")
                length -= len(data)
                yield data

        def copy(start: int, length: int) -> None:
            for data in pieces(start, length):
                blob.write(data)

        def content(ent: dict[str, Any], read: Callable[[int, int], Iterator[bytes]],
                    start: int, size: int) -> None:
            # Each chunk starts a gzip member; the first chunk's entry is the file's.
            whole = hashlib.sha256()
            done = 0
            current = ent
            while done < size:
                n = min(chunk_size, size - done)
                if n == chunk_size:
                    current["chunkSize"] = n
                blob.close_member()
                current["offset"] = blob.size
                if done:
                    current["chunkOffset"] = done
                chunk = hashlib.sha256()
                for data in read(start + done, n):
                    whole.update(data)
                    chunk.update(data)
                    blob.write(data)
                current["chunkDigest"] = "sha256:" + chunk.hexdigest()
                done += n
                if done < size:
                    current = {"name": ent["name"], "type": "chunk"}
                    toc.entries.append(current)
            ent["digest"] = "sha256:" + whole.hexdigest()

        info, header = _landmark()
        blob.write(header)
        content(toc.entry(info, "reg"), lambda _s, _n: iter([LANDMARK_CONTENT]), 0, 1)
        blob.write(bytes(_block(1)))

        for member, header_start in _members(src):
            if _clean(member.name) in RESERVED:
                continue
            copy(header_start, member.offset_data - header_start)
            kind = "reg" if member.isreg() else _TYPES[member.type]
            ent = toc.entry(member, kind)
            if kind == "reg":
                content(ent, pieces, member.offset_data, member.size)
                copy(member.offset_data + member.size, _block(member.size))

    toc_json = toc.json()
    blob.close_member()
    toc_offset = blob.size
    info = tarfile.TarInfo(TOC_NAME)
    info.size, info.mode, info.mtime = len(toc_json), 0, 0
    info.uname = info.gname = ""
    blob.write(info.tobuf(tarfile.USTAR_FORMAT))
    blob.write(toc_json + bytes(_block(len(toc_json))))
    blob.write(bytes(2 * _BLOCK))  # the tar's end
    blob.emit_raw(footer(toc_offset))
    return Written("sha256:" + blob.blob_hash.hexdigest(), blob.size,
                   "sha256:" + blob.tar_hash.hexdigest(), blob.tar_size,
                   "sha256:" + hashlib.sha256(toc_json).hexdigest())


# ---------------------------------------------------------------------- reading


ReadRange = Callable[[int, int], bytes]
"""``(offset, length) -> bytes`` of a blob (an HTTP Range request, a file)."""


def _first_member(data: bytes, at: int) -> bytes:
    """The uncompressed bytes of the gzip member that starts `data`."""
    z = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = z.decompress(data)
    except zlib.error as e:
        raise EstargzError(f"no valid gzip member at offset {at}: {e}") from None
    if not z.eof:
        raise EstargzError(f"the gzip member at offset {at} is truncated")
    return out


@dataclass
class Toc:
    offset: int
    """Of the TOC's gzip member (where the payload ends)."""
    json: bytes
    entries: list[dict[str, Any]]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.json).hexdigest()


def read_toc(read_range: ReadRange, size: int) -> Toc:
    """The footer and TOC of a blob of `size` bytes. EstargzError if the blob
    is not eStargz."""
    if size < FOOTER_SIZE:
        raise EstargzError(f"blob of {size} bytes is too small for eStargz")
    offset = parse_footer(read_range(size - FOOTER_SIZE, FOOTER_SIZE))
    length = size - FOOTER_SIZE - offset
    if offset < 0 or length <= 0 or length > MAX_TOC:
        raise EstargzError(f"eStargz footer names TOC offset {offset} in a blob of {size}")
    plain = _first_member(read_range(offset, length), offset)
    try:
        with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != TOC_NAME or not member.isreg():
                raise EstargzError(f"the TOC member at {offset} does not hold {TOC_NAME}")
            handle = tar.extractfile(member)
            assert handle is not None
            data = handle.read()
    except (tarfile.TarError, EOFError) as e:
        raise EstargzError(f"the TOC member at {offset}: {e}") from None
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise EstargzError(f"{TOC_NAME} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 \
            or not isinstance(doc.get("entries"), list) \
            or not all(isinstance(e, dict) for e in doc["entries"]):
        raise EstargzError(f"{TOC_NAME} is not a version 1 TOC")
    return Toc(offset, data, doc["entries"])


@dataclass(frozen=True)
class Chunk:
    name: str
    offset: int
    """Of its gzip member in the blob."""
    end: int
    """Where the next member with content (or the TOC) starts: fetch
    [offset, end) to read the chunk."""
    chunk_offset: int
    size: int
    digest: str
    inner_offset: int = 0
    """Where the chunk starts in its member's bytes: other writers (estargz's
    MinChunkSize) put small files together in one member; this one never."""


def chunks(toc: Toc) -> list[Chunk]:
    """Every chunk of every regular file with content, in TOC order."""
    starts = sorted({e["offset"] for e in toc.entries if e.get("offset")} | {toc.offset})
    following = dict(zip(starts, starts[1:], strict=False))
    found: list[Chunk] = []
    file_size = 0
    for e in toc.entries:
        if e.get("type") == "reg":
            file_size = int(e.get("size", 0))
        if e.get("type") not in ("reg", "chunk") or not e.get("offset"):
            continue
        at = int(e.get("chunkOffset", 0))
        size = int(e.get("chunkSize") or file_size - at)
        if at + size > file_size or size <= 0 or e["offset"] not in following:
            raise EstargzError(f"{TOC_NAME}: bad chunk of {e.get('name')!r} at {at}")
        found.append(Chunk(e["name"], e["offset"], following[e["offset"]], at, size,
                           str(e.get("chunkDigest", "")), int(e.get("innerOffset", 0))))
    return found


def read_chunk(data: bytes, chunk: Chunk) -> bytes:
    """The bytes of `chunk` from `data`, the blob's range [chunk.offset,
    chunk.end), checked against its chunkDigest (EstargzError otherwise)."""
    inner = chunk.inner_offset
    plain = _first_member(data, chunk.offset)[inner:inner + chunk.size]
    got = "sha256:" + hashlib.sha256(plain).hexdigest()
    if len(plain) != chunk.size or got != chunk.digest:
        raise EstargzError(f"{chunk.name} at {chunk.chunk_offset}: chunk digest {got}, "
                           f"the TOC says {chunk.digest}")
    return plain


def verify(read_range: ReadRange, size: int) -> Toc:
    """Read the whole blob by its TOC: every chunk against its chunkDigest,
    every regular file against its digest. Returns the TOC."""
    toc = read_toc(read_range, size)
    files: dict[str, Any] = {}
    for c in chunks(toc):
        if c.chunk_offset == 0:
            files[c.name] = hashlib.sha256()
        files[c.name].update(read_chunk(read_range(c.offset, c.end - c.offset), c))
    for e in toc.entries:
        if e.get("type") == "reg" and e.get("size"):
            got = "sha256:" + files[e["name"]].hexdigest()
            if got != e.get("digest"):
                raise EstargzError(f"{e['name']}: digest {got}, the TOC says {e.get('digest')}")
    return toc
