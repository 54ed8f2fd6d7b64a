"""Apply an OCI layer straight into an active snapshot's own layer.

The daemon's twin of :func:`tests.layer_applier.apply_layer` (the reference:
the same layer semantics, the member parsing shared with it, the same
resulting view) without a FUSE round trip per call. Two phases:

1. :func:`read_layer`, in the caller's thread (a gRPC worker): decompress and
   hash the tar, check every name, and write each regular file's bytes into a
   staging file in the snapshot's layer directory — the file that becomes its
   backing file by a rename. Nothing is visible yet: a corrupt or unsafe
   layer, or one whose diff_id is not the expected one, changes nothing.
2. :class:`LayerWriter`, on the trio thread (the caller runs its methods
   through the bridge, one call and one transaction per :data:`BATCH`
   entries): the entries become objects and entries of the snapshot's layer
   through LayerTree operations on its View, as the mount's handlers would
   make them. If an entry cannot be applied (a hard link to nothing, a parent
   that is a symlink …), :meth:`LayerWriter.rollback` puts back the layer's
   rows and data files from before the apply.

Owners, modes, device numbers and xattrs are recorded as the layer gives them,
whoever runs the daemon: nothing here needs privilege. Parent directories the
layer does not name are made 0755 root:root, as containerd's applier makes
them. What the kernel refuses through the mount whatever the privilege
(``user.*`` xattrs on special files, POSIX ACLs) is skipped the same way.

Apply is meant for a snapshot nobody uses meanwhile (an import's extract
snapshot): changes made through the mount during an apply are not isolated
from it, and a rollback drops the tree's cached attributes of the view.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from fusesnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from fusesnap.layertar import (
    CHUNK,
    Applied,
    LayerError,
    LayerStream,
    check_diff_id,
    classify,
    member_path,
    member_xattrs,
    show_path,
)
from fusesnap.snapshots.layers import ROOT_OID, LayerTree, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.metastore import Kind

log = logging.getLogger(__name__)

BATCH = 512
"""Entries per crossing into the trio thread (and per transaction)."""

STAGING = ".apply-"
"""Prefix of the staging and backup files an apply keeps in a layer directory
(not digits: a start after a crash deletes them, tree.recover_layer)."""

_KINDS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK}

Parts = tuple[bytes, ...]


@dataclass(slots=True)
class Change:
    """What one member of the layer changes, as the writer needs it."""

    what: str
    """"whiteout", "opaque", "link" or a key of _KINDS."""
    parts: Parts
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    rdev: int = 0
    target: bytes | None = None
    """A symlink's target."""
    link: Parts = ()
    """A hard link's target path."""
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    staged: str | None = None
    """A regular file's bytes, until they become its backing file."""
    size: int = 0


@dataclass
class ReadLayer:
    entries: list[Change]
    diff_id: str
    size: int
    staged: list[str]
    """Every staging file made; :func:`discard` them when done."""


def _bytes(parts: Iterable[str]) -> Parts:
    return tuple(os.fsencode(p) for p in parts)


def _show(parts: Parts) -> str:
    return show_path(tuple(os.fsdecode(p) for p in parts))


def member_change(member: tarfile.TarInfo) -> Change:
    what, parts = classify(member)
    if what != "entry":
        return Change(what, _bytes(parts))
    mtime = int(member.mtime) * 10**9
    e = Change("", _bytes(parts), member.mode & 0o7777, member.uid, member.gid, mtime,
              xattrs=[(os.fsencode(k), v) for k, v in member_xattrs(member)])
    if member.isreg():
        e.what = "file"
    elif member.isdir():
        e.what = "dir"
    elif member.issym():
        e.what = "symlink"
        e.target = os.fsencode(member.linkname)
    elif member.islnk():
        e.what = "link"
        e.link = _bytes(member_path(member.linkname))
    elif member.isfifo():
        e.what = "fifo"
    elif member.ischr() or member.isblk():
        e.what = "char" if member.ischr() else "block"
        e.rdev = os.makedev(member.devmajor, member.devminor)
    else:
        raise LayerError(f"{show_path(parts)}: unsupported tar entry type {member.type!r}")
    return e


