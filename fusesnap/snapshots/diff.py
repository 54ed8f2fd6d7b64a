"""A snapshot's own changes as an OCI layer: an uncompressed tar stream.

:func:`layer_diff` reads the rows of the snapshot's layer — its entries
(``dentries``, whiteouts included) and the objects it holds a version of
(``inodes``: new, changed, or only touched) — and turns them into tar entries:

- every changed object under every name the view gives it (a file's second
  and later names, in path order, as hard links to the first), with owner,
  mode, mtime, device numbers and ``SCHILY.xattr.*`` records, and its
  parent directories;
- a whiteout row becomes ``dir/.wh.name`` where the parent chain has
  something at that path;
- a directory whose entry this layer wrote, over a lower directory that is
  another object (removed and made again, or another directory renamed
  there), gets the opaque marker ``dir/.wh..wh..opq``; a directory this layer
  renamed (an object the parent chain knows elsewhere) is written with its
  whole merged content, since its lower entries are not at the new path.

Paths come from the layer's own rows: an object's names are found by its oid
(the ``dentries_oid`` index), each checked to be the view's entry, and a
directory's path by the same lookup upwards. The parent chain is only probed
at single paths (what is below a whiteout, a directory entry), never walked,
so the cost follows the size of the layer, not of the image.

:func:`layer_diff` runs on the trio thread and reads metadata only;
:meth:`LayerDiff.chunks` reads the file bytes from the layers' backing files
and may run in any thread. Entries are in path order (a parent before its
children, a directory's opaque marker right after it): the same snapshot
gives the same bytes, before and after Commit. Sockets have no tar form and
are left out, and so are the root directory's own attributes.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fusesnap import layertar
from fusesnap.errors import FailedPrecondition
from fusesnap.layertar import CHUNK, OPAQUE_MARKER, XATTR_PREFIX
from fusesnap.snapshots.layers import ROOT_OID, Attr, LayerTree, View, data
from fusesnap.store.metastore import Kind

if TYPE_CHECKING:
    from fusesnap.snapshots.snapshotter import Snapshotter

WHITEOUT_PREFIX = layertar.WHITEOUT_PREFIX.encode()

Path = tuple[bytes, ...]
"""A path in the view as its components; () is the root."""


@dataclass(frozen=True)
class Member:
    """One tar member: everything but a regular file's bytes, which are read
    from `data` (a backing file) when the tar is written."""

    name: str
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    data: str | None = None
    lower: tuple[str, ...] = ()
    """The rest of the data chain of a partial copy-up (snapshots/layers/data.py)."""
    lower_sizes: tuple[int, ...] = ()
    linkname: str = ""
    rdev: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()

    def header(self) -> bytes:
        info = tarfile.TarInfo(self.name)
        info.type = self.type
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.size = self.size if self.type == tarfile.REGTYPE else 0
        info.linkname = self.linkname
        if self.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(self.rdev), os.minor(self.rdev)
        info.pax_headers = dict(self.xattrs)
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class LayerDiff:
    """The entries of one layer's diff, in tar order."""

    def __init__(self, entries: list[Member], files: list[Attr]) -> None:
        self.entries = entries
        self.files = files
        """The regular files whose bytes the tar holds: a lazy layer's must be
        fetched (remote.py) before :meth:`chunks` reads their backing files."""

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The tar, in pieces of about `size` bytes. FailedPrecondition if a
        file's bytes went away meanwhile (an active snapshot changing)."""
        buf = bytearray()
        total = 0
        for piece in self._pieces():
            buf += piece
            total += len(piece)
            if len(buf) >= size:
                yield bytes(buf)
                buf.clear()
        # End of archive: two zero blocks, then up to a whole record, as tarfile does.
        end = 2 * tarfile.BLOCKSIZE
        end += -(total + end) % tarfile.RECORDSIZE
        buf += bytes(end)
        yield bytes(buf)

    def _pieces(self) -> Iterator[bytes]:
        for e in self.entries:
            yield e.header()
            if e.type == tarfile.REGTYPE and e.size:
                yield from _file_bytes(e)
                yield bytes(-e.size % tarfile.BLOCKSIZE)


