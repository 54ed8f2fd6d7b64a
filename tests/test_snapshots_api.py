"""The gRPC contract of containerd.services.snapshots.v1.Snapshots (spec §2), RPC by RPC.

Every test talks to a real daemon over its unix socket and looks at the real
FUSE mount. Most tests share one daemon (module scope) and keep to keys with a
prefix of their own, so they stay fast; the few that need to see *every*
snapshot (List without filters, batching, huge requests) start their own.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.pb import snapshots_pb2 as spb
from tests.conftest import PROXY, Daemon, module_daemon

GO_ZERO_TIME = Timestamp(seconds=-62135596800, nanos=0)
REF = "containerd.io/snapshot.ref"
ACTIVE, VIEW, COMMITTED = spb.ACTIVE, spb.VIEW, spb.COMMITTED

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that only look at their own keys."""
    yield from module_daemon(tmp_path_factory, "api", args=PROXY)


_serial = itertools.count(1)


@pytest.fixture
def d(shared: Daemon) -> Daemon:
    return shared


@pytest.fixture
def k(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Keys private to the test: k("a") -> "7:test_name/a"."""
    prefix = f"{next(_serial)}:{request.node.originalname}/"
    return lambda suffix="": prefix + suffix


# --------------------------------------------------------------------------- helpers


def code(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.StatusCode:
    """The status code of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code()


def prepare(d: Daemon, key: str, parent: str = "", labels: dict[str, str] | None = None,
            **kw: Any) -> spb.PrepareSnapshotResponse:
    return d.snapshots.Prepare(
        spb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {}), **kw)


def view(d: Daemon, key: str, parent: str = "", labels: dict[str, str] | None = None,
         **kw: Any) -> spb.ViewSnapshotResponse:
    return d.snapshots.View(
        spb.ViewSnapshotRequest(key=key, parent=parent, labels=labels or {}), **kw)


def commit(d: Daemon, name: str, key: str, labels: dict[str, str] | None = None,
           parent: str = "", **kw: Any) -> None:
    d.snapshots.Commit(
        spb.CommitSnapshotRequest(name=name, key=key, labels=labels or {}, parent=parent), **kw)


def stat(d: Daemon, key: str, **kw: Any) -> spb.Info:
    resp = d.snapshots.Stat(spb.StatSnapshotRequest(key=key), **kw)
    assert resp.HasField("info")
    return resp.info


def remove(d: Daemon, key: str) -> None:
    d.snapshots.Remove(spb.RemoveSnapshotRequest(key=key))


def mounts(d: Daemon, key: str) -> list[tuple[str, str, str, list[str]]]:
    return flat(d.snapshots.Mounts(spb.MountsRequest(key=key)).mounts)


def usage(d: Daemon, key: str) -> tuple[int, int]:
    resp = d.snapshots.Usage(spb.UsageRequest(key=key))
    return resp.size, resp.inodes


def update(d: Daemon, info: spb.Info, paths: list[str] | None = None) -> spb.Info:
    req = spb.UpdateSnapshotRequest(info=info)
    if paths is not None:
        req.update_mask.CopyFrom(FieldMask(paths=paths))
    resp = d.snapshots.Update(req)
    assert resp.HasField("info")
    return resp.info


def batches(d: Daemon, *filters: str, **kw: Any) -> list[list[spb.Info]]:
    return [list(r.info) for r in d.snapshots.List(spb.ListSnapshotsRequest(filters=filters),
                                                   **kw)]


def names(d: Daemon, *filters: str) -> list[str]:
    return sorted(i.name for b in batches(d, *filters) for i in b)


def mine(k: Callable[[str], str]) -> str:
    """A filter selector matching only the calling test's keys."""
    return "name~=" + goquote("^" + re.escape(k("")))


def goquote(s: str) -> str:
    """A double-quoted filter literal (JSON's escapes are a subset of Go's)."""
    return json.dumps(s, ensure_ascii=False)


def flat(ms: Any) -> list[tuple[str, str, str, list[str]]]:
    return [(m.type, m.source, m.target, list(m.options)) for m in ms]


def info_tuple(i: spb.Info) -> tuple:
    return (i.name, i.parent, i.kind, i.created_at.ToNanoseconds(),
            i.updated_at.ToNanoseconds(), tuple(sorted(i.labels.items())))


def world(d: Daemon) -> list[tuple]:
    """Everything the daemon knows, for "nothing changed" checks."""
    return sorted(info_tuple(i) for b in batches(d) for i in b)


def source(resp: Any) -> Path:
    return Path(resp.mounts[0].source)