def _spool(src: IO[bytes], path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    size = 0
    try:
        while chunk := src.read(CHUNK):
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            size += len(chunk)
    finally:
        os.close(fd)
    return size


def read_layer(source: IO[bytes], staging: str) -> ReadLayer:
    """Phase 1 (any thread; touches no shared state): the entries of the layer
    read from `source`, regular files' bytes written to files named
    `staging` + a number. LayerError for a corrupt or unsafe layer (then no
    staging file is left)."""
    staged: list[str] = []
    entries: list[Change] = []
    try:
        with LayerStream(source) as layer:
            for member in layer.members():
                e = member_change(member)
                if e.what == "file":
                    e.staged = f"{staging}{len(staged)}"
                    staged.append(e.staged)
                    try:
                        e.size = _spool(layer.extractfile(member), e.staged)
                    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as err:
                        raise LayerError(f"corrupt layer: {err}") from None
                entries.append(e)
            diff_id, size = layer.finish()
    except BaseException:
        discard(staged)
        raise
    return ReadLayer(entries, diff_id, size, staged)


def discard(paths: Iterable[str]) -> None:
    """Delete the staging files that did not become backing files."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


Invalidate = Callable[[int, Iterable[tuple[int, bytes]]], None]
"""``(snapshot id, [(directory oid, name)])``: drop what the kernel cached of
those entries (the mount's CACHE_TIMEOUT trusts that changes pass through it)."""


class EntryExists(LayerError):
    """A create-only apply met a path the snapshot has."""


class NoDirectory(LayerError):
    """A create-only apply met a path whose directory the snapshot lacks."""


class LayerWriter:
    """Phase 2: applies entries to `view` (every method on the trio thread).
    Made before the first entry, it records what :meth:`rollback` restores.
    `create_only`: every entry must make a new name in a directory that is
    there (EntryExists, NoDirectory otherwise)."""

    def __init__(self, tree: LayerTree, view: View, backup: str,
                 invalidate: Invalidate | None = None, create_only: bool = False) -> None:
        if not view.writable:
            raise LayerError("the snapshot is not active")
        self.create_only = create_only
        self.tree = tree
        self.view = view
        self.backup = backup
        self.invalidate = invalidate
        self.skipped: list[str] = []
        self.dirs: dict[Parts, int] = {(): ROOT_OID}
        self.unpacked: set[Parts] = set()
        self.dir_times: list[tuple[Parts, int]] = []
        self.touched: set[tuple[int, bytes]] = set()
        tree.flush(view)
        sid = view.top
        self.saved = tree.rows.layer_rows(sid)
        # Own data files an entry may unlink: kept as links until the end.
        self.own: list[int] = []
        for oid in tree.rows.own_data(sid):
            with contextlib.suppress(FileNotFoundError):
                os.link(tree.files.data_path(sid, oid), f"{backup}{oid}")
                self.own.append(oid)

    # ------------------------------------------------------------------ driving

    def apply(self, entries: list[Change]) -> None:
        """Apply a batch of entries in one transaction; LayerError if one cannot be."""
        if not (self.view.alive and self.view.writable):
            raise LayerError("the snapshot was committed or removed during the apply")
        with self.tree.db.transaction():
            for e in entries:
                try:
                    self._apply(e)
                except OSError as err:
                    raise LayerError(f"{_show(e.parts)}: {os.strerror(err.errno or 0)}") \
                        from None

    def finish(self) -> None:
        """Set directories' times (their entries changed them), drop the backups."""
        with self.tree.db.transaction():
            for parts, mtime in reversed(self.dir_times):
                oid = self._dir(parts, create=False)
                if oid is not None:  # a later entry may have removed it
                    self.tree.setattr(self.view, oid, atime_ns=mtime, mtime_ns=mtime)
        discard(f"{self.backup}{oid}" for oid in self.own)
        self._invalidate()

    def rollback(self) -> None:
        """Put back the layer's rows and data files from before the apply."""
        view, tree = self.view, self.tree
        if view.alive and view.writable:
            sid = view.top
            with tree.db.transaction():
                tree.rows.restore_layer(sid, self.saved)
            for oid in self.own:
                os.replace(f"{self.backup}{oid}", tree.files.data_path(sid, oid))
            keep = set(self.own)
            for entry in os.scandir(tree.layers_dir / str(sid)):
                if entry.name.isdigit() and int(entry.name) not in keep:
                    os.unlink(entry.path)
            view.clear()
            self._invalidate()
        discard(f"{self.backup}{oid}" for oid in self.own)

    def _invalidate(self) -> None:
        if self.invalidate is not None:
            self.invalidate(self.view.sid, self.touched)

    # ------------------------------------------------------------------ entries

    def _apply(self, e: Change) -> None:
        if self.create_only:
            self._check_new(e)
        if e.what == "whiteout":
            parent = self._dir(e.parts[:-1], create=False)
            if parent is not None:
                self._remove(e.parts, parent)
            return
        if e.what == "opaque":
            self._opaque(e.parts)
            return
        parts = e.parts
        for i in range(len(parts) + 1):
            self.unpacked.add(parts[:i])
        if not parts:  # the root itself: its metadata only
            if e.what == "dir":
                self._metadata(e, ROOT_OID)
            return
        parent = self._dir(parts[:-1], create=True)
        assert parent is not None
        oid = self.view.find(parent, parts[-1])
        if oid:
            self.touched.add((parent, parts[-1]))
            if e.what == "dir" and self.view.attr(oid).is_dir:
                self.dirs[parts] = oid
                self._metadata(e, oid)
                return
            if e.what == "link" and e.link == parts:
                return  # a link to itself: nothing to do
            self._remove(parts, parent)
        self._create(e, parent)

    def _check_new(self, e: Change) -> None:
        where = _show(e.parts)
        if e.what in ("whiteout", "opaque") or not e.parts:
            raise LayerError(f"{where}: only new entries may be created here")
        try:
            parent = self._dir(e.parts[:-1], create=False)
        except LayerError:
            parent = None
        if parent is None:
            raise NoDirectory(f"{where}: no such directory in the snapshot")
        if self.view.find(parent, e.parts[-1]):
            raise EntryExists(f"{where}: the snapshot has it already")

    def _dir(self, parts: Parts, create: bool) -> int | None:
        """The oid of directory `parts`; missing directories are made (0755)
        when `create`, else None. LayerError if a component is not a directory."""
        oid = self.dirs.get(parts)
        if oid is not None:
            return oid
        parent = self._dir(parts[:-1], create)
        if parent is None:
            return None
        tree, view, name = self.tree, self.view, parts[-1]
        oid = view.find(parent, name)
        if not oid:
            if not create:
                return None
            oid = tree.make(view, parent, name, stat.S_IFDIR | 0o755, 0, 0).oid
            self.touched.add((parent, name))  # the kernel may remember it missing
        else:
            a = view.attr(oid)
            if not a.is_dir:
                kind = "a symlink" if stat.S_ISLNK(a.mode) else "not a directory"
                raise LayerError(f"{_show(parts)} is {kind}; the layer writes below it")
            self.touched.add((parent, name))  # its times and link count change
        self.dirs[parts] = oid
        return oid

    def _remove(self, parts: Parts, parent: int) -> None:
        tree, view, name = self.tree, self.view, parts[-1]
        oid = view.find(parent, name)
        if not oid:
            return
        self.touched.add((parent, name))
        if view.attr(oid).is_dir:
            n = len(parts)
            for key in [k for k in self.dirs if k[:n] == parts]:
                del self.dirs[key]
            self._empty(oid)
            tree.rmdir(view, parent, name)
        else:
            tree.unlink(view, parent, name)

    def _empty(self, dir_oid: int) -> None:
        for name, a in self.view.listdir(dir_oid):
            if a.is_dir:
                self._empty(a.oid)
                self.tree.rmdir(self.view, dir_oid, name)
            else:
                self.tree.unlink(self.view, dir_oid, name)

    def _opaque(self, parts: Parts) -> None:
        """Remove everything under directory `parts` this layer did not write."""
        oid = self._dir(parts, create=False)
        if oid is None:
            return
        for name, a in self.view.listdir(oid):
            child = (*parts, name)
            if child not in self.unpacked:
                self._remove(child, oid)
            elif a.is_dir:
                self._opaque(child)

    def _create(self, e: Change, parent: int) -> None:
        tree, view, name = self.tree, self.view, e.parts[-1]
        self.touched.add((parent, name))  # the kernel may remember it missing
        if e.what == "link":
            if not e.link:
                raise LayerError(f"hard link {_show(e.parts)} to the root")
            tdir = self._dir(e.link[:-1], create=False)
            target = view.find(tdir, e.link[-1]) if tdir is not None else 0
            if not target:
                raise LayerError(f"hard link {_show(e.parts)} to {_show(e.link)}, "
                                 "which does not exist")
            oid = tree.link(view, target, parent, name).oid
        elif e.what == "file":
            oid = tree.make(view, parent, name, stat.S_IFREG | 0o600, e.uid, e.gid).oid
            assert e.staged is not None
            os.rename(e.staged, tree.files.data_path(view.top, oid))
            e.staged = None
        else:
            initial = 0o777 if e.what == "symlink" else 0o700 if e.what == "dir" else 0o600
            oid = tree.make(view, parent, name, _KINDS[e.what] | initial, e.uid, e.gid,
                            e.rdev, e.target).oid
            if e.what == "dir":
                self.dirs[e.parts] = oid
        self._metadata(e, oid)
        if e.what == "file":
            tree.record_blocks(view, oid)

    def _metadata(self, e: Change, oid: int) -> None:
        """What the reference sets: owner, mode, xattrs, times (directories' at
        the end); a symlink gets its owner and times only."""
        tree, view = self.tree, self.view
        if e.what == "symlink":
            tree.setattr(view, oid, uid=e.uid, gid=e.gid, atime_ns=e.mtime_ns,
                         mtime_ns=e.mtime_ns)
            return
        if e.what == "dir":
            tree.setattr(view, oid, uid=e.uid, gid=e.gid, mode=e.mode)
            self.dir_times.append((e.parts, e.mtime_ns))
        else:
            tree.setattr(view, oid, uid=e.uid, gid=e.gid, mode=e.mode,
                         size=e.size if e.what == "file" else None,
                         atime_ns=e.mtime_ns, mtime_ns=e.mtime_ns)
        special = e.what not in ("file", "dir") and not (
            e.what == "link" and stat.S_ISREG(view.attr(oid).mode))
        for key, value in e.xattrs:
            refused = _refused(key, special)
            if refused:
                self.skipped.append(f"{_show(e.parts)}: xattr {os.fsdecode(key)} "
                                    f"({os.strerror(refused)})")
            else:
                tree.set_xattr(view, oid, key, value)


def _refused(key: bytes, special: bool) -> int:
    """The errno the kernel answers a setxattr through the mount with, whoever
    asks (0: none): user.* only on regular files and directories; no ACLs."""
    if key.startswith(b"user.") and special:
        return errno.EPERM
    if key.startswith(b"system.posix_acl_"):
        return errno.EOPNOTSUPP
    return 0


Run = Callable[..., Any]
"""Runs a function on the trio thread and returns its result (TrioBridge.call)."""


def _active(snapshotter: Snapshotter, key: str) -> View:
    rec = snapshotter.meta.get(key)
    view = snapshotter.view_of(rec.id) if rec.kind == Kind.ACTIVE else None
    if view is None or not view.writable:
        raise FailedPrecondition(f"snapshot {key} is not active")
    return view


def _writer(snapshotter: Snapshotter, key: str, view: View, backup: str,
            invalidate: Invalidate | None, create_only: bool) -> LayerWriter:
    if _active(snapshotter, key) is not view:
        raise FailedPrecondition(f"snapshot {key} changed during the apply")
    return LayerWriter(snapshotter.tree, view, backup, invalidate, create_only)


class Applier:
    """Applies layers to active snapshots from a thread other than the trio
    thread, which `run` reaches (see the module docstring)."""

    def __init__(self, snapshotter: Snapshotter, run: Run,
                 invalidate: Invalidate | None = None) -> None:
        self.snapshotter = snapshotter
        self.run = run
        # By default, whatever keeps a copy of the snapshots' entries (the
        # FUSE adapter: the kernel's caches) is told (Snapshotter.on_changed).
        self.invalidate = invalidate or snapshotter.entries_changed

    def apply(self, key: str, source: IO[bytes], expected_diff_id: str = "",
              create_only: bool = False) -> Applied:
        """Apply the layer read from `source` to active snapshot `key`.
        NotFound (no snapshot `key`); FailedPrecondition (not active, or a
        diff_id other than `expected_diff_id`); InvalidArgument (a corrupt,
        unsafe or impossible layer). With `create_only`, AlreadyExists for an
        entry the snapshot has and NotFound for one whose directory it lacks
        (LayerWriter). On any error the snapshot's layer is as it was. Cost:
        the layer's bytes written once; one crossing into the trio thread per
        BATCH entries."""
        view: View = self.run(_active, self.snapshotter, key)
        prefix = f"{self.snapshotter.tree.layers_dir}/{view.top}/{STAGING}{secrets.token_hex(6)}-"
        try:
            layer = read_layer(source, prefix)
        except LayerError as err:
            raise InvalidArgument(str(err)) from None
        try:
            try:
                check_diff_id(layer.diff_id, expected_diff_id)
            except LayerError as err:
                raise FailedPrecondition(str(err)) from None
            writer: LayerWriter = self.run(_writer, self.snapshotter, key, view,
                                           f"{prefix}keep-", self.invalidate, create_only)
            try:
                for batch in batches(layer.entries):
                    self.run(writer.apply, batch)
                self.run(writer.finish)
            except BaseException:
                try:
                    self.run(writer.rollback)
                except Exception:
                    log.exception("could not roll back the apply to snapshot %s", key)
                raise
        except EntryExists as err:
            raise AlreadyExists(str(err)) from None
        except NoDirectory as err:
            raise NotFound(str(err)) from None
        except LayerError as err:
            raise InvalidArgument(str(err)) from None
        finally:
            discard(layer.staged)
        return Applied(diff_id=layer.diff_id, size=layer.size, entries=len(layer.entries),
                       skipped=writer.skipped)


def batches(entries: list[Change], size: int = BATCH) -> Iterable[list[Change]]:
    for i in range(0, len(entries), size):
        yield entries[i:i + size]
