"""Headroom for a full disk: the store keeps working when its file system fills.

SQLite rolls a transaction back when its COMMIT finds the disk full, and
freeing space (Remove, Delete, Abort, unlink through the mount, the
collector) needs a commit too. So the store holds back a *reserve*: the file
``ROOT/reserve``, allocated when there is room. When the disk fills — an
ENOSPC anywhere, a full SQLite, or less free space than half the reserve at
a poll — the store turns *full*: it deletes the reserve, which gives the
metadata room to commit, and refuses whatever would add data (writes and new
files through the mount, ingests, new snapshots) with ENOSPC or
RESOURCE_EXHAUSTED, so that room is kept for the metadata. Reads and
everything that frees space go on. When twice the reserve is free again, the
reserve is allocated again and the store is no longer full.

:meth:`Space.check` is one attribute test (the FUSE write path calls it);
:meth:`Space.exhausted` may be called from any thread.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

from fusesnap.errors import ResourceExhausted

log = logging.getLogger(__name__)

MIN_RESERVE = 4 << 20
MAX_RESERVE = 32 << 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""The errno values of a full file system (or of a full quota)."""


def reserve_for(total: int) -> int:
    """Bytes to hold back on a file system of `total` bytes: 1/64 of it,
    between 4 and 32 MiB."""
    return max(MIN_RESERVE, min(MAX_RESERVE, total // 64))


class Space:
    """The free space of the store's file system, and its reserve."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "reserve"
        st = os.statvfs(root)
        self.size = reserve_for(st.f_blocks * st.f_frsize)
        self.full = False
        self._lock = threading.Lock()

    def free(self) -> int:
        """Bytes an unprivileged writer may still use."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check(self) -> None:
        """ResourceExhausted if the store is full (before adding data)."""
        if self.full:
            raise ResourceExhausted(f"no space left on the device of {self.root}")

    def exhausted(self, what: str) -> None:
        """The disk is full (`what` found it): free the reserve for the
        metadata and refuse new data until space comes back."""
        with self._lock:
            if self.full:
                return
            self.full = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        log.warning("the disk of %s is full (%s): freed the %d MiB reserve for the metadata; "
                    "writes, ingests and new snapshots fail with ENOSPC / RESOURCE_EXHAUSTED "
                    "until %d MiB are free", self.root, what, self.size >> 20,
                    (2 * self.size) >> 20)

    def poll(self) -> None:
        """Turn full when less than half the reserve is free, or when the
        reserve is missing and there is no room to allocate it; turn back when
        twice the reserve is free and the reserve is allocated again. The
        daemon calls it every second, and once at start-up."""
        free = self.free()
        if not self.full:
            if self._reserved() >= self.size:
                if free < self.size // 2:
                    self.exhausted(f"{free >> 10} KiB free")
            elif free < 2 * self.size or not self._allocate():
                self.exhausted(f"{free >> 10} KiB free and no reserve")
            return
        if free >= 2 * self.size and self._allocate():
            with self._lock:
                self.full = False
            log.warning("space is back on the disk of %s (%d MiB free): the reserve is "
                        "allocated again and new data is accepted", self.root, free >> 20)

    def _reserved(self) -> int:
        try:
            return os.stat(self.path).st_blocks * 512
        except FileNotFoundError:
            return 0

    def _allocate(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("cannot allocate the reserve %s: %s", self.path, e)
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            return True
        except OSError as e:
            if e.errno not in NO_SPACE:
                log.warning("cannot allocate the reserve %s: %s", self.path, e)
            os.ftruncate(fd, 0)
            return False
        finally:
            os.close(fd)
