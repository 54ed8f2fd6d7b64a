"""The fixtures of the Snapshots API tests: one shared daemon for the package
(`d`) and keys private to each test (`k`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import PROXY, Daemon, module_daemon


@pytest.fixture(scope="package")
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
