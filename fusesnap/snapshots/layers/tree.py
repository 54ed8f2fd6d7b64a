"""The namespace rules: what each change of a view does, in POSIX terms.

:class:`LayerTree` is the layer model's entry point. It binds the rows of
every layer (rows.py), the views and their caches (views.py) and the open
files with their data (files.py), and applies the rules of each change:
create, link, unlink, rename (never EXDEV), setattr and xattrs, and what
opening, closing and committing do to an object. Every change is one group
of the database (store/db.py); callers never see a half-made one.

Errors are `OSError(errno)`; all calls run on the trio thread.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
from pathlib import Path

from fusesnap.snapshots.layers import data
from fusesnap.snapshots.layers.files import Files, OpenFile, unlink_files
from fusesnap.snapshots.layers.recovery import recover_layer
from fusesnap.snapshots.layers.rows import (
    NAME_MAX,
    WHITEOUT,
    Attr,
    Rows,
    Version,
    fs_error,
    now_ns,
)
from fusesnap.snapshots.layers.views import View
from fusesnap.store.db import Database
from fusesnap.store.space import NO_SPACE, Space


class LayerTree:
    """Objects, entries and data of every layer in the store."""

    def __init__(self, db: Database, layers_dir: Path, space: Space) -> None:
        self.db = db
        self.layers_dir = layers_dir
        layers_dir.mkdir(parents=True, exist_ok=True)
        self.rows = Rows(db)
        self.files = Files(self.rows, layers_dir, space, self._hole_unit())
        self.views: dict[int, View] = {}

    @property
    def space(self) -> Space:
        return self.files.space

    def _hole_unit(self) -> int:
        """What :func:`data.probe` finds; on a full disk, where it cannot write
        its probe, what it found at the last start (0 if never)."""
        row = self.db.one("SELECT value FROM meta WHERE key = 'hole_unit'")
        try:
            unit = data.probe(str(self.layers_dir))
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            return int(row[0]) if row else 0
        if row is None or int(row[0]) != unit:
            with self.db.transaction():
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                "('hole_unit', ?)", (str(unit),))
        return unit

    # ----------------------------------------------------------------- layers and views

    def create_layer(self, sid: int, root_owner: tuple[int, int] | None) -> None:
        """Make the directory of layer `sid`; with `root_owner`, it is a base layer
        and gets the root directory object. Runs inside the caller's transaction."""
        (self.layers_dir / str(sid)).mkdir(exist_ok=True)
        if root_owner is not None:
            self.rows.insert_root(sid, root_owner[0], root_owner[1], now_ns())

    def drop_layer_rows(self, sid: int) -> None:
        """Delete the metadata of layer `sid` (inside the caller's transaction)."""
        self.rows.drop_layer(sid)

    def remove_layer_data(self, sid: int) -> None:
        shutil.rmtree(self.layers_dir / str(sid), ignore_errors=True)

    def recover_layer(self, sid: int) -> None:
        """After an unclean stop (recovery.py)."""
        recover_layer(self.rows, self.layers_dir / str(sid), sid)

    def open_view(self, sid: int, chain: list[int], writable: bool) -> View:
        view = self.views.get(sid)
        if view is None:
            view = self.views[sid] = View(self.rows, sid, chain, writable)
        return view

    def seal(self, view: View) -> None:
        """Make `view` read-only (Commit): record what open files wrote, and drop
        objects whose last name went while open, so the layer never changes
        after (their descriptors keep working on the unlinked backing file)."""
        self.files.flush(view)
        doomed: list[str] = []
        with self.db.transaction():
            for of in self.files.open_in(view):
                a = of.attr
                if a.nlink == 0 and a.layer == view.top:
                    self._purge(view, a, doomed)
                    view.remember(a)  # fstat of those descriptors still works
        unlink_files(doomed)
        self.files.spares.drop(view.top)
        view.writable = False

    def forget_view(self, view: View) -> None:
        view.alive = False
        view.writable = False
        self.views.pop(view.sid, None)
        self.files.forget_view(view)

    def flush(self, view: View | None = None) -> None:
        """Record the sizes and times that writes changed (all views, or one)."""
        self.files.flush(view)

    def sync(self) -> None:
        """Commit the filesystem changes made so far (an fsync of a file or
        directory; store/db.py groups them otherwise)."""
        self.db.commit_group()

    # ----------------------------------------------------------------- writing helpers

    def _writable(self, view: View) -> None:
        if not view.writable:
            raise fs_error(errno.EROFS)

    def _own(self, view: View, a: Attr) -> Attr:
        """Give the top layer its own version of `a` (metadata only; bytes stay)."""
        if a.layer != view.top:
            xattrs = view.xattrs(a)
            a.layer = view.top
            self.rows.save(a)
            self.rows.insert_xattrs(a.oid, a.layer, xattrs.items())
        return a

    def _set_entry(self, view: View, dir_oid: int, name: bytes, oid: int) -> None:
        self.rows.set_entry(dir_oid, name, view.top, oid)
        view.set_entry(dir_oid, name, oid)

    def _clear_entry(self, view: View, dir_oid: int, name: bytes) -> None:
        if view.probe(dir_oid, name, below_top=True):
            self._set_entry(view, dir_oid, name, WHITEOUT)
        else:
            self.rows.delete_entry(dir_oid, name, view.top)
            view.set_entry(dir_oid, name, WHITEOUT)

    def _touch_dir(self, view: View, d: Attr, now: int, nlink_delta: int = 0) -> None:
        self._own(view, d)
        d.mtime_ns = d.ctime_ns = now
        d.nlink += nlink_delta
        self.rows.save(d)

    def _drop_link(self, view: View, a: Attr, now: int, doomed: list[str]) -> None:
        """One name of `a` went away; forget the object with its last name
        (once nothing holds it open)."""
        if a.nlink <= 1 and a.layer != view.top:
            a.nlink = 0  # only lower versions exist; the whiteout hides it
            return
        self._own(view, a)
        a.nlink -= 1
        a.ctime_ns = now
        if a.nlink > 0 or self.files.handles(view, a.oid):
            self.rows.save(a)
        else:
            self._purge(view, a, doomed)

    def _purge(self, view: View, a: Attr, doomed: list[str]) -> None:
        self.rows.delete_object(a.oid, view.top)
        if a.is_dir:
            self.rows.delete_entries_in(a.oid, view.top)
        if a.data == view.top:
            doomed.append(self.files.data_path(view.top, a.oid))
        view.forget(a.oid)
        self.files.written(view, a)

    # ----------------------------------------------------------------- namespace operations

    def make(
        self, view: View, dir_oid: int, name: bytes, mode: int, uid: int, gid: int,
        rdev: int = 0, target: bytes | None = None,
    ) -> Attr:
        """Create a file, directory, symlink, fifo, socket or device node."""
        return self._make(view, dir_oid, name, mode, uid, gid, rdev, target)[0]

    def create(self, view: View, dir_oid: int, name: bytes, mode: int, uid: int,
               gid: int) -> tuple[Attr, OpenFile]:
        """Create a regular file and open it for reading and writing: the
        descriptor that created its backing file is the handle's."""
        a, fd = self._make(view, dir_oid, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid,
                           keep_fd=True)
        return a, self.files.adopt(OpenFile(fd, view, a, True))

    def _make(
        self, view: View, dir_oid: int, name: bytes, mode: int, uid: int, gid: int,
        rdev: int = 0, target: bytes | None = None, keep_fd: bool = False,
    ) -> tuple[Attr, int]:
        self._writable(view)
        self.space.check()
        _check_name(name)
        d = view.dir(dir_oid)
        if view.find(dir_oid, name):
            raise fs_error(errno.EEXIST)
        is_reg = stat.S_ISREG(mode)
        fd = -1
        if is_reg:
            oid, fd = self.files.create(view.top)
            if not keep_fd:
                os.close(fd)
                fd = -1
        else:
            oid = self.rows.new_oid()
        try:
            with self.rows.db.group():
                return self._insert(view, d, name, oid, mode, uid, gid, rdev, target,
                                    now_ns()), fd
        except BaseException:
            view.set_entry(dir_oid, name, WHITEOUT)
            view.forget(oid)
            if is_reg:
                if fd >= 0:
                    os.close(fd)
                unlink_files([self.files.data_path(view.top, oid)])
            raise

    def _insert(self, view: View, d: Attr, name: bytes, oid: int, mode: int, uid: int,
                gid: int, rdev: int, target: bytes | None, now: int) -> Attr:
        """Record new object `oid` as `name` in directory `d` (inside the caller's
        transaction); a setgid directory passes on its group, and its bit to
        subdirectories."""
        if d.mode & stat.S_ISGID:
            gid = d.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        a = Attr(Version(oid, view.top, mode, uid, gid, rdev, 2 if is_dir else 1,
                         len(target) if target is not None else 0, now, now, now, target,
                         data=view.top if stat.S_ISREG(mode) else None, base=None,
                         base_size=None, blocks=None))
        a.xattrs = {}
        self.rows.save(a)
        if is_dir:
            view.made_dir(oid)
        self._set_entry(view, d.oid, name, oid)
        self._touch_dir(view, d, now, 1 if is_dir else 0)
        view.remember(a)
        return a

    def link(self, view: View, oid: int, dir_oid: int, name: bytes) -> Attr:
        self._writable(view)
        self.space.check()
        a = view.attr(oid)
        if a.is_dir:
            raise fs_error(errno.EPERM)
        _check_name(name)
        d = view.dir(dir_oid)
        if view.find(dir_oid, name):
            raise fs_error(errno.EEXIST)
        now = now_ns()
        with self.rows.db.group():
            self._set_entry(view, dir_oid, name, oid)
            self._own(view, a)
            a.nlink += 1
            a.ctime_ns = now
            self.rows.save(a)
            self._touch_dir(view, d, now)
        return a

    def unlink(self, view: View, dir_oid: int, name: bytes) -> None:
        self._writable(view)
        d = view.dir(dir_oid)
        a = view.lookup(dir_oid, name)
        if a.is_dir:
            raise fs_error(errno.EISDIR)
        doomed: list[str] = []
        now = now_ns()
        with self.rows.db.group():
            self._clear_entry(view, dir_oid, name)
            self._drop_link(view, a, now, doomed)
            self._touch_dir(view, d, now)
        self.rows.db.after_commit(functools.partial(unlink_files, doomed))

    def rmdir(self, view: View, dir_oid: int, name: bytes) -> None:
        self._writable(view)
        d = view.dir(dir_oid)
        a = view.lookup(dir_oid, name)
        if not a.is_dir:
            raise fs_error(errno.ENOTDIR)
        if not view.is_empty_dir(a.oid):
            raise fs_error(errno.ENOTEMPTY)
        now = now_ns()
        doomed: list[str] = []
        with self.rows.db.group():
            self._clear_entry(view, dir_oid, name)
            self._remove_dir_object(view, a, doomed)
            self._touch_dir(view, d, now, -1)

    def _remove_dir_object(self, view: View, a: Attr, doomed: list[str]) -> None:
        if a.layer == view.top:
            self._purge(view, a, doomed)
        else:
            # Entries the top layer made inside it (whiteouts) are unreachable now.
            self.rows.delete_entries_in(a.oid, view.top)
            a.nlink = 0

    def rename(
        self, view: View, old_dir: int, old_name: bytes, new_dir: int, new_name: bytes,
        exchange: bool = False, noreplace: bool = False,
        whiteout: tuple[int, int] | None = None,
    ) -> None:
        """Move an entry (never EXDEV). `exchange` swaps two entries; with
        `whiteout` = (uid, gid) the old name becomes a whiteout device (0/0)
        owned by them, as RENAME_WHITEOUT asks."""
        self._writable(view)
        _check_name(new_name)
        od = view.dir(old_dir)
        nd = view.dir(new_dir)
        a = view.lookup(old_dir, old_name)
        tgt_oid = view.find(new_dir, new_name)
        t = view.attr(tgt_oid) if tgt_oid else None
        if exchange and t is None:
            raise fs_error(errno.ENOENT)
        if t is not None and noreplace:
            raise fs_error(errno.EEXIST)
        if t is not None and t.oid == a.oid and not exchange:
            return  # two names of one object: POSIX says do nothing
        if t is not None and not exchange:
            if a.is_dir and not t.is_dir:
                raise fs_error(errno.ENOTDIR)
            if not a.is_dir and t.is_dir:
                raise fs_error(errno.EISDIR)
            if t.is_dir and not view.is_empty_dir(t.oid):
                raise fs_error(errno.ENOTEMPTY)
        now = now_ns()
        doomed: list[str] = []
        with self.rows.db.group():
            if exchange:
                assert t is not None
                self._set_entry(view, old_dir, old_name, t.oid)
                self._set_entry(view, new_dir, new_name, a.oid)
                if old_dir != new_dir and a.is_dir != t.is_dir:
                    delta = 1 if a.is_dir else -1
                    self._touch_dir(view, od, now, -delta)
                    self._touch_dir(view, nd, now, delta)
                for obj in (a, t):
                    self._own(view, obj)
                    obj.ctime_ns = now
                    self.rows.save(obj)
            else:
                self._clear_entry(view, old_dir, old_name)
                self._set_entry(view, new_dir, new_name, a.oid)
                if t is not None:
                    if t.is_dir:
                        self._remove_dir_object(view, t, doomed)
                        self._touch_dir(view, nd, now, -1)
                    else:
                        self._drop_link(view, t, now, doomed)
                if a.is_dir and old_dir != new_dir:
                    self._touch_dir(view, od, now, -1)
                    self._touch_dir(view, nd, now, 1)
                self._own(view, a)
                a.ctime_ns = now
                self.rows.save(a)
                if whiteout is not None:
                    self._insert(view, od, old_name, self.rows.new_oid(), stat.S_IFCHR,
                                 whiteout[0], whiteout[1], 0, None, now)
            self._touch_dir(view, od, now)
            if new_dir != old_dir:
                self._touch_dir(view, nd, now)
        self.rows.db.after_commit(functools.partial(unlink_files, doomed))

    # ----------------------------------------------------------------- attributes

    def setattr(
        self, view: View, oid: int, *, mode: int | None = None, uid: int | None = None,
        gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
        mtime_ns: int | None = None, ctime_ns: int | None = None,
    ) -> Attr:
        """Change what is given; ctime becomes `ctime_ns` (the kernel's, when
        its writeback cache flushes a file's times) or now."""
        self._writable(view)
        a = view.attr(oid)
        now = now_ns()
        if size is not None:
            if a.is_dir:
                raise fs_error(errno.EISDIR)
            if not stat.S_ISREG(a.mode):
                raise fs_error(errno.EINVAL)
        with self.rows.db.group():
            self._own(view, a)
            if size is not None:
                self.files.own_data(view, a, keep=size > 0)
                os.truncate(self.files.data_path(view.top, a.oid), size)  # own_data's
                if a.base_size is not None and size < a.base_size:
                    a.base_size = size  # growing again shows zeros, not the old bytes
                a.size = size
                a.blocks = None
                self.files.measure(a)
                a.mtime_ns = now
                self.files.written(view, a)
            if mode is not None:
                a.mode = stat.S_IFMT(a.mode) | stat.S_IMODE(mode)
            if uid is not None:
                a.uid = uid
            if gid is not None:
                a.gid = gid
            if atime_ns is not None:
                a.atime_ns = atime_ns
            if mtime_ns is not None:
                a.mtime_ns = mtime_ns
            a.ctime_ns = now if ctime_ns is None else ctime_ns
            self.rows.save(a)
        return a

    def set_xattr(self, view: View, oid: int, name: bytes, value: bytes,
                  create: bool = False, replace: bool = False) -> None:
        self._writable(view)
        self.space.check()
        a = view.attr(oid)
        present = name in view.xattrs(a)
        if create and present:
            raise fs_error(errno.EEXIST)
        if replace and not present:
            raise fs_error(errno.ENODATA)
        with self.rows.db.group():
            self._own(view, a)
            self.rows.put_xattr(a.oid, a.layer, name, value)
            a.ctime_ns = now_ns()
            self.rows.save(a)
        assert a.xattrs is not None
        a.xattrs[name] = value

    def remove_xattr(self, view: View, oid: int, name: bytes) -> None:
        self._writable(view)
        a = view.attr(oid)
        if name not in view.xattrs(a):
            raise fs_error(errno.ENODATA)
        with self.rows.db.group():
            self._own(view, a)
            self.rows.delete_xattr(a.oid, a.layer, name)
            a.ctime_ns = now_ns()
            self.rows.save(a)
        assert a.xattrs is not None
        del a.xattrs[name]


    # ----------------------------------------------------------------- open files

    def open(self, view: View, oid: int, flags: int) -> OpenFile:
        a = view.attr(oid)
        if not stat.S_ISREG(a.mode):
            raise fs_error(errno.EINVAL)
        trunc = bool(flags & os.O_TRUNC)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or trunc
        if writable:
            self._writable(view)
            if trunc or a.data != view.top or a.layer != view.top:
                with self.db.group():
                    self._own(view, a)
                    # Truncating needs no copy of the lower bytes.
                    self.files.own_data(view, a, keep=not trunc)
                    if trunc:
                        a.size = a.blocks = 0
                        a.mtime_ns = a.ctime_ns = now_ns()
                        self.files.written(view, a)
                        self.rows.save(a)
        return self.files.open(view, a, writable)

    def release(self, of: OpenFile) -> None:
        last = self.files.close(of)
        view, a = of.view, of.attr
        if not view.alive:
            return
        if last and a.nlink == 0 and a.layer == view.top and view.writable:
            doomed: list[str] = []
            with self.db.group():
                self._purge(view, a, doomed)
            self.db.after_commit(functools.partial(unlink_files, doomed))
        else:
            self.files.flush_one(view, a)

    def record_blocks(self, view: View, oid: int) -> None:
        """Measure and save the blocks of `oid`'s backing file (inside the
        caller's transaction): for bytes put in place without writes."""
        a = view.attr(oid)
        a.blocks = None
        self.files.measure(a)
        self.rows.save(a)


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG)
