"""Fixtures: a real fusesnap daemon (subprocess, real FUSE mount, real gRPC
channel on a unix socket) on a temporary root, torn down even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb import snapshots_pb2_grpc

# The rootless suites' fixtures (user, workdir, rootless_daemon).
pytest_plugins = ["tests.rootless_env"]

START_TIMEOUT = 30.0

PROXY = ("--role", "proxy")
"""`fusesnap serve` arguments for the role containerd uses: fusesnap never
collects garbage. Suites about snapshot, content and filesystem behaviour
whose objects are on no lease run this way; in the direct role (the default)
the collection that follows any deletion would remove those objects, as
containerd's would (tests/test_gc.py covers that role)."""


def fuse_usable() -> str | None:
    """None if this process can mount FUSE, else what is missing."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable (make setup makes it 0666 as root)"
    return None


class Daemon:
    """One `fusesnap serve` process and a channel to it."""

    def __init__(self, root: Path, socket: Path | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.args = args
        self.socket = socket or root.parent / f"{root.name}.sock"
        self.mountpoint = root / "mnt"
        self.log = root.parent / f"{root.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.snapshots: snapshots_pb2_grpc.SnapshotsStub

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fusesnap", "serve", "--root", str(self.root),
                "--socket", str(self.socket), *self.args]

    def start(self, command: list[str] | None = None, **popen: object) -> Daemon:
        # A restart appends to the log: only what this process writes counts.
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command or self.command(), stdout=log, stderr=log,
                                         **popen)  # type: ignore[call-overload]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fusesnap exited with {self.proc.returncode}:\n{self.logs()}")
            # Lines may follow "serving" at once (lazy layers completing).
            if any(line.endswith(b" serving") for line in
                   self.log.read_bytes()[start:].splitlines()) and \
                    os.path.ismount(self.mountpoint):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fusesnap did not start:\n{self.logs()}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the daemon with `sig`; returns its exit status."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if os.path.ismount(self.mountpoint) or _stale(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                           capture_output=True)

    # Conveniences for tests: a snapshot's directory by the mount it returns.
    def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> Path:
        resp = self.snapshots.Prepare(
            spb.PrepareSnapshotRequest(snapshotter="fusesnap", key=key, parent=parent,
                                       labels=labels or {}))
        return Path(resp.mounts[0].source)

    def view(self, key: str, parent: str) -> Path:
        resp = self.snapshots.View(spb.ViewSnapshotRequest(key=key, parent=parent))
        return Path(resp.mounts[0].source)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        self.snapshots.Commit(spb.CommitSnapshotRequest(name=name, key=key, labels=labels or {}))


def _stale(path: Path) -> bool:
    try:
        os.statvfs(path)  # a stat may be answered from the kernel's cache
    except OSError as e:
        return e.errno == 107  # ENOTCONN
    return False


def module_daemon(factory: pytest.TempPathFactory, name: str,
                  args: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """Body of a module-scoped fixture: one running daemon shared by a module's
    tests (`yield from module_daemon(tmp_path_factory, "name", args)`)."""
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    d = Daemon(factory.mktemp(name) / "root", args=args)
    try:
        yield d.start()
    finally:
        d.cleanup()


@pytest.fixture
def new_daemon(tmp_path: Path) -> Iterator[type[Daemon]]:
    """A factory of daemons (started by the test), all cleaned up afterwards."""
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    made: list[Daemon] = []

    class Tracked(Daemon):
        def __init__(self, root: Path | None = None, socket: Path | None = None,
                     args: tuple[str, ...] = ()) -> None:
            super().__init__(root or tmp_path / f"root{len(made)}", socket, args)
            made.append(self)

    yield Tracked
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(new_daemon: type[Daemon]) -> Daemon:
    """A running daemon on a fresh root."""
    return new_daemon().start()
