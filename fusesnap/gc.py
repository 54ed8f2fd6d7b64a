"""Garbage collection with containerd's model (spec §8): mark, then sweep.

Roots, across all namespaces:

- every lease that has not expired (``containerd.io/gc.expire`` in the past:
  the lease is deleted; a value that does not parse is ignored) and what it
  references: content, ingests, images and snapshots;
- every image (unless its own ``gc.expire`` has passed): its target and its
  label references;
- content and snapshots labelled ``containerd.io/gc.root``;
- ingests opened on no lease, until ``ingest_grace`` after they started (one
  opened under a lease lives exactly as long as leases reference it), and
  every ingest a Write stream holds right now.

References followed from what is marked: a blob's and a snapshot's
``containerd.io/gc.ref.content*`` and ``containerd.io/gc.ref.snapshot.<name>*``
labels (any snapshotter name means this store: there is one), a snapshot's
parent, an ingest's expected digest. A lease labelled ``containerd.io/gc.flat``
keeps what it references without following labels (parents still count).

Everything else — blobs, ingests, snapshots (children first) — is deleted.
Mark and the deletion of records are one synchronous call on the thread that
owns the database, so no request is ever half-seen: an object created under
a lease is created with its lease reference in one transaction. Files go
after the transaction commits; what a crash leaves behind (data without its
record) is removed by the next collection, as at start-up.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fusesnap.content.store import ContentStore
from fusesnap.digests import parse
from fusesnap.errors import InvalidArgument
from fusesnap.leases.store import CONTENT, EXPIRE_LABEL, FLAT_LABEL, IMAGES, INGESTS, SNAPSHOTS
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import Database

log = logging.getLogger(__name__)

ROOT_LABEL = "containerd.io/gc.root"
REF_CONTENT = "containerd.io/gc.ref.content"
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."

DEFAULT_INGEST_GRACE = 24 * 3600.0
"""Seconds an ingest on no lease is kept after it started, as containerd does."""

DEFAULT_DELAY = 1.0
"""Seconds a background collection waits after it is requested, gathering
the requests of a burst of deletions into one run."""

# A node to mark: (kind, id, flat). Kinds: blob, snapshot key, ingest ref.
_BLOB, _SNAP, _INGEST = "c", "s", "i"


@dataclass
class Report:
    """What one collection removed (or, with `dry_run`, would remove)."""

    dry_run: bool = False
    content: list[str] = field(default_factory=list)
    ingests: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    leases: list[tuple[str, str]] = field(default_factory=list)
    """Expired leases, as (namespace, id)."""
    seconds: float = 0.0
    layers: list[Path] = field(default_factory=list)
    """Layer directories of removed snapshots, still to delete: nothing refers to
    them any more, so any thread may (:meth:`finish`)."""

    def names(self, most: int = 10) -> str:
        """What was removed, by key, digest, ref and lease (at most `most` of
        each, then how many more), for the log."""
        def some(what: str, items: list[str]) -> str:
            more = f" and {len(items) - most} more" if len(items) > most else ""
            return f"{what} {', '.join(items[:most])}{more}"
        parts = [("snapshots", self.snapshots), ("blobs", self.content),
                 ("ingests", self.ingests), ("leases", [f"{ns}/{i}" for ns, i in self.leases])]
        return "removed " + "; ".join(some(w, items) for w, items in parts if items)

    def finish(self) -> None:
        """Delete the removed snapshots' layer directories."""
        while self.layers:
            shutil.rmtree(self.layers.pop(), ignore_errors=True)


# What Go's time.Parse(time.RFC3339, …) accepts: fromisoformat alone also takes
# "2000-01-01T00:00Z", "20000101T000000Z", a space for the T or "+0100",
# which containerd ignores as invalid.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.,][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})")


def expired(labels: dict[str, str], now: datetime.datetime) -> bool:
    """True when ``containerd.io/gc.expire`` names an RFC 3339 time before `now`;
    a value that does not parse never expires (containerd logs and ignores it)."""
    value = labels.get(EXPIRE_LABEL)
    if value is None:
        return False
    try:
        if not _RFC3339.fullmatch(value):
            raise ValueError(value)
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        log.info("ignoring invalid expiration value %r", value)
        return False
    return when < now