def _file_bytes(e: Member) -> Iterator[bytes]:
    """Exactly `e.size` bytes of the backing file (zeros past its end, if it
    shrank after the metadata was read)."""
    assert e.data is not None
    fds: list[int] = []
    try:
        for path in (e.data, *e.lower):
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        for fd in fds:
            os.close(fd)
        raise FailedPrecondition(f"{e.name} was removed during the diff") from None
    try:
        shown = data.limits(e.size, e.lower_sizes)
        for offset in range(0, e.size, CHUNK):
            want = min(CHUNK, e.size - offset)
            chunk = data.read(fds, shown, offset, want)
            if len(chunk) < want:  # the file shrank after the metadata was read
                chunk += bytes(want - len(chunk))
            yield chunk
    finally:
        for fd in fds:
            os.close(fd)


def layer_diff(snapshotter: Snapshotter, key: str) -> LayerDiff:
    """The changes of snapshot `key` (active or committed) relative to its
    parent. NotFound for an unknown key, FailedPrecondition for a view.
    Runs on the trio thread; reads no file bytes."""
    rec = snapshotter.meta.get(key)
    if rec.kind == Kind.VIEW:
        raise FailedPrecondition(f"snapshot {key} is a view: it has no changes of its own")
    view = snapshotter.view_of(rec.id)
    assert view is not None
    if view.writable:
        snapshotter.tree.flush(view)  # sizes that open files changed
    return _Collector(snapshotter.tree, view).collect()


