"""What the Snapshots API tests build and compare: the kinds and labels they use,
filters that select one test's keys (mine, goquote), snapshot makers
(committed, make), "nothing changed" snapshots of the daemon (world,
info_tuple) and the one bind mount fusesnap returns (expect_mount)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.pb import snapshots_pb2 as spb
from tests.conftest import Daemon
from tests.snapshots_api.rpc import batches, commit, flat, prepare, source, view

GO_ZERO_TIME = Timestamp(seconds=-62135596800, nanos=0)
REF = "containerd.io/snapshot.ref"
ACTIVE, VIEW, COMMITTED = spb.ACTIVE, spb.VIEW, spb.COMMITTED


def mine(k: Callable[[str], str]) -> str:
    """A filter selector matching only the calling test's keys."""
    return "name~=" + goquote("^" + re.escape(k("")))


def goquote(s: str) -> str:
    """A double-quoted filter literal (JSON's escapes are a subset of Go's)."""
    return json.dumps(s, ensure_ascii=False)


def info_tuple(i: spb.Info) -> tuple:
    return (i.name, i.parent, i.kind, i.created_at.ToNanoseconds(),
            i.updated_at.ToNanoseconds(), tuple(sorted(i.labels.items())))


def world(d: Daemon) -> list[tuple]:
    """Everything the daemon knows, for "nothing changed" checks."""
    return sorted(info_tuple(i) for b in batches(d) for i in b)


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
