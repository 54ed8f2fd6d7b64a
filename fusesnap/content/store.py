"""The content store: committed blobs, their labels, ingest records and ref locks.

Every method runs on the thread that owns the database (fusesnap/bridge.py) and does
quick metadata work only: one transaction, a link, an unlink. Bytes are
written and hashed by `fusesnap.content.ingest` and read by
`fusesnap.content.reader`, in the caller's thread.

Layout under ROOT/content::

    blobs/<alg>/<hex>            committed blobs, read-only, named by a validated digest
    ingest/<sha256(ref)>/data    the bytes of an ingest in progress

A ref is only ever stored in the database and hashed for its directory name,
so a ref with ``/``, ``..`` or any other character never becomes a path.
"""

from __future__ import annotations

import builtins
import datetime
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fusesnap import faults, filters
from fusesnap.digests import ALGORITHMS, Digest, parse
from fusesnap.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from fusesnap.labels import apply_mask, clean
from fusesnap.leases.store import CONTENT, INGESTS, Holder, LeaseStore, Resource
from fusesnap.quoting import quote
from fusesnap.store.db import Database
from fusesnap.store.space import Space

log = logging.getLogger(__name__)

DATA = "data"
"""The name of an ingest's data file inside its directory."""


@dataclass
class BlobRecord:
    digest: str
    size: int
    created_ns: int
    updated_ns: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestRecord:
    """What the database knows of an ingest; its offset is the size of `data`."""

    ref: str
    started_ns: int
    total: int
    expected: str
    data: Path


@dataclass(eq=False)
class WriteLock:
    """One Write stream's exclusive hold on a ref; valid while the store still
    holds this very object for the ref (Abort revokes it)."""

    ref: str
    since_ns: int
    holder: Holder | None = None
    """The lease the stream's ingest and blob join (the request's lease header)."""


def _require_ref(ref: str) -> None:
    if not ref:
        raise InvalidArgument("ref must not be empty")


