"""Commit: the order of its checks, the committed snapshot's parent, labels and
times, the files it keeps, the parent field, and failed commits changing nothing."""

from __future__ import annotations

import errno
import os
import time

import grpc
import pytest

from tests.snapshots_api.helpers import ACTIVE, COMMITTED, VIEW, committed, make, mine, world
from tests.snapshots_api.rpc import code, commit, mounts, names, prepare, source, stat, usage, view


def test_commit_onto_an_existing_name_is_already_exists_even_when_the_key_is_missing(d, k):
    committed(d, k("c"))
    assert code(commit, d, k("c"), k("missing")) == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("kind", [ACTIVE, VIEW], ids=["name-is-active", "name-is-view"])
def test_commit_onto_a_name_taken_by_any_kind_is_already_exists(d, k, kind):
    make(d, kind, k("taken"))
    prepare(d, k("a"))
    assert code(commit, d, k("taken"), k("a")) == grpc.StatusCode.ALREADY_EXISTS


def test_commit_onto_an_existing_name_is_already_exists_before_the_key_kind_is_checked(d, k):
    committed(d, k("c"))
    view(d, k("v"), k("c"))
    assert code(commit, d, k("c"), k("v")) == grpc.StatusCode.ALREADY_EXISTS


def test_commit_of_a_missing_key_is_not_found(d, k):
    assert code(commit, d, k("c"), k("missing")) == grpc.StatusCode.NOT_FOUND
    assert code(stat, d, k("c")) == grpc.StatusCode.NOT_FOUND


def test_commit_of_a_view_is_failed_precondition(d, k):
    committed(d, k("p"))
    view(d, k("v"), k("p"))
    assert code(commit, d, k("c"), k("v")) == grpc.StatusCode.FAILED_PRECONDITION


def test_commit_of_a_committed_snapshot_is_failed_precondition(d, k):
    committed(d, k("p"))
    assert code(commit, d, k("c"), k("p")) == grpc.StatusCode.FAILED_PRECONDITION


def test_commit_with_a_label_over_4096_bytes_is_invalid_argument(d, k):
    prepare(d, k("a"))
    assert code(commit, d, k("c"), k("a"), {"k": "v" * 4096}) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert stat(d, k("a")).kind == ACTIVE


@pytest.mark.parametrize("case, expected", [
    ("name-exists", grpc.StatusCode.ALREADY_EXISTS),
    ("key-missing", grpc.StatusCode.NOT_FOUND),
    ("key-is-view", grpc.StatusCode.FAILED_PRECONDITION),
    ("key-is-committed", grpc.StatusCode.FAILED_PRECONDITION),
])
def test_commit_checks_name_key_and_kind_before_label_size(d, k, case, expected):
    committed(d, k("p"))
    view(d, k("v"), k("p"))
    prepare(d, k("a"))
    name, key = {
        "name-exists": (k("p"), k("a")),
        "key-missing": (k("c"), k("missing")),
        "key-is-view": (k("c"), k("v")),
        "key-is-committed": (k("c"), k("p")),
    }[case]
    assert code(commit, d, name, key, {"big": "x" * 5000}) == expected


def test_commit_onto_its_own_key_is_already_exists(d, k):
    prepare(d, k("a"))
    assert code(commit, d, k("a"), k("a")) == grpc.StatusCode.ALREADY_EXISTS
    assert stat(d, k("a")).kind == ACTIVE


def test_commit_accepts_a_label_of_exactly_4096_bytes(d, k):
    prepare(d, k("a"))
    commit(d, k("c"), k("a"), {"k": "v" * 4095})
    assert stat(d, k("c")).labels["k"] == "v" * 4095


def test_commit_with_empty_name_is_invalid_argument(d, k):
    prepare(d, k("a"))
    assert code(commit, d, "", k("a")) == grpc.StatusCode.INVALID_ARGUMENT
    assert stat(d, k("a")).kind == ACTIVE


def test_commit_removes_the_active_key_and_creates_the_committed_name(d, k):
    prepare(d, k("a"))
    commit(d, k("c"), k("a"))
    assert code(stat, d, k("a")) == grpc.StatusCode.NOT_FOUND
    assert code(mounts, d, k("a")) == grpc.StatusCode.NOT_FOUND
    assert stat(d, k("c")).kind == COMMITTED
    assert names(d, mine(k)) == [k("c")]


