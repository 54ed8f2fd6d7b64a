"""The timing of garbage collection (spec §8), in-process on controlled clocks.

A real store in the test's directory (SQLite database, layer tree,
snapshotter, content store: what the daemon builds, without the mount or
gRPC) and a real :class:`Collector`. Trio runs on a
``MockClock(autojump_threshold=0)``: time moves only when every task waits,
straight to the next deadline, so the background collector's delay costs no
wall time. The collector's wall clock (lease expiries, the ingest grace
period) is :class:`Wall`, which moves with that mock clock from a time the
test sets.

tests/test_gc.py covers the same collector end to end, through a daemon.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from fusesnap.content.ingest import Writer
from fusesnap.content.store import ContentStore
from fusesnap.gc import Collector, Report
from fusesnap.leases.store import Holder, LeaseStore
from fusesnap.snapshots.layers import LayerTree
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.db import Database
from fusesnap.store.space import Space

pytestmark = pytest.mark.trio

T = TypeVar("T")

NS = "gc"
EXPIRE = "containerd.io/gc.expire"
REF_CONTENT = "containerd.io/gc.ref.content"
DELAY = 1.0
"""The collector's delay after a request (seconds of trio's clock)."""
GRACE = 60.0
"""The collector's grace period for an ingest on no lease (seconds of its wall clock)."""
EPS = 0.001


def ns(rfc3339: str) -> int:
    return int(datetime.datetime.fromisoformat(rfc3339).timestamp()) * 1_000_000_000


class Wall:
    """The collector's wall clock (ns since the epoch), moved by trio's mock
    clock: :meth:`set` makes it read a time now, and it advances as the mock
    clock does."""

    def __init__(self, clock: trio.testing.MockClock, at_ns: int) -> None:
        self.clock = clock
        self.set(at_ns)

    def set(self, at_ns: int) -> None:
        self.at_ns = at_ns
        self.since = self.clock.current_time()

    def __call__(self) -> int:
        return self.at_ns + round((self.clock.current_time() - self.since) * 1e9)


class RecordingCollector(Collector):
    """A Collector that notes when (trio's clock) each collection ran."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[tuple[float, Report]] = []

    def collect(self, dry_run: bool = False) -> Report:
        report = super().collect(dry_run)
        self.runs.append((trio.current_time(), report))
        return report

    def times(self) -> list[float]:
        return [when for when, _ in self.runs]


def _here(fn: Callable[..., T], /, *args: Any) -> T:
    """The store's `call`: the test runs on the thread that owns the database."""
    return fn(*args)


@dataclass
class Store:
    """The stores and the collector on them; leases in namespace NS. Remembers
    the layer id of every committed snapshot it made."""

    clock: trio.testing.MockClock
    wall: Wall
    db: Database
    tree: LayerTree
    snapshotter: Snapshotter
    content: ContentStore
    collector: RecordingCollector
    leases: LeaseStore
    ids: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ making things

    def lease(self, lease_id: str, labels: dict[str, str] | None = None) -> Holder:
        self.leases.create(NS, lease_id, labels or {})
        return Holder(NS, lease_id, "fusesnap")

    def blob(self, data: bytes, lease: Holder | None = None,
             labels: dict[str, str] | None = None) -> str:
        """Commit `data` through a Writer, as one Write stream does; its digest."""
        writer = Writer.open(self.content, _here, f"ref-{data!r}", len(data), "", lease)
        try:
            writer.write(0, data)
            return writer.commit(labels or {}).digest
        finally:
            writer.close()

    def ingest(self, ref: str, data: bytes, lease: Holder | None = None) -> str:
        """An ingest `ref` holding `data`, its stream closed uncommitted."""
        writer = Writer.open(self.content, _here, ref, 0, "", lease)
        writer.write(0, data)
        writer.close()
        return ref

    def chain(self, prefix: str, depth: int, lease: Holder | None = None) -> list[str]:
        """`depth` committed snapshots, each the parent of the next; their names."""
        names: list[str] = []
        for i in range(depth):
            key, name = f"{prefix}-{i}-active", f"{prefix}-{i}"
            self.snapshotter.prepare(key, names[-1] if names else "", {}, lease)
            self.snapshotter.commit(name, key, {}, holder=lease)
            self.ids[name] = self.snapshotter.stat(name).id
            names.append(name)
        return names

    def collect(self) -> Report:
        """A collection now, its layer data deleted (as the GC service does)."""
        report = self.collector.collect()
        report.finish()
        return report

    # ------------------------------------------------------------------ what is there

    def assert_records(self, blobs: Iterable[str] = (), snapshots: Iterable[str] = (),
                       ingests: Iterable[str] = ()) -> None:
        """The store records these and nothing else; blob files and ingest
        directories match (what a collection removes before it returns)."""
        blobs, ingests = set(blobs), set(ingests)
        assert {r.digest for r in self.content.list([])} == blobs
        assert {r.key for r in self.snapshotter.list([])} == set(snapshots)
        assert {r.ref for r in self.content.ingest_list([])} == ingests
        files = self.content.blobs
        assert {f"{alg.name}:{f.name}" for alg in files.iterdir() for f in alg.iterdir()} \
            == blobs
        assert {p.name for p in self.content.ingests.iterdir()} \
            == {self.content.ingest_dir(r).name for r in ingests}

    def assert_exactly(self, blobs: Iterable[str] = (), snapshots: Iterable[str] = (),
                       ingests: Iterable[str] = ()) -> None:
        """:meth:`assert_records`, and one layer directory for each snapshot."""
        snapshots = set(snapshots)
        self.assert_records(blobs, snapshots, ingests)
        assert {int(p.name) for p in self.tree.layers_dir.iterdir()} \
            == {self.ids[k] for k in snapshots}

    def lease_ids(self) -> set[str]:
        return {le.id for le in self.leases.list(NS, [])}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio's clock for the test (a test must ask for it by name to run on it)."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def store(tmp_path: Path, clock: trio.testing.MockClock) -> Iterator[Store]:
    """The store the daemon builds (fusesnap/daemon.py), with a collector on a
    wall clock that reads the real time when the test starts."""
    wall = Wall(clock, time.time_ns())
    space = Space(tmp_path)
    db = Database(tmp_path / "metadata.db")
    tree = LayerTree(db, tmp_path / "layers", space)
    snapshotter = Snapshotter(db, tree, tmp_path / "mnt", (0, 0))
    content = ContentStore(db, tmp_path / "content", space)
    collector = RecordingCollector(db, snapshotter, content, GRACE, DELAY, clock=wall)
    try:
        yield Store(clock, wall, db, tree, snapshotter, content, collector, LeaseStore(db))
    finally:
        tree.files.spares.close()
        db.close()