class _Collector:
    def __init__(self, tree: LayerTree, view: View) -> None:
        self.tree = tree
        self.rows = tree.rows
        self.view = view
        self.top = view.top
        self.dir_paths: dict[int, Path | None] = {ROOT_OID: ()}
        self.dirs_at: dict[Path, int] = {(): ROOT_OID}
        self.lower_dirs: dict[Path, int | None] = {(): ROOT_OID}
        self.objects: dict[Path, Attr] = {}
        self.whiteouts: set[Path] = set()
        self.opaque: set[Path] = set()
        self.files: list[Attr] = []

    # ------------------------------------------------------------ the view's paths

    def names(self, oid: int) -> list[Path]:
        """Every path of object `oid` in the view, sorted."""
        found = set()
        for dir_oid, name in self.rows.names_of(oid):
            if self.view.find(dir_oid, name) != oid:
                continue  # a lower name this view no longer has
            parent = self.dir_path(dir_oid)
            if parent is not None:
                found.add((*parent, name))
        return sorted(found)

    def dir_path(self, oid: int) -> Path | None:
        """The path of directory `oid` in the view, or None if it has none."""
        if oid in self.dir_paths:
            return self.dir_paths[oid]
        self.dir_paths[oid] = None  # no loops while looking
        names = self.names(oid)
        path = names[0] if names else None
        self.dir_paths[oid] = path
        if path is not None:
            self.dirs_at[path] = oid
        return path

    # ------------------------------------------------------------ the parent chain

    def _lower_mode(self, oid: int) -> int | None:
        for row in self.rows.versions(oid, self.top - 1):
            if row[1] in self.view.rank:
                return int(row[2])
        return None

    def lower_at(self, path: Path) -> tuple[int, bool] | None:
        """(oid, is a directory) of what the parent chain has at `path`, or None:
        one probe per component, the directories on the way remembered."""
        parent = path[:-1]
        if parent not in self.lower_dirs:
            above = self.lower_at(parent) if parent else (ROOT_OID, True)
            self.lower_dirs[parent] = above[0] if above and above[1] else None
        dir_oid = self.lower_dirs[parent]
        if dir_oid is None:
            return None
        oid = self.view.probe(dir_oid, path[-1], below_top=True)
        if not oid:
            return None
        mode = self._lower_mode(oid)
        if mode is None:
            return None
        return oid, stat.S_ISDIR(mode)

    # ------------------------------------------------------------ collecting

    def collect(self) -> LayerDiff:
        changed: set[int] = set()
        for dir_oid, name, oid in self.rows.entries_of(self.top):
            if oid:
                changed.add(oid)
                continue
            parent = self.dir_path(dir_oid)
            if parent is not None and self.lower_at((*parent, name)) is not None:
                self.whiteouts.add((*parent, name))
        changed.update(oid for oid in self.rows.objects_of(self.top) if oid != ROOT_OID)
        todo = sorted(changed)
        seen = set(todo)
        while todo:
            oid = todo.pop()
            for child in self.add_object(oid):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        entries = self.entries()  # fills self.files
        return LayerDiff(entries, self.files)

    def add_object(self, oid: int) -> list[int]:
        """Record `oid` under each of its names; for a directory the parent
        chain has elsewhere (renamed here), return its children, which must
        be written too."""
        try:
            a = self.view.attr(oid)
        except OSError:
            return []  # no version in this view (a row of an object going away)
        more: list[int] = []
        for path in self.names(oid):
            self.objects[path] = a
            if not a.is_dir:
                continue
            self.dirs_at[path] = oid
            lower = self.lower_at(path)
            if lower is not None and lower[0] == oid:
                continue
            if lower is not None and lower[1]:
                self.opaque.add(path)
            if self._lower_mode(oid) is not None:
                more += [child.oid for _, child in self.view.listdir(oid)]
        return more

    def entries(self) -> list[Member]:
        keyed: dict[Path, Member] = {}
        first_name: dict[int, str] = {}
        for path in sorted(self.objects):
            a = self.objects[path]
            entry = self.entry(path, a, first_name.get(a.oid))
            if entry is not None:
                keyed[path] = entry
                if not a.is_dir:
                    first_name.setdefault(a.oid, entry.name)
        for path in self.whiteouts - self.objects.keys():
            keyed[(*path[:-1], WHITEOUT_PREFIX + path[-1])] = Member(
                _name((*path[:-1], WHITEOUT_PREFIX + path[-1])), tarfile.REGTYPE)
        for path in self.opaque:
            # b"" sorts the marker right after its directory, before any child.
            keyed[(*path, b"")] = Member(_name(path) + "/" + OPAQUE_MARKER, tarfile.REGTYPE)
        for path in list(keyed):
            for i in range(1, len(path)):
                parent = path[:i]
                if parent not in keyed:
                    a = self.view.attr(self.dirs_at[parent])
                    entry = self.entry(parent, a, None)
                    assert entry is not None
                    keyed[parent] = entry
        return [keyed[p] for p in sorted(keyed)]

    def entry(self, path: Path, a: Attr, link_to: str | None) -> Member | None:
        base = Member(_name(path), tarfile.LNKTYPE, stat.S_IMODE(a.mode), a.uid, a.gid,
                     a.mtime_ns // 1_000_000_000)
        if link_to is not None:
            return replace(base, linkname=link_to)
        fmt = stat.S_IFMT(a.mode)
        kind = _TYPES.get(fmt)
        if kind is None:
            return None  # a socket
        xattrs = tuple(sorted(
            (XATTR_PREFIX + os.fsdecode(k), v.decode("utf-8", "surrogateescape"))
            for k, v in self.view.xattrs(a).items()))
        entry = replace(base, type=kind, xattrs=xattrs)
        if fmt == stat.S_IFREG and a.data is not None and a.size:
            paths, sizes = self.tree.files.data_chain(a)
            self.files.append(a)
            return replace(entry, size=a.size, data=paths[0], lower=tuple(paths[1:]),
                           lower_sizes=tuple(sizes))
        if fmt == stat.S_IFLNK:
            return replace(entry, linkname=os.fsdecode(a.target or b""))
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return replace(entry, rdev=a.rdev)
        return entry


_TYPES = {stat.S_IFREG: tarfile.REGTYPE, stat.S_IFDIR: tarfile.DIRTYPE,
          stat.S_IFLNK: tarfile.SYMTYPE, stat.S_IFIFO: tarfile.FIFOTYPE,
          stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE}


def _name(path: Path) -> str:
    return os.fsdecode(b"/".join(path))
