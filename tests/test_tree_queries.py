"""What the layer tree answers without SQL (issue 16, "a warm metadata
request touches no SQL"), counted with SQLite's own statement trace on a
real store (no FUSE needed)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.layerfs.tree import ROOT_OID, LayerTree, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import Database
from fusesnap.store.space import Space


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Database, LayerTree, View]]:
    db = Database(tmp_path / "metadata.db")
    tree = LayerTree(db, tmp_path / "layers", Space(tmp_path))
    snapshotter = Snapshotter(db, tree, tmp_path / "mnt", (0, 0))
    snapshotter.prepare("work", "", {})
    view = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert view is not None
    yield db, tree, view
    db.close()


def statements(db: Database) -> list[str]:
    seen: list[str] = []
    db.conn.set_trace_callback(seen.append)
    return seen


def test_a_name_missing_from_a_directory_made_in_this_view_costs_no_query(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    d = tree.make(view, ROOT_OID, b"new", stat.S_IFDIR | 0o755, 0, 0)
    tree.make(view, d.oid, b"there", stat.S_IFREG | 0o644, 0, 0)
    seen = statements(db)
    assert tree.find(view, d.oid, b"missing") == 0
    assert tree.find(view, d.oid, b"there") != 0
    assert seen == []


def test_a_name_missing_from_a_listed_directory_costs_no_query(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    tree.make(view, ROOT_OID, b"a", stat.S_IFREG | 0o644, 0, 0)
    view.entries.clear()  # as a view that has not seen the root yet
    view.complete.clear()
    seen = statements(db)
    assert tree.find(view, ROOT_OID, b"other") == 0  # not listed yet: one probe
    assert len(seen) == 1
    [(name, _)] = tree.listdir(view, ROOT_OID)
    assert name == b"a"
    seen.clear()
    assert tree.find(view, ROOT_OID, b"still-missing") == 0
    assert seen == []
