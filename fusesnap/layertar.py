"""OCI layers as tar streams: what the daemon's applier (snapshots/apply.py)
reads and its differ (snapshots/diff.py) writes.

A layer is a tar stream, uncompressed, gzip or zstd (recognised by magic
bytes; zstd goes through Debian's ``zstd`` program, gzip through Python's
zlib). Its diff_id is the sha256 of the uncompressed tar, checked against the
one the image config names. What a member may say, as the OCI image spec and
containerd's applier read it:

- ``dir/.wh.name`` deletes ``dir/name`` of the layers below;
  ``dir/.wh..wh..opq`` hides everything below ``dir`` that this layer does
  not itself write (before or after the marker);
- an entry replaces what is at its path, unless both are directories (then
  only the directory's metadata changes); missing parents are made (0755);
- regular files, directories, symlinks, hard links, fifos and device nodes;
  owners, modes (setuid, setgid, sticky), modification times, and
  ``SCHILY.xattr.*`` PAX records as extended attributes.

A member name that is absolute or has a ``..`` component is refused
(:func:`member_path`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, BinaryIO, cast

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PREFIX = "SCHILY.xattr."

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

CHUNK = 1 << 20


class LayerError(Exception):
    """The layer cannot be applied: an unsafe or impossible entry, a corrupt
    stream, or a diff_id other than the expected one."""


@dataclass
class Applied:
    """What applying a layer did (the daemon's Applier, or the reference
    applier in the tests)."""

    diff_id: str
    size: int
    """Bytes of the uncompressed tar."""
    entries: int = 0
    skipped: list[str] = field(default_factory=list)
    """What could not be set (owners, xattrs, device nodes), one line each."""


ReadProgress = Callable[[int], None]
"""Called now and then with the number of (compressed) bytes read so far."""


# ---------------------------------------------------------------------- streams


class _Counting(io.RawIOBase):
    """A raw reader over `source` that counts (and optionally hashes) what it reads."""

    def __init__(self, source: IO[bytes], progress: ReadProgress | None = None,
                 hashing: bool = False) -> None:
        self.source = source
        self.count = 0
        self.progress = progress
        self.hash = hashlib.sha256() if hashing else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.source.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self.hash is not None:
            self.hash.update(data)
        if self.progress is not None and n:
            self.progress(self.count)
        return n

    def drain(self) -> None:
        while self.readinto(memoryview(bytearray(CHUNK))):
            pass


class _Zstd:
    """``zstd -dc`` fed from `source` by a thread; read the decompressed bytes
    from :attr:`stdout`, then call :meth:`close`."""

    def __init__(self, source: IO[bytes]) -> None:
        try:
            self.proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise LayerError("zstd layers need the zstd program "
                             "(Debian: apt-get install zstd)") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdout: IO[bytes] = self.proc.stdout
        self.feed_error: BaseException | None = None
        self.feeder = threading.Thread(target=self._feed, args=(source, self.proc.stdin),
                                       daemon=True)
        self.feeder.start()

    def _feed(self, source: IO[bytes], sink: IO[bytes]) -> None:
        try:
            while chunk := source.read(CHUNK):
                sink.write(chunk)
        except BrokenPipeError:
            pass  # zstd stopped reading: its exit status says why
        except BaseException as e:  # reported by close()
            self.feed_error = e
        finally:
            try:
                sink.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        """Wait for zstd; LayerError if it or the feeding failed."""
        self.stdout.read()  # let zstd finish even if the tar ended early
        self.feeder.join()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace").strip()
        code = self.proc.wait()
        if self.feed_error is not None:
            raise self.feed_error
        if code != 0:
            raise LayerError(f"zstd: {err or f'exit status {code}'}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.feeder.join()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


# ---------------------------------------------------------------------- paths


def member_path(name: str) -> tuple[str, ...]:
    """The components of a member name (``./`` and empty ones dropped);
    LayerError for an absolute name or a ``..`` component."""
    if name.startswith("/"):
        raise LayerError(f"absolute path in layer: {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerError(f"path escapes the layer root: {name!r}")
    return parts


def show_path(parts: tuple[str, ...]) -> str:
    """A member path as the messages show it: `/a/b`."""
    return "/" + "/".join(parts)


def _decompressed(raw: _Counting) -> tuple[IO[bytes], _Zstd | None]:
    """The uncompressed stream of `raw`, by its magic bytes."""
    buffered = io.BufferedReader(raw, CHUNK)
    magic = buffered.peek(4)[:4]
    if magic.startswith(GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb")), None
    if magic == ZSTD_MAGIC:
        z = _Zstd(buffered)
        return z.stdout, z
    return buffered, None


def compression(magic: bytes) -> str:
    """``"gzip"``, ``"zstd"`` or ``""`` (none) by a stream's first four bytes."""
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    return "zstd" if magic[:4] == ZSTD_MAGIC else ""


