"""What a view answers without SQL (issue 16, "a warm metadata request
touches no SQL"), counted with SQLite's own statement trace on a real store
(no FUSE needed), and its caches' bound."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.snapshots.layers import ROOT_OID, LayerTree, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import Database
from tests.layer_store import layer_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Database, LayerTree, View]]:
    with layer_store(tmp_path) as s:
        yield s.db, s.tree, s.view


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
    assert view.find(d.oid, b"missing") == 0
    assert view.find(d.oid, b"there") != 0
    assert seen == []


def test_a_name_missing_from_a_listed_directory_costs_no_query(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    tree.make(view, ROOT_OID, b"a", stat.S_IFREG | 0o644, 0, 0)
    view.entries.clear()  # as a view that has not seen the root yet
    view.complete.clear()
    seen = statements(db)
    assert view.find(ROOT_OID, b"other") == 0  # not listed yet: one probe
    assert len(seen) == 1
    [(name, _)] = view.listdir(ROOT_OID)
    assert name == b"a"
    seen.clear()
    assert view.find(ROOT_OID, b"still-missing") == 0
    assert seen == []


def test_a_view_keeps_at_most_its_limit_and_still_answers_right(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    view.limit = 16
    d = tree.make(view, ROOT_OID, b"d", stat.S_IFDIR | 0o755, 0, 0)
    oids = {}
    for i in range(200):
        oids[i] = tree.make(view, d.oid, b"f%d" % i, stat.S_IFREG | 0o644, i, 0).oid
    tree.sync()
    assert len(view.attrs) <= 16 and len(view.entries) <= 32
    listing = view.listdir(d.oid)  # more than the limit: returned, not kept
    assert len(listing) == 200 and d.oid not in view.listings
    assert d.oid not in view.complete  # its names did not all stay
    for i in range(200):  # every name and owner right, after evictions
        assert view.find(d.oid, b"f%d" % i) == oids[i]
        assert view.attr(oids[i]).uid == i
    assert view.find(d.oid, b"f200") == 0
    assert len(view.attrs) <= 16 and len(view.entries) <= 32
    assert sum(len(x) for x in view.listings.values()) <= 16


def test_an_object_evicted_while_open_stays_the_one_object(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    view.limit = 16
    a, of = tree.create(view, ROOT_OID, b"open", 0o644, 0, 0)
    tree.files.write(of, 0, b"x" * 5000)  # its size is in memory only
    for i in range(100):
        tree.make(view, ROOT_OID, b"other%d" % i, stat.S_IFREG | 0o644, 0, 0)
    assert a.oid not in view.attrs
    seen = statements(db)
    assert view.attr(a.oid) is a and a.size == 5000
    assert seen == []
    tree.release(of)
    assert os.path.getsize(tree.files.data_path(view.top, a.oid)) == 5000


def test_a_lower_name_seen_first_costs_one_statement_with_its_attributes(
        store: tuple[Database, LayerTree, View], tmp_path: Path) -> None:
    db, tree, view = store
    a = tree.make(view, ROOT_OID, b"lower", stat.S_IFREG | 0o640, 7, 8)
    tree.make(view, ROOT_OID, b"gone", stat.S_IFREG | 0o644, 0, 0)
    snapshotter = Snapshotter(db, tree, tmp_path / "mnt", (0, 0))  # a second one, as a restart
    snapshotter.commit("base", "work", {})
    snapshotter.prepare("top", "base", {})
    top = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert top is not None
    tree.unlink(top, ROOT_OID, b"gone")  # a whiteout above the lower entry
    tree.sync()
    top.clear()
    seen = statements(db)
    oid = top.find(ROOT_OID, b"lower")
    b = top.attr(oid)
    assert (oid, b.mode, b.uid, b.gid) == (a.oid, stat.S_IFREG | 0o640, 7, 8)
    assert top.find(ROOT_OID, b"gone") == 0
    assert len(seen) == 2  # one per name; the attributes came with the first


def test_a_directory_probed_for_many_names_is_read_whole_once_that_pays(
        store: tuple[Database, LayerTree, View], tmp_path: Path) -> None:
    db, tree, view = store
    d = tree.make(view, ROOT_OID, b"lib", stat.S_IFDIR | 0o755, 0, 0)
    for i in range(100):
        tree.make(view, d.oid, b"there-%d" % i, stat.S_IFREG | 0o644, i, 0)
    tree.unlink(view, d.oid, b"there-7")
    snapshotter = Snapshotter(db, tree, tmp_path / "mnt", (0, 0))  # a second one, as a restart
    snapshotter.commit("base", "work", {})
    snapshotter.prepare("top", "base", {})
    top = snapshotter.view_of(max(snapshotter.snapshot_ids()))
    assert top is not None
    tree.unlink(top, d.oid, b"there-3")  # a whiteout in the top layer
    tree.make(top, d.oid, b"new", stat.S_IFREG | 0o644, 0, 0)
    tree.sync()
    top.clear()
    seen = statements(db)
    assert top.find(d.oid, b"missing-0") == 0
    assert len(seen) == 1  # one lookup in a directory not seen: one statement
    for i in range(1, 1000):
        assert top.find(d.oid, b"missing-%d" % i) == 0
    # Tried whole at the 2nd, 4th, ... 16th miss (101 entries > 8 x 8), read
    # whole at the 16th: 16 lookups, 4 tries, then none.
    assert len(seen) <= 16 + 4
    assert d.oid in top.complete
    seen.clear()
    assert top.find(d.oid, b"there-3") == 0  # the whiteout
    assert top.find(d.oid, b"there-7") == 0  # gone before the commit
    assert top.find(d.oid, b"new") != 0
    assert seen == []
    assert top.attr(top.find(d.oid, b"there-42")).uid == 42
    assert len(seen) == 1  # a name found: its attributes, one statement
    assert [name for name, _ in top.listdir(d.oid)] == sorted(
        [b"new"] + [b"there-%d" % i for i in range(100) if i not in (3, 7)])


def test_one_lookup_in_a_large_directory_reads_no_more_than_its_name(
        store: tuple[Database, LayerTree, View]) -> None:
    db, tree, view = store
    d = tree.make(view, ROOT_OID, b"big", stat.S_IFDIR | 0o755, 0, 0)
    for i in range(200):
        tree.make(view, d.oid, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0)
    tree.sync()
    view.clear()
    seen = statements(db)
    assert view.find(d.oid, b"f1") != 0
    assert view.find(d.oid, b"nope") == 0  # 2nd name: a try, LIMIT 17, fails
    assert len(seen) == 3 and "LIMIT" in seen[1]  # the try, then the name
    assert d.oid not in view.complete
