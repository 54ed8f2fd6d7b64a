"""Directory work undone with its transaction (issue 17, item 7): a Prepare or
View whose transaction fails leaves no layer directory behind, as containerd's
overlay snapshotter removes its directory in a deferred cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusesnap.leases.store import Holder
from fusesnap.snapshots.layers import LayerTree
from fusesnap.snapshots.snapshotter import Snapshotter
from tests.layer_store import layer_store


class Refused(Exception):
    pass


@pytest.mark.parametrize("kind", ["prepare", "view"])
def test_a_snapshot_whose_transaction_fails_leaves_no_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    with layer_store(tmp_path) as s:
        check_undo(s.snapshotter, s.tree, monkeypatch, kind)


def check_undo(snapshotter: Snapshotter, tree: LayerTree, monkeypatch: pytest.MonkeyPatch,
           kind: str) -> None:
    snapshotter.commit("base", "work", {})
    snapshotter.leases.create("default", "l1", {})
    before = sorted(os.listdir(tree.layers_dir))
    ids = snapshotter.snapshot_ids()

    def refuse(*args: object) -> None:  # the last step inside the transaction
        raise Refused()

    monkeypatch.setattr(snapshotter.leases, "hold", refuse)
    with pytest.raises(Refused):
        getattr(snapshotter, kind)("new", "base", {}, Holder("default", "l1"))
    assert sorted(os.listdir(tree.layers_dir)) == before
    assert snapshotter.snapshot_ids() == ids
    monkeypatch.undo()
    getattr(snapshotter, kind)("new", "base", {}, Holder("default", "l1"))  # then works
    assert len(os.listdir(tree.layers_dir)) == len(before) + 1