def _go_time(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


def _remove_dir(path: Path) -> None:
    def report(function: object, name: str, excinfo: tuple[type, BaseException, object]) -> None:
        if not isinstance(excinfo[1], FileNotFoundError):
            log.warning("cannot remove %s: %s", name, excinfo[1])

    shutil.rmtree(path, onerror=report)


def _remove_file(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # the record is gone already; recover() sweeps the file
        log.warning("cannot remove %s: %s", path, e)


def _link(source: Path, target: Path) -> None:
    """Give the file `source` the name `target` as well, replacing a file there
    (one no record owns: the caller found no record for it)."""
    try:
        os.link(source, target)
    except FileExistsError:  # left by a Delete whose unlink failed
        os.unlink(target)
        os.link(source, target)


_BLOB = "SELECT digest, size, created_ns, updated_ns FROM content_blobs"
_INGEST = "SELECT ref, started_ns, total, expected FROM content_ingests"


class ContentStore:
    """Blobs by digest and ingests by ref under `root` (ROOT/content)."""

    def __init__(self, db: Database, root: Path, space: Space) -> None:
        self.db = db
        self.root = root
        self.space = space
        """A full disk refuses new ingests and writes (store/space.py)."""
        self.blobs = root / "blobs"
        self.ingests = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingests.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, WriteLock] = {}
        self.leases = LeaseStore(db)
        # Called after a blob or an ingest was deleted (the collector listens).
        self.on_removed: builtins.list[Callable[[], None]] = []

    # ------------------------------------------------------------------ paths

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob `digest` lives (whether or not it exists)."""
        return self.blobs / digest.algorithm / digest.encoded

    def ingest_dir(self, ref: str) -> Path:
        name = hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest()
        return self.ingests / name

    # ------------------------------------------------------------------ blobs

    def _find(self, digest: Digest) -> BlobRecord | None:
        rec = self.db.first(BlobRecord, _BLOB + " WHERE digest = ?", (str(digest),))
        if rec is None:
            return None
        rec.labels = dict(self.db.all(
            "SELECT key, value FROM content_labels WHERE digest = ?", (rec.digest,)))
        return rec

    def _get(self, digest: Digest) -> BlobRecord:
        rec = self._find(digest)
        if rec is None:
            raise NotFound(f"content {digest}")
        return rec

    def info(self, digest: str) -> BlobRecord:
        """The committed blob `digest`; InvalidArgument if malformed, NotFound if absent."""
        return self._get(parse(digest))

    def update(self, digest: str, labels: Mapping[str, str],
               paths: Sequence[str]) -> BlobRecord:
        """Change the blob's labels as the field mask says (spec §7.2) and set its
        updated time; InvalidArgument for a malformed digest, another path or
        oversized labels, NotFound if absent."""
        d = parse(digest)
        with self.db.transaction():
            rec = self._get(d)
            new = apply_mask(rec.labels, labels, paths, what="content info", name=str(d))
            self.db.execute("DELETE FROM content_labels WHERE digest = ?", (rec.digest,))
            self._set_labels(rec.digest, new)
            self.db.execute("UPDATE content_blobs SET updated_ns = ? WHERE digest = ?",
                            (time.time_ns(), rec.digest))
            return self._get(d)

    def _set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        self.db.executemany(
            "INSERT INTO content_labels (digest, key, value) VALUES (?,?,?)",
            [(digest, k, v) for k, v in clean(labels).items()],
        )

    def list(self, filter_strings: Sequence[str]) -> builtins.list[BlobRecord]:
        """Every blob matching any filter (fields `digest`, `labels.<k>`; spec §7.1),
        in digest order; InvalidArgument for a filter that does not parse.

        Two queries whatever the number of blobs; the caller streams the result
        without holding anything, so Delete is never blocked by a List."""
        flt = filters.parse(filter_strings)
        labels: dict[str, dict[str, str]] = {}
        for digest, key, value in self.db.all("SELECT digest, key, value FROM content_labels"):
            labels.setdefault(digest, {})[key] = value
        records = self.db.rows(BlobRecord, _BLOB + " ORDER BY digest")
        for rec in records:
            rec.labels = labels.get(rec.digest, {})
        if flt.matches_everything:
            return records
        return [r for r in records
                if flt.match(filters.object_adaptor({"digest": r.digest}, r.labels))]

    def delete(self, digest: str, holder: Holder | None = None) -> None:
        """Remove the blob `digest` (and from `holder`'s lease); InvalidArgument if
        malformed, NotFound if absent.

        Readers that opened it already keep reading it to the end."""
        d = parse(digest)
        with self.db.transaction():
            if not self.delete_records(d):
                raise NotFound(f"content {d}")
            self.leases.release(holder, Resource(CONTENT, str(d)))
        _remove_file(self.blob_path(d))
        self._removed()

    def _removed(self) -> None:
        for callback in self.on_removed:
            callback()

    def delete_records(self, d: Digest) -> bool:
        """Delete the records of blob `d` inside the caller's transaction (False if
        there were none); the caller unlinks :meth:`blob_path` after it."""
        if self.db.execute("DELETE FROM content_blobs WHERE digest = ?",
                           (str(d),)).rowcount == 0:
            return False
        self.db.execute("DELETE FROM content_labels WHERE digest = ?", (str(d),))
        return True

    def locked(self) -> set[str]:
        """Refs a Write stream holds right now."""
        return set(self._locks)

    # ------------------------------------------------------------------ ingests

    def _find_ingest(self, ref: str) -> IngestRecord | None:
        return self.db.first(self._ingest_record, _INGEST + " WHERE ref = ?", (ref,))

    def _ingest_record(self, ref: str, started_ns: int, total: int,
                       expected: str) -> IngestRecord:
        """A row of :data:`_INGEST`."""
        return IngestRecord(ref, started_ns, total, expected, data=self.ingest_dir(ref) / DATA)

    def ingest(self, ref: str) -> IngestRecord:
        """The ingest `ref`; InvalidArgument if empty, NotFound if there is none."""
        _require_ref(ref)
        rec = self._find_ingest(ref)
        if rec is None:
            raise NotFound(f"could not get status for ref {quote(ref)}")
        return rec

    def ingest_list(self, filter_strings: Sequence[str]) -> builtins.list[IngestRecord]:
        """Every ingest whose `ref` matches any filter (spec §7.1), in ref order."""
        flt = filters.parse(filter_strings)
        records = self.db.rows(self._ingest_record, _INGEST + " ORDER BY ref")
        return [r for r in records if flt.match(filters.object_adaptor({"ref": r.ref}))]

    def abort(self, ref: str, holder: Holder | None = None) -> None:
        """Delete the ingest `ref` and its bytes (and remove it from `holder`'s
        lease); OK when there is none (spec §3.3, as a backend). A Write stream
        holding the ref loses its lock: its data file is unlinked, so its next
        message fails with NotFound."""
        _require_ref(ref)
        if ref not in self._locks:
            # Bytes first: on a full disk that makes room for the transaction
            # (an ingest emptied but still recorded is a valid ingest).
            try:
                os.truncate(self.ingest_dir(ref) / DATA, 0)
            except FileNotFoundError:
                pass
        with self.db.transaction():
            deleted = self.db.execute("DELETE FROM content_ingests WHERE ref = ?",
                                      (ref,)).rowcount
            self.leases.release(holder, Resource(INGESTS, ref))
        self._locks.pop(ref, None)
        _remove_dir(self.ingest_dir(ref))
        if deleted:
            self._removed()

    # ------------------------------------------------------------------ the Write protocol

    def begin_write(self, ref: str, total: int, expected: str,
                    holder: Holder | None = None) -> tuple[WriteLock, IngestRecord]:
        """Lock `ref` for one Write stream and create or resume its ingest (spec §3.4).
        With `holder` (NotFound if its lease is missing), the ingest joins that
        lease, and so does the blob it becomes; so does `expected` when it is
        committed already.

        Unavailable while another stream holds the ref. AlreadyExists if
        `expected` is a committed blob (any ingest for the ref is removed). A
        new ingest is recorded at once with an empty data file; an existing
        one is resumed, or restarted empty when its recorded total and `total`
        are both set and differ. The caller opens the data file, whose size is
        the offset, and must hand the lock back with :meth:`end_write`.
        """
        _require_ref(ref)
        self.leases.check(holder)
        held = self._locks.get(ref)
        if held is not None:
            age = (time.time_ns() - held.since_ns) / 1e9
            raise Unavailable(f"ref {ref} locked for {age:.3f}s (since {_go_time(held.since_ns)})")
        if expected and self._find(parse(expected)) is not None:
            with self.db.transaction():
                self.leases.hold(holder, Resource(CONTENT, str(parse(expected))))
            self.abort(ref, holder)
            raise AlreadyExists(f"blob with expected digest {expected} exists")
        now = time.time_ns()
        total = max(total, 0)
        rec = self._find_ingest(ref)
        self._create_data(ref, truncate=rec is None)
        if rec is None or holder is not None:
            with self.db.transaction():
                if rec is None:
                    self.db.execute(
                        "INSERT INTO content_ingests (ref, started_ns, total, expected, leased) "
                        "VALUES (?,?,?,?,?)", (ref, now, total, expected, holder is not None))
                else:
                    self.db.execute("UPDATE content_ingests SET leased = 1 WHERE ref = ?",
                                    (ref,))
                self.leases.hold(holder, Resource(INGESTS, ref))
        elif total and rec.total and total != rec.total:
            # Truncated before the new total is recorded: a crash in between
            # leaves an empty ingest, never old bytes under a new total.
            os.truncate(rec.data, 0)
            with self.db.transaction():
                self.db.execute(
                    "UPDATE content_ingests SET started_ns = ?, total = ? WHERE ref = ?",
                    (now, total, ref))
        elif total and not rec.total:
            with self.db.transaction():
                self.db.execute("UPDATE content_ingests SET total = ? WHERE ref = ?",
                                (total, ref))
        lock = WriteLock(ref, now, holder)
        self._locks[ref] = lock
        return lock, self.ingest(ref)

    def _create_data(self, ref: str, *, truncate: bool) -> None:
        directory = self.ingest_dir(ref)
        directory.mkdir(exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        os.close(os.open(directory / DATA, flags, 0o644))

    def expect(self, lock: WriteLock, expected: str) -> None:
        """A stream named `expected` mid-way: AlreadyExists (removing the ingest,
        if the stream still owns it) when that blob is committed."""
        d = parse(expected)
        if self._find(d) is None:
            return
        if self._locks.get(lock.ref) is lock:
            self.abort(lock.ref)
        raise AlreadyExists(f"blob with expected digest {d} exists")

    def commit(self, lock: WriteLock, digest: str, size: int,
               labels: Mapping[str, str]) -> BlobRecord:
        """Make the verified ingest of `lock` the blob `digest` and end the ingest.

        The caller has checked size and digest and synced the data. NotFound
        if the ingest was aborted under the stream; AlreadyExists, after
        removing the ingest, if the blob exists (of two refs committing the
        same bytes, exactly one creates it).

        The data file is linked (not renamed) into blobs/ inside the
        transaction that records the blob, so the blob is readable as soon
        as this returns and the ingest keeps its bytes until the blob is
        recorded: a crash before the commit leaves the ingest whole, and
        :meth:`recover` removes the unrecorded blob file. The link is undone if
        the transaction fails; the ingest's directory goes after it commits.
        """
        d = parse(digest)
        ref = lock.ref
        if self._locks.get(ref) is not lock or self._find_ingest(ref) is None:
            raise NotFound(f"ingest ref {quote(ref)} was aborted")
        if self._find(d) is not None:
            with self.db.transaction():
                self.leases.hold(lock.holder, Resource(CONTENT, str(d)))
                self.abort(ref, lock.holder)
            raise AlreadyExists(f"content {d}")
        data = self.ingest_dir(ref) / DATA
        target = self.blob_path(d)
        target.parent.mkdir(exist_ok=True)
        now = time.time_ns()
        linked = False
        try:
            with self.db.transaction():
                self.db.execute(
                    "INSERT INTO content_blobs (digest, size, created_ns, updated_ns) "
                    "VALUES (?,?,?,?)", (str(d), size, now, now))
                self._set_labels(str(d), labels)
                self.db.execute("DELETE FROM content_ingests WHERE ref = ?", (ref,))
                self.leases.hold(lock.holder, Resource(CONTENT, str(d)))
                self.leases.release(lock.holder, Resource(INGESTS, ref))
                _link(data, target)
                linked = True
                faults.crash_at("content-commit-linked")
        except BaseException:
            if linked:
                _remove_file(target)
            raise
        del self._locks[ref]
        _remove_dir(data.parent)
        try:
            os.chmod(target, 0o400)  # committed content never changes; private (permissions.py)
        except OSError as e:
            log.warning("cannot make %s read-only: %s", target, e)
        return self._get(d)

    def end_write(self, lock: WriteLock) -> None:
        """Release `lock` (nothing if it was revoked or already released)."""
        if self._locks.get(lock.ref) is lock:
            del self._locks[lock.ref]

    # ------------------------------------------------------------------ start-up

    def recover(self) -> None:
        """At start-up: settle what a killed daemon left behind.

        Ingest directories without a record (a crash while creating or
        removing one) and blob files without a record (a crash between a
        Commit's link and its transaction — the ingest still has the bytes —
        or before a Delete's unlink) are removed; a record whose data file is
        missing gets an empty one, and a blob record whose file is missing is
        dropped with a warning.
        """
        refs = [r for (r,) in self.db.all("SELECT ref FROM content_ingests")]
        owned = {self.ingest_dir(r).name for r in refs}
        for entry in os.scandir(self.ingests):
            if entry.name not in owned:
                log.info("removing ingest directory %s that no record owns", entry.path)
                _remove_dir(Path(entry.path))
        for ref in refs:
            self._create_data(ref, truncate=False)

        recorded = {r for (r,) in self.db.all("SELECT digest FROM content_blobs")}
        present: set[str] = set()
        for alg in os.scandir(self.blobs):
            if alg.name not in ALGORITHMS or not alg.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(alg.path):
                digest = f"{alg.name}:{entry.name}"
                if digest in recorded:
                    present.add(digest)
                else:
                    log.info("removing blob file %s that no record owns", entry.path)
                    _remove_file(Path(entry.path))
        missing = recorded - present
        if missing:
            with self.db.transaction():
                for digest in sorted(missing):
                    log.warning("blob %s lost its file; forgetting it", digest)
                    self.db.execute("DELETE FROM content_blobs WHERE digest = ?", (digest,))
                    self.db.execute("DELETE FROM content_labels WHERE digest = ?", (digest,))
