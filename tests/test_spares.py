"""Backing files made ahead of creates (fusesnap/snapshots/layers/spares.py):
creates take them, and none is ever left where a layer's files are read:
not in a committed layer, not after a removal, a stop or a crash."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.snapshots.layers import ROOT_OID, LayerTree, View
from fusesnap.snapshots.layers import spares as spares_module
from fusesnap.snapshots.snapshotter import Snapshotter
from tests.layer_store import layer_store


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Snapshotter, LayerTree, View]]:
    with layer_store(tmp_path) as s:
        yield s.snapshotter, s.tree, s.view


def files_of(tree: LayerTree, layer: int) -> set[int]:
    return {int(name) for name in os.listdir(tree.layers_dir / str(layer))}


def named(tree: LayerTree, layer: int) -> set[int]:
    """Objects of `layer` whose bytes are its own: what its directory must hold."""
    return set(tree.rows.own_data(layer))


def create(tree: LayerTree, view: View, n: int, prefix: bytes = b"f") -> list[int]:
    out = []
    for i in range(n):
        a, of = tree.create(view, ROOT_OID, prefix + b"%d" % i, 0o644, 0, 0)
        tree.files.write(of, 0, b"%d" % i)
        tree.release(of)
        out.append(a.oid)
    tree.sync()
    return out


def settle(tree: LayerTree, layer: int) -> None:
    """Wait for the batch the spares thread is making for `layer`, if any."""
    pool = tree.files.spares._pools.get(layer)
    if pool is not None and pool.done is not None:
        assert pool.done.wait(10)


def test_creates_take_files_made_ahead_and_a_commit_leaves_only_named_ones(
        world: tuple[Snapshotter, LayerTree, View]) -> None:
    snapshotter, tree, view = world
    oids = create(tree, view, 50)
    settle(tree, view.top)
    assert len(set(oids)) == 50
    made = files_of(tree, view.top)
    assert made > named(tree, view.top) == set(oids)  # spares wait beside them
    for oid in oids:  # each file's own bytes, in its own backing file
        with open(tree.files.data_path(view.top, oid), "rb") as f:
            assert f.read() == b"%d" % oids.index(oid)
    snapshotter.commit("base", "work", {})
    assert files_of(tree, view.top) == set(oids)


def test_a_removed_snapshot_and_a_stop_leave_no_spare(
        world: tuple[Snapshotter, LayerTree, View]) -> None:
    snapshotter, tree, view = world
    create(tree, view, 10)
    snapshotter.commit("base", "work", {})
    snapshotter.prepare("a", "base", {})
    a = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert a is not None
    create(tree, a, 10, b"a")
    snapshotter.remove("a")
    assert not (tree.layers_dir / str(a.top)).exists()
    snapshotter.prepare("b", "base", {})
    b = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert b is not None
    oids = create(tree, b, 10, b"b")
    settle(tree, b.top)
    assert files_of(tree, b.top) > set(oids)
    tree.files.spares.close()
    assert files_of(tree, b.top) == set(oids) == named(tree, b.top)


def test_a_crash_leaves_spares_that_the_next_start_deletes(
        world: tuple[Snapshotter, LayerTree, View]) -> None:
    snapshotter, tree, view = world
    oids = create(tree, view, 20)
    settle(tree, view.top)
    assert files_of(tree, view.top) > set(oids)
    tree.recover_layer(view.top)  # what the next start does for an active layer
    assert files_of(tree, view.top) == set(oids)


def test_only_the_layers_with_the_latest_creates_keep_spares(
        world: tuple[Snapshotter, LayerTree, View]) -> None:
    snapshotter, tree, view = world
    views = [view]
    for i in range(spares_module.LAYERS + 2):
        snapshotter.prepare(f"other{i}", "", {})
        v = snapshotter.view_of(max(snapshotter.snapshot_ids()))
        assert v is not None
        views.append(v)
    for v in views:
        create(tree, v, 5)
    assert list(tree.files.spares._pools) == [v.top for v in views[-spares_module.LAYERS:]]
    for v in views[:-spares_module.LAYERS]:
        assert files_of(tree, v.top) == named(tree, v.top)


def test_a_create_after_the_spares_ran_out_makes_its_own_file(
        world: tuple[Snapshotter, LayerTree, View]) -> None:
    snapshotter, tree, view = world
    create(tree, view, 1)
    settle(tree, view.top)
    pool = tree.files.spares._pools[view.top]
    for oid, fd in list(pool.ready):  # as if creates outran the thread
        os.close(fd)
        os.unlink(tree.files.data_path(view.top, oid))
    pool.ready.clear()
    a = tree.make(view, ROOT_OID, b"late", stat.S_IFREG | 0o644, 0, 0)
    assert os.path.getsize(tree.files.data_path(view.top, a.oid)) == 0
