"""Empty backing files made ahead of the creates that need them.

Making a backing file is most of what a CREATE costs the daemon (the backing
file system's own create: 40 µs to over 1 ms on a busy disk), and a program
that creates one file usually creates many (``tar x``, ``npm install``, a
build). So once a layer has had a create, a thread of this module makes the
next ones ahead, in batches, as ``<layer>/<oid>`` files with oids taken for
them, each kept open: a CREATE then takes one, off the request path, and the
request costs the daemon rows in memory only.

A spare is an empty file no row names. Commit and removal drop a layer's
spares (waiting for a batch in progress), and a daemon's stop drops them all;
a killed daemon's are deleted at the next start with every other file no row
names (recovery.py). Only the :data:`LAYERS` layers with the latest creates
keep spares, so the descriptors held stay few.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

LAYERS = 2
"""Layers that keep spares at a time, the least recently created in dropped first."""

BATCH = 64
"""Most spares made in one batch; a layer's first batches are smaller (4, 8, ...)."""

_FLAGS = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC


class _Pool:
    __slots__ = ("ready", "batch", "done")

    def __init__(self) -> None:
        self.ready: collections.deque[tuple[int, int]] = collections.deque()
        self.batch = 4
        self.done: threading.Event | None = None  # the batch in progress


class Spares:
    """Spare backing files of the layers with the latest creates."""

    def __init__(self, path: Callable[[int, int], str], new_oid: Callable[[], int]) -> None:
        self._path = path
        self._new_oid = new_oid
        self._pools: collections.OrderedDict[int, _Pool] = collections.OrderedDict()
        self._queue: queue.SimpleQueue[tuple[int, _Pool, list[int], threading.Event] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def take(self, layer: int) -> tuple[int, int]:
        """(oid, open descriptor) of a new empty backing file in `layer`: a spare
        when there is one, else one made now; then more are asked for."""
        pool = self._pools.get(layer)
        if pool is None:
            pool = self._pools[layer] = _Pool()
            while len(self._pools) > LAYERS:
                self.drop(next(iter(self._pools)))
        else:
            self._pools.move_to_end(layer)
        try:
            oid, fd = pool.ready.popleft()
        except IndexError:
            oid = self._new_oid()
            fd = os.open(self._path(layer, oid), _FLAGS, 0o600)
        if len(pool.ready) < pool.batch // 2 and (pool.done is None or pool.done.is_set()):
            self._ask(layer, pool)
        return oid, fd

    def _ask(self, layer: int, pool: _Pool) -> None:
        oids = [self._new_oid() for _ in range(pool.batch)]
        pool.batch = min(BATCH, pool.batch * 2)
        pool.done = threading.Event()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fusesnap-spares",
                                            daemon=True)
            self._thread.start()
        self._queue.put((layer, pool, oids, pool.done))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            layer, pool, oids, done = job
            try:
                for oid in oids:
                    pool.ready.append((oid, os.open(self._path(layer, oid), _FLAGS, 0o600)))
            except OSError as e:  # a full disk, a layer removed: creates make their own
                log.debug("spare backing files of layer %d: %s", layer, e)
            finally:
                done.set()

    def drop(self, layer: int) -> None:
        """Delete `layer`'s spares (its snapshot is committed or removed)."""
        pool = self._pools.pop(layer, None)
        if pool is None:
            return
        if pool.done is not None:
            pool.done.wait()
        while pool.ready:
            oid, fd = pool.ready.popleft()
            os.close(fd)
            try:
                os.unlink(self._path(layer, oid))
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Delete every spare and stop the thread (the daemon stops)."""
        for layer in list(self._pools):
            self.drop(layer)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