@contextmanager
def decompressed(source: IO[bytes]) -> Iterator[IO[bytes]]:
    """The bytes of `source` uncompressed (gzip, zstd or none, by its magic
    bytes), read once as a stream. Leaving the block without an error checks
    the end of the stream: LayerError if zstd failed; a truncated gzip stream
    raises EOFError or gzip.BadGzipFile while it is read."""
    stream, z = _decompressed(_Counting(source))
    try:
        yield stream
        if z is not None:
            z.close()
    finally:
        if z is not None:
            z.kill()


class LayerStream:
    """The tar members of a layer read once from `source` (uncompressed, gzip
    or zstd), and after the last one its diff_id and size. Use as a context
    manager; LayerError for a stream that is not a (complete) layer. Shared by
     the daemon's applier (fusesnap.snapshots.apply) and the reference applier
    of the tests."""

    def __init__(self, source: BinaryIO | IO[bytes], progress: ReadProgress | None = None) -> None:
        self._raw = _Counting(source, progress)
        self._zstd: _Zstd | None = None
        self._plain: _Counting | None = None
        self.tar: tarfile.TarFile | None = None

    def __enter__(self) -> LayerStream:
        try:
            stream, self._zstd = _decompressed(self._raw)
            self._plain = _Counting(stream, hashing=True)
            self.tar = tarfile.open(fileobj=io.BufferedReader(self._plain, CHUNK), mode="r|")
        except tarfile.ReadError as e:
            self.close()
            raise LayerError(f"not a tar stream: {e}") from None
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
            self.close()
            raise LayerError(f"corrupt layer: {e}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zstd is not None:
            self._zstd.kill()
            self._zstd = None

    def members(self) -> Iterator[tarfile.TarInfo]:
        """The members in order; read a regular file's bytes with
        :meth:`extractfile` before asking for the next member."""
        assert self.tar is not None
        try:
            yield from self.tar
        except (tarfile.TarError, EOFError, gzip.BadGzipFile) as e:
            raise LayerError(f"corrupt layer: {e}") from None

    def extractfile(self, member: tarfile.TarInfo) -> IO[bytes]:
        assert self.tar is not None
        src = self.tar.extractfile(member)
        assert src is not None
        return src

    def finish(self) -> tuple[str, int]:
        """Read to the end; (diff_id, bytes of the uncompressed tar)."""
        assert self._plain is not None and self._plain.hash is not None
        try:
            self._plain.drain()  # the padding after the end-of-archive blocks counts too
            if self._zstd is not None:
                self._zstd.close()
                self._zstd = None
        except (EOFError, gzip.BadGzipFile) as e:
            raise LayerError(f"corrupt layer: {e}") from None
        return "sha256:" + self._plain.hash.hexdigest(), self._plain.count


def check_diff_id(diff_id: str, expected: str | None) -> None:
    """LayerError unless `expected` is empty or `diff_id`."""
    if expected and diff_id != expected:
        raise LayerError(f"diff_id mismatch: the layer is {diff_id}, "
                         f"the image config says {expected}")


def classify(member: tarfile.TarInfo) -> tuple[str, tuple[str, ...]]:
    """What a member says, by its name: ("whiteout", path deleted),
    ("opaque", directory made opaque) or ("entry", its path). LayerError for
    an unsafe name."""
    parts = member_path(member.name)
    base = parts[-1] if parts else ""
    if base.startswith(WHITEOUT_PREFIX):
        if base == OPAQUE_MARKER:
            return "opaque", parts[:-1]
        return "whiteout", (*parts[:-1], base[len(WHITEOUT_PREFIX):])
    return "entry", parts


def member_xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """The extended attributes of `member` (its ``SCHILY.xattr.*`` PAX records)."""
    return [(key[len(XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
            for key, value in member.pax_headers.items() if key.startswith(XATTR_PREFIX)]


