"""The reference layer applier: a layer applied through a directory with
ordinary system calls (for a snapshot, its directory under the mount), what
the daemon's direct applier (fusesnap/snapshots/apply.py) is tested against.
The tests use it; the product does not.

:func:`apply_layer` reads the layer from a binary stream (fusesnap.layertar
says what a layer may say), writes the changes it describes into a
directory, and returns what it did, with the layer's diff_id.

Safety: a member whose parent is a symlink is refused: every parent is opened
component by component with ``O_NOFOLLOW`` from the target directory, and
every change is made relative to the parent's descriptor, so nothing the
layer writes can land outside the target directory. (containerd instead
resolves such symlinks inside the root; layers written by image builders
never need that.) Ownership the caller may not set (an ordinary user's
``chown`` gets ``EPERM``), extended attributes the file system refuses and
device nodes where mknod is refused are skipped and counted in
:attr:`Applied.skipped`; the files are written all the same.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from typing import IO, BinaryIO

from fusesnap.client.importer import Client, extract_layer
from fusesnap.layertar import (
    CHUNK,
    Applied,
    LayerError,
    LayerStream,
    ReadProgress,
    check_diff_id,
    classify,
    member_path,
    member_xattrs,
    show_path,
)


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


def apply_layer(source: BinaryIO | IO[bytes], target: str | os.PathLike[str], *,
                expected_diff_id: str | None = None,
                progress: ReadProgress | None = None) -> Applied:
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


def apply_through_mount(client: Client, chain_id: str, parent: str, blob: IO[bytes],
                        diff_id: str, progress: Callable[[int], None] | None = None
                        ) -> Applied:
    """:func:`apply_into`, but the client applies the layer read from `blob`
    through the snapshot's directory under the mount (apply_layer above):
    the reference the direct apply is tested against."""
    return extract_layer(client, chain_id, parent, diff_id, lambda key, directory: apply_layer(
        blob, directory, expected_diff_id=diff_id, progress=progress))
