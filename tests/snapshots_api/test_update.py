"""Update: field mask paths for labels, immutable fields, timestamps, label sizes."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.pb import snapshots_pb2 as spb
from tests.snapshots_api.helpers import (
    ACTIVE,
    GO_ZERO_TIME,
    KINDS,
    VIEW,
    committed,
    info_tuple,
    make,
    world,
)
from tests.snapshots_api.rpc import code, prepare, stat, update


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
