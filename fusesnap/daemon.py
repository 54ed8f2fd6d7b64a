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

from fusesnap.api.info import Started
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
from fusesnap.remote import Access, RemoteLayers
from fusesnap.sdnotify import Notifier
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


def _check_not_served(root: Path) -> None:
    """StartupError if a daemon holds `root`'s lock (checked before anything
    else, whose errors would name its mount instead); creates nothing."""
    try:
        fd = os.open(root / "lock", os.O_RDWR)
    except OSError:
        return  # no lock yet, or one we cannot open: _lock_root will say
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(f"another fusesnap is serving {root}") from None
    finally:
        os.close(fd)  # closing drops a lock taken here


def _unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return
    raise StartupError(f"cannot unmount stale mount at {path}; run: fusermount3 -u -z {path}")


def _fstype(path: Path) -> str | None:
    """The file system type /proc/self/mountinfo gives the mount at `path`."""
    target = os.fsencode(path)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last mount at a path is the one on top
        fields, _, rest = line.partition(b" - ")
        parts = fields.split()
        if len(parts) > 4 and parts[4].decode("unicode_escape").encode("latin-1") == target:
            found = rest.split()[0].decode(errors="replace") if rest else None
    return found


def check_mountpoint(path: Path) -> bool:
    """Whether `path` can be the mountpoint (StartupError, changing nothing,
    if not): missing, an empty directory, or the stale mount of a killed
    fusesnap. True for the last (:func:`prepare_mountpoint` clears it)."""
    try:
        # statfs, not stat: the kernel may answer a stat from its cache even
        # when the daemon is gone, while a statfs always reaches the daemon.
        os.statvfs(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise StartupError(f"mountpoint {path}: {e.strerror}") from None
        if _fstype(path) != "fuse.fusesnap":
            raise StartupError(f"mountpoint {path} is the dead mount of another file system "
                               f"({_fstype(path) or 'unknown'}); unmount it first "
                               f"(fusermount3 -u -z {path})") from None
        return True
    if os.path.ismount(path):
        raise StartupError(f"{path} is already a mount point; unmount it first")
    if not path.is_dir():
        raise StartupError(f"mountpoint {path} is not a directory; give --mountpoint an "
                           "empty directory (or a path that does not exist)")
    try:
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                raise StartupError(f"mountpoint {path} is not empty: mounting over it would "
                                   "hide its files; give --mountpoint an empty directory")
    except PermissionError:
        raise StartupError(f"mountpoint {path}: permission denied") from None
    return False


def prepare_mountpoint(path: Path, stale: bool) -> None:
    """Create the mountpoint, or clear the mount a killed daemon left there."""
    if stale:
        log.warning("clearing stale mount at %s (transport endpoint is not connected)", path)
        _unmount(path)
    elif not path.exists():
        path.mkdir(parents=True)


SOCKET_PATH_MAX = 107
"""Bytes of a unix socket's path (sun_path holds 108 with the final NUL)."""


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise StartupError(f"socket path {path} is {len(os.fsencode(path))} bytes long; a unix "
                           f"socket's path holds at most {SOCKET_PATH_MAX}: choose a shorter "
                           "--socket")


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
    """Serve until SIGTERM or SIGINT, then stop cleanly. Under systemd
    (Type=notify), READY=1 once it serves and STOPPING=1 at the signal."""
    systemd = Notifier()
    started = Started()
    restrict_process()
    _check_not_served(config.root)
    check_socket_path(config.socket)
    stale = check_mountpoint(config.mountpoint)
    try:
        group = socket_group(config.socket_group)
        private_dir(config.root)
    except NotPrivate as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(f"cannot use {e.filename or config.root} as the store: {e.strerror}"
                           " (give --root a directory this user may create or own)") from None
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
        prepare_mountpoint(config.mountpoint, stale)
        prepare_socket(config.socket, group)
        options = mount_options()
        collector = Collector(db, snapshotter, content, config.ingest_grace, config.gc_delay)
        remote = RemoteLayers(snapshotter, content,
                              Access(config.insecure_registries, config.registry_ca))
        remote.load()
        log.info("root=%s mountpoint=%s socket=%s role=%s options=%s fuse-busy-poll=%dus",
                 config.root, config.mountpoint, config.socket, config.role.value,
                 ",".join(sorted(options)), config.fuse_busy_poll_us)
        fuse_stats = FuseStats()
        fuse.mount(LayerFS(snapshotter, fuse_stats, remote), config.mountpoint, options,
                   config.fuse_busy_poll_us)
        try:
            bridge = TrioBridge(trio.lowlevel.current_trio_token())
            server = make_server(bridge, config, snapshotter, content, collector,
                                 fuse_stats.report, fuse_stats.requests, started, remote)
            try:
                restrict_socket(config.socket, group)
            except NotPrivate as e:
                raise StartupError(str(e)) from None
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    # "serving" and READY=1 once the mount answers; the gRPC
                    # server is up by then (started below, before this task runs).
                    def ready() -> None:
                        systemd.notify("READY=1", f"STATUS=serving on {config.socket}")
                        log.info("serving")

                    nursery.start_soon(fuse.serve, config.mountpoint, ready)
                    committer = trio.CancelScope()
                    nursery.start_soon(_run_in, committer, _GroupCommitter(db).run)
                    watch = trio.CancelScope()
                    nursery.start_soon(_run_in, watch, functools.partial(_watch, space))
                    lazy = trio.CancelScope()
                    nursery.start_soon(_run_in, lazy, remote.run)
                    background_gc = trio.CancelScope()
                    if config.role is Role.DIRECT:
                        nursery.start_soon(_run_in, background_gc, collector.run)
                    server.start()
                    async for signum in signals:
                        log.info("%s: stopping", signal.Signals(signum).name)
                        systemd.notify("STOPPING=1", "STATUS=stopping")
                        break
                    background_gc.cancel()
                    lazy.cancel()
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
