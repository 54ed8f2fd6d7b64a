"""Open files, file data and copy-up.

Regular file bytes live in ``<layers>/<layer>/<oid>``, a plain file used
through its descriptor; an object's ``data`` names the layer holding them, so
a metadata change of a lower file copies no bytes. Writing a lower file gives
the top layer its own backing file: a sparse one holding only the blocks
written (partial copy-up, data.py), or a whole copy where that cannot be.

Writes change an object's size and times in memory; they are recorded (with
the blocks the backing file holds) when the file is closed, fsynced, or its
snapshot committed, or at a stop (:meth:`Files.flush`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from fusesnap.errors import ResourceExhausted
from fusesnap.snapshots.layers import data
from fusesnap.snapshots.layers.rows import Attr, Rows, fs_error, now_ns
from fusesnap.snapshots.layers.spares import Spares
from fusesnap.snapshots.layers.views import View
from fusesnap.store.space import Space

_FICLONE = 0x40049409  # linux/fs.h: share blocks where the backing filesystem can


class OpenFile:
    """An open regular file: a descriptor of the backing file and, when that
    holds only part of the bytes (``attr.base``), descriptors of the rest of
    its data chain (data.py) with what each shows at most."""

    __slots__ = ("fd", "view", "attr", "writable", "lower", "lower_sizes")

    def __init__(self, fd: int, view: View, attr: Attr, writable: bool) -> None:
        self.fd = fd
        self.view = view
        self.attr = attr
        self.writable = writable
        self.lower: list[int] = []
        self.lower_sizes: list[int] = []

    def fds(self) -> list[int]:
        return [self.fd, *self.lower]

    def shown(self) -> list[int]:
        a = self.attr
        assert a.base_size is not None, "a file with lower bytes has a base"
        return data.limits(a.size, [a.base_size, *self.lower_sizes])

    def close(self) -> None:
        """Close its descriptors (once: a removed view closes them before release)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.drop_lower()

    def drop_lower(self) -> None:
        for fd in self.lower:
            os.close(fd)
        self.lower = []
        self.lower_sizes = []