@asynccontextmanager
async def background(s: Store) -> AsyncIterator[None]:
    """The collector's background task (as the daemon runs it), waiting for
    requests; cancelled at the end, once any layer removal it started is done."""
    assert trio.lowlevel.current_clock() is s.clock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.collector.run)
        await trio.testing.wait_all_tasks_blocked()
        yield
        nursery.cancel_scope.cancel()


async def settle() -> None:
    """Wait until no thread works for trio and every task waits again. The
    mock clock jumps while a task waits for a thread (the collector's, deleting
    layer directories): the test's next sleep would end before the collector
    goes on."""
    while True:
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
        if trio.testing.active_thread_count() == 0:
            return


# --------------------------------------------------------------------------- the delay


# Each scenario makes objects and returns a deletion and what remains after it
# until the collection it asks for, which removes all of it.


def _delete_content(s: Store) -> tuple[Callable[[], None], dict[str, list[str]]]:
    """A content Delete (the content store asks): what only that blob referenced goes."""
    config = s.blob(b"config")
    lease = s.lease("hold")
    manifest = s.blob(b"manifest", lease, {f"{REF_CONTENT}.config": config})
    return lambda: s.content.delete(manifest, lease), {"blobs": [config]}


def _remove_snapshot(s: Store) -> tuple[Callable[[], None], dict[str, list[str]]]:
    """A snapshot Remove (the snapshotter asks): the parents only it held go."""
    chain = s.chain("base", 2)
    lease = s.lease("hold")
    s.snapshotter.prepare("work", chain[-1], {}, lease)
    return lambda: s.snapshotter.remove("work", lease), {"snapshots": chain}


def _delete_lease(s: Store) -> tuple[Callable[[], None], dict[str, list[str]]]:
    """A lease Delete without sync (the Leases service asks): what it held goes."""
    lease = s.lease("hold")
    blob = s.blob(b"leased", lease)
    chain = s.chain("leased", 2, lease)

    def delete() -> None:
        s.leases.delete(NS, lease.lease)
        s.collector.request()

    return delete, {"blobs": [blob], "snapshots": chain}


@pytest.mark.parametrize("deletion", [_delete_content, _remove_snapshot, _delete_lease])
async def test_a_deletion_is_collected_in_the_background_delay_seconds_later_not_before(
        clock, store, deletion):
    s = store
    delete, doomed = deletion(s)
    async with background(s):
        delete()
        asked = trio.current_time()
        s.assert_exactly(**doomed)
        await trio.sleep(DELAY - EPS)
        s.assert_exactly(**doomed)
        assert s.collector.runs == []
        await trio.sleep(2 * EPS)
        assert s.collector.times() == [pytest.approx(asked + DELAY)]
        await settle()
        s.assert_exactly()
        await trio.sleep(100 * DELAY)
        assert len(s.collector.runs) == 1


