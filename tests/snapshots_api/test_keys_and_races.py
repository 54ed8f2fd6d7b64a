"""Opaque keys (slashes, colons, spaces, unicode) through every RPC, and concurrent
Prepares and Commits of one key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import ACTIVE, COMMITTED, REF, goquote, mine
from tests.snapshots_api.rpc import (
    batches,
    commit,
    mounts,
    names,
    prepare,
    remove,
    source,
    stat,
    update,
    usage,
    view,
)

OPAQUE_KEYS = [
    "default/12/extract-123456789-Ab3d sha256:0123456789abcdef",
    "k8s.io/7/layer-sha256:fedcba9876543210",
    "with spaces and \"quotes\" and \\backslash",
    "ünïcødé/キー/🙂",
    "a:b:c",
]


@pytest.mark.parametrize("key", OPAQUE_KEYS, ids=["extract", "k8s", "spaces", "unicode", "colons"])
def test_keys_with_slashes_colons_spaces_and_unicode_work_everywhere(d, k, key):
    active, name, child = k(key), k("committed " + key), k("view " + key)
    path = source(prepare(d, active))
    (path / "f").write_bytes(b"data")
    assert stat(d, active).name == active
    assert mounts(d, active)[0][1] == str(path)
    assert usage(d, active)[0] == 4
    commit(d, name, active, {REF: key})
    info = stat(d, name)
    assert (info.name, info.kind, dict(info.labels)) == (name, COMMITTED, {REF: key})
    assert (source(view(d, child, name)) / "f").read_bytes() == b"data"
    assert stat(d, child).parent == name
    assert names(d, "name==" + goquote(name)) == [name]
    assert names(d, "parent==" + goquote(name)) == [child]
    assert names(d, f"labels.{goquote(REF)}==" + goquote(key)) == [name]
    assert dict(update(d, spb.Info(name=child, labels={"x": key})).labels) == {"x": key}
    remove(d, child)
    remove(d, name)
    assert names(d, mine(k)) == []


def _race(calls: list[Callable[[], Any]]) -> list[grpc.StatusCode | None]:
    """Run `calls` at once; None for each success, else its status code."""
    def one(fn: Callable[[], Any]) -> grpc.StatusCode | None:
        try:
            fn()
        except grpc.RpcError as err:
            return err.code()
        return None

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_concurrent_prepares_of_one_key_make_one_snapshot_and_already_exists(d, k):
    results = _race([lambda: prepare(d, k("a"))] * 12)
    assert Counter(results) == {None: 1, grpc.StatusCode.ALREADY_EXISTS: 11}
    assert names(d, mine(k)) == [k("a")]


def test_concurrent_commits_to_one_name_commit_one_active(d, k):
    for i in range(8):
        prepare(d, k(f"a{i}"))
    results = _race([lambda i=i: commit(d, k("c"), k(f"a{i}")) for i in range(8)])
    assert Counter(results) == {None: 1, grpc.StatusCode.ALREADY_EXISTS: 7}
    kinds = Counter(i.kind for b in batches(d, mine(k)) for i in b)
    assert kinds == {COMMITTED: 1, ACTIVE: 7}
