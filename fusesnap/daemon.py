"""Wiring only: open the store, mount the filesystem, serve gRPC, handle signals."""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import shutil
import signal
import socket as socketlib
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from fusesnap.api.server import make_server
from fusesnap.bridge import TrioBridge
from fusesnap.config import Config, Role, StartupError
from fusesnap.content.store import ContentStore
from fusesnap.errors import ResourceExhausted
from fusesnap.gc import Collector
from fusesnap.layerfs import mount as fuse
from fusesnap.layerfs.ops import LayerFS
from fusesnap.layerfs.stats import FuseStats
from fusesnap.malloc import reuse_megabyte_buffers
from fusesnap.permissions import (
    DIR_MODE,
    FILE_MODE,
    NotPrivate,
    private_dir,
    restrict_process,
    restrict_socket,
    socket_group,
    tighten,
)
from fusesnap.snapshots.layers import LayerTree
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import GROUP_WINDOW, Database
from fusesnap.store.space import Space

log = logging.getLogger("fusesnap")

SPACE_POLL = 1.0
"""Seconds between two looks at the store's free space."""


def _lock_root(root: Path) -> int:
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"another fusesnap is serving {root}") from None
    return fd


def _unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return
    raise StartupError(f"cannot unmount stale mount at {path}; run: fusermount3 -u -z {path}")


def prepare_mountpoint(path: Path) -> None:
    """Create the mountpoint; clear a mount left by a killed daemon."""
    try:
        # statfs, not stat: the kernel may answer a stat from its cache even
        # when the daemon is gone, while a statfs always reaches the daemon.
        os.statvfs(path)
    except FileNotFoundError:
        path.mkdir(parents=True)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
        log.warning("clearing stale mount at %s (transport endpoint is not connected)", path)
        _unmount(path)
        return
    if os.path.ismount(path):
        raise StartupError(f"{path} is already a mount point; unmount it first")


def prepare_socket(path: Path, group: int | None) -> None:
    """Make the socket's directory if missing (0700, or 0750 with a group);
    clear a socket left by a killed daemon."""
    if not path.parent.exists():
        private_dir(path.parent, DIR_MODE if group is None else 0o750)
        if group is not None:
            os.chown(path.parent, -1, group)
    if not path.exists() and not path.is_socket():
        return
    probe = socketlib.socket(socketlib.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left by a killed daemon
    else:
        raise StartupError(f"something is already listening on {path}")
    finally:
        probe.close()


def _can_allow_other() -> bool:
    if os.getuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options() -> set[str]:
    options = {"fsname=fusesnap", "subtype=fusesnap", "default_permissions"}
    if _can_allow_other():
        options.add("allow_other")
    else:
        log.warning("other users cannot see the mount: add user_allow_other to /etc/fuse.conf")
    if os.getuid() == 0:
        options |= {"dev", "suid"}  # containers run from it
    return options


async def _run_in(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()


class _GroupCommitter:
    """Commits the database's open group of filesystem changes
    (store/db.py) within GROUP_WINDOW seconds of its first change."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.opened = trio.Event()
        db.on_group_opened = lambda: self.opened.set()

    async def run(self) -> None:
        while True:
            await self.opened.wait()
            self.opened = trio.Event()
            await trio.sleep(GROUP_WINDOW)
            try:
                self.db.commit_group()
            except ResourceExhausted:
                # The disk is full even for the metadata: the group stays
                # open, whole; try again while space is freed.
                self.opened.set()
                await trio.sleep(SPACE_POLL)


async def _watch(space: Space) -> None:
    """Notice a disk filling or space coming back (store/space.py)."""
    while True:
        await trio.sleep(SPACE_POLL)
        try:
            space.poll()
        except OSError as e:
            log.warning("cannot check the free space of %s: %s", space.root, e)


def _private_store(root: Path) -> None:
    """Tighten what a store made by an older fusesnap left open (see
    fusesnap/permissions.py; new files are private by the umask)."""
    tighten([root / name for name in ("lock", "metadata.db", "metadata.db-wal",
                                      "metadata.db-shm")], FILE_MODE)
    tighten([root / "layers", root / "content", root / "content" / "blobs",
             root / "content" / "ingest"], DIR_MODE)


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly."""
    restrict_process()
    try:
        group = socket_group(config.socket_group)
        private_dir(config.root)
    except NotPrivate as e:
        raise StartupError(str(e)) from None
    lock = _lock_root(config.root)
    reuse_megabyte_buffers()
    space = Space(config.root)
    space.poll()  # on a full disk, free the reserve before recovery writes
    db = Database(config.root / "metadata.db", exclusive=True)
    db.on_full = space.exhausted
    try:
        tree = LayerTree(db, config.root / "layers", space)
        snapshotter = Snapshotter(db, tree, config.mountpoint, (os.getuid(), os.getgid()))
        snapshotter.recover()
        content = ContentStore(db, config.root / "content", space)
        content.recover()
        _private_store(config.root)
        prepare_mountpoint(config.mountpoint)
        prepare_socket(config.socket, group)
        options = mount_options()
        collector = Collector(db, snapshotter, content, config.ingest_grace, config.gc_delay)
        log.info("root=%s mountpoint=%s socket=%s role=%s options=%s fuse-busy-poll=%dus",
                 config.root, config.mountpoint, config.socket, config.role.value,
                 ",".join(sorted(options)), config.fuse_busy_poll_us)
        fuse_stats = FuseStats()
        fuse.mount(LayerFS(snapshotter, fuse_stats), config.mountpoint, options,
                   config.fuse_busy_poll_us)
        try:
            bridge = TrioBridge(trio.lowlevel.current_trio_token())
            server = make_server(bridge, config.socket, config.role, snapshotter, content,
                                 collector, fuse_stats.report)
            try:
                restrict_socket(config.socket, group)
            except NotPrivate as e:
                raise StartupError(str(e)) from None
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    # "serving" once the mount answers (and the gRPC server is up).
                    nursery.start_soon(fuse.serve, config.mountpoint,
                                       lambda: log.info("serving"))
                    committer = trio.CancelScope()
                    nursery.start_soon(_run_in, committer, _GroupCommitter(db).run)
                    watch = trio.CancelScope()
                    nursery.start_soon(_run_in, watch, functools.partial(_watch, space))
                    background_gc = trio.CancelScope()
                    if config.role is Role.DIRECT:
                        nursery.start_soon(_run_in, background_gc, collector.run)
                    server.start()
                    async for signum in signals:
                        log.info("%s: stopping", signal.Signals(signum).name)
                        break
                    background_gc.cancel()
                    watch.cancel()
                    # Calls in flight get 5 s, then gRPC cancels them. grpcio
                    # may never report a call ended (one that sent two
                    # statuses, say), so stop waiting after 8 s: such calls
                    # are abandoned, and their worker threads are daemon
                    # threads (api/server.py), so they cannot hold up the exit.
                    if not await trio.to_thread.run_sync(server.stop(5).wait, 8):
                        log.warning("gRPC calls still in flight 8 s after the stop: abandoned")
                    try:
                        tree.flush()
                    except ResourceExhausted as e:
                        log.error("lost the sizes and times of files written last: %s", e)
                    committer.cancel()
                    fuse.stop()
        finally:
            fuse.unmount()
            tree.files.spares.close()
            try:
                config.socket.unlink()
            except FileNotFoundError:
                pass
    finally:
        db.close()
        os.close(lock)
    log.info("stopped")