async def test_a_burst_of_requests_within_the_delay_is_collected_once(clock, store, caplog):
    """Five lease deletions spread over 0.8 of the delay: one collection, the
    delay after the first request. The collector's own deletions (a snapshot,
    an ingest) ask for no collection after it."""
    caplog.set_level(logging.INFO, logger="fusesnap.gc")
    s = store
    leases = [s.lease(f"burst{i}") for i in range(5)]
    blobs = [s.blob(lease.lease.encode(), lease) for lease in leases]
    chain = s.chain("burst", 1, leases[-1])
    s.ingest("burst", b"partial", leases[-1])
    s.assert_exactly(blobs, chain, ["burst"])
    async with background(s):
        first = trio.current_time()
        for i, lease in enumerate(leases):
            if i:
                await trio.sleep(0.2 * DELAY)
            s.leases.delete(NS, lease.lease)
            s.collector.request()
        assert trio.current_time() - first == pytest.approx(0.8 * DELAY)
        await trio.sleep(0.2 * DELAY + EPS)
        await settle()
        await trio.sleep(100 * DELAY)
        assert s.collector.times() == [pytest.approx(first + DELAY)]
        (_, report), = s.collector.runs
        assert (sorted(report.content), report.snapshots, report.ingests) == \
            (sorted(blobs), chain, ["burst"])
    s.assert_exactly()
    runs = [r.getMessage() for r in caplog.records if "garbage collection:" in r.getMessage()]
    assert len(runs) == 1 and "5 blobs" in runs[0], runs


async def test_nothing_is_collected_in_the_background_without_a_request(clock, store):
    """What a collection would remove (a blob, a snapshot chain, an ingest past
    its grace period on no lease) stays however long nothing asks."""
    s = store
    blob = s.blob(b"unreferenced")
    chain = s.chain("unreferenced", 2)
    ingest = s.ingest("stale", b"partial")
    async with background(s):
        await trio.sleep(10 * GRACE)
        assert s.collector.runs == []
        s.assert_records([blob], chain, [ingest])
        s.collector.request()  # they were there to collect
        await trio.sleep(DELAY + EPS)
        assert len(s.collector.runs) == 1
        await settle()
        s.assert_exactly()


# --------------------------------------------------------------------------- the wall clock


async def test_an_unleased_ingest_survives_its_grace_period_then_is_collected(clock, store):
    """An ingest on no lease lives `ingest_grace` after it started, by the
    collector's wall clock; one opened under a lease lives as long as its lease."""
    s = store
    lease = s.lease("hold")
    s.ingest("young", b"partial")
    s.ingest("leased", b"partial", lease)
    s.wall.set(s.content.ingest("young").started_ns)
    assert s.collect().ingests == []
    await trio.sleep(GRACE - EPS)
    assert s.collect().ingests == []
    s.assert_exactly(ingests=["young", "leased"])
    await trio.sleep(2 * EPS)
    assert s.collect().ingests == ["young"]
    s.assert_exactly(ingests=["leased"])
    await trio.sleep(100 * GRACE)
    assert s.collect().ingests == []
    s.assert_exactly(ingests=["leased"])
    s.leases.delete(NS, lease.lease)
    assert s.collect().ingests == ["leased"]
    s.assert_exactly()


async def test_a_lease_past_its_expiry_by_the_collectors_clock_is_deleted(clock, store):
    """containerd.io/gc.expire is judged by the collector's wall clock, here
    in 1999: a lease that expires at the turn of the year protects until then
    (though that is long past for the real clock), then stops protecting and
    is deleted; one that expires an hour later protects for that hour more,
    and one without an expiry for ever."""
    s = store
    s.wall.set(ns("1999-12-31T23:59:00+00:00"))
    soon = s.lease("soon", {EXPIRE: "2000-01-01T00:00:00Z"})
    later = s.lease("later", {EXPIRE: "2000-01-01T01:00:00Z"})
    forever = s.lease("forever")
    soon_blob, later_blob, kept = (s.blob(b"soon", soon), s.blob(b"later", later),
                                   s.blob(b"forever", forever))
    chain = s.chain("soon", 2, soon)
    blobs = [soon_blob, later_blob, kept]
    for wait in (0, 60 - EPS):
        await trio.sleep(wait)
        report = s.collect()
        assert (report.leases, report.content, report.snapshots) == ([], [], [])
        assert s.lease_ids() == {"soon", "later", "forever"}
        s.assert_exactly(blobs, chain)

    await trio.sleep(2 * EPS)
    report = s.collect()
    assert report.leases == [(NS, "soon")]
    assert (report.content, report.snapshots) == ([soon_blob], chain[::-1])
    assert s.lease_ids() == {"later", "forever"}
    s.assert_exactly([later_blob, kept])

    await trio.sleep(3600 - EPS)
    assert s.collect().leases == []
    s.assert_exactly([later_blob, kept])
    await trio.sleep(2 * EPS)
    report = s.collect()
    assert (report.leases, report.content) == ([(NS, "later")], [later_blob])
    assert s.lease_ids() == {"forever"}
    await trio.sleep(100 * 365 * 24 * 3600)
    assert s.collect().content == []
    s.assert_exactly([kept])
