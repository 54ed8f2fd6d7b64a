"""The fixtures of the POSIX suite: one daemon for the package, and on it a
fresh chain (world.py: bottom, middle, active, view) for every test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.conftest import PROXY, Daemon, module_daemon
from tests.posix.helpers import tree_state
from tests.posix.world import Chain, build_chain, remove_all_snapshots


@pytest.fixture(scope="package")
def fs_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the package: each test builds its own chain of snapshots on it."""
    yield from module_daemon(tmp_path_factory, "posix", args=PROXY)


_counter = itertools.count()


@pytest.fixture
def chain(fs_daemon: Daemon) -> Iterator[Chain]:
    """The chain world.py describes. On teardown, checks that the committed layers
    and the view did not change, whatever the test did (through a fresh view too,
    which shares no cache with the mount's old inodes), then removes every snapshot."""
    n = next(_counter)
    d = fs_daemon
    c = build_chain(d, n)
    bottom, middle, view = c.bottom, c.middle, c.view

    before = {p: tree_state(p, inodes=True, times=True) for p in (bottom, middle, view)}
    try:
        yield c
        # Committed layers and views never change, whatever the active one did.
        for p, state in before.items():
            assert tree_state(p, inodes=True, times=True) == state, f"{p} changed"
        # A fresh view shares no kernel or daemon cache with the old inodes: it
        # shows what the layers hold. Same everything but the inode numbers.
        fresh = tree_state(d.view(f"v{n}-check", f"m{n}"), times=True)
        assert fresh == {k: v[:8] + v[9:] for k, v in before[middle].items()}
    finally:
        remove_all_snapshots(d)