def committed(d: Daemon, name: str, parent: str = "", files: dict[str, bytes] | None = None,
              labels: dict[str, str] | None = None) -> Path:
    """A committed snapshot `name` holding `files`; returns its directory."""
    path = source(prepare(d, name + "~active", parent))
    for rel, data in (files or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    commit(d, name, name + "~active", labels)
    return path


def make(d: Daemon, kind: int, key: str, parent: str = "") -> None:
    """A snapshot of `kind` at `key` (views and committed get a committed parent)."""
    if kind == ACTIVE:
        prepare(d, key, parent)
    elif kind == VIEW:
        view(d, key, parent or committed_base(d, key))
    else:
        committed(d, key, parent)


def committed_base(d: Daemon, key: str) -> str:
    committed(d, key + "~base")
    return key + "~base"


def expect_mount(resp_mounts: Any, d: Daemon, mode: str) -> str:
    """Assert the one bind mount fusesnap returns; give its snapshot directory name."""
    got = flat(resp_mounts)
    assert len(got) == 1
    typ, src, target, options = got[0]
    assert (typ, target, options) == ("bind", "", ["rbind", mode])
    m = re.fullmatch(re.escape(str(d.mountpoint)) + r"/(\d+)", src)
    assert m, src
    return m.group(1)


KINDS = pytest.mark.parametrize("kind", [ACTIVE, VIEW, COMMITTED],
                                ids=["active", "view", "committed"])

# --------------------------------------------------------------------------- Prepare / View


def test_prepare_returns_exactly_one_rbind_rw_mount_of_the_snapshot_directory(d, k):
    resp = prepare(d, k("a"))
    sid = expect_mount(resp.mounts, d, "rw")
    assert sid in os.listdir(d.mountpoint)


def test_view_returns_exactly_one_rbind_ro_mount_of_the_snapshot_directory(d, k):
    committed(d, k("base"))
    resp = view(d, k("v"), k("base"))
    sid = expect_mount(resp.mounts, d, "ro")
    assert sid in os.listdir(d.mountpoint)


def test_each_snapshot_gets_its_own_directory(d, k):
    a = source(prepare(d, k("a")))
    b = source(prepare(d, k("b")))
    assert a != b


def test_prepared_directory_exists_and_is_empty(d, k):
    path = source(prepare(d, k("a")))
    assert path.is_dir()
    assert os.listdir(path) == []


def test_prepared_child_directory_shows_the_parent_content(d, k):
    committed(d, k("base"), files={"etc/hostname": b"box\n"})
    path = source(prepare(d, k("child"), k("base")))
    assert (path / "etc" / "hostname").read_bytes() == b"box\n"


def test_view_directory_shows_the_parent_content(d, k):
    committed(d, k("base"), files={"etc/hostname": b"box\n"})
    path = source(view(d, k("v"), k("base")))
    assert sorted(os.listdir(path)) == ["etc"]
    assert (path / "etc" / "hostname").read_bytes() == b"box\n"


def test_view_directory_is_read_only(d, k):
    committed(d, k("base"), files={"f": b"x"})
    path = source(view(d, k("v"), k("base")))
    with pytest.raises(OSError) as err:
        (path / "new").write_bytes(b"y")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        with open(path / "f", "r+b") as f:
            f.write(b"y")
    assert err.value.errno == errno.EROFS


def test_view_without_parent_is_an_empty_read_only_directory(d, k):
    resp = view(d, k("v"))
    expect_mount(resp.mounts, d, "ro")
    path = source(resp)
    assert os.listdir(path) == []
    with pytest.raises(OSError) as err:
        (path / "new").write_bytes(b"y")
    assert err.value.errno == errno.EROFS
    info = stat(d, k("v"))
    assert (info.kind, info.parent) == (VIEW, "")


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@KINDS
def test_prepare_or_view_of_an_existing_key_of_any_kind_is_already_exists(d, k, rpc, kind):
    make(d, kind, k("x"))
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, k("x"), k("p")) == grpc.StatusCode.ALREADY_EXISTS
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_prepare_or_view_with_a_missing_parent_is_not_found(d, k, rpc):
    assert code(rpc, d, k("x"), k("nope")) == grpc.StatusCode.NOT_FOUND
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@pytest.mark.parametrize("kind", [ACTIVE, VIEW], ids=["active", "view"])
def test_prepare_or_view_over_a_parent_that_is_not_committed_is_invalid_argument(
        d, k, rpc, kind):
    make(d, kind, k("p"))
    assert code(rpc, d, k("x"), k("p")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_prepare_or_view_with_an_empty_key_is_invalid_argument(d, k, rpc):
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, "", k("p")) == grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
@pytest.mark.parametrize("label", [
    {"k": "v" * 4096},                  # 1 + 4096 bytes
    {"k" * 4096: "v"},
    {"é": "v" * 4095},                  # 4096 characters, 4097 bytes
], ids=["long-value", "long-key", "utf8-bytes"])
def test_a_label_over_4096_bytes_is_invalid_argument(d, k, rpc, label):
    committed(d, k("p"))
    before = world(d)
    assert code(rpc, d, k("x"), k("p"), {"ok": "fine", **label}) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_a_label_of_exactly_4096_bytes_is_accepted(d, k, rpc):
    committed(d, k("p"))
    lbls = {"k": "v" * 4095, "é": "w" * 4094}
    rpc(d, k("x"), k("p"), lbls)
    assert dict(stat(d, k("x")).labels) == lbls


