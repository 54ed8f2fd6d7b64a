"""The resumable writer behind one Write stream (spec §3.4) and ingest progress.

A :class:`Writer` lives in the thread that serves its stream. It owns the
ingest's data file descriptor and the running sha256, so a WRITE costs one
fstat, one pwrite and one hash update — O(len(data)), no database access. The
store (records, locks) is reached only through `call` (the caller's way onto
the store's thread): when the stream opens, when it names a new expected
digest, at commit and at close. What must survive a crash is persisted by the
store at creation and at commit; in between, the data file's size is the
offset and its mtime the time of the last write (see :meth:`Writer.write`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fusesnap import digests
from fusesnap.content.store import BlobRecord, ContentStore, IngestRecord, WriteLock
from fusesnap.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from fusesnap.labels import clean, validate
from fusesnap.leases.store import Holder
from fusesnap.quoting import quote
from fusesnap.store.space import NO_SPACE

T = TypeVar("T")

LOCK_ATTEMPTS = 10
"""Tries to lock a busy ref before Unavailable, with random sleeps of up to
1, 2, 4 … 256 ms in between (containerd's local store does the same), so a
stream that resumes right after its predecessor was cancelled finds the lock
released."""

REHASH_CHUNK = 1 << 20


class Call(Protocol):
    """Runs `fn(*args)` where the store may be used and returns its result."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> T: ...


@dataclass(frozen=True)
class IngestStatus:
    """An ingest as Status reports it."""

    ref: str
    offset: int
    total: int
    expected: str
    started_ns: int
    updated_ns: int


def ingest_status(record: IngestRecord) -> IngestStatus | None:
    """The ingest's progress from its data file (size = offset, mtime = last
    write, as :meth:`Writer.write` sets it); None when the ingest was aborted
    since `record` was read."""
    try:
        st = os.stat(record.data)
    except FileNotFoundError:
        return None
    return IngestStatus(record.ref, st.st_size, record.total, record.expected,
                    record.started_ns, max(record.started_ns, st.st_mtime_ns))


class Writer:
    """One Write stream's ingest: create with :meth:`open`, always :meth:`close`."""

    def __init__(self, store: ContentStore, call: Call, lock: WriteLock,
                 record: IngestRecord, fd: int) -> None:
        self._store = store
        self._call = call
        self._lock = lock
        self._fd = fd
        self._hash = hashlib.sha256()
        self.ref = record.ref
        self.started_ns = record.started_ns
        self.offset = 0
        self.total = 0  # the stream's expected size (0: unknown), checked at commit
        self.expected = ""  # the stream's expected digest ("": none), checked at commit
        self.updated_ns = record.started_ns

    @classmethod
    def open(cls, store: ContentStore, call: Call, ref: str, total: int,
             expected: str, holder: Holder | None = None) -> Writer:
        """Lock `ref` and create or resume its ingest, rehashing the bytes already
        stored once.

        InvalidArgument for an empty ref or a malformed `expected`; Unavailable
        while another stream keeps the ref locked; AlreadyExists when
        `expected` is committed already.
        """
        if not ref:
            raise InvalidArgument("first message must have a reference")
        if expected:
            digests.parse(expected)
        lock, record = _lock(store, call, ref, total, expected, holder)
        try:
            fd = os.open(record.data, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            call(store.end_write, lock)
            raise NotFound(f"ingest ref {quote(ref)} was aborted") from None
        except BaseException:
            call(store.end_write, lock)
            raise
        writer = cls(store, call, lock, record, fd)
        try:
            writer._rehash()
        except BaseException:
            writer.close()
            raise
        writer.expected = expected
        writer.total = max(total, 0)
        return writer

    def _rehash(self) -> None:
        buf = bytearray(REHASH_CHUNK)
        view = memoryview(buf)
        while n := os.preadv(self._fd, [buf], self.offset):
            self._hash.update(view[:n])
            self.offset += n
        if self.offset:
            self.updated_ns = max(self.started_ns, os.fstat(self._fd).st_mtime_ns)

    @property
    def digest(self) -> str:
        """sha256 of the bytes written so far (of no bytes: digests.EMPTY)."""
        return f"{digests.CANONICAL}:{self._hash.hexdigest()}"

    def check(self) -> None:
        """NotFound once the ingest was aborted under this stream (Abort unlinks
        the data file this writer holds open)."""
        if os.fstat(self._fd).st_nlink == 0:
            raise NotFound(f"ingest ref {quote(self.ref)} was aborted")

    def expect(self, expected: str, *, recheck: bool = False) -> None:
        """Make `expected` the stream's expected digest. When it is new (or
        `recheck`), AlreadyExists if that blob is committed, and the ingest is
        removed; InvalidArgument if malformed."""
        if expected == self.expected and not recheck:
            return
        digests.parse(expected)
        self._call(self._store.expect, self._lock, expected)
        self.expected = expected

    def write(self, offset: int, data: bytes) -> None:
        """Append `data` at the current offset. OutOfRange if `offset` > 0 and is
        not the current offset; `offset` == 0 over stored bytes restarts the
        ingest empty first; a negative offset means "here".

        Once it returns, the ingest's updated time (:attr:`updated_ns`, and
        the data file's mtime that Status reads, before and after a restart)
        is a time taken after the bytes were written."""
        if offset > 0 and offset != self.offset:
            raise OutOfRange(f"write @{offset} must occur at current offset {self.offset}")
        if offset == 0 and self.offset > 0:
            os.ftruncate(self._fd, 0)
            self._hash = hashlib.sha256()
            self.offset = 0
            self._touch()
        if not data:
            return
        self._store.space.check()
        try:
            n = os.pwrite(self._fd, data, self.offset)
            if n != len(data):  # only a full disk writes short to a regular file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            # All or nothing: the ingest stays at its offset, to be resumed.
            os.ftruncate(self._fd, self.offset)
            self._store.space.exhausted(f"ingest {quote(self.ref)}")
            raise ResourceExhausted(f"no space left on device: ingest {quote(self.ref)} "
                                    f"stays at offset {self.offset}") from None
        self._hash.update(data)
        self.offset += n
        self._touch()

    def _touch(self) -> None:
        # The kernel stamps the mtime from its coarse clock, up to a tick (a
        # few ms) behind time.time_ns(): a client's time taken before its
        # Write could be later than the stamp (containerd's content suite,
        # Resume, compares them). One futimens per message.
        self.updated_ns = time.time_ns()
        os.utime(self._fd, ns=(self.updated_ns, self.updated_ns))

    def commit(self, labels: Mapping[str, str]) -> BlobRecord:
        """Verify and publish the ingest as a blob, ending it.

        FailedPrecondition if the stream's total or expected digest does not
        match the bytes, InvalidArgument for oversized labels — in these cases
        the ingest stays, to be resumed or aborted. AlreadyExists (ingest
        removed) if the blob is there already; NotFound if it was aborted.
        """
        if self.total > 0 and self.total != self.offset:
            raise FailedPrecondition(
                f"unexpected commit size {self.offset}, expected {self.total}")
        digest = self.digest
        if self.expected and self.expected != digest:
            raise FailedPrecondition(
                f"unexpected commit digest {digest}, expected {self.expected}")
        validate(labels)
        os.fsync(self._fd)
        record = self._call(self._store.commit, self._lock, digest, self.offset, clean(labels))
        _fsync_dir(self._store.blob_path(digests.parse(digest)).parent)
        return record

    def close(self) -> None:
        """Release the descriptor and the ref; the ingest itself stays unless
        committed or aborted."""
        os.close(self._fd)
        try:
            self._call(self._store.end_write, self._lock)
        except Unavailable:
            pass  # shutting down: the lock table goes with the process


def _lock(store: ContentStore, call: Call, ref: str, total: int,
          expected: str, holder: Holder | None) -> tuple[WriteLock, IngestRecord]:
    for attempt in range(LOCK_ATTEMPTS):
        try:
            return call(store.begin_write, ref, total, expected, holder)
        except Unavailable:
            if attempt == LOCK_ATTEMPTS - 1:
                raise
            time.sleep(random.randrange(1 << attempt) / 1000)
    raise AssertionError("unreachable")


def _fsync_dir(path: os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
