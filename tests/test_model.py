"""Model-based test: an active snapshot behaves like a plain local directory.

A hypothesis state machine applies random filesystem operations to an active
snapshot and, identically, to a temporary directory on the host filesystem,
with "commit, then prepare a child" steps in between (the model directory
stays as it is; the snapshot directory moves to the child). After every step
the two trees must be identical: names, types, modes, owners, sizes (not of
directories), contents, link counts (directories too), which names share an
inode, symlink targets and xattrs. Each operation must have the same outcome
on both sides (the very same errno when both fail). Committed snapshots are
checked, at the end of each run, to be exactly what they were when committed.

The default run is bounded; HYPOTHESIS_PROFILE=model-long (or any registered
profile) runs longer.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import PROXY, Daemon, fuse_usable
from tests.posix.helpers import RENAME_EXCHANGE, RENAME_NOREPLACE, kind_of, renameat2, tree_state

# chown to other users, like the model directory allows, needs root.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the model test runs as root")

NAMES = ["a", "b", "c"]
ALL_PATHS = ["."] + [
    "/".join(p) for depth in (1, 2, 3) for p in itertools.product(NAMES, repeat=depth)
]
# Relative targets only: the two trees live in different places.
LINK_TARGETS = NAMES + ["a/b", "b/c", "c/a/b", "missing"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o000, 0o4755, 0o2755, 0o6711, 0o1777, 0o2775, 0o3777]
IDS = [0, 1000, 4242]
XATTR_NAMES = ["user.x", "user.y"]

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
BOUNDED = settings(max_examples=25, stateful_step_count=30, deadline=None,
                   suppress_health_check=_HEALTH)
settings.register_profile("model-long", max_examples=400, stateful_step_count=80,
                          deadline=None, suppress_health_check=_HEALTH)


def model_settings() -> settings:
    name = os.environ.get("HYPOTHESIS_PROFILE")
    if not name:
        return BOUNDED
    return settings(settings.get_profile(name), deadline=None, suppress_health_check=_HEALTH)


Outcome = tuple[str, object]


def outcome(fn: Callable[[], object]) -> Outcome:
    try:
        return ("ok", fn())
    except OSError as e:
        return ("error", errno.errorcode.get(e.errno or 0, e.errno))


def _write(path: str, flags: int, data: bytes, offset: int | None = None) -> int:
    # O_NONBLOCK: a fifo without a reader fails (ENXIO) instead of hanging.
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    try:
        return os.pwrite(fd, data, offset) if offset is not None else os.write(fd, data)
    finally:
        os.close(fd)


class SnapshotModel(RuleBasedStateMachine):
    def __init__(self, daemon: Daemon, scratch: Path) -> None:
        super().__init__()
        self.daemon = daemon
        self.run = next(_runs)
        self.ref = scratch / f"model{self.run}"
        self.ref.mkdir()
        self.generation = 0
        self.key = self._key()
        self.snap = daemon.prepare(self.key)
        self.committed: list[tuple[Path, dict[str, tuple]]] = []

    def _key(self) -> str:
        return f"model{self.run}-{self.generation}"

    # ------------------------------------------------------------------ helpers

    def both(self, op: Callable[[Path], object]) -> None:
        """Apply `op` to the model and to the snapshot; the outcomes must agree."""
        want = outcome(lambda: op(self.ref))
        got = outcome(lambda: op(self.snap))
        if got != want:
            raise AssertionError(
                f"snapshot {self.snap} gave {got}, local directory gave {want};"
                f" snapshot root: {outcome(lambda: os.lstat(self.snap))};"
                f" daemon log ends: {self.daemon.logs()[-2000:]}")

    def _existing(self) -> list[tuple[str, str]]:
        """(path, type letter) of everything in the model, sorted."""
        out = []
        stack = [""]
        while stack:
            rel = stack.pop()
            for e in os.scandir(self.ref / rel if rel else self.ref):
                r = f"{rel}/{e.name}" if rel else e.name
                k = kind_of(e.stat(follow_symlinks=False).st_mode)
                out.append((r, k))
                if k == "d":
                    stack.append(r)
        return sorted(out)

    def path(self, data: st.DataObject, kinds: str = "") -> str:
        """Mostly an existing path (of one of `kinds` if given), sometimes
        any existing path, sometimes any path of the name pool."""
        existing = self._existing()
        preferred = [p for p, k in existing if not kinds or k in kinds]
        pick = data.draw(st.integers(0, 9), label="pick")
        if preferred and pick >= 3:
            return data.draw(st.sampled_from(preferred), label="path")
        if existing and pick >= 1:
            return data.draw(st.sampled_from([p for p, _ in existing]), label="path")
        return data.draw(st.sampled_from(ALL_PATHS), label="path")

    def new_path(self, data: st.DataObject) -> str:
        """Mostly a free name in an existing directory; sometimes a taken one."""
        dirs = [""] + [p for p, k in self._existing() if k == "d"]
        parent = data.draw(st.sampled_from(dirs), label="dir")
        where = self.ref / parent if parent else self.ref
        free = [n for n in NAMES if not os.path.lexists(where / n)]
        if free and data.draw(st.integers(0, 4), label="free") > 0:
            name = data.draw(st.sampled_from(free), label="name")
        else:
            name = data.draw(st.sampled_from(NAMES), label="name")
        return f"{parent}/{name}" if parent else name

    # ------------------------------------------------------------------ files

    @initialize(commit=st.sampled_from([True, True, False]))
    def seed(self, commit: bool) -> None:
        """A few objects to work on, mostly in a committed parent layer."""
        self.both(lambda r: os.mkdir(f"{r}/a"))
        self.both(lambda r: os.mkdir(f"{r}/a/c"))
        self.both(lambda r: _write(f"{r}/a/b", os.O_CREAT | os.O_WRONLY, b"seed a/b"))
        self.both(lambda r: _write(f"{r}/b", os.O_CREAT | os.O_WRONLY, b"seed b" * 100))
        self.both(lambda r: os.link(f"{r}/b", f"{r}/a/c/a"))
        self.both(lambda r: os.setxattr(f"{r}/a/b", "user.x", b"seed"))
        self.both(lambda r: os.symlink("a/b", f"{r}/c"))
        if commit:
            self.commit_then_prepare_child()


    @rule(data=st.data(), body=st.binary(max_size=64), mode=st.sampled_from([0o644, 0o755]))
    def create_file(self, data: st.DataObject, body: bytes, mode: int) -> None:
        p = self.new_path(data)
        self.both(lambda r: _write(f"{r}/{p}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, body))
        self.both(lambda r: os.chmod(f"{r}/{p}", mode))

    @rule(data=st.data(), body=st.binary(min_size=1, max_size=64),
          offset=st.one_of(st.integers(0, 100), st.integers(4000, 70000)))
    def write_at(self, data: st.DataObject, body: bytes, offset: int) -> None:
        p = self.path(data, "f")
        self.both(lambda r: _write(f"{r}/{p}", os.O_WRONLY, body, offset))

    @rule(data=st.data(), body=st.binary(min_size=1, max_size=64))
    def append(self, data: st.DataObject, body: bytes) -> None:
        p = self.path(data, "f")
        self.both(lambda r: _write(f"{r}/{p}", os.O_WRONLY | os.O_APPEND, body))

    @rule(data=st.data(), body=st.binary(max_size=16))
    def overwrite_with_o_trunc(self, data: st.DataObject, body: bytes) -> None:
        p = self.path(data, "f")
        self.both(lambda r: _write(f"{r}/{p}", os.O_WRONLY | os.O_TRUNC, body))

    @rule(data=st.data(), size=st.one_of(st.integers(0, 100), st.integers(100, 20000)))
    def truncate(self, data: st.DataObject, size: int) -> None:
        p = self.path(data, "f")
        self.both(lambda r: os.truncate(f"{r}/{p}", size))

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        p = self.path(data, "flp")
        self.both(lambda r: os.unlink(f"{r}/{p}"))

    # ------------------------------------------------------------------ directories and names

    @rule(data=st.data(), mode=st.sampled_from([0o755, 0o700, 0o2775, 0o1777]))
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        p = self.new_path(data)
        self.both(lambda r: os.mkdir(f"{r}/{p}", mode))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        p = self.path(data, "d")
        self.both(lambda r: os.rmdir(f"{r}/{p}"))

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        src = self.path(data)
        dst = self.path(data) if data.draw(st.booleans(), label="over") else self.new_path(data)
        self.both(lambda r: os.rename(f"{r}/{src}", f"{r}/{dst}"))

    @rule(data=st.data(), flags=st.sampled_from([RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename_with_flags(self, data: st.DataObject, flags: int) -> None:
        src, dst = self.path(data), self.path(data)
        self.both(lambda r: renameat2(f"{r}/{src}", f"{r}/{dst}", flags))

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        src, dst = self.path(data), self.new_path(data)
        self.both(lambda r: os.link(f"{r}/{src}", f"{r}/{dst}", follow_symlinks=False))

    @rule(data=st.data(), link_target=st.sampled_from(LINK_TARGETS))
    def symlink(self, data: st.DataObject, link_target: str) -> None:
        p = self.new_path(data)
        self.both(lambda r: os.symlink(link_target, f"{r}/{p}"))

    @rule(data=st.data())
    def mkfifo(self, data: st.DataObject) -> None:
        p = self.new_path(data)
        self.both(lambda r: os.mkfifo(f"{r}/{p}", 0o640))

    # ------------------------------------------------------------------ attributes

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        p = self.path(data)
        self.both(lambda r: os.chmod(f"{r}/{p}", mode))

    @rule(data=st.data(), uid=st.sampled_from(IDS), gid=st.sampled_from(IDS))
    def chown(self, data: st.DataObject, uid: int, gid: int) -> None:
        p = self.path(data)
        self.both(lambda r: os.chown(f"{r}/{p}", uid, gid, follow_symlinks=False))

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES), value=st.binary(max_size=32))
    def setxattr(self, data: st.DataObject, name: str, value: bytes) -> None:
        p = self.path(data, "fd")
        self.both(lambda r: os.setxattr(f"{r}/{p}", name, value, follow_symlinks=False))

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, data: st.DataObject, name: str) -> None:
        p = self.path(data, "fd")
        self.both(lambda r: os.removexattr(f"{r}/{p}", name, follow_symlinks=False))

    # ------------------------------------------------------------------ snapshots

    @rule()
    def commit_then_prepare_child(self) -> None:
        name = f"{self.key}-committed"
        self.daemon.commit(name, self.key)
        self.committed.append((self.snap, tree_state(self.snap, inodes=True, times=True)))
        self.generation += 1
        self.key = self._key()
        self.snap = self.daemon.prepare(self.key, name)

    # ------------------------------------------------------------------ checks

    @invariant()
    def trees_are_identical(self) -> None:
        want, got = tree_state(self.ref), tree_state(self.snap)
        if got != want:
            diff = {p: (got.get(p), want.get(p)) for p in sorted(set(got) | set(want))
                    if got.get(p) != want.get(p)}
            raise AssertionError(f"snapshot differs from the local directory: {diff}")

    def teardown(self) -> None:
        try:
            for path, state in self.committed:
                assert tree_state(path, inodes=True, times=True) == state, \
                    f"committed snapshot {path} changed"
        finally:
            shutil.rmtree(self.ref, ignore_errors=True)


_runs = itertools.count()


@pytest.fixture(scope="module")
def model_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    d = Daemon(tmp_path_factory.mktemp("model") / "root", args=PROXY)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def test_active_snapshot_behaves_like_a_local_directory(model_daemon: Daemon,
                                                        tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run_state_machine_as_test(lambda: SnapshotModel(model_daemon, tmp_path),
                                  settings=model_settings())
    finally:
        os.umask(old)


def test_model_tree_state_sees_what_it_compares(tmp_path: Path) -> None:
    """The comparison itself notices each property it claims to compare."""
    (tmp_path / "f").write_bytes(b"x")
    os.link(tmp_path / "f", tmp_path / "g")
    os.symlink("f", tmp_path / "l")
    (tmp_path / "d").mkdir()
    base = tree_state(tmp_path)
    assert base["f"][0] == "f" and base["d"][0] == "d" and base["l"][6] == "f"
    assert base["f"][-1] == ("f", "g") and base["f"][5] == 2
    changes: list[Callable[[], object]] = [
        lambda: os.chmod(tmp_path / "f", 0o600),
        lambda: os.setxattr(tmp_path / "f", "user.k", b"v"),
        lambda: (tmp_path / "f").write_bytes(b"y"),
        lambda: os.chown(tmp_path / "f", 1, 1),
        lambda: os.mkdir(tmp_path / "d" / "e"),
        lambda: os.unlink(tmp_path / "g"),
    ]
    for change in changes:
        before = tree_state(tmp_path)
        change()
        assert tree_state(tmp_path) != before
    assert stat.S_ISDIR(os.stat(tmp_path / "d").st_mode)
