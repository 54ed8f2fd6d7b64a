"""How much the store holds: snapshots by kind, blobs, ingests, leases and
images (`fusesnap status`). One query per table, on the thread that owns the
database."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusesnap.store.db import Database
from fusesnap.store.metastore import Kind


@dataclass(frozen=True)
class Census:
    snapshots: dict[Kind, int] = field(default_factory=dict)
    blobs: int = 0
    blob_bytes: int = 0
    ingests: int = 0
    leases: int = 0
    images: int = 0


def count(db: Database) -> Census:
    """The counts now; leases and images in all namespaces."""
    kinds = {kind: 0 for kind in Kind}
    for kind, n in db.all("SELECT kind, COUNT(*) FROM snapshots GROUP BY kind"):
        kinds[Kind(kind)] = n
    blobs, blob_bytes = db.one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM content_blobs") \
        or (0, 0)

    def rows(table: str) -> int:
        row = db.one(f"SELECT COUNT(*) FROM {table}")
        return int(row[0]) if row else 0

    return Census(snapshots=kinds, blobs=blobs, blob_bytes=blob_bytes,
                  ingests=rows("content_ingests"), leases=rows("leases"),
                  images=rows("images"))
