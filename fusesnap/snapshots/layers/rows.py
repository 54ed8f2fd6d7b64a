"""Rows and SQL: the three tables of the layer model, and nothing above them.

``inodes`` holds each layer's version of an object, ``dentries`` each layer's
entries of a directory (oid 0: a whiteout), ``xattrs`` each version's extended
attributes. Every statement the layer model runs is here; the callers hold
:class:`Attr` objects and say what changed.

An object's row is written behind: :meth:`Rows.save` marks it, and the rows
marked are written once each, just before the open group or transaction
commits (store/db.py calls :meth:`Rows.write_pending`). A file created,
written, chowned, chmodded and touched costs one row write, not five.
Entries and xattrs are written at once (each is one statement).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from fusesnap.store.db import Database

ROOT_OID = 1
WHITEOUT = 0
NAME_MAX = 255
_CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # linux/time.h



class Version(NamedTuple):
    """A row of ``inodes``: one layer's version of an object."""

    oid: int
    layer: int
    mode: int
    uid: int
    gid: int
    rdev: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None
    """A symlink's target."""
    data: int | None
    """The layer whose backing file holds the bytes (None: no bytes yet)."""
    base: int | None
    """The layer whose bytes lie under this layer's blocks (a partial copy-up)."""
    base_size: int | None
    blocks: int | None
    """512-byte blocks the backing file holds, holes excluded; None: unknown."""


class DirEntry(NamedTuple):
    """A row of ``dentries`` seen from one directory (oid 0: a whiteout)."""

    name: bytes
    layer: int
    oid: int


class EntryVersion(NamedTuple):
    """An entry of (dir, name) in one layer, with a version of the object it
    names (None where the join found none)."""

    layer: int
    oid: int
    version: Version | None


_new = tuple.__new__


def _entry_version(*row: Any) -> EntryVersion:
    """A row of :meth:`Rows.entry_and_versions`: (entry layer, entry oid,
    the 16 columns of a version or NULLs). Built with tuple.__new__: this
    runs for every row a lookup of an unseen name reads."""
    return _new(EntryVersion, (row[0], row[1], _new(Version, row[2:]) if row[2] is not None
                               else None))


_INODE_COLUMNS = ", ".join(Version._fields)
_JOINED_COLUMNS = ", ".join(f"i.{c}" for c in Version._fields)
_INSERT_INODE = (f"INSERT INTO inodes ({_INODE_COLUMNS})"
                 f" VALUES ({','.join('?' * len(Version._fields))})")
# An insert or an update, so that the usage triggers see which (a REPLACE
# would count an update as one more object).
_UPSERT_INODE = _INSERT_INODE + " ON CONFLICT (oid, layer) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in Version._fields[2:])
_CHUNK = 500
"""Oids per `IN (...)` query (SQLite allows 999 parameters by default)."""

_TABLES = ("inodes", "dentries", "xattrs")