def test_commit_gives_the_committed_snapshot_the_parent_of_the_active(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    commit(d, k("c"), k("a"))
    assert stat(d, k("c")).parent == k("p")


def test_commit_of_a_parentless_active_gives_no_parent(d, k):
    prepare(d, k("a"))
    commit(d, k("c"), k("a"))
    assert stat(d, k("c")).parent == ""


def test_commit_gives_exactly_the_request_labels_not_the_active_labels(d, k):
    prepare(d, k("a"), labels={"from-active": "1", "shared": "active"})
    commit(d, k("c"), k("a"), {"shared": "commit", "new": "2", "empty": ""})
    assert dict(stat(d, k("c")).labels) == {"shared": "commit", "new": "2"}


def test_commit_without_labels_leaves_none(d, k):
    prepare(d, k("a"), labels={"from-active": "1"})
    commit(d, k("c"), k("a"))
    assert dict(stat(d, k("c")).labels) == {}


def test_commit_sets_created_and_updated_to_the_commit_time(d, k):
    prepare(d, k("a"))
    created_active = stat(d, k("a")).created_at.ToNanoseconds()
    time.sleep(0.01)
    before = time.time_ns()
    commit(d, k("c"), k("a"))
    after = time.time_ns()
    info = stat(d, k("c"))
    assert info.created_at == info.updated_at
    assert before <= info.created_at.ToNanoseconds() <= after
    assert info.created_at.ToNanoseconds() > created_active


def test_files_written_before_commit_are_visible_through_a_view_of_it(d, k):
    path = source(prepare(d, k("a")))
    (path / "dir").mkdir()
    (path / "dir" / "file").write_bytes(b"hello" * 1000)
    os.symlink("dir/file", path / "link")
    commit(d, k("c"), k("a"))
    v = source(view(d, k("v"), k("c")))
    assert sorted(os.listdir(v)) == ["dir", "link"]
    assert (v / "dir" / "file").read_bytes() == b"hello" * 1000
    assert os.readlink(v / "link") == "dir/file"


def test_files_written_before_commit_are_visible_through_a_child(d, k):
    path = source(prepare(d, k("a")))
    (path / "file").write_bytes(b"base bytes")
    commit(d, k("c"), k("a"))
    child = source(prepare(d, k("child"), k("c")))
    assert (child / "file").read_bytes() == b"base bytes"
    (child / "file").write_bytes(b"changed in child")
    assert (child / "file").read_bytes() == b"changed in child"
    assert (path / "file").read_bytes() == b"base bytes"


def test_file_kept_open_across_commit_is_committed_with_what_was_written(d, k):
    path = source(prepare(d, k("a")))
    with open(path / "f", "wb") as f:
        f.write(b"x" * 1234)
        f.flush()
        commit(d, k("c"), k("a"))
        assert usage(d, k("c"))[0] == 1234
    assert (source(view(d, k("v"), k("c"))) / "f").read_bytes() == b"x" * 1234


@pytest.mark.parametrize("action", ["create", "write-existing", "mkdir", "unlink", "truncate"])
def test_the_committed_directory_is_read_only(d, k, action):
    path = source(prepare(d, k("a")))
    (path / "f").write_bytes(b"frozen")
    commit(d, k("c"), k("a"))
    with pytest.raises(OSError) as err:
        if action == "create":
            (path / "new").write_bytes(b"x")
        elif action == "write-existing":
            with open(path / "f", "r+b") as f:
                f.write(b"x")
        elif action == "mkdir":
            (path / "d").mkdir()
        elif action == "unlink":
            (path / "f").unlink()
        else:
            os.truncate(path / "f", 0)
    assert err.value.errno == errno.EROFS
    assert (path / "f").read_bytes() == b"frozen"


def test_commit_with_parent_equal_to_the_current_parent_succeeds(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    commit(d, k("c"), k("a"), parent=k("p"))
    assert stat(d, k("c")).parent == k("p")


def test_commit_with_a_different_parent_is_invalid_argument(d, k):
    committed(d, k("p"))
    committed(d, k("q"))
    prepare(d, k("a"), k("p"))
    before = world(d)
    assert code(commit, d, k("c"), k("a"), parent=k("q")) == grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


def test_commit_with_a_parent_for_a_parentless_active_is_invalid_argument_without_rebase(d, k):
    # fusesnap does not advertise "rebase" (spec §2.4.4): reject, never ignore.
    committed(d, k("p"))
    prepare(d, k("a"))
    before = world(d)
    assert code(commit, d, k("c"), k("a"), parent=k("p")) == grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@pytest.mark.parametrize("case", [
    "name-exists", "key-missing", "key-is-view", "key-is-committed", "label-too-large",
    "other-parent", "empty-name",
])
def test_a_failed_commit_changes_nothing(d, k, case):
    committed(d, k("p"), files={"f": b"p"})
    committed(d, k("q"))
    view(d, k("v"), k("p"))
    path = source(prepare(d, k("a"), k("p"), {"keep": "me"}))
    (path / "g").write_bytes(b"active")
    name, key, lbls, parent = {
        "name-exists": (k("q"), k("a"), {}, ""),
        "key-missing": (k("c"), k("missing"), {}, ""),
        "key-is-view": (k("c"), k("v"), {}, ""),
        "key-is-committed": (k("c"), k("q"), {}, ""),
        "label-too-large": (k("c"), k("a"), {"x": "y" * 4096}, ""),
        "other-parent": (k("c"), k("a"), {}, k("q")),
        "empty-name": ("", k("a"), {}, ""),
    }[case]
    before = world(d)
    use = usage(d, k("a"))
    with pytest.raises(grpc.RpcError):
        commit(d, name, key, lbls, parent)
    assert world(d) == before
    assert usage(d, k("a")) == use
    # The active is still writable and still shows its files.
    (path / "h").write_bytes(b"later")
    assert sorted(os.listdir(path)) == ["f", "g", "h"]
    assert mounts(d, k("a"))[0][3] == ["rbind", "rw"]
