"""Usage: bytes and inodes of an active's own layer, of a committed, of a view."""

from __future__ import annotations

import os

import grpc

from tests.snapshots_api.helpers import committed
from tests.snapshots_api.rpc import code, commit, prepare, source, usage, view


def test_usage_of_a_missing_key_is_not_found(d, k):
    assert code(usage, d, k("nope")) == grpc.StatusCode.NOT_FOUND


def test_usage_of_a_fresh_base_active_is_its_root_directory_only(d, k):
    prepare(d, k("a"))
    assert usage(d, k("a")) == (0, 1)


def test_usage_of_a_fresh_child_active_is_zero(d, k):
    committed(d, k("p"), files={"big": b"x" * (1 << 20)})
    prepare(d, k("a"), k("p"))
    assert usage(d, k("a")) == (0, 0)


def test_usage_of_an_active_counts_only_the_bytes_of_its_own_layer(d, k):
    committed(d, k("p"), files={"big1": os.urandom(2 << 20), "dir/big2": b"y" * (3 << 20)})
    path = source(prepare(d, k("a"), k("p")))
    (path / "new").write_bytes(b"z" * 12345)
    assert usage(d, k("a"))[0] == 12345
    (path / "dir" / "small").write_bytes(b"w" * 100)
    assert usage(d, k("a"))[0] == 12345 + 100


def test_usage_of_an_active_counts_its_objects(d, k):
    committed(d, k("p"), files={"big": b"x" * (1 << 20)})
    path = source(prepare(d, k("a"), k("p")))
    (path / "f1").write_bytes(b"1")
    _, first = usage(d, k("a"))
    assert first == 2  # the new file and the root directory it changed
    (path / "d").mkdir()
    (path / "d" / "f2").write_bytes(b"2")
    (path / "f3").write_bytes(b"3")
    assert usage(d, k("a")) == (3, first + 3)


def test_usage_of_an_active_counts_bytes_still_being_written(d, k):
    path = source(prepare(d, k("a")))
    with open(path / "f", "wb") as f:
        f.write(b"x" * 777)
        f.flush()
        assert usage(d, k("a"))[0] == 777


def test_usage_of_a_committed_is_the_active_usage_at_commit_time(d, k):
    committed(d, k("p"), files={"big": b"x" * (1 << 20)})
    path = source(prepare(d, k("a"), k("p")))
    (path / "f").write_bytes(b"f" * 4321)
    (path / "d").mkdir()
    at_commit = usage(d, k("a"))
    commit(d, k("c"), k("a"))
    assert usage(d, k("c")) == at_commit
    assert at_commit[0] == 4321


def test_usage_of_a_committed_does_not_include_its_children(d, k):
    committed(d, k("p"), files={"f": b"p" * 10})
    before = usage(d, k("p"))
    path = source(prepare(d, k("a"), k("p")))
    (path / "g").write_bytes(b"g" * 1000)
    assert usage(d, k("p")) == before == (10, 2)


def test_usage_of_a_view_is_zero(d, k):
    committed(d, k("p"), files={"f": b"x" * 5000})
    view(d, k("v"), k("p"))
    assert usage(d, k("v")) == (0, 0)
