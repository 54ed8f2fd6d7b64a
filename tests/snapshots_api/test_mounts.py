"""Mounts: the mounts Prepare and View returned; errors for missing and committed keys."""

from __future__ import annotations

import grpc

from tests.snapshots_api.helpers import committed
from tests.snapshots_api.rpc import code, flat, mounts, prepare, view


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
