"""A real store without a mount: the database, the layer tree and the
snapshotter the daemon builds, in a test's directory, with one active
snapshot `work` and its view (for tests that count SQL statements or look at
the layers' files directly)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fusesnap.snapshots.layers import LayerTree, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import Database
from fusesnap.store.space import Space


@dataclass
class Store:
    db: Database
    tree: LayerTree
    snapshotter: Snapshotter
    view: View  # of the active snapshot `work`


@contextmanager
def layer_store(root: Path) -> Iterator[Store]:
    db = Database(root / "metadata.db")
    tree = LayerTree(db, root / "layers", Space(root))
    snapshotter = Snapshotter(db, tree, root / "mnt", (0, 0))
    snapshotter.prepare("work", "", {})
    view = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert view is not None
    try:
        yield Store(db, tree, snapshotter, view)
    finally:
        tree.files.spares.close()
        db.close()
