"""One call per RPC of the Snapshots service, as the tests make it: `code` gives
the status of a call that must fail; the others return what the test looks at
(names and batches are List, flat and source read mounts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from fusesnap.pb import snapshots_pb2 as spb
from tests.conftest import Daemon


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


def flat(ms: Any) -> list[tuple[str, str, str, list[str]]]:
    return [(m.type, m.source, m.target, list(m.options)) for m in ms]


def source(resp: Any) -> Path:
    return Path(resp.mounts[0].source)
