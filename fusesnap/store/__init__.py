"""Durable metadata: one SQLite database in WAL mode; no FUSE or gRPC here."""

from fusesnap.store.db import Database

__all__ = ["Database"]