def label_refs(labels: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(kind, id) of every object the labels reference."""
    for key, value in labels:
        if key == REF_CONTENT or key.startswith((REF_CONTENT + ".", REF_CONTENT + "/")):
            yield _BLOB, value
        elif key.startswith(REF_SNAPSHOT) and len(key) > len(REF_SNAPSHOT):
            yield _SNAP, value


def _canonical(digest: str) -> str | None:
    try:
        return str(parse(digest))
    except InvalidArgument:
        return None


class Collector:
    """Collects on request (:meth:`collect`) and in the background (:meth:`run`).

    `clock` is the wall clock (nanoseconds since the epoch) that lease and
    image expiries and the ingest grace period are judged by; the delay of a
    background collection is trio's clock."""

    def __init__(self, db: Database, snapshotter: Snapshotter, content: ContentStore,
                 ingest_grace: float = DEFAULT_INGEST_GRACE,
                 delay: float = DEFAULT_DELAY,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self.snapshotter = snapshotter
        self.content = content
        self.ingest_grace_ns = int(ingest_grace * 1e9)
        self.delay = delay
        self.clock = clock
        self._wanted: trio.Event | None = None
        self._collecting = False
        snapshotter.on_removed.append(lambda sid: self.request())
        content.on_removed.append(self.request)

    # ------------------------------------------------------------------ scheduling

    def request(self) -> None:
        """Ask for a background collection soon (nothing unless :meth:`run` runs).
        Any deletion asks (spec §8); the collector's own deletions do not."""
        if self._wanted is not None and not self._collecting:
            self._wanted.set()

    async def run(self) -> None:
        """Collect `delay` seconds after each burst of requests, until cancelled."""
        self._wanted = trio.Event()
        while True:
            await self._wanted.wait()
            await trio.sleep(self.delay)
            self._wanted = trio.Event()
            try:
                report = self.collect()
            except Exception:
                log.exception("garbage collection failed")
                continue
            await trio.to_thread.run_sync(report.finish)

    # ------------------------------------------------------------------ mark

    def _mark(self, now_ns: int) -> tuple[set[str], set[str], set[str], list[tuple[str, str]]]:
        """(blobs, ingest refs, snapshot keys) that stay, and the expired leases."""
        now = datetime.datetime.fromtimestamp(now_ns / 1e9, datetime.UTC)
        refs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for digest, key, value in self.db.all(
                "SELECT digest, key, value FROM content_labels "
                "WHERE key >= 'containerd.io/gc.' AND key < 'containerd.io/gc/'"):
            refs.setdefault((_BLOB, digest), []).append((key, value))
        parents: dict[str, str | None] = {}
        for key, parent in self.db.all(
                "SELECT s.key, p.key FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"):
            parents[key] = parent
        for key, lkey, value in self.db.all(
                "SELECT s.key, l.key, l.value FROM snapshot_labels l "
                "JOIN snapshots s ON s.id = l.snapshot "
                "WHERE l.key >= 'containerd.io/gc.' AND l.key < 'containerd.io/gc/'"):
            refs.setdefault((_SNAP, key), []).append((lkey, value))
        expected = {ref: exp for ref, exp in self.db.all(
            "SELECT ref, expected FROM content_ingests WHERE expected != ''")}

        todo: list[tuple[str, str, bool]] = []
        for (kind, oid), pairs in refs.items():
            if any(k == ROOT_LABEL for k, _ in pairs):
                todo.append((kind, oid, False))

        expired_leases: list[tuple[str, str]] = []
        live: set[tuple[str, str]] = set()
        flat_leases: set[tuple[str, str]] = set()
        for ns, lease, labels_json in self.db.all("SELECT namespace, id, labels FROM leases"):
            labels = _json(labels_json)
            if expired(labels, now):
                expired_leases.append((ns, lease))
                continue
            live.add((ns, lease))
            if FLAT_LABEL in labels:
                flat_leases.add((ns, lease))
        leased_images: set[tuple[str, str]] = set()
        for ns, lease, rtype, rid in self.db.all(
                "SELECT namespace, lease, type, id FROM lease_resources"):
            if (ns, lease) not in live:
                continue
            flat = (ns, lease) in flat_leases
            if rtype == CONTENT:
                todo.append((_BLOB, rid, flat))
            elif rtype == INGESTS:
                todo.append((_INGEST, rid, flat))
            elif rtype == IMAGES:
                leased_images.add((ns, rid))
            elif rtype.startswith(SNAPSHOTS + "/"):
                todo.append((_SNAP, rid, flat))

        for ns, name, digest, labels_json in self.db.all(
                "SELECT namespace, name, digest, labels FROM images"):
            labels = _json(labels_json)
            if (ns, name) not in leased_images and expired(labels, now):
                continue
            todo.append((_BLOB, digest, False))
            todo.extend((kind, oid, False) for kind, oid in label_refs(labels.items()))

        locked = self.content.locked()
        for ref, started_ns, leased in self.db.all(
                "SELECT ref, started_ns, leased FROM content_ingests"):
            # An ingest once opened under a lease goes with its leases.
            if ref in locked or (not leased and started_ns + self.ingest_grace_ns > now_ns):
                todo.append((_INGEST, ref, False))

        seen: set[tuple[str, str, bool]] = set()
        blobs: set[str] = set()
        snaps: set[str] = set()
        ingests: set[str] = set()
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            kind, oid, flat = node
            if kind == _BLOB:
                digest = _canonical(oid)
                if digest is None:
                    continue
                blobs.add(digest)
                if not flat:
                    todo.extend((k, o, False) for k, o in label_refs(refs.get((_BLOB, digest), ())))
            elif kind == _SNAP:
                if oid not in parents:
                    continue
                snaps.add(oid)
                parent = parents[oid]
                if parent is not None:
                    todo.append((_SNAP, parent, flat))
                if not flat:
                    todo.extend((k, o, False) for k, o in label_refs(refs.get((_SNAP, oid), ())))
            else:
                ingests.add(oid)
                if oid in expected:
                    todo.append((_BLOB, expected[oid], False))
        return blobs, ingests, snaps, expired_leases

    # ------------------------------------------------------------------ sweep

    def collect(self, dry_run: bool = False) -> Report:
        """Mark and sweep now. Runs on the thread that owns the database; call
        :meth:`Report.finish` afterwards (any thread) to delete layer data."""
        self._collecting = True
        try:
            return self._collect(dry_run)
        finally:
            self._collecting = False

    def _collect(self, dry_run: bool) -> Report:
        started = time.monotonic()
        report = Report(dry_run=dry_run)
        with self.db.transaction():
            blobs, ingests, snaps, expired_leases = self._mark(self.clock())
            report.leases = expired_leases
            report.content = [d for (d,) in self.db.all(
                "SELECT digest FROM content_blobs ORDER BY digest") if d not in blobs]
            report.ingests = [r for (r,) in self.db.all(
                "SELECT ref FROM content_ingests ORDER BY ref") if r not in ingests]
            doomed = [(sid, key) for sid, key in self.db.all(
                "SELECT id, key FROM snapshots ORDER BY id DESC") if key not in snaps]
            report.snapshots = [key for _, key in doomed]  # children first
            if not dry_run:
                for ns, lease in expired_leases:
                    self.snapshotter.leases.delete(ns, lease)
                for digest in report.content:
                    self.content.delete_records(parse(digest))
                self.db.executemany("DELETE FROM content_ingests WHERE ref = ?",
                                    [(r,) for r in report.ingests])
                for _, key in doomed:
                    self.snapshotter.remove_records(key)
        if not dry_run:
            for digest in report.content:
                _unlink(self.content.blob_path(parse(digest)))
            for ref in report.ingests:
                self.content.abort(ref)  # the record is gone: removes the directory
            # What a crash between a transaction and its file removals left.
            # Before the removed snapshots' layers go to `report.layers`: an
            # orphan's id may be handed out again, so it is removed right here.
            self.snapshotter.cleanup(keep=[sid for sid, _ in doomed])
            self.content.recover()
            for sid, _ in doomed:
                self.snapshotter.forget(sid)
                report.layers.append(self.snapshotter.layer_path(sid))
        report.seconds = time.monotonic() - started
        if report.content or report.ingests or report.snapshots or report.leases:
            log.info("garbage collection%s: %d blobs, %d ingests, %d snapshots, "
                     "%d expired leases in %.3fs; %s", " (dry run)" if dry_run else "",
                     len(report.content), len(report.ingests), len(report.snapshots),
                     len(report.leases), report.seconds, report.names())
        return report


def _json(text: str) -> dict[str, str]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
