"""List: batches of at most 100, filters by name, parent, kind and labels, filter
syntax, and a stream that does not hold up other RPCs."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import (
    ACTIVE,
    COMMITTED,
    REF,
    VIEW,
    committed,
    goquote,
    info_tuple,
    mine,
)
from tests.snapshots_api.rpc import batches, code, commit, names, prepare, remove, stat, view


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
