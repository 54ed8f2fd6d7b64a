"""Apply one OCI layer (a tar stream: uncompressed, gzip or zstd) to a directory.

:func:`apply_layer` is the whole interface: it reads the layer from a binary
stream, writes the changes it describes into a directory (for a snapshot,
its directory under the mount: the reference behaviour of the daemon's direct
applier, fusesnap.snapshots.apply, which shares :class:`LayerStream`,
:func:`classify` and :func:`member_xattrs` with it), and returns the
layer's diff_id (the sha256 of the uncompressed tar), checked against the one
the image config names.

What a layer may say, as the OCI image spec and containerd's applier read it:

- ``dir/.wh.name`` deletes ``dir/name`` of the layers below;
  ``dir/.wh..wh..opq`` hides everything below ``dir`` that this layer does
  not itself write (before or after the marker);
- an entry replaces what is at its path, unless both are directories (then
  only the directory's metadata changes); missing parents are made (0755);
- regular files, directories, symlinks, hard links, fifos, and device nodes
  (skipped where mknod is refused); owners, modes (setuid, setgid, sticky),
  modification times, and ``SCHILY.xattr.*`` PAX records as extended
  attributes.

Safety: a member name that is absolute or has a ``..`` component is refused,
and so is one whose parent is a symlink: every parent is opened component by
component with ``O_NOFOLLOW`` from the target directory, and every change is
made relative to the parent's descriptor, so nothing the layer writes can land
outside the target directory. (containerd instead resolves such symlinks
inside the root; layers written by image builders never need that.)

Ownership the caller may not set (an ordinary user's ``chown`` gets
``EPERM``) and extended attributes the file system refuses are skipped and
counted in :attr:`Applied.skipped`; the files are written all the same.

Compression is recognised by its magic bytes; zstd goes through Debian's
``zstd`` program (a subprocess), gzip through Python's zlib.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
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
    """What :func:`apply_layer` did."""

    diff_id: str
    size: int
    """Bytes of the uncompressed tar."""
    entries: int = 0
    skipped: list[str] = field(default_factory=list)
    """What could not be set (owners, xattrs, device nodes), one line each."""


Progress = Callable[[int], None]
"""Called now and then with the number of (compressed) bytes read so far."""


# ---------------------------------------------------------------------- streams


class _Counting(io.RawIOBase):
    """A raw reader over `source` that counts (and optionally hashes) what it reads."""

    def __init__(self, source: IO[bytes], progress: Progress | None = None,
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


def _at(dirfd: int, name: str) -> str:
    """A path naming `name` in the directory `dirfd`, for calls without a
    ``dir_fd`` (setxattr): /proc resolves the descriptor, not a path."""
    return f"/proc/self/fd/{dirfd}/{name}"


class _Dirs:
    """Directory descriptors under the target, opened without following symlinks
    and cached by path (tar entries come mostly grouped by directory)."""

    MAX = 256

    def __init__(self, root: str) -> None:
        self.root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache: dict[tuple[str, ...], int] = {(): self.root}

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache = {}

    def forget(self, parts: tuple[str, ...]) -> None:
        """Close descriptors of `parts` and everything under it (it was removed)."""
        n = len(parts)
        for key in [k for k in self.cache if k[:n] == parts and k]:
            os.close(self.cache.pop(key))

    def get(self, parts: tuple[str, ...], create: bool) -> int | None:
        """The descriptor of directory `parts`; missing directories are made
        (0755) when `create`, else None. LayerError if a component is not a
        directory (a symlink included)."""
        fd = self.cache.get(parts)
        if fd is not None:
            return fd
        parent = self.get(parts[:-1], create)
        if parent is None:
            return None
        name = parts[-1]
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, flags, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                st = _lstat(parent, name)
                kind = "a symlink" if st and stat.S_ISLNK(st.st_mode) else "not a directory"
                raise LayerError(f"{show_path(parts)} is {kind}; the layer writes below it") \
                    from None
            raise
        if len(self.cache) >= self.MAX:
            self.forget_all()
        self.cache[parts] = fd
        return fd

    def forget_all(self) -> None:
        for key in [k for k in self.cache if k]:
            os.close(self.cache.pop(key))


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dirfd)
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------- applier


class _Applier:
    def __init__(self, target: str, tar: tarfile.TarFile, applied: Applied) -> None:
        self.dirs = _Dirs(target)
        self.tar = tar
        self.applied = applied
        self.unpacked: set[tuple[str, ...]] = set()
        self.dir_times: list[tuple[tuple[str, ...], int]] = []

    def close(self) -> None:
        self.dirs.close()

    def skip(self, what: str) -> None:
        self.applied.skipped.append(what)

    # removal -----------------------------------------------------------

    def remove(self, parts: tuple[str, ...], dirfd: int, name: str) -> None:
        st = _lstat(dirfd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self.dirs.forget(parts)
            shutil.rmtree(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)

    def whiteout(self, parts: tuple[str, ...]) -> None:
        dirfd = self.dirs.get(parts[:-1], create=False)
        if dirfd is not None:
            self.remove(parts, dirfd, parts[-1])

    def opaque(self, parts: tuple[str, ...]) -> None:
        """Remove everything under directory `parts` this layer did not write."""
        dirfd = self.dirs.get(parts, create=False)
        if dirfd is None:
            return
        for entry in sorted(os.listdir(dirfd)):
            child = (*parts, entry)
            if child not in self.unpacked:
                self.remove(child, dirfd, entry)
            elif stat.S_ISDIR(os.lstat(entry, dir_fd=dirfd).st_mode):
                self.opaque(child)

    # entries -----------------------------------------------------------

    def entry(self, member: tarfile.TarInfo) -> None:
        what, parts = classify(member)
        if what == "opaque":
            self.opaque(parts)
            return
        if what == "whiteout":
            self.whiteout(parts)
            return
        base = parts[-1] if parts else ""
        for i in range(len(parts) + 1):
            self.unpacked.add(parts[:i])
        if not parts:  # the root itself: its metadata only
            if member.isdir():
                self.metadata(member, parts, self.dirs.root, None)
            return
        dirfd = self.dirs.get(parts[:-1], create=True)
        assert dirfd is not None
        existing = _lstat(dirfd, base)
        if existing is not None:
            if member.isdir() and stat.S_ISDIR(existing.st_mode):
                self.metadata(member, parts, dirfd, base)
                return
            if member.islnk() and member_path(member.linkname) == parts:
                return  # a link to itself: nothing to do
            self.remove(parts, dirfd, base)
        self.create(member, parts, dirfd, base)

    def create(self, member: tarfile.TarInfo, parts: tuple[str, ...], dirfd: int,
               base: str) -> None:
        if member.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            try:
                src = self.tar.extractfile(member)
                assert src is not None
                with os.fdopen(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(src, out, CHUNK)
                self.metadata(member, parts, dirfd, base, fd)
            finally:
                os.close(fd)
            return
        if member.isdir():
            os.mkdir(base, 0o700, dir_fd=dirfd)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=dirfd)
        elif member.islnk():
            target = member_path(member.linkname)
            if not target:
                raise LayerError(f"hard link {show_path(parts)} to the root")
            tdir = self.dirs.get(target[:-1], create=False)
            if tdir is None or _lstat(tdir, target[-1]) is None:
                raise LayerError(f"hard link {show_path(parts)} to {show_path(target)}, "
                                 "which does not exist")
            os.link(target[-1], base, src_dir_fd=tdir, dst_dir_fd=dirfd,
                    follow_symlinks=False)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=dirfd)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                         dir_fd=dirfd)
            except PermissionError:
                self.skip(f"{show_path(parts)}: device node (mknod not permitted)")
                return
        else:
            raise LayerError(f"{show_path(parts)}: unsupported tar entry type {member.type!r}")
        self.metadata(member, parts, dirfd, base)

    def metadata(self, member: tarfile.TarInfo, parts: tuple[str, ...], dirfd: int,
                 base: str | None, fd: int | None = None) -> None:
        """Owner, then mode (a chown clears setuid), then xattrs (a chown clears
        security.capability), then times (directories' at the end: their
        entries change them)."""
        if member.isdir():
            fd = self.dirs.get(parts, create=False)  # made or checked just now
        st = os.fstat(fd) if fd is not None else os.lstat(base or ".", dir_fd=dirfd)
        if (st.st_uid, st.st_gid) != (member.uid, member.gid):
            try:
                if fd is not None:
                    os.fchown(fd, member.uid, member.gid)
                else:
                    os.chown(base or ".", member.uid, member.gid, dir_fd=dirfd,
                             follow_symlinks=False)
            except PermissionError:
                self.skip(f"{show_path(parts)}: owner {member.uid}:{member.gid}")
        if member.issym():
            mtime = int(member.mtime) * 10**9
            os.utime(base or ".", ns=(mtime, mtime), dir_fd=dirfd, follow_symlinks=False)
            return
        mode = member.mode & 0o7777
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            # `base` was just made (or checked) here and is no symlink.
            os.chmod(base or ".", mode, dir_fd=dirfd)
        for key, value in member_xattrs(member):
            self.xattr(parts, dirfd, base, fd, key, value)
        mtime = int(member.mtime) * 10**9
        if member.isdir():
            self.dir_times.append((parts, mtime))
        elif fd is not None:
            os.utime(fd, ns=(mtime, mtime))
        else:
            os.utime(base or ".", ns=(mtime, mtime), dir_fd=dirfd, follow_symlinks=False)

    def xattr(self, parts: tuple[str, ...], dirfd: int, base: str | None, fd: int | None,
              key: str, value: bytes) -> None:
        try:
            if fd is not None:
                os.setxattr(fd, key, value)
            else:
                assert base is not None
                os.setxattr(_at(dirfd, base), key, value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                raise
            self.skip(f"{show_path(parts)}: xattr {key} ({os.strerror(e.errno)})")

    def finish(self) -> None:
        for parts, mtime in reversed(self.dir_times):
            fd = self.dirs.get(parts, create=False)
            if fd is not None:  # a later entry may have removed it
                os.utime(fd, ns=(mtime, mtime))


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


class LayerStream:
    """The tar members of a layer read once from `source` (uncompressed, gzip
    or zstd), and after the last one its diff_id and size. Use as a context
    manager; LayerError for a stream that is not a (complete) layer. Shared by
    :func:`apply_layer` and the daemon's direct applier (fusesnap.snapshots.apply)."""

    def __init__(self, source: BinaryIO | IO[bytes], progress: Progress | None = None) -> None:
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


def apply_layer(source: BinaryIO | IO[bytes], target: str | os.PathLike[str], *,
                expected_diff_id: str | None = None,
                progress: Progress | None = None) -> Applied:
    """Apply the layer read from `source` to directory `target` (see the module
    docstring). LayerError if the layer is unsafe, corrupt or its diff_id is
    not `expected_diff_id`; what was applied up to then stays in `target`,
    which the caller discards. Reads `source` once, to its end."""
    applier: _Applier | None = None
    try:
        with LayerStream(source, progress) as layer:
            assert layer.tar is not None
            applied = Applied(diff_id="", size=0)
            applier = _Applier(os.fspath(target), layer.tar, applied)
            for member in layer.members():
                applier.entry(member)
                applied.entries += 1
            applier.finish()
            applied.diff_id, applied.size = layer.finish()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as e:
        raise LayerError(f"corrupt layer: {e}") from None
    finally:
        if applier is not None:
            applier.close()
    check_diff_id(applied.diff_id, expected_diff_id)
    return applied
