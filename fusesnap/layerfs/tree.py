"""The layered object model behind every snapshot directory.

Every filesystem object has a global id (`oid`). A layer may hold a *version*
of an object (row in `inodes`) and *entries* (rows in `dentries`) keyed by the
oid of the directory they live in. A snapshot's view is its own layer over the
chain of committed layers below it: the effective version of an object, and
the effective entry for a (directory, name), come from the topmost layer of
the chain that has one. Consequences that make the semantics cheap:

* a lookup is one indexed probe of (dir, name), whatever the chain depth;
* a directory renamed in an upper layer keeps its oid, so the entries lower
  layers hold for it follow it: no EXDEV, no redirects;
* a directory removed and created again gets a new oid, so nothing of the old
  one shows through: opacity needs no marker;
* hard links share an oid, so a copy-up is seen through every link;
* an entry of oid 0 is a whiteout.

Regular file bytes live in `<layers>/<layer>/<oid>`, a plain file used through
its descriptor; `data` names the layer holding them, so a metadata change of a
lower file (chmod, chown, link) copies no bytes. Owners, modes, device numbers
and xattrs are rows, which is how a rootless daemon records what the host would
refuse it.

Errors are `OSError(errno)`; all calls run on the trio thread.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from fusesnap.errors import ResourceExhausted
from fusesnap.layerfs import data
from fusesnap.store.db import Database
from fusesnap.store.space import NO_SPACE, Space

ROOT_OID = 1
WHITEOUT = 0
NAME_MAX = 255
_CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # linux/time.h
_FICLONE = 0x40049409  # linux/fs.h: share blocks where the backing filesystem can

_INODE_COLUMNS = (
    "oid, layer, mode, uid, gid, rdev, nlink, size, atime_ns, mtime_ns, ctime_ns, target, data,"
    " base, base_size, blocks"
)
_INSERT_INODE = f"INSERT INTO inodes ({_INODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
# An insert or an update, so that the usage triggers see which (a REPLACE
# would count an update as one more object).
_UPSERT_INODE = _INSERT_INODE + " ON CONFLICT (oid, layer) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _INODE_COLUMNS.replace(" ", "").split(",")[2:])


def now_ns() -> int:
    """The time for timestamps: the clock the kernel stamps with (current_time()
    reads the coarse clock), so a `touch` after a write is never older than it."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class Attr:
    """One object's effective attributes in one view (a layer's version)."""

    __slots__ = (
        "oid", "layer", "mode", "uid", "gid", "rdev", "nlink", "size",
        "atime_ns", "mtime_ns", "ctime_ns", "target", "data", "base", "base_size", "xattrs",
        "blocks",
    )

    def __init__(self, row: tuple) -> None:
        (self.oid, self.layer, self.mode, self.uid, self.gid, self.rdev, self.nlink, self.size,
         self.atime_ns, self.mtime_ns, self.ctime_ns, self.target, self.data, self.base,
         self.base_size, self.blocks) = row
        self.xattrs: dict[bytes, bytes] | None = None
        # self.blocks: 512-byte blocks the backing file holds (holes excluded);
        # None = unknown. Recorded with the row when writes are flushed.

    def row(self) -> tuple:
        return (self.oid, self.layer, self.mode, self.uid, self.gid, self.rdev, self.nlink,
                self.size, self.atime_ns, self.mtime_ns, self.ctime_ns, self.target, self.data,
                self.base, self.base_size, self.blocks)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class View:
    """A snapshot's merged view: its chain of layers and per-view caches.

    Only the top layer of an active view ever changes, and no other view has
    that layer in its chain, so the caches need no cross-view invalidation.
    """

    def __init__(self, sid: int, chain: list[int], writable: bool) -> None:
        self.sid = sid
        self.chain = chain
        self.rank = {layer: i for i, layer in enumerate(chain)}
        self.writable = writable
        self.alive = True
        self.attrs: dict[int, Attr] = {}
        self.entries: dict[tuple[int, bytes], int] = {}
        # Directories all of whose entries are in `entries` (listed, or made in
        # this view): a name not there is not in the directory, with no query.
        self.complete: set[int] = set()
        # Merged directory listings; an entry change in the top layer drops its
        # directory's (_set_entry, _clear_entry), lower layers never change.
        self.listings: dict[int, list[tuple[bytes, Attr]]] = {}

    @property
    def top(self) -> int:
        return self.sid


