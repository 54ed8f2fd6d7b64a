"""The SQLite database: schema, migrations and the one transaction helper.

All access happens on the trio thread (fusesnap/bridge.py), so a
single connection serves the whole process. WAL with synchronous=NORMAL
survives a killed process; every API mutation is one transaction, committed
before the call returns.

Filesystem operations are grouped instead (:meth:`Database.group`), as a
journaling filesystem groups its metadata changes: each is atomic on its own
(one that fails is undone alone), and a group of them is committed together,
by the daemon within :data:`GROUP_WINDOW` seconds of the first, at an fsync,
and before any other transaction. A killed daemon loses at most the last group's changes, whole, as
a crashed filesystem loses what was not yet fsynced.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fusesnap.errors import ResourceExhausted

log = logging.getLogger(__name__)

R = TypeVar("R")

SCHEMA_VERSION = 1
GROUP_WINDOW = 0.05
"""Seconds a group of filesystem changes stays open at most."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per snapshot. `id` names the layer (its data directory and its
-- directory under the mountpoint) and never changes, not even on Commit.
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    parent INTEGER REFERENCES snapshots(id),
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);

CREATE TABLE IF NOT EXISTS snapshot_labels (
    snapshot INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (snapshot, key)
) WITHOUT ROWID;

-- A layer's version of a filesystem object. `oid` is global: the same object
-- seen through several layers keeps it. `data` is the layer whose data
-- directory holds the bytes of a regular file (NULL for other types).
CREATE TABLE IF NOT EXISTS inodes (
    oid INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target BLOB,
    data INTEGER,
    -- Partial copy-up (snapshots/layers/data.py): the layer whose bytes show through
    -- the holes of this layer's backing file, and how many of them show.
    base INTEGER,
    base_size INTEGER,
    -- 512-byte blocks the backing file holds (st_blocks), measured when the
    -- bytes were last recorded; NULL: not known (stat the file).
    blocks INTEGER,
    PRIMARY KEY (oid, layer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inodes_layer ON inodes(layer);

-- A layer's entry `name` in directory object `dir`; oid 0 is a whiteout.
-- A merged lookup is one probe of (dir, name) whatever the chain depth.
CREATE TABLE IF NOT EXISTS dentries (
    dir INTEGER NOT NULL,
    name BLOB NOT NULL,
    layer INTEGER NOT NULL,
    oid INTEGER NOT NULL,
    PRIMARY KEY (dir, name, layer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_layer ON dentries(layer);
-- The names of an object (a diff finds the paths of what a layer changed).
CREATE INDEX IF NOT EXISTS dentries_oid ON dentries(oid) WHERE oid != 0;

CREATE TABLE IF NOT EXISTS xattrs (
    oid INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (oid, layer, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS xattrs_layer ON xattrs(layer);

-- A snapshot's usage (bytes of file data its layer holds, objects it holds)
-- follows every change of its rows, so Usage and Commit read two columns
-- instead of scanning the layer.
CREATE TRIGGER IF NOT EXISTS inodes_usage_insert AFTER INSERT ON inodes BEGIN
    UPDATE snapshots SET inodes = inodes + 1,
        size = size + CASE WHEN NEW.data = NEW.layer THEN NEW.size ELSE 0 END
    WHERE id = NEW.layer;
END;
CREATE TRIGGER IF NOT EXISTS inodes_usage_delete AFTER DELETE ON inodes BEGIN
    UPDATE snapshots SET inodes = inodes - 1,
        size = size - CASE WHEN OLD.data = OLD.layer THEN OLD.size ELSE 0 END
    WHERE id = OLD.layer;
END;
CREATE TRIGGER IF NOT EXISTS inodes_usage_update AFTER UPDATE OF size, data ON inodes BEGIN
    UPDATE snapshots SET size = size
        - CASE WHEN OLD.data = OLD.layer THEN OLD.size ELSE 0 END
        + CASE WHEN NEW.data = NEW.layer THEN NEW.size ELSE 0 END
    WHERE id = NEW.layer;
END;

-- Committed blobs (fusesnap/content): the bytes are ROOT/content/blobs/<alg>/<hex>.
CREATE TABLE IF NOT EXISTS content_blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS content_labels (
    digest TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (digest, key)
) WITHOUT ROWID;

-- Ingests in progress. The bytes written so far are the file
-- ROOT/content/ingest/<sha256(ref)>/data; its size is the offset, so a write
-- never touches this table.
CREATE TABLE IF NOT EXISTS content_ingests (
    ref TEXT PRIMARY KEY,
    started_ns INTEGER NOT NULL,
    total INTEGER NOT NULL,
    expected TEXT NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Leases (fusesnap/leases), per namespace. Labels are a JSON object.
CREATE TABLE IF NOT EXISTS leases (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;

-- What a lease holds: `type` is content, ingests, images or snapshots/<name>;
-- `id` a digest, ingest ref, image name or snapshot key. The object need not exist.
CREATE TABLE IF NOT EXISTS lease_resources (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id)
) WITHOUT ROWID;

-- Image records (fusesnap/images), per namespace: name -> target descriptor.
-- Labels and the target's annotations are JSON objects.
CREATE TABLE IF NOT EXISTS images (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;

-- Lazy layers (fusesnap/remote.py): committed snapshots made from an eStargz
-- layer's TOC, whose files' bytes are fetched from the registry on first use.
CREATE TABLE IF NOT EXISTS remote_layers (
    sid INTEGER PRIMARY KEY,
    image TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload_end INTEGER NOT NULL,
    toc BLOB NOT NULL
);
-- Their regular files whose bytes are not there yet (by TOC name).
CREATE TABLE IF NOT EXISTS remote_files (
    sid INTEGER NOT NULL,
    oid INTEGER NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (sid, oid)
) WITHOUT ROWID;
"""


# Columns added after a table was first released: (table, column, declaration).
_ADDED_COLUMNS = [
    # An ingest opened under a lease lives exactly as long as leases hold it;
    # one opened on none is protected for a grace period instead (spec §8).
    ("content_ingests", "leased", "INTEGER NOT NULL DEFAULT 0"),
    # Partial copy-up: stores made before it have whole copies only (NULL).
    ("inodes", "base", "INTEGER"),
    ("inodes", "base_size", "INTEGER"),
    ("inodes", "blocks", "INTEGER"),
]


SQLITE_FULL = 13


def _row_factory(shape: Callable[..., Any]) -> Callable[[sqlite3.Cursor, tuple[Any, ...]], Any]:
    """sqlite3's row factory for :meth:`Database.each`. A NamedTuple class is
    filled from the row as it is (a lookup reads rows on the FUSE hot path:
    this costs a third of calling the class with the columns)."""
    if isinstance(shape, type) and issubclass(shape, tuple) and hasattr(shape, "_fields"):
        new = tuple.__new__
        return lambda _cursor, row: new(shape, row)
    return lambda _cursor, row: shape(*row)


def _full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == SQLITE_FULL


class Database:
    """One SQLite connection with a re-entrant transaction helper.

    On a full disk (see store/space.py): SQLite rolls back a transaction whose
    COMMIT fails for space, so the statements of the open transaction or
    group are kept (a list of the writes, cleared at each commit), and after
    :attr:`on_full` has freed the reserve they are replayed and committed
    again. A group that still cannot commit stays open, replayed, and is
    retried by the next :meth:`commit_group`: never half applied, never lost
    while the daemon runs. A transaction that cannot commit raises
    ResourceExhausted, having changed nothing.
    """

    def __init__(self, path: Path, exclusive: bool = False) -> None:
        """With `exclusive` (the daemon's), the connection keeps its file
        locks for its life, as containerd keeps its bolt database: no other
        process can open the database meanwhile, and a statement outside a
        transaction takes no lock (two fcntl calls, about 3 µs, each)."""
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if exclusive:
            self.conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self._depth = 0
        self._group_open = False
        self._after_commit: list[Callable[[], None]] = []
        # The writes of the open transaction or group: (sql, params, many).
        self._journal: list[tuple[str, Any, bool]] = []
        self.on_group_opened: Callable[[], None] = lambda: None
        self.before_commit: Callable[[], None] = lambda: None
        """Writes what was kept back for the commit (the layer tree's rows)."""
        self.on_full: Callable[[str], None] = lambda what: None
        """Called when SQLite finds the disk full, before a replay (store/space.py)."""
        self._migrate()

    def _migrate(self) -> None:
        # Every statement is IF NOT EXISTS, so the script is safe on every start.
        self.conn.executescript(_SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        with self.transaction():
            row = self.one("SELECT value FROM meta WHERE key = 'schema'")
            if row is None:
                self.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {row[0]} is newer than this fusesnap "
                    f"({SCHEMA_VERSION})"
                )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one transaction, committed when it ends (after the
        open group's, if any); nested blocks join the outer one.
        ResourceExhausted if the disk is too full to commit (nothing changed)."""
        if self._depth:
            with self._nested():
                yield
            return
        self.commit_group()
        self._begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._rollback()
            self._after_commit.clear()
            raise
        self._depth = 0
        try:
            self._commit()
        except BaseException:
            self._rollback()
            self._after_commit.clear()
            raise
        self._run_after_commit()

    def group(self) -> _Group:
        """A block run atomically as part of the open group of changes
        (opening one if none is): an error undoes the block alone; the group
        is committed later (see the module). Nested blocks join the outer one.

        No savepoint per block (two statements each, on the hot path): a
        block that fails rolls the transaction back and replays the journal
        up to where the block began."""
        return _Group(self)

    def _undo(self, journal_mark: int) -> None:
        """Undo the writes made since the journal held `journal_mark` of them."""
        self.conn.execute("ROLLBACK")
        del self._journal[journal_mark:]
        try:
            self._replay()
        except sqlite3.Error as e:  # the next block or commit replays it again
            log.error("cannot restore the open group of changes (%s); retrying later", e)

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._journal.clear()

    def _replay(self) -> None:
        """Begin a transaction holding the journal's writes again."""
        self._begin()
        try:
            for sql, params, many in self._journal:
                if many:
                    self.conn.executemany(sql, params)
                else:
                    self.conn.execute(sql, params)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _commit(self) -> None:
        """COMMIT; if the disk is full, free the reserve, replay and COMMIT once
        more. ResourceExhausted if that fails too: the transaction is then
        rolled back and the journal kept."""
        for attempt in range(2):
            try:
                if not self.conn.in_transaction:
                    self._replay()
                self.before_commit()
                self.conn.execute("COMMIT")
            except (sqlite3.OperationalError, ResourceExhausted) as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and not _full(e):
                    raise
                if attempt:
                    raise ResourceExhausted(
                        f"no space left to commit metadata to {self.path}") from None
                self.on_full("committing metadata")
            else:
                self._journal.clear()
                return

    def commit_group(self) -> None:
        """Commit the open group of changes, if any (never inside a block).
        ResourceExhausted if the disk is too full: the group then stays open,
        whole, for the next call to commit."""
        if self._group_open and not self._depth:
            try:
                self._commit()
            except ResourceExhausted:
                try:
                    self._replay()  # live again, so that reads see it
                except sqlite3.OperationalError as e:
                    log.error("cannot hold the uncommitted group of changes (%s); "
                              "the next commit retries it", e)
                raise
            self._group_open = False
            self._run_after_commit()

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once what the current block changed is committed (at
        once outside any block): for what must not happen before, such as
        removing a file the committed rows may still name."""
        if self._depth or self._group_open:
            self._after_commit.append(action)
        else:
            action()

    def _run_after_commit(self) -> None:
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; ResourceExhausted (the statement undone) if the
        disk is too full for it."""
        return self._run(sql, params, False)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self._run(sql, list(rows), True)

    def _run(self, sql: str, params: Any, many: bool) -> sqlite3.Cursor:
        try:
            if many:
                cursor = self.conn.executemany(sql, params)
            else:
                cursor = self.conn.execute(sql, params)
        except sqlite3.OperationalError as e:
            raise self._translate(e) from None
        if self._depth or self._group_open:
            self._journal.append((sql, params, many))
        return cursor

    def _translate(self, e: sqlite3.OperationalError) -> Exception:
        if not _full(e):
            return e
        self.on_full("writing metadata")
        return ResourceExhausted(f"no space left for metadata in {self.path}")

    # Reading. A query is not journaled (an undo replays changes only). The
    # typed forms build each row with `shape` (a NamedTuple class, or any
    # callable taking the columns in order), so a caller names columns
    # instead of counting them; `one` and `all` are for a column or two.

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def each(self, shape: Callable[..., R], sql: str,
             params: tuple[Any, ...] | list[Any] = ()) -> Iterator[R]:
        """The rows of `sql` as `shape(*columns)`, read as the caller iterates."""
        cursor = self.conn.execute(sql, params)
        cursor.row_factory = _row_factory(shape)
        return cursor

    def rows(self, shape: Callable[..., R], sql: str,
             params: tuple[Any, ...] | list[Any] = ()) -> list[R]:
        """Every row of `sql` as `shape(*columns)`."""
        return list(self.each(shape, sql, params))

    def first(self, shape: Callable[..., R], sql: str,
              params: tuple[Any, ...] | list[Any] = ()) -> R | None:
        """The first row of `sql` as `shape(*columns)`, or None."""
        return next(self.each(shape, sql, params), None)

    def close(self) -> None:
        """Commit the open group and close; a group the full disk still has no
        room for is lost, whole, with an error logged (as a kill would lose it)."""
        try:
            self.commit_group()
        except ResourceExhausted as e:
            log.error("closing with the last group of filesystem changes uncommitted: %s", e)
        self.conn.close()


class _Group:
    """What :meth:`Database.group` returns (a class, not a generator: it is on
    the path of every filesystem change)."""

    __slots__ = ("db", "outer", "opened", "mark", "journal_mark")

    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> None:
        db = self.db
        self.outer = not db._depth
        if not self.outer:
            db._depth += 1
            return
        self.opened = not db._group_open
        if self.opened or not db.conn.in_transaction:  # (a group whose commit failed)
            db._replay()
            db._group_open = True
        db._depth = 1
        self.mark = len(db._after_commit)
        self.journal_mark = len(db._journal)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        db = self.db
        if not self.outer:
            db._depth -= 1
            return
        db._depth = 0
        if kind is None:
            if self.opened:
                db.on_group_opened()
            return
        del db._after_commit[self.mark:]
        if self.opened:  # nothing else is in the group
            db._group_open = False
            db._rollback()
        else:
            db._undo(self.journal_mark)