class Files:
    """The open-file table and the bytes of every layer's regular files."""

    def __init__(self, rows: Rows, layers_dir: Path, space: Space, unit: int) -> None:
        self.rows = rows
        self.layers_dir = layers_dir
        self.space = space
        """What adds data checks it first: a full disk refuses it (store/space.py)."""
        self.unit = unit
        """The block size of partial copy-up; 0: every copy-up copies the whole file."""
        self._open: dict[tuple[int, int], list[OpenFile]] = {}
        # Objects whose size and times writes changed, not yet recorded.
        self._dirty: dict[tuple[int, int], tuple[View, Attr]] = {}
        self.spares = Spares(self.data_path, rows.new_oid)

    def data_path(self, layer: int, oid: int) -> str:
        return f"{self.layers_dir}/{layer}/{oid}"

    # ----------------------------------------------------------------- the table

    def open(self, view: View, a: Attr, writable: bool) -> OpenFile:
        """Open `a`'s bytes in `view` (its top layer's own when `writable`)."""
        assert a.data is not None
        fd = os.open(self.data_path(a.data, a.oid), os.O_RDWR if writable else os.O_RDONLY)
        of = OpenFile(fd, view, a, writable)
        if a.base is not None:
            try:
                self._attach_lower(of)
            except OSError:
                of.close()
                raise
        return self.adopt(of)

    def adopt(self, of: OpenFile) -> OpenFile:
        """Enter `of` in the table (its descriptor is open)."""
        self._open.setdefault((of.view.top, of.attr.oid), []).append(of)
        return of

    def handles(self, view: View, oid: int) -> list[OpenFile]:
        """The open files of `oid` in `view`'s top layer."""
        return self._open.get((view.top, oid), [])

    def open_in(self, view: View) -> list[OpenFile]:
        """The first open file of each object of `view`'s top layer."""
        return [hs[0] for (sid, _), hs in self._open.items() if sid == view.top and hs]

    def close(self, of: OpenFile) -> bool:
        """Close `of` and take it out of the table; True if it was the last
        open file of its object in its layer."""
        key = (of.view.top, of.attr.oid)
        handles = self._open.get(key, [])
        if of in handles:
            handles.remove(of)
        if not handles:
            self._open.pop(key, None)
        a = of.attr
        if of.fd >= 0 and a.blocks is None and key in self._dirty and a.data == of.view.top:
            a.blocks = os.fstat(of.fd).st_blocks  # what measure() would stat by path
        of.close()
        return not handles

    def forget_view(self, view: View) -> None:
        """Close every open file of `view` and forget its unrecorded writes."""
        for key in [k for k in self._open if k[0] == view.sid]:
            for of in self._open.pop(key):
                of.close()
        for key in [k for k in self._dirty if k[0] == view.sid]:
            del self._dirty[key]
        self.spares.drop(view.sid)

    # ----------------------------------------------------------------- bytes

    def create(self, layer: int) -> tuple[int, int]:
        """(oid, descriptor) of a new object's empty backing file in `layer`,
        open for reading and writing (made ahead: spares.py)."""
        return self.spares.take(layer)

    def own_data(self, view: View, a: Attr, keep: bool = True) -> None:
        """Give the top layer the bytes of `a` (inside the caller's transaction):
        a copy of the lower ones, or with `keep` false an empty file."""
        dst = self.data_path(view.top, a.oid)
        if a.data == view.top:
            if not keep:
                os.truncate(dst, 0)
                a.base = a.base_size = None
            return
        if keep and self.unit and a.size and len(self._lower_chain(a)) < data.MAX_CHAIN:
            # Partial copy-up: a sparse file as long as the object; its holes
            # show the bytes of the layer that held them so far.
            os.truncate(_create_file(dst), a.size)
            a.base, a.base_size = a.data, a.size
        elif keep:
            self._copy_whole(a, dst)
            a.base = a.base_size = None
        else:
            _create_file(dst)
            a.base = a.base_size = None
        a.data = view.top
        a.blocks = None
        self.rows.save(a)
        # Descriptors opened before the copy must see the new bytes too.
        for of in self.handles(view, a.oid):
            fd = os.open(dst, os.O_RDWR if of.writable else os.O_RDONLY)
            os.dup2(fd, of.fd)
            os.close(fd)
            self._attach_lower(of)

    def _lower_chain(self, a: Attr) -> list[tuple[int, int]]:
        """The rest of `a`'s data chain below its backing file: (layer, what
        shows of it through the file above) for each, top first."""
        chain: list[tuple[int, int]] = []
        layer, size = a.base, a.base_size
        while layer is not None:
            assert size is not None
            chain.append((layer, size))
            layer, size = self.rows.base_of(a.oid, layer)
        return chain

    def lower_layers(self, a: Attr) -> list[int]:
        """The layers of `a`'s data chain below its backing file, top first."""
        return [layer for layer, _ in self._lower_chain(a)]

    def _attach_lower(self, of: OpenFile) -> None:
        """Open the rest of the data chain of `of`'s object (none when whole)."""
        of.drop_lower()
        chain = self._lower_chain(of.attr)
        try:
            for layer, _ in chain:
                of.lower.append(os.open(self.data_path(layer, of.attr.oid),
                                        os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            of.drop_lower()
            raise
        of.lower_sizes = [size for _, size in chain[1:]]

    def data_chain(self, a: Attr) -> tuple[list[str], list[int]]:
        """The backing files of `a`'s bytes, top first, and the base_size of
        each but the first (data.py); for a file read in any thread."""
        assert a.data is not None
        chain = self._lower_chain(a)
        paths = [self.data_path(a.data, a.oid), *(self.data_path(layer, a.oid)
                                                  for layer, _ in chain)]
        return paths, [size for _, size in chain]

    def _copy_whole(self, a: Attr, dst: str) -> None:
        """Copy `a`'s bytes into `dst`: the backing file as it is when whole,
        else merged from its data chain."""
        if a.base is None:
            assert a.data is not None
            copy_file(self.data_path(a.data, a.oid), dst)
            return
        paths, sizes = self.data_chain(a)
        fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]
        try:
            shown = data.limits(a.size, sizes)
            out = os.open(dst, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                for off in range(0, a.size, 1 << 20):
                    os.pwrite(out, data.read(fds, shown, off, 1 << 20), off)
                os.ftruncate(out, a.size)
            finally:
                os.close(out)
        finally:
            for fd in fds:
                os.close(fd)

    def read(self, of: OpenFile, offset: int, size: int) -> bytes:
        if of.attr.base is None:
            return os.pread(of.fd, size, offset)
        return data.read(of.fds(), of.shown(), offset, size)

    def write(self, of: OpenFile, offset: int, buf: bytes) -> int:
        if not of.view.writable:
            raise fs_error(errno.EROFS)
        self.space.check()
        a = of.attr
        if a.base is not None and buf:
            data.fill_edges(of.fds(), of.shown(), self.unit, offset, offset + len(buf))
        n = os.pwrite(of.fd, buf, offset)
        if offset + n > a.size:
            a.size = offset + n
        a.blocks = None
        a.mtime_ns = a.ctime_ns = now_ns()
        self._dirty[(of.view.top, a.oid)] = (of.view, a)
        return n

    def fsync(self, of: OpenFile, datasync: bool) -> None:
        self.flush_one(of.view, of.attr)
        self.rows.db.commit_group()
        if datasync:
            os.fdatasync(of.fd)
        else:
            os.fsync(of.fd)

    # ----------------------------------------------------------------- what writes changed

    def written(self, view: View, a: Attr) -> None:
        """`a`'s size and times are recorded now: nothing for a flush to do."""
        self._dirty.pop((view.top, a.oid), None)

    def flush_one(self, view: View, a: Attr) -> None:
        key = (view.top, a.oid)
        if self._dirty.pop(key, None) is not None:
            self.measure(a)
            try:
                with self.rows.db.group():
                    self.rows.save(a)
            except ResourceExhausted:
                self._dirty[key] = (view, a)  # recorded by a later flush
                raise

    def flush(self, view: View | None = None) -> None:
        """Record the sizes and times that writes changed (all views, or one)."""
        db = self.rows.db
        items = [
            (k, v) for k, v in self._dirty.items() if view is None or k[0] == view.top
        ]
        if not items:
            db.commit_group()  # the rows it holds, for whoever reads them next
            return
        for _, (_, a) in items:
            self.measure(a)
        with db.transaction():
            for key, (_, a) in items:
                del self._dirty[key]
                self.rows.save(a)

    def measure(self, a: Attr) -> None:
        """Record the blocks the backing file holds now (its inode is in the
        cache after the writes), so a lookup in any view needs no stat."""
        if a.blocks is None and a.data is not None:
            try:
                a.blocks = os.stat(self.data_path(a.data, a.oid)).st_blocks
            except FileNotFoundError:
                pass

    def blocks(self, a: Attr) -> int:
        """512-byte blocks of file data (a sparse file's holes take none)."""
        if a.blocks is None:
            if a.data is None:
                a.blocks = 0
            else:
                try:
                    a.blocks = os.stat(self.data_path(a.data, a.oid)).st_blocks
                except FileNotFoundError:
                    return (a.size + 511) // 512
        return a.blocks


def unlink_files(paths: list[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _create_file(path: str) -> str:
    os.close(os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600))
    return path


def copy_file(src: str, dst: str) -> None:
    """Copy `src` to `dst`, sharing blocks where the filesystem can, keeping holes."""
    with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
        try:
            fcntl.ioctl(fdst.fileno(), _FICLONE, fsrc.fileno())
            return
        except OSError:
            pass
        in_fd, out_fd = fsrc.fileno(), fdst.fileno()
        size = os.fstat(in_fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(in_fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(in_fd, start, os.SEEK_HOLE)
            off = start
            while off < end:
                n = os.copy_file_range(in_fd, out_fd, end - off, off, off)
                if n == 0:
                    break
                off += n
            pos = end
        os.ftruncate(out_fd, size)