class OpenFile:
    """An open regular file: a descriptor of the backing file and, when that
    holds only part of the bytes (``attr.base``), descriptors of the rest of
    its data chain (layerfs/data.py) with what each shows at most."""

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


class LayerTree:
    """Objects, entries and data of every layer in the store."""

    def __init__(self, db: Database, layers_dir: Path, space: Space) -> None:
        self.db = db
        self.layers_dir = layers_dir
        self.space = space
        """What adds data checks it first: a full disk refuses it (store/space.py)."""
        layers_dir.mkdir(parents=True, exist_ok=True)
        row = db.one("SELECT MAX(oid) FROM inodes")
        self._next_oid = max(ROOT_OID, row[0] or 0) + 1
        # The block size of partial copy-up; 0: the backing file system reports
        # no holes, every copy-up copies the whole file.
        self.unit = self._hole_unit()
        self.views: dict[int, View] = {}
        self._open: dict[tuple[int, int], list[OpenFile]] = {}
        self._dirty: dict[tuple[int, int], tuple[View, Attr]] = {}
        # Rows changed by the open group or transaction, by (layer, oid), written
        # once each just before it commits: a file created, written, chowned,
        # chmodded and touched costs one row write, not five.
        self._pending: dict[tuple[int, int], Attr] = {}
        db.before_commit = self._write_pending

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

    # ----------------------------------------------------------------- layers

    def data_path(self, layer: int, oid: int) -> str:
        return f"{self.layers_dir}/{layer}/{oid}"

    def create_layer(self, sid: int, root_owner: tuple[int, int] | None) -> None:
        """Make the directory of layer `sid`; with `root_owner`, it is a base layer
        and gets the root directory object. Runs inside the caller's transaction."""
        (self.layers_dir / str(sid)).mkdir(exist_ok=True)
        if root_owner is not None:
            now = now_ns()
            self.db.execute(
                f"INSERT INTO inodes ({_INODE_COLUMNS})"
            " VALUES (?,?,?,?,?,0,2,0,?,?,?,NULL,NULL,NULL,NULL,NULL)",
                (ROOT_OID, sid, stat.S_IFDIR | 0o755, root_owner[0], root_owner[1], now, now, now),
            )

    def drop_layer_rows(self, sid: int) -> None:
        """Delete the metadata of layer `sid` (inside the caller's transaction)."""
        for table in ("inodes", "dentries", "xattrs"):
            self.db.execute(f"DELETE FROM {table} WHERE layer = ?", (sid,))

    def remove_layer_data(self, sid: int) -> None:
        shutil.rmtree(self.layers_dir / str(sid), ignore_errors=True)

    def open_view(self, sid: int, chain: list[int], writable: bool) -> View:
        view = self.views.get(sid)
        if view is None:
            view = self.views[sid] = View(sid, chain, writable)
        return view

    def seal(self, view: View) -> None:
        """Make `view` read-only (Commit): record what open files wrote, and drop
        objects whose last name went while open, so the layer never changes
        after (their descriptors keep working on the unlinked backing file)."""
        self.flush(view)
        doomed: list[str] = []
        with self.db.transaction():
            for (sid, _), handles in self._open.items():
                a = handles[0].attr if sid == view.top and handles else None
                if a is not None and a.nlink == 0 and a.layer == view.top:
                    self._purge(view, a, doomed)
                    view.attrs[a.oid] = a  # fstat of those descriptors still works
        self._unlink_files(doomed)
        view.writable = False

    def forget_view(self, view: View) -> None:
        view.alive = False
        view.writable = False
        self.views.pop(view.sid, None)
        for key in [k for k in self._open if k[0] == view.sid]:
            for of in self._open.pop(key):
                of.close()
        for key in [k for k in self._dirty if k[0] == view.sid]:
            del self._dirty[key]

    def recover_layer(self, sid: int) -> None:
        """After an unclean stop: take file sizes from the backing files (writes
        are recorded lazily), drop objects whose last link went while open, and
        delete data files no row refers to."""
        layer_dir = self.layers_dir / str(sid)
        layer_dir.mkdir(exist_ok=True)
        with self.db.transaction():
            self.db.execute(
                "DELETE FROM xattrs WHERE layer = ? AND oid IN "
                "(SELECT oid FROM inodes WHERE layer = ? AND nlink = 0)", (sid, sid))
            self.db.execute("DELETE FROM inodes WHERE layer = ? AND nlink = 0", (sid,))
            own = {
                oid: (size, mtime)
                for oid, size, mtime in self.db.all(
                    "SELECT oid, size, mtime_ns FROM inodes WHERE layer = ? AND data = ?",
                    (sid, sid),
                )
            }
            for entry in os.scandir(layer_dir):
                oid = int(entry.name) if entry.name.isdigit() else None
                if oid is None or oid not in own:
                    os.unlink(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                size, mtime = own[oid]
                if st.st_size != size or st.st_mtime_ns > mtime:
                    self.db.execute(
                        "UPDATE inodes SET size = ?, mtime_ns = MAX(mtime_ns, ?), blocks = NULL "
                        "WHERE oid = ? AND layer = ?",
                        (st.st_size, st.st_mtime_ns, oid, sid),
                    )

    # ----------------------------------------------------------------- reading

    def attr(self, view: View, oid: int) -> Attr:
        """The effective attributes of `oid` in `view`; ENOENT if it has none."""
        a = view.attrs.get(oid)
        if a is not None:
            return a
        # A child layer's id is always above its parent's (ids grow, a parent
        # exists first), so the newest row of the chain is the topmost one.
        for row in self.db.execute(
            f"SELECT {_INODE_COLUMNS} FROM inodes WHERE oid = ? AND layer <= ?"
            " ORDER BY layer DESC", (oid, view.top)
        ):
            if row[1] in view.rank:
                a = view.attrs[oid] = Attr(row)
                return a
        raise fs_error(errno.ENOENT)

    def _probe(self, view: View, dir_oid: int, name: bytes, below_top: bool = False) -> int:
        """The entry the topmost layer of the chain (below the top one, if asked)
        has for (dir, name): the newest such row, as in `attr`."""
        highest = view.top - 1 if below_top else view.top
        for layer, oid in self.db.execute(
            "SELECT layer, oid FROM dentries WHERE dir = ? AND name = ? AND layer <= ?"
            " ORDER BY layer DESC", (dir_oid, name, highest)
        ):
            if layer in view.rank:
                return int(oid)
        return WHITEOUT

    def find(self, view: View, dir_oid: int, name: bytes) -> int:
        """The oid `name` names in directory `dir_oid`, or 0."""
        key = (dir_oid, name)
        oid = view.entries.get(key)
        if oid is None:
            if dir_oid in view.complete:
                return WHITEOUT
            oid = view.entries[key] = self._probe(view, dir_oid, name)
        return oid

    def lookup(self, view: View, dir_oid: int, name: bytes) -> Attr:
        oid = self.find(view, dir_oid, name)
        if not oid:
            raise fs_error(errno.ENOENT)
        return self.attr(view, oid)

    def listdir(self, view: View, dir_oid: int) -> list[tuple[bytes, Attr]]:
        """The merged entries of a directory, sorted by name, attributes loaded in bulk."""
        cached = view.listings.get(dir_oid)
        if cached is not None:
            return cached
        best: dict[bytes, tuple[int, int]] = {}
        depth = len(view.chain)
        for name, layer, oid in self.db.all(
            "SELECT name, layer, oid FROM dentries WHERE dir = ?", (dir_oid,)
        ):
            r = view.rank.get(layer)
            if r is not None and r < best.get(name, (depth, 0))[0]:
                best[name] = (r, oid)
        for name, (_, oid) in best.items():
            view.entries[(dir_oid, name)] = oid
        view.complete.add(dir_oid)
        self._load_attrs(view, [oid for _, oid in best.values() if oid])
        out = []
        for name in sorted(best):
            oid = best[name][1]
            if oid:
                a = view.attrs.get(oid)
                if a is not None:
                    out.append((name, a))
        view.listings[dir_oid] = out  # callers only read it
        return out

    def _load_attrs(self, view: View, oids: Iterable[int]) -> None:
        missing = [o for o in set(oids) if o not in view.attrs]
        depth = len(view.chain)
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            best: dict[int, tuple[int, tuple]] = {}
            marks = ",".join("?" * len(chunk))
            for row in self.db.all(
                f"SELECT {_INODE_COLUMNS} FROM inodes WHERE oid IN ({marks})", chunk
            ):
                r = view.rank.get(row[1])
                if r is not None and r < best.get(row[0], (depth, ()))[0]:
                    best[row[0]] = (r, row)
            for oid, (_, row) in best.items():
                view.attrs[oid] = Attr(row)

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

    def is_empty_dir(self, view: View, dir_oid: int) -> bool:
        return not self.listdir(view, dir_oid)

    def xattrs(self, view: View, a: Attr) -> dict[bytes, bytes]:
        if a.xattrs is None:
            a.xattrs = dict(self.db.all(
                "SELECT name, value FROM xattrs WHERE oid = ? AND layer = ?", (a.oid, a.layer)
            ))
        return a.xattrs

    # ----------------------------------------------------------------- writing helpers

    def _writable(self, view: View) -> None:
        if not view.writable:
            raise fs_error(errno.EROFS)

    def _new_oid(self) -> int:
        oid = self._next_oid
        self._next_oid += 1
        return oid

    def _own(self, view: View, a: Attr) -> Attr:
        """Give the top layer its own version of `a` (metadata only; bytes stay)."""
        if a.layer != view.top:
            self.xattrs(view, a)
            a.layer = view.top
            self._save(a)
            assert a.xattrs is not None
            self.db.executemany(
                "INSERT INTO xattrs (oid, layer, name, value) VALUES (?,?,?,?)",
                [(a.oid, a.layer, k, v) for k, v in a.xattrs.items()],
            )
        return a

    def _save(self, a: Attr) -> None:
        """Record `a`'s row (inside a group or transaction: written when it commits)."""
        self._pending[(a.layer, a.oid)] = a

    def discard_pending(self, layer: int) -> None:
        """Forget the unwritten rows of `layer` (its changes are being undone)."""
        for key in [k for k in self._pending if k[0] == layer]:
            del self._pending[key]

    def _write_pending(self) -> None:
        """Write the rows of :meth:`_save` (the database calls it before a COMMIT)."""
        if self._pending:
            self.db.executemany(_UPSERT_INODE, [a.row() for a in self._pending.values()])
            self._pending.clear()

    def _set_entry(self, view: View, dir_oid: int, name: bytes, oid: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO dentries (dir, name, layer, oid) VALUES (?,?,?,?)",
            (dir_oid, name, view.top, oid),
        )
        view.entries[(dir_oid, name)] = oid
        view.listings.pop(dir_oid, None)

    def _clear_entry(self, view: View, dir_oid: int, name: bytes) -> None:
        if self._probe(view, dir_oid, name, below_top=True):
            self._set_entry(view, dir_oid, name, WHITEOUT)
        else:
            self.db.execute(
                "DELETE FROM dentries WHERE dir = ? AND name = ? AND layer = ?",
                (dir_oid, name, view.top),
            )
            view.entries[(dir_oid, name)] = WHITEOUT
            view.listings.pop(dir_oid, None)

    def _touch_dir(self, view: View, d: Attr, now: int, nlink_delta: int = 0) -> None:
        self._own(view, d)
        d.mtime_ns = d.ctime_ns = now
        d.nlink += nlink_delta
        self._save(d)

    def _dir(self, view: View, dir_oid: int) -> Attr:
        d = self.attr(view, dir_oid)
        if not d.is_dir:
            raise fs_error(errno.ENOTDIR)
        return d

    def _drop_link(self, view: View, a: Attr, now: int, doomed: list[str]) -> None:
        """One name of `a` went away; forget the object with its last name
        (once nothing holds it open)."""
        if a.nlink <= 1 and a.layer != view.top:
            a.nlink = 0  # only lower versions exist; the whiteout hides it
            return
        self._own(view, a)
        a.nlink -= 1
        a.ctime_ns = now
        if a.nlink > 0 or self._open.get((view.top, a.oid)):
            self._save(a)
        else:
            self._purge(view, a, doomed)

    def _purge(self, view: View, a: Attr, doomed: list[str]) -> None:
        self._pending.pop((view.top, a.oid), None)
        self.db.execute("DELETE FROM inodes WHERE oid = ? AND layer = ?", (a.oid, view.top))
        self.db.execute("DELETE FROM xattrs WHERE oid = ? AND layer = ?", (a.oid, view.top))
        if a.is_dir:
            self.db.execute(
                "DELETE FROM dentries WHERE dir = ? AND layer = ?", (a.oid, view.top)
            )
        if a.data == view.top:
            doomed.append(self.data_path(view.top, a.oid))
        view.attrs.pop(a.oid, None)
        self._dirty.pop((view.top, a.oid), None)

    @staticmethod
    def _unlink_files(paths: list[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

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
        of = OpenFile(fd, view, a, True)
        self._open.setdefault((view.top, a.oid), []).append(of)
        return a, of

    def _make(
        self, view: View, dir_oid: int, name: bytes, mode: int, uid: int, gid: int,
        rdev: int = 0, target: bytes | None = None, keep_fd: bool = False,
    ) -> tuple[Attr, int]:
        self._writable(view)
        self.space.check()
        _check_name(name)
        d = self._dir(view, dir_oid)
        if self.find(view, dir_oid, name):
            raise fs_error(errno.EEXIST)
        is_reg = stat.S_ISREG(mode)
        oid = self._new_oid()
        fd = -1
        if is_reg:
            fd = os.open(self.data_path(view.top, oid),
                         os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o600)
            if not keep_fd:
                os.close(fd)
                fd = -1
        try:
            with self.db.group():
                return self._insert(view, d, name, oid, mode, uid, gid, rdev, target,
                                    now_ns()), fd
        except BaseException:
            view.entries.pop((dir_oid, name), None)
            view.attrs.pop(oid, None)
            if is_reg:
                if fd >= 0:
                    os.close(fd)
                self._unlink_files([self.data_path(view.top, oid)])
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
        a = Attr((oid, view.top, mode, uid, gid, rdev, 2 if is_dir else 1,
                  len(target) if target is not None else 0, now, now, now, target,
                  view.top if stat.S_ISREG(mode) else None, None, None, None))
        a.xattrs = {}
        self._save(a)
        if is_dir:
            view.complete.add(oid)  # a new object: no layer has entries in it
        self._set_entry(view, d.oid, name, oid)
        self._touch_dir(view, d, now, 1 if is_dir else 0)
        view.attrs[oid] = a
        return a

    def link(self, view: View, oid: int, dir_oid: int, name: bytes) -> Attr:
        self._writable(view)
        self.space.check()
        a = self.attr(view, oid)
        if a.is_dir:
            raise fs_error(errno.EPERM)
        _check_name(name)
        d = self._dir(view, dir_oid)
        if self.find(view, dir_oid, name):
            raise fs_error(errno.EEXIST)
        now = now_ns()
        with self.db.group():
            self._set_entry(view, dir_oid, name, oid)
            self._own(view, a)
            a.nlink += 1
            a.ctime_ns = now
            self._save(a)
            self._touch_dir(view, d, now)
        return a

    def unlink(self, view: View, dir_oid: int, name: bytes) -> None:
        self._writable(view)
        d = self._dir(view, dir_oid)
        a = self.lookup(view, dir_oid, name)
        if a.is_dir:
            raise fs_error(errno.EISDIR)
        doomed: list[str] = []
        now = now_ns()
        with self.db.group():
            self._clear_entry(view, dir_oid, name)
            self._drop_link(view, a, now, doomed)
            self._touch_dir(view, d, now)
        self.db.after_commit(functools.partial(self._unlink_files, doomed))

    def rmdir(self, view: View, dir_oid: int, name: bytes) -> None:
        self._writable(view)
        d = self._dir(view, dir_oid)
        a = self.lookup(view, dir_oid, name)
        if not a.is_dir:
            raise fs_error(errno.ENOTDIR)
        if not self.is_empty_dir(view, a.oid):
            raise fs_error(errno.ENOTEMPTY)
        now = now_ns()
        doomed: list[str] = []
        with self.db.group():
            self._clear_entry(view, dir_oid, name)
            self._remove_dir_object(view, a, doomed)
            self._touch_dir(view, d, now, -1)

    def _remove_dir_object(self, view: View, a: Attr, doomed: list[str]) -> None:
        if a.layer == view.top:
            self._purge(view, a, doomed)
        else:
            # Entries the top layer made inside it (whiteouts) are unreachable now.
            self.db.execute(
                "DELETE FROM dentries WHERE dir = ? AND layer = ?", (a.oid, view.top)
            )
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
        od = self._dir(view, old_dir)
        nd = self._dir(view, new_dir)
        a = self.lookup(view, old_dir, old_name)
        tgt_oid = self.find(view, new_dir, new_name)
        t = self.attr(view, tgt_oid) if tgt_oid else None
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
            if t.is_dir and not self.is_empty_dir(view, t.oid):
                raise fs_error(errno.ENOTEMPTY)
        now = now_ns()
        doomed: list[str] = []
        with self.db.group():
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
                    self._save(obj)
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
                self._save(a)
                if whiteout is not None:
                    self._insert(view, od, old_name, self._new_oid(), stat.S_IFCHR,
                                 whiteout[0], whiteout[1], 0, None, now)
            self._touch_dir(view, od, now)
            if new_dir != old_dir:
                self._touch_dir(view, nd, now)
        self.db.after_commit(functools.partial(self._unlink_files, doomed))

    # ----------------------------------------------------------------- attributes

    def setattr(
        self, view: View, oid: int, *, mode: int | None = None, uid: int | None = None,
        gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
        mtime_ns: int | None = None, ctime_ns: int | None = None,
    ) -> Attr:
        """Change what is given; ctime becomes `ctime_ns` (the kernel's, when
        its writeback cache flushes a file's times) or now."""
        self._writable(view)
        a = self.attr(view, oid)
        now = now_ns()
        if size is not None:
            if a.is_dir:
                raise fs_error(errno.EISDIR)
            if not stat.S_ISREG(a.mode):
                raise fs_error(errno.EINVAL)
        with self.db.group():
            self._own(view, a)
            if size is not None:
                self._own_data(view, a, keep=size > 0)
                os.truncate(self.data_path(a.data, a.oid), size)
                if a.base_size is not None and size < a.base_size:
                    a.base_size = size  # growing again shows zeros, not the old bytes
                a.size = size
                a.blocks = None
                self._measure(a)
                a.mtime_ns = now
                self._dirty.pop((view.top, a.oid), None)
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
            self._save(a)
        return a

    def set_xattr(self, view: View, oid: int, name: bytes, value: bytes,
                  create: bool = False, replace: bool = False) -> None:
        self._writable(view)
        self.space.check()
        a = self.attr(view, oid)
        present = name in self.xattrs(view, a)
        if create and present:
            raise fs_error(errno.EEXIST)
        if replace and not present:
            raise fs_error(errno.ENODATA)
        with self.db.group():
            self._own(view, a)
            self.db.execute(
                "INSERT OR REPLACE INTO xattrs (oid, layer, name, value) VALUES (?,?,?,?)",
                (a.oid, a.layer, name, value),
            )
            a.ctime_ns = now_ns()
            self._save(a)
        assert a.xattrs is not None
        a.xattrs[name] = value

    def remove_xattr(self, view: View, oid: int, name: bytes) -> None:
        self._writable(view)
        a = self.attr(view, oid)
        if name not in self.xattrs(view, a):
            raise fs_error(errno.ENODATA)
        with self.db.group():
            self._own(view, a)
            self.db.execute(
                "DELETE FROM xattrs WHERE oid = ? AND layer = ? AND name = ?",
                (a.oid, a.layer, name),
            )
            a.ctime_ns = now_ns()
            self._save(a)
        assert a.xattrs is not None
        del a.xattrs[name]

    # ----------------------------------------------------------------- file data

    def _own_data(self, view: View, a: Attr, keep: bool = True) -> None:
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
            os.truncate(self._create_data(dst), a.size)
            a.base, a.base_size = a.data, a.size
        elif keep:
            self._copy_whole(a, dst)
            a.base = a.base_size = None
        else:
            self._create_data(dst)
            a.base = a.base_size = None
        a.data = view.top
        a.blocks = None
        self._save(a)
        # Descriptors opened before the copy must see the new bytes too.
        for of in self._open.get((view.top, a.oid), ()):
            fd = os.open(dst, os.O_RDWR if of.writable else os.O_RDONLY)
            os.dup2(fd, of.fd)
            os.close(fd)
            self._attach_lower(of)

    @staticmethod
    def _create_data(path: str) -> str:
        os.close(os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600))
        return path

    def _lower_chain(self, a: Attr) -> list[tuple[int, int]]:
        """The rest of `a`'s data chain below its backing file: (layer, what
        shows of it through the file above) for each, top first."""
        chain: list[tuple[int, int]] = []
        layer, size = a.base, a.base_size
        while layer is not None:
            chain.append((layer, size))
            row = self.db.one("SELECT base, base_size FROM inodes WHERE oid = ? AND layer = ?",
                              (a.oid, layer))
            layer, size = row if row is not None else (None, None)
        return chain

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
        each but the first (layerfs/data.py); for a file read in any thread."""
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

    def open(self, view: View, oid: int, flags: int) -> OpenFile:
        a = self.attr(view, oid)
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
                    self._own_data(view, a, keep=not trunc)
                    if trunc:
                        a.size = a.blocks = 0
                        a.mtime_ns = a.ctime_ns = now_ns()
                        self._dirty.pop((view.top, a.oid), None)
                        self._save(a)
        fd = os.open(self.data_path(a.data, a.oid), os.O_RDWR if writable else os.O_RDONLY)
        of = OpenFile(fd, view, a, writable)
        if a.base is not None:
            try:
                self._attach_lower(of)
            except OSError:
                of.close()
                raise
        self._open.setdefault((view.top, oid), []).append(of)
        return of

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
        self._flush_one(of.view, of.attr)
        self.sync()
        if datasync:
            os.fdatasync(of.fd)
        else:
            os.fsync(of.fd)

    def release(self, of: OpenFile) -> None:
        key = (of.view.top, of.attr.oid)
        handles = self._open.get(key, [])
        if of in handles:
            handles.remove(of)
        if not handles:
            self._open.pop(key, None)
        of.close()
        if not of.view.alive:
            return
        a = of.attr
        if not handles and a.nlink == 0 and a.layer == of.view.top and of.view.writable:
            doomed: list[str] = []
            with self.db.group():
                self._purge(of.view, a, doomed)
            self.db.after_commit(functools.partial(self._unlink_files, doomed))
        else:
            self._flush_one(of.view, a)

    def _flush_one(self, view: View, a: Attr) -> None:
        key = (view.top, a.oid)
        if self._dirty.pop(key, None) is not None:
            self._measure(a)
            try:
                with self.db.group():
                    self._save(a)
            except ResourceExhausted:
                self._dirty[key] = (view, a)  # recorded by a later flush
                raise

    def _measure(self, a: Attr) -> None:
        """Record the blocks the backing file holds now (its inode is in the
        cache after the writes), so a lookup in any view needs no stat."""
        if a.blocks is None and a.data is not None:
            try:
                a.blocks = os.stat(self.data_path(a.data, a.oid)).st_blocks
            except FileNotFoundError:
                pass

    def record_blocks(self, view: View, oid: int) -> None:
        """Measure and save the blocks of `oid`'s backing file (inside the
        caller's transaction): for bytes put in place without writes."""
        a = self.attr(view, oid)
        a.blocks = None
        self._measure(a)
        self._save(a)

    def sync(self) -> None:
        """Commit the filesystem changes made so far (an fsync of a file or
        directory; store/db.py groups them otherwise)."""
        self.db.commit_group()

    def flush(self, view: View | None = None) -> None:
        """Record the sizes and times that writes changed (all views, or one)."""
        items = [
            (k, v) for k, v in self._dirty.items() if view is None or k[0] == view.top
        ]
        if not items:
            self.db.commit_group()  # the rows it holds, for whoever reads them next
            return
        for _, (_, a) in items:
            self._measure(a)
        with self.db.transaction():
            for key, (_, a) in items:
                del self._dirty[key]
                self._save(a)


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG)


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
