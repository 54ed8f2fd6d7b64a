"""The snapshot metastore: keys, kinds, parents, labels and ids.

It knows nothing of directories or files (that is `fusesnap.snapshots`). Each
public method does its checks in containerd's reference order (spec §2.4) and
runs inside the caller's transaction.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from fusesnap.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from fusesnap.labels import validate as validate_labels
from fusesnap.store.db import Database


class Kind(enum.IntEnum):
    """Snapshot kinds; the values are the wire values of containerd's Kind enum."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class SnapshotRecord:
    id: int
    key: str
    kind: Kind
    parent_id: int | None
    parent: str
    created_ns: int
    updated_ns: int
    size: int
    inodes: int
    labels: dict[str, str] = field(default_factory=dict)


_SELECT = """
SELECT s.id, s.key, s.kind, s.parent, COALESCE(p.key, ''), s.created_ns, s.updated_ns,
       s.size, s.inodes
FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent
"""


def _record(id: int, key: str, kind: int, parent_id: int | None, parent: str,
            created_ns: int, updated_ns: int, size: int, inodes: int) -> SnapshotRecord:
    """A row of :data:`_SELECT`, without its labels."""
    return SnapshotRecord(id=id, key=key, kind=Kind(kind), parent_id=parent_id, parent=parent,
                          created_ns=created_ns, updated_ns=updated_ns, size=size, inodes=inodes)


def _require_key(key: str, what: str = "key") -> None:
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty")


class MetaStore:
    """Snapshot records in the database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _with_labels(self, rec: SnapshotRecord | None) -> SnapshotRecord | None:
        if rec is not None:
            rec.labels = dict(
                self.db.all("SELECT key, value FROM snapshot_labels WHERE snapshot = ?", (rec.id,))
            )
        return rec

    def find(self, key: str) -> SnapshotRecord | None:
        return self._with_labels(self.db.first(_record, _SELECT + " WHERE s.key = ?", (key,)))

    def get(self, key: str) -> SnapshotRecord:
        """The snapshot named `key` (any kind); NotFound if absent."""
        _require_key(key)
        rec = self.find(key)
        if rec is None:
            raise NotFound(f"snapshot {key} does not exist")
        return rec

    def get_by_id(self, sid: int) -> SnapshotRecord | None:
        return self._with_labels(self.db.first(_record, _SELECT + " WHERE s.id = ?", (sid,)))

    def create(
        self, key: str, parent: str, kind: Kind, labels: Mapping[str, str]
    ) -> SnapshotRecord:
        """Insert a new active or view snapshot (checks: key, parent, kind)."""
        _require_key(key)
        parent_id = None
        if parent:
            prec = self.find(parent)
            if prec is None:
                raise NotFound(f"parent snapshot {parent} does not exist")
            if prec.kind != Kind.COMMITTED:
                raise InvalidArgument(f"parent {parent} is not committed snapshot")
            parent_id = prec.id
        if self.find(key) is not None:
            raise AlreadyExists(f"snapshot {key} already exists")
        now = time.time_ns()
        cur = self.db.execute(
            "INSERT INTO snapshots (key, kind, parent, created_ns, updated_ns) VALUES (?,?,?,?,?)",
            (key, int(kind), parent_id, now, now),
        )
        sid = cur.lastrowid
        assert sid is not None
        self._set_labels(sid, labels)
        rec = self.get_by_id(sid)
        assert rec is not None
        return rec

    def commit(
        self, name: str, key: str, labels: Mapping[str, str], parent: str
    ) -> SnapshotRecord:
        """Turn active `key` into committed `name`, keeping its id.

        Checks in containerd's order (spec §2.4): name taken, key missing, key
        not active, then label sizes; labels with empty values are not stored.
        """
        _require_key(name, "name")
        _require_key(key)
        if self.find(name) is not None:
            raise AlreadyExists(f"snapshot {name} already exists")
        rec = self.get(key)
        if rec.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active")
        validate_labels(labels)
        if parent and parent != rec.parent:
            if rec.parent:
                raise InvalidArgument(
                    f"cannot change parent of active snapshot {key} on commit"
                )
            raise InvalidArgument(
                f"commit of {key} onto parent {parent}: rebase is not supported"
            )
        now = time.time_ns()
        self.db.execute(
            "UPDATE snapshots SET key = ?, kind = ?, created_ns = ?, updated_ns = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), now, now, rec.id),
        )
        self.db.execute("DELETE FROM snapshot_labels WHERE snapshot = ?", (rec.id,))
        self._set_labels(rec.id, labels)
        out = self.get_by_id(rec.id)
        assert out is not None
        return out

    def remove(self, key: str) -> SnapshotRecord:
        """Delete the record of `key`; FailedPrecondition if it has children."""
        rec = self.get(key)
        if self.db.one("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (rec.id,)):
            raise FailedPrecondition(f"cannot remove snapshot {key} with child")
        self.db.execute("DELETE FROM snapshot_labels WHERE snapshot = ?", (rec.id,))
        self.db.execute("DELETE FROM snapshots WHERE id = ?", (rec.id,))
        return rec

    def replace_labels(self, key: str, labels: Mapping[str, str]) -> SnapshotRecord:
        rec = self.get(key)
        self.db.execute("DELETE FROM snapshot_labels WHERE snapshot = ?", (rec.id,))
        self._set_labels(rec.id, labels)
        self.db.execute(
            "UPDATE snapshots SET updated_ns = ? WHERE id = ?", (time.time_ns(), rec.id)
        )
        return self.get(key)

    def _set_labels(self, sid: int, labels: Mapping[str, str]) -> None:
        self.db.executemany(
            "INSERT INTO snapshot_labels (snapshot, key, value) VALUES (?,?,?)",
            [(sid, k, v) for k, v in labels.items() if v != ""],
        )

    def walk(self) -> Iterator[SnapshotRecord]:
        """Every snapshot in key order, labels included (two queries in all)."""
        labels: dict[int, dict[str, str]] = {}
        for sid, k, v in self.db.all("SELECT snapshot, key, value FROM snapshot_labels"):
            labels.setdefault(sid, {})[k] = v
        for rec in self.db.rows(_record, _SELECT + " ORDER BY s.key"):
            rec.labels = labels.get(rec.id, {})
            yield rec

    def chain(self, sid: int) -> list[int]:
        """Layer ids from `sid` down to the bottom of its parent chain."""
        rows = self.db.all(
            """WITH RECURSIVE c(id, parent, depth) AS (
                   SELECT id, parent, 0 FROM snapshots WHERE id = ?
                   UNION ALL
                   SELECT s.id, s.parent, c.depth + 1 FROM snapshots s JOIN c ON s.id = c.parent)
               SELECT id FROM c ORDER BY depth""",
            (sid,),
        )
        return [r[0] for r in rows]

    def ids(self) -> list[tuple[int, Kind]]:
        return [(r[0], Kind(r[1])) for r in self.db.all("SELECT id, kind FROM snapshots")]