@pytest.mark.parametrize("rpc", [prepare, view], ids=["prepare", "view"])
def test_labels_with_empty_values_are_not_stored(d, k, rpc):
    committed(d, k("p"))
    rpc(d, k("x"), k("p"), {"keep": "1", "drop": ""})
    assert dict(stat(d, k("x")).labels) == {"keep": "1"}
    assert names(d, mine(k) + ",labels.drop") == []


def test_prepare_stores_its_labels(d, k):
    lbls = {REF: "sha256:abc", "containerd.io/snapshot/remote.x": "y"}
    prepare(d, k("x"), labels=lbls)
    assert dict(stat(d, k("x")).labels) == lbls


@pytest.mark.parametrize("snapshotter", ["", "overlayfs", "anything"])
def test_the_snapshotter_field_is_accepted_whatever_its_value(d, k, snapshotter):
    s = d.snapshots
    s.Prepare(spb.PrepareSnapshotRequest(snapshotter=snapshotter, key=k("a")))
    s.Mounts(spb.MountsRequest(snapshotter=snapshotter, key=k("a")))
    s.Usage(spb.UsageRequest(snapshotter=snapshotter, key=k("a")))
    s.Commit(spb.CommitSnapshotRequest(snapshotter=snapshotter, name=k("c"), key=k("a")))
    s.View(spb.ViewSnapshotRequest(snapshotter=snapshotter, key=k("v"), parent=k("c")))
    s.Update(spb.UpdateSnapshotRequest(snapshotter=snapshotter,
                                       info=spb.Info(name=k("v"), labels={"a": "b"})))
    info = s.Stat(spb.StatSnapshotRequest(snapshotter=snapshotter, key=k("v"))).info
    assert (info.parent, dict(info.labels)) == (k("c"), {"a": "b"})
    listed = list(s.List(spb.ListSnapshotsRequest(snapshotter=snapshotter, filters=[mine(k)])))
    assert sorted(i.name for r in listed for i in r.info) == [k("c"), k("v")]
    s.Remove(spb.RemoveSnapshotRequest(snapshotter=snapshotter, key=k("v")))
    s.Cleanup(spb.CleanupRequest(snapshotter=snapshotter))
    assert code(stat, d, k("v")) == grpc.StatusCode.NOT_FOUND


def test_proxy_role_accepts_and_ignores_namespace_and_lease_headers(new_daemon, k):
    # As containerd's proxy backend (spec §1.3): the lease lives in containerd.
    d = new_daemon(args=("--role", "proxy")).start()
    md = (("containerd-namespace", "default"), ("containerd-lease", "no-such-lease"))
    prepare(d, k("a"), metadata=md)
    commit(d, k("c"), k("a"), metadata=md)
    view(d, k("v"), k("c"), metadata=md)
    # Data is not partitioned by namespace: no header, or another one, sees it all.
    assert stat(d, k("c")).kind == COMMITTED
    other = (("containerd-namespace", "other"),)
    assert stat(d, k("v"), metadata=other).parent == k("c")
    assert sorted(i.name for b in batches(d, mine(k), metadata=other) for i in b) == \
        [k("c"), k("v")]


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


# --------------------------------------------------------------------------- Mounts


def test_mounts_of_an_active_are_the_mounts_prepare_returned(d, k):
    resp = prepare(d, k("a"))
    assert mounts(d, k("a")) == flat(resp.mounts)


def test_mounts_of_a_view_are_the_mounts_view_returned(d, k):
    committed(d, k("p"))
    resp = view(d, k("v"), k("p"))
    assert mounts(d, k("v")) == flat(resp.mounts)


def test_mounts_of_a_missing_key_is_not_found(d, k):
    assert code(mounts, d, k("nope")) == grpc.StatusCode.NOT_FOUND