def now_ns() -> int:
    """The time for timestamps: the clock the kernel stamps with (current_time()
    reads the coarse clock), so a `touch` after a write is never older than it."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    return a, b


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class Attr:
    """One object's effective attributes in one view (a layer's version)."""

    __slots__ = (
        "oid", "layer", "mode", "uid", "gid", "rdev", "nlink", "size",
        "atime_ns", "mtime_ns", "ctime_ns", "target", "data", "base", "base_size", "xattrs",
        "blocks", "__weakref__",
    )

    def __init__(self, v: Version) -> None:
        # The fields of Version, in its order (the row as it is read).
        (self.oid, self.layer, self.mode, self.uid, self.gid, self.rdev, self.nlink, self.size,
         self.atime_ns, self.mtime_ns, self.ctime_ns, self.target, self.data, self.base,
         self.base_size, self.blocks) = v
        self.xattrs: dict[bytes, bytes] | None = None

    def row(self) -> Version:
        """The version as it is written (blocks: recorded when writes are flushed)."""
        return Version(self.oid, self.layer, self.mode, self.uid, self.gid, self.rdev,
                       self.nlink, self.size, self.atime_ns, self.mtime_ns, self.ctime_ns,
                       self.target, self.data, self.base, self.base_size, self.blocks)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class Rows:
    """The layer model's SQL over one database; runs on the trio thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        (top,) = db.one("SELECT MAX(oid) FROM inodes") or (None,)
        self._next_oid = max(ROOT_OID, top or 0) + 1
        # Rows changed by the open group or transaction, by (layer, oid).
        self._pending: dict[tuple[int, int], Attr] = {}
        db.before_commit = self.write_pending

    def new_oid(self) -> int:
        oid = self._next_oid
        self._next_oid += 1
        return oid

    # ----------------------------------------------------------------- reading

    def versions(self, oid: int, highest: int) -> Iterator[Version]:
        """The versions of `oid` in layers up to `highest`, newest first. A child
        layer's id is always above its parent's (ids grow, a parent exists
        first), so the first version in a chain's layer is the topmost one."""
        return self.db.each(
            Version, f"SELECT {_INODE_COLUMNS} FROM inodes WHERE oid = ? AND layer <= ?"
            " ORDER BY layer DESC", (oid, highest))

    def versions_of(self, oids: list[int]) -> Iterator[Version]:
        """Every version of each of `oids`, in any order."""
        for i in range(0, len(oids), _CHUNK):
            chunk = oids[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self.db.rows(
                Version, f"SELECT {_INODE_COLUMNS} FROM inodes WHERE oid IN ({marks})", chunk)

    def entry(self, dir_oid: int, name: bytes, highest: int) -> Iterator[tuple[int, int]]:
        """(layer, oid) of the entries for (dir, name) up to layer `highest`, newest first."""
        return self.db.each(
            _pair, "SELECT layer, oid FROM dentries WHERE dir = ? AND name = ? AND layer <= ?"
            " ORDER BY layer DESC", (dir_oid, name, highest))

    def entry_and_versions(self, dir_oid: int, name: bytes,
                           highest: int) -> Iterator[EntryVersion]:
        """:meth:`entry` joined with :meth:`versions` of the oid each names,
        newest entry first and within it newest version first. One statement
        for a lookup of a name not seen yet."""
        return self.db.each(
            _entry_version, f"SELECT d.layer, d.oid, {_JOINED_COLUMNS} FROM dentries d"
            " LEFT JOIN inodes i ON i.oid = d.oid AND i.layer <= ?"
            " WHERE d.dir = ? AND d.name = ? AND d.layer <= ?"
            " ORDER BY d.layer DESC, i.layer DESC", (highest, dir_oid, name, highest))

    def entries_in(self, dir_oid: int, limit: int = -1) -> list[DirEntry]:
        """Every layer's entries of a directory (at most `limit` of them if
        that is not negative)."""
        return self.db.rows(DirEntry, "SELECT name, layer, oid FROM dentries WHERE dir = ? LIMIT ?",
                            (dir_oid, limit))

    def names_of(self, oid: int) -> list[tuple[int, bytes]]:
        """(dir, name) of every layer's entries naming `oid`."""
        return self.db.all("SELECT DISTINCT dir, name FROM dentries WHERE oid = ? AND oid != 0",
                           (oid,))

    def entries_of(self, layer: int) -> list[tuple[int, bytes, int]]:
        """(dir, name, oid) of every entry `layer` holds."""
        return self.db.all("SELECT dir, name, oid FROM dentries WHERE layer = ?", (layer,))

    def objects_of(self, layer: int) -> list[int]:
        """The oids `layer` holds a version of."""
        return [oid for (oid,) in self.db.all("SELECT oid FROM inodes WHERE layer = ?",
                                               (layer,))]

    def xattrs(self, oid: int, layer: int) -> dict[bytes, bytes]:
        return dict(self.db.all(
            "SELECT name, value FROM xattrs WHERE oid = ? AND layer = ?", (oid, layer)))

    def base_of(self, oid: int, layer: int) -> tuple[int | None, int | None]:
        """(base, base_size) of `oid`'s version in `layer`: the next step of its data chain."""
        return self.db.first(
            _pair, "SELECT base, base_size FROM inodes WHERE oid = ? AND layer = ?",
            (oid, layer)) or (None, None)

    # ----------------------------------------------------------------- writing

    def save(self, a: Attr) -> None:
        """Record `a`'s row (inside a group or transaction: written when it commits)."""
        self._pending[(a.layer, a.oid)] = a

    def discard_pending(self, layer: int) -> None:
        """Forget the unwritten rows of `layer` (its changes are being undone)."""
        for key in [k for k in self._pending if k[0] == layer]:
            del self._pending[key]

    def write_pending(self) -> None:
        """Write the rows of :meth:`save` (the database calls it before a COMMIT)."""
        if self._pending:
            self.db.executemany(_UPSERT_INODE, [a.row() for a in self._pending.values()])
            self._pending.clear()

    def insert_root(self, layer: int, uid: int, gid: int, now: int) -> None:
        """The root directory object of a base layer (0755, owned by `uid`:`gid`)."""
        self.db.execute(
            f"INSERT INTO inodes ({_INODE_COLUMNS})"
            " VALUES (?,?,?,?,?,0,2,0,?,?,?,NULL,NULL,NULL,NULL,NULL)",
            (ROOT_OID, layer, stat.S_IFDIR | 0o755, uid, gid, now, now, now))

    def set_entry(self, dir_oid: int, name: bytes, layer: int, oid: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO dentries (dir, name, layer, oid) VALUES (?,?,?,?)",
            (dir_oid, name, layer, oid))

    def delete_entry(self, dir_oid: int, name: bytes, layer: int) -> None:
        self.db.execute("DELETE FROM dentries WHERE dir = ? AND name = ? AND layer = ?",
                        (dir_oid, name, layer))

    def delete_entries_in(self, dir_oid: int, layer: int) -> None:
        """The entries `layer` holds in a directory (whiteouts, once it is gone)."""
        self.db.execute("DELETE FROM dentries WHERE dir = ? AND layer = ?", (dir_oid, layer))

    def delete_object(self, oid: int, layer: int) -> None:
        """`oid`'s version in `layer`, with its xattrs."""
        self._pending.pop((layer, oid), None)
        self.db.execute("DELETE FROM inodes WHERE oid = ? AND layer = ?", (oid, layer))
        self.db.execute("DELETE FROM xattrs WHERE oid = ? AND layer = ?", (oid, layer))

    def insert_xattrs(self, oid: int, layer: int, items: Iterable[tuple[bytes, bytes]]) -> None:
        self.db.executemany("INSERT INTO xattrs (oid, layer, name, value) VALUES (?,?,?,?)",
                            [(oid, layer, k, v) for k, v in items])

    def put_xattr(self, oid: int, layer: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattrs (oid, layer, name, value) VALUES (?,?,?,?)",
                        (oid, layer, name, value))

    def delete_xattr(self, oid: int, layer: int, name: bytes) -> None:
        self.db.execute("DELETE FROM xattrs WHERE oid = ? AND layer = ? AND name = ?",
                        (oid, layer, name))

    def drop_layer(self, layer: int) -> None:
        """Every row of `layer` (inside the caller's transaction)."""
        self.discard_pending(layer)
        for table in _TABLES:
            self.db.execute(f"DELETE FROM {table} WHERE layer = ?", (layer,))

    # ----------------------------------------------------------------- recovery

    def own_data(self, layer: int) -> dict[int, tuple[int, int]]:
        """{oid: (size, mtime_ns)} of the objects whose bytes `layer` holds."""
        return {oid: (size, mtime) for oid, size, mtime in self.db.all(
            "SELECT oid, size, mtime_ns FROM inodes WHERE layer = ? AND data = ?",
            (layer, layer))}

    def drop_unlinked(self, layer: int) -> None:
        """Objects of `layer` whose last name went while open (an unclean stop)."""
        self.db.execute(
            "DELETE FROM xattrs WHERE layer = ? AND oid IN "
            "(SELECT oid FROM inodes WHERE layer = ? AND nlink = 0)", (layer, layer))
        self.db.execute("DELETE FROM inodes WHERE layer = ? AND nlink = 0", (layer,))

    def set_size(self, oid: int, layer: int, size: int, mtime_ns: int) -> None:
        """A size found on disk (recovery): writes are recorded lazily."""
        self.db.execute(
            "UPDATE inodes SET size = ?, mtime_ns = MAX(mtime_ns, ?), blocks = NULL "
            "WHERE oid = ? AND layer = ?", (size, mtime_ns, oid, layer))

    # ----------------------------------------------------------------- undo

    def layer_rows(self, layer: int) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of `layer`, by table: what :meth:`restore_layer` puts back."""
        return {t: self.db.all(f"SELECT * FROM {t} WHERE layer = ?", (layer,)) for t in _TABLES}

    def restore_layer(self, layer: int, saved: dict[str, list[tuple[Any, ...]]]) -> None:
        """Make `layer`'s rows those of :meth:`layer_rows` again (inside the
        caller's transaction)."""
        self.discard_pending(layer)
        for t in _TABLES:
            self.db.execute(f"DELETE FROM {t} WHERE layer = ?", (layer,))
        for t, rows in saved.items():
            if rows:
                marks = ",".join("?" * len(rows[0]))
                self.db.executemany(f"INSERT INTO {t} VALUES ({marks})", rows)