def test_mounts_of_a_committed_snapshot_is_failed_precondition(d, k):
    committed(d, k("c"))
    assert code(mounts, d, k("c")) == grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------- Commit


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


# --------------------------------------------------------------------------- Remove


def test_remove_of_a_missing_key_is_not_found(d, k):
    assert code(remove, d, k("nope")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("child", [ACTIVE, VIEW, COMMITTED], ids=["active", "view", "committed"])
def test_remove_of_a_snapshot_with_children_is_failed_precondition_and_changes_nothing(
        d, k, child):
    path = committed(d, k("p"), files={"f": b"p"})
    make(d, child, k("child"), k("p"))
    before = world(d)
    assert code(remove, d, k("p")) == grpc.StatusCode.FAILED_PRECONDITION
    assert world(d) == before
    assert (path / "f").read_bytes() == b"p"
    assert (source(view(d, k("v2"), k("p"))) / "f").read_bytes() == b"p"


@KINDS
def test_remove_deletes_a_snapshot_of_each_kind(d, k, kind):
    make(d, kind, k("x"))
    remove(d, k("x"))
    assert code(stat, d, k("x")) == grpc.StatusCode.NOT_FOUND
    assert k("x") not in names(d, mine(k))


@KINDS
def test_removed_snapshot_directory_disappears_from_the_mountpoint(d, k, kind):
    if kind == COMMITTED:
        path = committed(d, k("x"), files={"f": b"x"})
    else:
        make(d, kind, k("x"))
        path = Path(mounts(d, k("x"))[0][1])
        assert path.is_dir()
    assert path.name in os.listdir(d.mountpoint)
    remove(d, k("x"))
    assert path.name not in os.listdir(d.mountpoint)
    assert not path.exists()


def test_remove_of_children_then_parent_succeeds(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    view(d, k("v"), k("p"))
    remove(d, k("a"))
    assert code(remove, d, k("p")) == grpc.StatusCode.FAILED_PRECONDITION
    remove(d, k("v"))
    remove(d, k("p"))
    assert names(d, mine(k)) == []


def test_a_removed_key_can_be_prepared_again_and_starts_empty(d, k):
    path = source(prepare(d, k("a")))
    (path / "old").write_bytes(b"old")
    remove(d, k("a"))
    path2 = source(prepare(d, k("a")))
    assert os.listdir(path2) == []
    assert stat(d, k("a")).kind == ACTIVE


# --------------------------------------------------------------------------- Stat


def test_stat_of_a_missing_key_is_not_found(d, k):
    assert code(stat, d, k("nope")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", [stat, mounts, usage, remove],
                         ids=["stat", "mounts", "usage", "remove"])
def test_an_empty_key_is_invalid_argument(d, rpc):
    assert code(rpc, d, "") == grpc.StatusCode.INVALID_ARGUMENT


def test_stat_of_an_active_returns_its_info(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"), {"l": "1"})
    info = stat(d, k("a"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("a"), k("p"), ACTIVE, {"l": "1"})


def test_stat_of_a_view_returns_its_info(d, k):
    committed(d, k("p"))
    view(d, k("v"), k("p"), {"l": "2"})
    info = stat(d, k("v"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("v"), k("p"), VIEW, {"l": "2"})


def test_stat_of_a_committed_returns_its_info(d, k):
    committed(d, k("p"))
    committed(d, k("c"), k("p"), labels={"l": "3"})
    info = stat(d, k("c"))
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("c"), k("p"), COMMITTED, {"l": "3"})


@KINDS
def test_stat_timestamps_are_set_and_recent(d, k, kind):
    before = time.time_ns()
    make(d, kind, k("x"))
    after = time.time_ns()
    info = stat(d, k("x"))
    assert info.HasField("created_at") and info.HasField("updated_at")
    for ts in (info.created_at, info.updated_at):
        assert before <= ts.ToNanoseconds() <= after
    assert info.created_at == info.updated_at


@KINDS
def test_stat_response_always_carries_info_with_a_known_kind(d, k, kind):
    make(d, kind, k("x"))
    resp = d.snapshots.Stat(spb.StatSnapshotRequest(key=k("x")))
    assert resp.HasField("info")
    assert resp.info.kind == kind != spb.UNKNOWN


# --------------------------------------------------------------------------- Update


def test_update_of_a_missing_snapshot_is_not_found(d, k):
    assert code(update, d, spb.Info(name=k("nope"), labels={"a": "b"})) == \
        grpc.StatusCode.NOT_FOUND


def test_update_with_an_empty_name_is_invalid_argument(d, k):
    assert code(update, d, spb.Info(labels={"a": "b"}), ["labels"]) == \
        grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("paths", [None, []], ids=["absent-mask", "empty-mask"])
def test_update_without_mask_paths_replaces_all_labels(d, k, paths):
    prepare(d, k("a"), labels={"old": "1", "both": "old"})
    info = update(d, spb.Info(name=k("a"), labels={"both": "new", "added": "2", "gone": ""}),
                  paths)
    assert dict(info.labels) == {"both": "new", "added": "2"}
    assert dict(stat(d, k("a")).labels) == {"both": "new", "added": "2"}


def test_update_labels_path_replaces_all_labels(d, k):
    prepare(d, k("a"), labels={"old": "1"})
    info = update(d, spb.Info(name=k("a"), labels={"new": "2"}), ["labels"])
    assert dict(info.labels) == {"new": "2"}


def test_update_labels_path_with_no_labels_clears_them(d, k):
    prepare(d, k("a"), labels={"old": "1"})
    assert dict(update(d, spb.Info(name=k("a")), ["labels"]).labels) == {}


@pytest.mark.parametrize("key", ["simple", "containerd.io/gc.ref.content.l.0",
                                 "a.b.c/d/e.f", "labels.nested"])
def test_update_label_path_sets_one_label_whatever_dots_and_slashes_its_key_has(d, k, key):
    prepare(d, k("a"), labels={"other": "stays"})
    info = update(d, spb.Info(name=k("a"), labels={key: "v", "not-in-mask": "x"}),
                  [f"labels.{key}"])
    assert dict(info.labels) == {"other": "stays", key: "v"}
    assert dict(stat(d, k("a")).labels) == {"other": "stays", key: "v"}


@pytest.mark.parametrize("value", [None, ""], ids=["absent-from-request", "empty-value"])
def test_update_label_path_deletes_the_label_when_the_request_has_no_value(d, k, value):
    key = "containerd.io/gc.root"
    prepare(d, k("a"), labels={key: "2024-01-01T00:00:00Z", "other": "stays"})
    lbls = {} if value is None else {key: value}
    info = update(d, spb.Info(name=k("a"), labels=lbls), [f"labels.{key}"])
    assert dict(info.labels) == {"other": "stays"}


def test_update_label_path_deleting_an_absent_label_does_nothing(d, k):
    prepare(d, k("a"), labels={"other": "stays"})
    info = update(d, spb.Info(name=k("a")), ["labels.containerd.io/gc.expire"])
    assert dict(info.labels) == {"other": "stays"}


def test_update_applies_mask_paths_in_order(d, k):
    prepare(d, k("a"), labels={"old": "1"})
    info = update(d, spb.Info(name=k("a"), labels={"x": "1", "y": "2"}),
                  ["labels.x", "labels", "labels.y"])
    assert dict(info.labels) == {"x": "1", "y": "2"}


@pytest.mark.parametrize("path", ["name", "parent", "kind", "created_at", "updated_at",
                                  "labelsx", "Labels", "labels_x"])
def test_update_of_any_other_path_is_invalid_argument_and_changes_nothing(d, k, path):
    prepare(d, k("a"), labels={"old": "1"})
    before = world(d)
    err = code(update, d, spb.Info(name=k("a"), parent="x", labels={"new": "2"}),
               ["labels.new", path])
    assert err == grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


@KINDS
def test_update_ignores_immutable_fields_sent(d, k, kind):
    committed(d, k("p"))
    make(d, kind, k("x"), k("p"))
    old = stat(d, k("x"))
    sent = spb.Info(name=k("x"), parent=k("x"), kind=spb.UNKNOWN if kind != VIEW else ACTIVE,
                    created_at=Timestamp(seconds=1), updated_at=Timestamp(seconds=2),
                    labels={"a": "b"})
    info = update(d, sent, ["labels.a"])
    assert (info.name, info.parent, info.kind, info.created_at) == \
        (old.name, old.parent, old.kind, old.created_at)
    assert info_tuple(stat(d, k("x"))) == info_tuple(info)


def test_update_accepts_zero_go_timestamps(d, k):
    prepare(d, k("a"))
    sent = spb.Info(name=k("a"), kind=ACTIVE, created_at=GO_ZERO_TIME, updated_at=GO_ZERO_TIME,
                    labels={"a": "b"})
    info = update(d, sent, ["labels.a"])
    assert dict(info.labels) == {"a": "b"}
    assert info.created_at.ToNanoseconds() > 0 and info.updated_at.ToNanoseconds() > 0


def test_update_moves_updated_at_forward_and_keeps_created_at(d, k):
    prepare(d, k("a"))
    old = stat(d, k("a"))
    time.sleep(0.01)
    before = time.time_ns()
    info = update(d, spb.Info(name=k("a"), labels={"a": "b"}))
    after = time.time_ns()
    assert info.created_at == old.created_at
    assert info.updated_at.ToNanoseconds() > old.updated_at.ToNanoseconds()
    assert before <= info.updated_at.ToNanoseconds() <= after


@pytest.mark.parametrize("paths", [None, ["labels"], ["labels.big"]],
                         ids=["no-mask", "labels", "labels.big"])
def test_update_with_a_label_over_4096_bytes_is_invalid_argument_and_changes_nothing(
        d, k, paths):
    prepare(d, k("a"), labels={"old": "1"})
    before = world(d)
    assert code(update, d, spb.Info(name=k("a"), labels={"big": "x" * 4094}), paths) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert world(d) == before


def test_update_validates_label_size_after_the_merge(d, k):
    # A large label that the mask does not select is neither stored nor refused.
    prepare(d, k("a"))
    info = update(d, spb.Info(name=k("a"), labels={"small": "1", "big": "x" * 5000}),
                  ["labels.small"])
    assert dict(info.labels) == {"small": "1"}


def test_update_accepts_a_label_of_exactly_4096_bytes(d, k):
    prepare(d, k("a"))
    info = update(d, spb.Info(name=k("a"), labels={"big": "x" * 4093}), ["labels.big"])
    assert info.labels["big"] == "x" * 4093


@KINDS
def test_update_returns_the_full_info_for_each_kind(d, k, kind):
    committed(d, k("p"))
    make(d, kind, k("x"), k("p"))
    info = update(d, spb.Info(name=k("x"), labels={"a": "b"}), ["labels.a"])
    assert (info.name, info.parent, info.kind, dict(info.labels)) == \
        (k("x"), k("p"), kind, {"a": "b"})
    assert info.HasField("created_at") and info.HasField("updated_at")
    assert info_tuple(stat(d, k("x"))) == info_tuple(info)


# --------------------------------------------------------------------------- List


def test_list_without_filters_returns_every_snapshot(new_daemon):
    d = new_daemon().start()
    committed(d, "p")
    prepare(d, "a", "p")
    view(d, "v", "p")
    assert names(d) == ["a", "p", "v"]
    assert names(d, "") == ["a", "p", "v"]


def test_list_of_nothing_is_an_empty_stream(new_daemon):
    d = new_daemon().start()
    assert sum(len(b) for b in batches(d)) == 0


def test_list_of_more_than_100_snapshots_arrives_in_batches_of_at_most_100(new_daemon):
    d = new_daemon().start()
    keys = {f"snap-{i:03d}" for i in range(250)}
    for key in keys:
        prepare(d, key, labels={"i": key})
    got = batches(d)
    assert len(got) >= 3
    assert all(0 < len(b) <= 100 for b in got)
    counts = Counter(i.name for b in got for i in b)
    assert set(counts) == keys
    assert set(counts.values()) == {1}
    assert all(i.labels["i"] == i.name and i.kind == ACTIVE for b in got for i in b)


def test_list_returns_full_infos(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"), {"l": "1"})
    [info] = [i for b in batches(d, "name==" + goquote(k("a"))) for i in b]
    assert info_tuple(info) == info_tuple(stat(d, k("a")))


def test_list_filters_by_name(d, k):
    prepare(d, k("a"))
    prepare(d, k("b"))
    assert names(d, "name==" + goquote(k("a"))) == [k("a")]


def test_list_filters_by_name_regex(d, k):
    prepare(d, k("app-1"))
    prepare(d, k("app-2"))
    prepare(d, k("other"))
    assert names(d, mine(k) + ",name~=/app-[0-9]$/") == [k("app-1"), k("app-2")]


def test_list_filters_by_parent(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    view(d, k("v"), k("p"))
    prepare(d, k("orphan"))
    assert names(d, "parent==" + goquote(k("p"))) == [k("a"), k("v")]


def test_list_filters_by_empty_parent(d, k):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    prepare(d, k("orphan"))
    assert names(d, mine(k) + ',parent==""') == [k("orphan"), k("p")]


@pytest.mark.parametrize("kind_name, kind", [("active", ACTIVE), ("view", VIEW),
                                             ("committed", COMMITTED)])
def test_list_filters_by_kind(d, k, kind_name, kind):
    committed(d, k("p"))
    prepare(d, k("a"), k("p"))
    view(d, k("v"), k("p"))
    expected = {ACTIVE: [k("a")], VIEW: [k("v")], COMMITTED: [k("p")]}[kind]
    assert names(d, f"{mine(k)},kind=={kind_name}") == expected


def test_list_filters_by_snapshot_ref_label(d, k):
    committed(d, k("c1"), labels={REF: "sha256:1111"})
    committed(d, k("c2"), labels={REF: "sha256:2222"})
    prepare(d, k("a"), labels={REF: "sha256:1111"})
    assert names(d, f'labels."{REF}"==sha256:1111') == [k("a"), k("c1")]


def test_list_filters_by_label_presence(d, k):
    prepare(d, k("with"), labels={"containerd.io/snapshot/x": "1"})
    prepare(d, k("without"), labels={"other": "1"})
    prepare(d, k("none"))
    assert names(d, mine(k) + ',labels."containerd.io/snapshot/x"') == [k("with")]


def test_list_not_equal_label_matches_snapshots_without_the_label(d, k):
    prepare(d, k("x"), labels={"a": "x"})
    prepare(d, k("y"), labels={"a": "y"})
    prepare(d, k("none"))
    assert names(d, mine(k) + ",labels.a!=x") == [k("none"), k("y")]


def test_list_remote_snapshot_filter_finds_the_committed_snapshot(d, k):
    # The daemon's lookup after Prepare answered AlreadyExists (spec §2.5).
    target = "sha256:" + "ab" * 32
    committed(d, k("bparent"))
    committed(d, k("match"), k("bparent"), labels={REF: target})
    committed(d, k("other-parent"), labels={REF: target})
    prepare(d, k("active-same"), k("bparent"), {REF: target})
    flt = f'labels."{REF}"=={target},parent=={goquote(k("bparent"))}'
    found = [i for b in batches(d, flt) for i in b]
    assert [(i.name, i.kind) for i in found if i.kind == COMMITTED] == [(k("match"), COMMITTED)]
    assert all(i.labels[REF] == target and i.parent == k("bparent") for i in found)


def test_list_remote_snapshot_filter_with_no_parent(d, k):
    target = "sha256:" + "cd" * 32
    committed(d, k("p"))
    committed(d, k("base"), labels={REF: target})
    committed(d, k("child"), k("p"), labels={REF: target})
    assert names(d, f'labels."{REF}"=={target},parent==""') == [k("base")]


def test_list_filters_are_ored(d, k):
    prepare(d, k("a"))
    prepare(d, k("b"))
    prepare(d, k("c"))
    got = names(d, "name==" + goquote(k("a")), "name==" + goquote(k("c")))
    assert got == [k("a"), k("c")]


def test_list_with_an_empty_filter_among_others_matches_everything(d, k):
    prepare(d, k("a"))
    assert names(d, "name==nothing-has-this-name", "") == names(d)


def test_list_selectors_in_one_filter_are_anded(d, k):
    prepare(d, k("a"), labels={"x": "1"})
    prepare(d, k("b"), labels={"x": "1"})
    assert names(d, "labels.x==1,name==" + goquote(k("b"))) == [k("b")]


def test_list_label_fieldpath_components_join_with_dots(d, k):
    prepare(d, k("a"), labels={"foo.bar": "1"})
    prepare(d, k("b"), labels={"foo": "1"})
    assert names(d, mine(k) + ",labels.foo.bar==1") == [k("a")]


def test_list_unquoted_values_may_hold_colons_slashes_and_equals(d, k):
    prepare(d, k("a"), labels={"ref": "docker.io/library/x:1=2"})
    prepare(d, k("b"), labels={"ref": "docker.io/library/x:1"})
    assert names(d, mine(k) + ", labels.ref == docker.io/library/x:1=2") == [k("a")]


def test_list_regex_with_alternative_quotes(d, k):
    prepare(d, k("layer-1"))
    prepare(d, k("other"))
    assert names(d, mine(k) + ",name~=|layer-[0-9]$|") == [k("layer-1")]
    assert names(d, mine(k) + ",name~=/layer-[0-9]$/") == [k("layer-1")]


@pytest.mark.parametrize("flt", ["name==", "name==foo ", "name==foo , kind==view", "name===x",
                                 "name=~x", 'labels."unterminated', "name==/x/", "name~=(",
                                 ",", "name==a,"])
def test_list_with_an_invalid_filter_is_invalid_argument(d, flt):
    assert code(names, d, flt) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(names, d, "name==fine", flt) == grpc.StatusCode.INVALID_ARGUMENT


def test_list_stream_does_not_hold_up_other_rpcs(d, k):
    for i in range(150):
        prepare(d, k(f"s{i:03d}"))
    stream = d.snapshots.List(spb.ListSnapshotsRequest(filters=[mine(k)]))
    first = next(stream)
    # The client has not read the rest yet; the daemon serves other calls.
    prepare(d, k("during"))
    commit(d, k("during-c"), k("during"))
    remove(d, k("s149"))
    rest = [i.name for r in stream for i in r.info]
    seen = [i.name for i in first.info] + rest
    assert len(seen) == len(set(seen))
    assert {k(f"s{i:03d}") for i in range(149)} <= set(seen)


# --------------------------------------------------------------------------- Usage


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


# --------------------------------------------------------------------------- Cleanup


def test_cleanup_returns_empty(d, k):
    prepare(d, k("a"))
    before = world(d)
    assert d.snapshots.Cleanup(spb.CleanupRequest()).ByteSize() == 0
    assert world(d) == before


def test_cleanup_keeps_every_snapshot_data(d, k):
    path = committed(d, k("p"), files={"f": b"kept"})
    active = source(prepare(d, k("a"), k("p")))
    (active / "g").write_bytes(b"also kept")
    d.snapshots.Cleanup(spb.CleanupRequest())
    assert (path / "f").read_bytes() == b"kept"
    assert (active / "g").read_bytes() == b"also kept"


# --------------------------------------------------------------------------- message size


def test_prepare_with_5_mib_of_labels_is_accepted(new_daemon):
    d = new_daemon().start()
    lbls = {f"containerd.io/snapshot/label-{i:04d}": f"{i:04d}" * 1000 for i in range(1300)}
    req = spb.PrepareSnapshotRequest(key="big", labels=lbls)
    assert req.ByteSize() > 5 << 20
    resp = d.snapshots.Prepare(req)
    expect_mount(resp.mounts, d, "rw")
    with grpc.insecure_channel(f"unix:{d.socket}", options=[
            ("grpc.max_receive_message_length", 32 << 20)]) as channel:
        stub = type(d.snapshots)(channel)
        info = stub.Stat(spb.StatSnapshotRequest(key="big")).info
    assert dict(info.labels) == lbls


def test_list_messages_stay_within_the_default_4_mib_client_limit(new_daemon):
    # Go clients that dial with grpc defaults cannot receive more (spec §1.1).
    d = new_daemon().start()
    lbls = {f"containerd.io/snapshot/l{i:03d}": "v" * 4000 for i in range(130)}  # ~520 KiB
    for i in range(12):
        prepare(d, f"s{i:02d}", labels=lbls)
    got = batches(d)  # a default channel: 4 MiB receive limit
    assert sorted(i.name for b in got for i in b) == [f"s{i:02d}" for i in range(12)]


# --------------------------------------------------------------------------- wire details


def _with_unknown_fields(msg: Any) -> bytes:
    # field 99 varint 1, field 100 bytes "abc": numbers no containerd version uses
    return msg.SerializeToString() + b"\x98\x06\x01" + b"\xa2\x06\x03abc"


def test_unknown_request_fields_are_ignored(d, k):
    def raw(method: str, msg: Any, reply: Any) -> Any:
        call = d.channel.unary_unary(f"/containerd.services.snapshots.v1.Snapshots/{method}",
                                     request_serializer=None,
                                     response_deserializer=reply.FromString)
        return call(_with_unknown_fields(msg))

    resp = raw("Prepare", spb.PrepareSnapshotRequest(key=k("a"), labels={"l": "1"}),
               spb.PrepareSnapshotResponse)
    expect_mount(resp.mounts, d, "rw")
    raw("Commit", spb.CommitSnapshotRequest(name=k("c"), key=k("a")), Empty)
    info = raw("Stat", spb.StatSnapshotRequest(key=k("c")), spb.StatSnapshotResponse).info
    assert (info.name, info.kind) == (k("c"), COMMITTED)


@pytest.mark.parametrize("call, status, cls", [
    (lambda d, k: stat(d, k("nope")), grpc.StatusCode.NOT_FOUND, "not found"),
    (lambda d, k: [committed(d, k("c")), committed(d, k("c"))],
     grpc.StatusCode.ALREADY_EXISTS, "already exists"),
    (lambda d, k: [committed(d, k("c")), mounts(d, k("c"))],
     grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"),
    (lambda d, k: prepare(d, ""), grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
], ids=["not-found", "already-exists", "failed-precondition", "invalid-argument"])
def test_error_details_end_with_the_containerd_class_string(d, k, call, status, cls):
    with pytest.raises(grpc.RpcError) as err:
        call(d, k)
    assert err.value.code() == status
    assert err.value.details().endswith(f": {cls}")
