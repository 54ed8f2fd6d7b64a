"""Garbage collection (spec §8) over a real gRPC channel against a real daemon.

A collection sees the whole store, so every test starts a daemon of its own.
Each scenario ends by asserting exactly what remains, both in the API
(Content Info/List, Snapshots Stat/List, Status/ListStatuses, Leases List)
and on disk: blob files, ingest directories and layer directories, one for
each record and none without.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import itertools
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import descriptor_pb2, gc_pb2
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.gc_pb2_grpc import GCStub
from fusesnap.pb.images_pb2_grpc import ImagesStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub
from tests.conftest import Daemon
from tests.content_client import COMMIT, STAT, WRITE, WriteStream, code, read, sha

C = grpc.StatusCode
NS = "gc"
NAMESPACE = "containerd-namespace"
LEASE = "containerd-lease"
ROOT = "containerd.io/gc.root"
EXPIRE = "containerd.io/gc.expire"
FLAT = "containerd.io/gc.flat"
REF_CONTENT = "containerd.io/gc.ref.content"
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.fusesnap"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
PAST = "2000-01-01T00:00:00Z"


def rfc3339(seconds_from_now: float) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ingest_dir_name(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0,
             interval: float = 0.02) -> float:
    """Poll until `predicate()` holds; the seconds it took. Fails at the deadline."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not true after {timeout}s: {predicate}")
        time.sleep(interval)
    return time.monotonic() - started


class Store:
    """One daemon through every API it serves, in one namespace; remembers the
    layer id of every snapshot it prepared (by key and, once committed, name)."""

    def __init__(self, d: Daemon, namespace: str = NS) -> None:
        assert d.channel is not None
        self.d = d
        self.namespace = namespace
        self.content = ContentStub(d.channel)
        self.snapshots = SnapshotsStub(d.channel)
        self.leases = LeasesStub(d.channel)
        self.images = ImagesStub(d.channel)
        self.gc = GCStub(d.channel)
        self.ids: dict[str, int] = {}

    def md(self, lease: str = "") -> list[tuple[str, str]]:
        return [(NAMESPACE, self.namespace)] + ([(LEASE, lease)] if lease else [])

    # ------------------------------------------------------------------ making things

    def lease(self, lease_id: str = "", labels: dict[str, str] | None = None) -> str:
        return self.leases.Create(lpb.CreateRequest(id=lease_id, labels=labels or {}),
                                  metadata=self.md()).lease.id

    def drop_lease(self, lease_id: str, sync: bool = False) -> None:
        self.leases.Delete(lpb.DeleteRequest(id=lease_id, sync=sync), metadata=self.md())

    def blob(self, data: bytes, lease: str = "", labels: dict[str, str] | None = None) -> str:
        """Commit `data` in one Write message; its digest."""
        s = WriteStream(self.content, metadata=self.md(lease))
        resp = s.send(action=COMMIT, ref=f"ref-{sha(data)}", offset=0, data=data,
                      total=len(data), expected=sha(data), labels=labels or {})
        assert s.ended_ok()
        return resp.digest

    def open_ingest(self, ref: str, data: bytes, lease: str = "",
                    expected: str = "") -> WriteStream:
        """A Write stream for `ref` that wrote `data` and stays open."""
        s = WriteStream(self.content, metadata=self.md(lease))
        s.send(action=WRITE, ref=ref, offset=0, data=data, expected=expected)
        return s

    def ingest(self, ref: str, data: bytes, lease: str = "", expected: str = "") -> str:
        """Leave an ingest `ref` holding `data` (the stream half-closes uncommitted)."""
        assert self.open_ingest(ref, data, lease, expected).finish() == C.OK
        return ref

    def prepare(self, key: str, parent: str = "", lease: str = "",
                labels: dict[str, str] | None = None, file: bytes | None = None,
                extra_files: int = 0) -> int:
        """An active snapshot; with `file`, a file named after the key holds it,
        and `extra_files` more files of 4 KiB follow. Its layer id."""
        resp = self.snapshots.Prepare(
            spb.PrepareSnapshotRequest(snapshotter="fusesnap", key=key, parent=parent,
                                       labels=labels or {}), metadata=self.md(lease))
        path = Path(resp.mounts[0].source)
        if file is not None:
            (path / key.replace("/", "_")).write_bytes(file)
        for i in range(extra_files):
            (path / f"extra{i}").write_bytes(b"x" * 4096)
        self.ids[key] = int(path.name)
        return self.ids[key]

    def view(self, key: str, parent: str, lease: str = "") -> int:
        resp = self.snapshots.View(spb.ViewSnapshotRequest(
            snapshotter="fusesnap", key=key, parent=parent), metadata=self.md(lease))
        self.ids[key] = int(Path(resp.mounts[0].source).name)
        return self.ids[key]

    def commit(self, name: str, key: str, lease: str = "",
               labels: dict[str, str] | None = None) -> None:
        self.snapshots.Commit(spb.CommitSnapshotRequest(
            snapshotter="fusesnap", name=name, key=key, labels=labels or {}),
            metadata=self.md(lease))
        self.ids[name] = self.ids[key]

    def chain(self, prefix: str, depth: int, lease: str = "", parent: str = "",
              top_labels: dict[str, str] | None = None, extra_files: int = 0) -> list[str]:
        """`depth` committed snapshots, each the parent of the next, each with a
        file of its own (and `extra_files`); their names, base first."""
        names: list[str] = []
        for i in range(depth):
            key, name = f"{prefix}-{i}-active", f"{prefix}-{i}"
            self.prepare(key, names[-1] if names else parent, lease,
                         file=name.encode(), extra_files=extra_files)
            self.commit(name, key, lease, top_labels if i == depth - 1 else None)
            names.append(name)
        return names

    def image(self, name: str, digest: str, labels: dict[str, str] | None = None,
              media_type: str = MANIFEST) -> None:
        self.images.Create(ipb.CreateImageRequest(image=ipb.Image(
            name=name, labels=labels or {},
            target=descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=1))),
            metadata=self.md())

    def collect(self, dry_run: bool = False) -> gc_pb2.CollectResponse:
        return self.gc.Collect(gc_pb2.CollectRequest(dry_run=dry_run), timeout=60)

    # ------------------------------------------------------------------ what is there

    def blobs(self) -> set[str]:
        return {i.digest for r in self.content.List(cpb.ListContentRequest()) for i in r.info}

    def snapshot_keys(self) -> set[str]:
        return {i.name for r in self.snapshots.List(spb.ListSnapshotsRequest(
            snapshotter="fusesnap")) for i in r.info}

    def ingest_refs(self) -> set[str]:
        return {s.ref for s in self.content.ListStatuses(cpb.ListStatusesRequest()).statuses}

    def lease_ids(self) -> set[str]:
        return {le.id for le in self.leases.List(lpb.ListRequest(), metadata=self.md()).leases}

    def blob_files(self) -> set[str]:
        base = self.d.root / "content" / "blobs"
        return {f"{alg.name}:{f.name}" for alg in base.iterdir() for f in alg.iterdir()}

    def ingest_dirs(self) -> set[str]:
        return {p.name for p in (self.d.root / "content" / "ingest").iterdir()}

    def layer_dirs(self) -> set[int]:
        return {int(p.name) for p in (self.d.root / "layers").iterdir()}

    def has_blob(self, digest: str) -> bool:
        try:
            self.content.Info(cpb.InfoRequest(digest=digest))
        except grpc.RpcError as e:
            assert e.code() == C.NOT_FOUND
            return False
        return True

    def has_snapshot(self, key: str) -> bool:
        try:
            self.snapshots.Stat(spb.StatSnapshotRequest(snapshotter="fusesnap", key=key))
        except grpc.RpcError as e:
            assert e.code() == C.NOT_FOUND
            return False
        return True

    def has_ingest(self, ref: str) -> bool:
        try:
            self.content.Status(cpb.StatusRequest(ref=ref))
        except grpc.RpcError as e:
            assert e.code() == C.NOT_FOUND
            return False
        return True

    def assert_exactly(self, blobs: Iterable[str] = (), snapshots: Iterable[str] = (),
                       ingests: Iterable[str] = ()) -> None:
        """The store holds these and nothing else, in the API and on disk."""
        blobs, snapshots, ingests = set(blobs), set(snapshots), set(ingests)
        assert self.blobs() == blobs
        assert self.blob_files() == blobs
        assert all(self.has_blob(b) for b in blobs)
        assert self.snapshot_keys() == snapshots
        assert self.layer_dirs() == {self.ids[k] for k in snapshots}
        assert all(self.has_snapshot(k) for k in snapshots)
        assert self.ingest_refs() == ingests
        assert self.ingest_dirs() == {ingest_dir_name(r) for r in ingests}
        assert all(self.has_ingest(r) for r in ingests)


@pytest.fixture
def start(new_daemon: type[Daemon]) -> Callable[..., Store]:
    """start(*serve_args): a fresh daemon and a Store on it."""
    return lambda *args: Store(new_daemon(args=args).start())


# --------------------------------------------------------------------------- leases


def test_a_blob_held_only_by_a_lease_survives_until_the_lease_is_deleted(start):
    s = start()
    lease = s.lease("hold")
    kept = s.blob(b"leased", lease=lease)
    loose = s.blob(b"loose")
    assert list(s.collect().content) == [loose]
    for _ in range(2):
        s.assert_exactly(blobs={kept})
        assert list(s.collect().content) == []
    assert read(s.content, kept) == b"leased"
    s.drop_lease(lease, sync=True)
    s.assert_exactly()
    assert code(s.content.Info, cpb.InfoRequest(digest=kept)) == C.NOT_FOUND


def test_a_leased_snapshot_chain_survives_until_the_lease_is_deleted(start):
    s = start()
    lease = s.lease()
    chain = s.chain("leased", 2, lease)
    s.prepare("work", chain[-1], lease)
    loose = s.chain("loose", 2)
    assert list(s.collect().snapshots) == loose[::-1]
    s.assert_exactly(snapshots=[*chain, "work"])
    s.drop_lease(lease, sync=True)
    s.assert_exactly()


def test_resources_added_to_a_lease_by_id_are_kept(start):
    s = start()
    blob = s.blob(b"added later")
    s.chain("added", 2)
    lease = s.lease()
    for rtype, rid in (("content", blob), ("snapshots/fusesnap", "added-1")):
        s.leases.AddResource(lpb.AddResourceRequest(
            id=lease, resource=lpb.Resource(type=rtype, id=rid)), metadata=s.md())
    s.collect()
    s.assert_exactly(blobs=[blob], snapshots=["added-0", "added-1"])
    s.leases.DeleteResource(lpb.DeleteResourceRequest(
        id=lease, resource=lpb.Resource(type="content", id=blob)), metadata=s.md())
    assert list(s.collect().content) == [blob]
    s.assert_exactly(snapshots=["added-0", "added-1"])


def test_an_expired_lease_stops_protecting_and_is_deleted(start):
    s = start()
    other = Store(s.d, "other")
    expired = s.lease("expired", {EXPIRE: PAST})
    expired_elsewhere = other.lease("expired", {EXPIRE: rfc3339(-60)})
    live = s.lease("live", {EXPIRE: rfc3339(3600)})
    gone = [s.blob(b"expired", lease=expired), s.blob(b"expired too", lease=expired_elsewhere)]
    kept = s.blob(b"live", lease=live)
    s.chain("expired", 1, expired)
    report = s.collect()
    assert sorted((le.namespace, le.id) for le in report.leases) == [
        ("gc", "expired"), ("other", "expired")]
    assert sorted(report.content) == sorted(gone)
    assert list(report.snapshots) == ["expired-0"]
    assert s.lease_ids() == {"live"}
    assert other.lease_ids() == set()
    s.assert_exactly(blobs=[kept])
    assert list(s.collect().leases) == []


def test_an_expiry_in_any_rfc3339_form_counts(start):
    s = start()
    values = ["2000-01-01T00:00:00.123456789Z", "2000-01-01T01:00:00+01:00",
              "1999-12-31T23:00:00,5-01:00"]
    gone = {s.blob(v.encode(), lease=s.lease(f"expired{i}", {EXPIRE: v}))
            for i, v in enumerate(values)}
    report = s.collect()
    assert sorted(le.id for le in report.leases) == ["expired0", "expired1", "expired2"]
    assert set(report.content) == gone
    assert s.lease_ids() == set()
    s.assert_exactly()


def test_a_lease_whose_expiry_does_not_parse_is_kept_with_its_resources(start):
    """containerd logs the value and ignores it: what Go's time.Parse(RFC3339)
    refuses, such as a time without a zone or ISO 8601 short forms."""
    s = start()
    values = ["tomorrow", "2000-01-01T00:00:00", "2000-13-45T00:00:00Z", "2000-01-01T00:00Z",
              "20000101T000000Z", "2000-01-01 00:00:00Z", "2000-01-01T00:00:00+0100"]
    kept = {s.blob(v.encode(), lease=s.lease(f"odd{i}", {EXPIRE: v}))
            for i, v in enumerate(values)}
    report = s.collect()
    assert (list(report.leases), list(report.content)) == ([], [])
    assert s.lease_ids() == {f"odd{i}" for i in range(len(values))}
    s.assert_exactly(blobs=kept)


def test_a_flat_lease_keeps_its_resources_but_not_their_label_references(start):
    s = start()
    config = s.blob(b"config")
    manifest = s.blob(b"manifest", labels={f"{REF_CONTENT}.config": config})
    referenced_by_snapshot = s.blob(b"snapshot label")
    s.chain("other", 1)
    chain = s.chain("flat", 3, top_labels={
        REF_CONTENT: referenced_by_snapshot, REF_SNAPSHOT: "other-0"})
    flat = s.lease("flat", {FLAT: rfc3339(0)})
    for rtype, rid in (("content", manifest), ("snapshots/fusesnap", chain[-1])):
        s.leases.AddResource(lpb.AddResourceRequest(
            id=flat, resource=lpb.Resource(type=rtype, id=rid)), metadata=s.md())
    report = s.collect()
    assert sorted(report.content) == sorted([config, referenced_by_snapshot])
    assert list(report.snapshots) == ["other-0"]
    s.assert_exactly(blobs=[manifest], snapshots=chain)  # parents still kept


def test_the_same_resources_under_a_plain_lease_keep_their_references(start):
    s = start()
    config = s.blob(b"config")
    manifest = s.blob(b"manifest", labels={f"{REF_CONTENT}.config": config})
    s.chain("other", 1)
    chain = s.chain("plain", 2, top_labels={REF_SNAPSHOT: "other-0"})
    lease = s.lease("plain")
    for rtype, rid in (("content", manifest), ("snapshots/fusesnap", chain[-1])):
        s.leases.AddResource(lpb.AddResourceRequest(
            id=lease, resource=lpb.Resource(type=rtype, id=rid)), metadata=s.md())
    report = s.collect()
    assert (list(report.content), list(report.snapshots)) == ([], [])
    s.assert_exactly(blobs=[manifest, config], snapshots=[*chain, "other-0"])


# --------------------------------------------------------------------------- images and labels


def test_an_image_keeps_its_index_manifest_config_and_layers_through_ref_labels(start):
    s = start()
    layers = [s.blob(b"layer %d" % i) for i in range(3)]
    config = s.blob(b'{"config": true}')
    manifest = s.blob(b'{"manifest": true}', labels={
        f"{REF_CONTENT}.config": config,
        **{f"{REF_CONTENT}.l.{i}": d for i, d in enumerate(layers)}})
    index = s.blob(b'{"index": true}', labels={f"{REF_CONTENT}.m.0": manifest})
    stray = s.blob(b"stray")
    s.image("docker.io/library/app:1", index, media_type=INDEX)
    assert list(s.collect().content) == [stray]
    chain = {index, manifest, config, *layers}
    s.assert_exactly(blobs=chain)
    assert list(s.collect().content) == []
    s.images.Delete(ipb.DeleteImageRequest(name="docker.io/library/app:1", sync=True),
                    metadata=s.md())
    s.assert_exactly()  # a sync delete answers after the collection


def test_an_images_own_label_references_keep_content_and_snapshots(start):
    s = start()
    target = s.blob(b"target")
    extra = s.blob(b"extra")
    chain = s.chain("labelled", 2)
    s.chain("orphan", 1)
    s.image("app:2", target, labels={f"{REF_CONTENT}/x": extra, f"{REF_SNAPSHOT}/0": chain[-1]})
    report = s.collect()
    assert (list(report.content), list(report.snapshots)) == ([], ["orphan-0"])
    s.assert_exactly(blobs=[target, extra], snapshots=chain)


def test_a_snapshot_chain_named_by_the_config_label_survives_and_an_orphan_goes_child_first(
        start):
    s = start()
    kept = s.chain("sha256:kept", 3)
    orphan = s.chain("sha256:orphan", 3)
    s.prepare("orphan-work", orphan[-1], file=b"work")
    s.view("orphan-view", orphan[0])
    config = s.blob(b"config", labels={REF_SNAPSHOT: kept[-1]})
    manifest = s.blob(b"manifest", labels={f"{REF_CONTENT}.config": config})
    s.image("app:3", manifest)
    gone_ids = {s.ids[k] for k in (*orphan, "orphan-work")}
    report = s.collect()
    # Children before parents: the view and the active snapshot before their
    # parents, each committed layer before the one below it.
    order = list(report.snapshots)
    assert sorted(order) == sorted([*orphan, "orphan-work", "orphan-view"])
    assert order.index("orphan-work") < order.index(orphan[2]) < order.index(orphan[1]) \
        < order.index(orphan[0])
    assert order.index("orphan-view") < order.index(orphan[0])
    s.assert_exactly(blobs=[config, manifest], snapshots=kept)
    top = s.d.mountpoint / str(s.ids[kept[-1]])
    files = [f"{n}-active".replace("/", "_") for n in kept]  # one written in each layer
    assert sorted(p.name for p in top.iterdir()) == files
    assert [(top / f).read_bytes() for f in files] == [n.encode() for n in kept]
    for sid in gone_ids:
        assert not (s.d.mountpoint / str(sid)).exists()


def test_content_and_snapshots_labelled_gc_root_survive_with_what_they_reference(start):
    s = start()
    referenced = s.blob(b"referenced by a root")
    root_blob = s.blob(b"root", labels={ROOT: rfc3339(0), f"{REF_CONTENT}.0": referenced})
    loose = s.blob(b"loose")
    by_snapshot = s.blob(b"referenced by a root snapshot")
    base = s.chain("base", 1)
    s.prepare("root-active", base[0], labels={ROOT: "", REF_CONTENT: by_snapshot})
    s.commit("rooted", "root-active", labels={ROOT: "anything", REF_CONTENT: by_snapshot})
    s.chain("unrooted", 2)
    report = s.collect()
    assert list(report.content) == [loose]
    assert list(report.snapshots) == ["unrooted-1", "unrooted-0"]
    s.assert_exactly(blobs=[referenced, root_blob, by_snapshot], snapshots=[*base, "rooted"])


def test_labels_that_only_look_like_references_keep_nothing(start):
    s = start()
    decoy = s.blob(b"decoy")
    s.chain("decoy", 1)
    holder = s.blob(b"holder", labels={
        "containerd.io/gc.ref.contentX": decoy, "containerd.io/gc.reference": decoy,
        "containerd.io/gc.ref.snapshot.": "decoy-0", "containerd.io/gc.roots": "x",
        "gc.ref.content": decoy})
    s.image("app:decoy", holder)
    report = s.collect()
    assert (list(report.content), list(report.snapshots)) == ([decoy], ["decoy-0"])
    s.assert_exactly(blobs=[holder])


def test_an_image_past_its_expiry_keeps_nothing(start):
    s = start()
    target = s.blob(b"expired image target")
    live_target = s.blob(b"live image target")
    s.image("expired:1", target, labels={EXPIRE: PAST})
    s.image("live:1", live_target, labels={EXPIRE: rfc3339(3600)})
    assert list(s.collect().content) == [target]
    s.assert_exactly(blobs=[live_target])


def test_writing_existing_content_under_a_lease_leases_it(start):
    """Opening a writer for a committed blob, or committing bytes another ref
    committed first, answers AlreadyExists and adds the blob to the lease."""
    s = start()
    first, second = s.blob(b"first"), s.blob(b"second")
    lease = s.lease()
    opened = WriteStream(s.content, metadata=s.md(lease))
    assert opened.fails(action=STAT, ref="again", expected=first) == C.ALREADY_EXISTS
    committed = WriteStream(s.content, metadata=s.md(lease))
    committed.send(action=WRITE, ref="again2", offset=0, data=b"second")
    assert committed.fails(action=COMMIT, offset=6) == C.ALREADY_EXISTS
    assert list(s.collect().content) == []
    s.assert_exactly(blobs=[first, second])


# --------------------------------------------------------------------------- ingests


def test_a_leased_ingest_survives_past_the_grace_period(start):
    s = start("--ingest-grace", "0")
    lease = s.lease()
    s.ingest("leased", b"partial", lease)
    s.ingest("control", b"partial")
    assert list(s.collect().ingests) == ["control"]
    s.assert_exactly(ingests=["leased"])
    assert s.content.Status(cpb.StatusRequest(ref="leased")).status.offset == len(b"partial")


def test_a_leased_ingest_goes_with_its_lease(start):
    """containerd gives an ingest opened under a lease no expiry of its own: it
    lives exactly as long as its lease (spec §8, roots 5)."""
    s = start()
    lease = s.lease()
    s.ingest("leased", b"partial", lease)
    s.drop_lease(lease, sync=True)
    s.assert_exactly()


def test_an_unleased_ingest_within_its_grace_period_survives(start):
    """And once the period is over it is collected: tests/test_gc_clock.py,
    on the collector's wall clock."""
    s = start("--ingest-grace", "3600")
    s.ingest("young", b"partial")
    assert list(s.collect().ingests) == []
    s.assert_exactly(ingests=["young"])


def test_an_ingest_whose_write_stream_is_open_is_never_collected(start):
    s = start("--ingest-grace", "0")
    committing = s.open_ingest("committing", b"first half ")
    closing = s.open_ingest("closing", b"bytes")
    s.ingest("control", b"closed")
    assert list(s.collect().ingests) == ["control"]
    assert list(s.collect().ingests) == []
    s.assert_exactly(ingests=["committing", "closing"])

    data = b"first half second half"
    resp = committing.send(action=COMMIT, offset=11, data=data[11:], expected=sha(data))
    assert resp.digest == sha(data)
    assert committing.ended_ok()
    assert closing.finish() == C.OK
    report = s.collect()
    assert (list(report.ingests), list(report.content)) == (["closing"], [sha(data)])
    s.assert_exactly()


def test_a_leased_ingest_keeps_the_blob_it_expects(start):
    s = start()
    data = b"shared content"
    lease = s.lease()
    s.ingest("expecting", b"shared", lease, expected=sha(data))
    digest = s.blob(data)  # through another ref, on no lease
    assert list(s.collect().content) == []
    s.assert_exactly(blobs=[digest], ingests=["expecting"])


# --------------------------------------------------------------------------- scheduling


def test_a_sync_lease_delete_returns_after_blobs_and_layers_are_gone(start):
    s = start("--gc-delay", "60")  # only the sync collection can do it in time
    lease = s.lease()
    blobs = [s.blob(b"blob %d" % i, lease=lease) for i in range(50)]
    chain = s.chain("leased", 4, lease)
    s.assert_exactly(blobs=blobs, snapshots=chain)
    s.drop_lease(lease, sync=True)
    s.assert_exactly()


def test_a_sync_image_delete_returns_after_its_content_is_gone(start):
    s = start("--gc-delay", "60")
    config = s.blob(b"config", labels={REF_SNAPSHOT: "layer-1"})
    manifest = s.blob(b"manifest", labels={f"{REF_CONTENT}.config": config})
    s.chain("layer", 2)
    s.image("app:sync", manifest)
    s.collect()
    s.assert_exactly(blobs=[config, manifest], snapshots=["layer-0", "layer-1"])
    s.images.Delete(ipb.DeleteImageRequest(name="app:sync", sync=True), metadata=s.md())
    s.assert_exactly()


def test_each_kind_of_deletion_over_grpc_schedules_a_background_collection(start):
    """Any deletion schedules a collection --gc-delay later (spec §8,
    scheduling), one kind after the other: a lease Delete without sync, a
    lease DeleteResource, an image Delete without sync, a content Delete (the
    config only the deleted manifest referenced goes) and a snapshot Remove
    (the parents only it held go). The collector's timing (the delay to the
    moment, a burst collected once, nothing collected without a request) is
    tested on a controlled clock in tests/test_gc_clock.py."""
    delay = 0.5
    s = start("--gc-delay", str(delay))

    def collected_in_the_background(delete: Callable[[], object], blobs: Iterable[str] = (),
                                    snapshots: Iterable[str] = ()) -> None:
        """Right after `delete()` these blobs and snapshots' layers are left; a
        collection at least `delay` later removes them all."""
        asked = time.monotonic()
        delete()
        assert (s.blob_files(), s.layer_dirs()) == (set(blobs), {s.ids[k] for k in snapshots})
        wait_for(lambda: not s.blob_files() and not s.layer_dirs())
        assert time.monotonic() - asked >= delay
        s.assert_exactly()

    lease = s.lease()
    blob = s.blob(b"leased", lease=lease)
    chain = s.chain("leased", 2, lease)
    collected_in_the_background(lambda: s.drop_lease(lease), {blob}, chain)

    lease = s.lease()
    blob = s.blob(b"leased", lease=lease)
    collected_in_the_background(lambda: s.leases.DeleteResource(lpb.DeleteResourceRequest(
        id=lease, resource=lpb.Resource(type="content", id=blob)), metadata=s.md()), {blob})

    target = s.blob(b"target")
    s.image("app:async", target)
    collected_in_the_background(lambda: s.images.Delete(
        ipb.DeleteImageRequest(name="app:async"), metadata=s.md()), {target})

    config = s.blob(b"config")
    lease = s.lease()
    manifest = s.blob(b"manifest", lease=lease, labels={f"{REF_CONTENT}.config": config})
    s.assert_exactly(blobs=[config, manifest])
    collected_in_the_background(lambda: s.content.Delete(
        cpb.DeleteContentRequest(digest=manifest), metadata=s.md(lease)), {config})

    lease = s.lease()
    chain = s.chain("base", 2)
    s.prepare("work", chain[-1], lease)
    s.assert_exactly(snapshots=[*chain, "work"])
    collected_in_the_background(lambda: s.snapshots.Remove(spb.RemoveSnapshotRequest(
        snapshotter="fusesnap", key="work"), metadata=s.md(lease)), snapshots=chain)


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_removes_nothing_and_reports_what_a_collection_removes(start):
    s = start("--ingest-grace", "0")
    lease = s.lease("live")
    kept = s.blob(b"kept", lease=lease)
    expired = s.lease("expired", {EXPIRE: PAST})
    blobs = [kept, s.blob(b"loose"), s.blob(b"on expired lease", lease=expired)]
    snapshots = [*s.chain("loose", 3), *s.chain("kept", 1, lease)]
    ingests = [s.ingest("stale", b"partial")]
    s.assert_exactly(blobs, snapshots, ingests)

    dry = s.collect(dry_run=True)
    assert dry.dry_run
    s.assert_exactly(blobs, snapshots, ingests)
    assert s.lease_ids() == {"live", "expired"}
    again = s.collect(dry_run=True)
    assert (again.content, again.ingests, again.snapshots, again.leases) == \
        (dry.content, dry.ingests, dry.snapshots, dry.leases)

    real = s.collect()
    assert not real.dry_run
    assert (list(real.content), list(real.ingests), list(real.snapshots), list(real.leases)) \
        == (list(dry.content), list(dry.ingests), list(dry.snapshots), list(dry.leases))
    assert sorted(real.content) == sorted(blobs[1:])
    assert list(real.snapshots) == ["loose-2", "loose-1", "loose-0"]
    assert list(real.ingests) == ["stale"]
    assert [(le.namespace, le.id) for le in real.leases] == [(NS, "expired")]
    s.assert_exactly([kept], ["kept-0"])


# --------------------------------------------------------------------------- proxy role


def test_a_proxy_never_collects_and_refuses_leases_and_gc(start):
    s = start("--role", "proxy", "--gc-delay", "0.1", "--ingest-grace", "0")
    refused = C.FAILED_PRECONDITION
    assert code(s.leases.Create, lpb.CreateRequest(id="x"), metadata=s.md()) == refused
    assert code(s.leases.Delete, lpb.DeleteRequest(id="x", sync=True),
                metadata=s.md()) == refused
    assert code(s.leases.List, lpb.ListRequest(), metadata=s.md()) == refused
    assert code(s.collect) == refused
    assert code(s.collect, True) == refused
    blobs = [s.blob(b"a"), s.blob(b"b", lease="ignored-in-proxy-role"), s.blob(b"c")]
    chain = s.chain("chain", 3)
    ingests = [s.ingest("stale", b"partial")]
    # Deletions, which in the direct role would schedule a collection.
    s.content.Delete(cpb.DeleteContentRequest(digest=blobs.pop()))
    s.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter="fusesnap", key=chain.pop()))
    time.sleep(0.6)
    s.assert_exactly(blobs, chain, ingests)


# --------------------------------------------------------------------------- crash and concurrency


@pytest.fixture
def fast_root() -> Iterator[Path]:
    """A root on tmpfs, where commits cost no disk flush: these tests need
    thousands of objects, and a kill -9 (unlike a power cut) is no fsync test.
    Request it before `new_daemon`, which then stops its daemons first."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="fusesnap-gc-", dir=shm))
    try:
        yield path / "root"
    finally:
        mnt = path / "root" / "mnt"
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def _populate(s: Store, blobs: int, chains: int, depth: int) -> tuple[set[str], set[str]]:
    """Unreferenced blobs, snapshot chains (some with files) and ingests; and a
    lease's blobs and chain, which must stay: (kept blobs, kept snapshots)."""
    lease = s.lease("keep")
    kept_blobs = {s.blob(b"kept %d" % i, lease=lease) for i in range(20)}
    kept_snaps = set(s.chain("kept", 3, lease))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s.blob(b"unreferenced %d" % i), range(blobs)))
        # Layer data for the removal to chew on.
        list(pool.map(lambda i: s.chain(f"orphan{i}", depth, extra_files=4), range(chains)))
    for i in range(10):
        s.ingest(f"stale-{i}", b"partial %d" % i)
    return kept_blobs, kept_snaps


def _assert_no_record_without_data(s: Store) -> None:
    """Every listed blob reads back whole, every snapshot has its layer and
    mount directory, every ingest its directory."""
    infos = {i.digest: i.size for r in s.content.List(cpb.ListContentRequest()) for i in r.info}
    for digest, size in infos.items():
        data = read(s.content, digest)
        assert (len(data), sha(data)) == (size, digest)
    assert set(infos) <= s.blob_files()
    layers = s.layer_dirs()
    for key in s.snapshot_keys():
        assert s.ids[key] in layers, key
        assert (s.d.mountpoint / str(s.ids[key])).is_dir(), key
    assert {ingest_dir_name(r) for r in s.ingest_refs()} <= s.ingest_dirs()


@pytest.mark.parametrize("moment", ["at-once", "blobs-going", "layers-going"])
def test_kill_during_a_collection_leaves_a_consistent_store(fast_root, new_daemon, moment):
    """kill -9 right after asking (before or inside the transaction), while
    blob files are being unlinked, or while layer directories are being
    removed; after a restart no record lacks its data, and after the next
    collection no data lacks its record."""
    d = new_daemon(fast_root, args=("--ingest-grace", "0")).start()
    s = Store(d)
    kept_blobs, kept_snaps = _populate(s, blobs=600, chains=30, depth=3)
    all_blobs, all_snaps = s.blobs(), s.snapshot_keys()
    dry = s.collect(dry_run=True)
    assert set(dry.content) == all_blobs - kept_blobs
    assert set(dry.snapshots) == all_snaps - kept_snaps
    assert len(dry.ingests) == 10
    files, layers = len(s.blob_files()), len(s.layer_dirs())
    assert (files, layers) == (len(all_blobs), len(all_snaps))

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(s.collect())
        except grpc.RpcError as e:
            outcome.append(e.code())

    collector = threading.Thread(target=run)
    collector.start()
    if moment == "blobs-going":  # the transaction has committed
        wait_for(lambda: len(s.blob_files()) < files or bool(outcome), 30, interval=0)
    elif moment == "layers-going":
        wait_for(lambda: len(s.layer_dirs()) < layers or bool(outcome), 30, interval=0)
    d.kill()
    collector.join()
    caught_running = outcome == [C.UNAVAILABLE] or outcome == [C.CANCELLED]
    left = (len(s.blob_files()), len(s.layer_dirs()))  # what the removals had not reached

    ids = s.ids  # snapshot ids survive restarts
    s = Store(new_daemon(d.root, d.socket, d.args).start())
    s.ids = ids
    blobs_after, snaps_after = s.blobs(), s.snapshot_keys()
    # One transaction: every unreferenced record went, or none did.
    committed = blobs_after == kept_blobs
    assert blobs_after == (kept_blobs if committed else all_blobs)
    assert snaps_after == (kept_snaps if committed else all_snaps)
    assert s.ingest_refs() == (set() if committed else set(dry.ingests))
    if moment != "at-once" and caught_running:
        assert committed
    _assert_no_record_without_data(s)

    s.collect()
    s.assert_exactly(blobs=kept_blobs, snapshots=kept_snaps)
    print(f"killed {moment}: the collection was {'running' if caught_running else 'over'}, "
          f"{'' if committed else 'not '}committed; {left[0]}/{files} blob files and "
          f"{left[1]}/{layers} layer directories were left")


def test_collections_never_delete_what_concurrent_clients_lease(fast_root, new_daemon):
    """8 clients create leases and, under them, blobs (one message or several)
    and snapshots, check each right after creating it, and delete some of
    their leases (sync or not) while collections run back to back and in the
    background. Nothing leased is ever missing; at the end exactly what the
    live leases hold remains."""
    d = new_daemon(fast_root, args=("--gc-delay", "0.05", "--ingest-grace", "0")).start()
    main = Store(d)
    stop = threading.Event()
    missing: list[str] = []
    live: dict[str, set[tuple[str, str]]] = {}  # lease -> (type, id) it holds
    counts = {"collections": 0, "leases": 0, "blobs": 0, "snapshots": 0}
    lock = threading.Lock()
    duration = 8.0

    def check(ok: bool, what: str) -> None:
        if not ok:
            missing.append(what)

    def collect_loop() -> None:
        while not stop.is_set():
            main.collect()
            counts["collections"] += 1

    def client(w: int) -> None:
        s = Store(d)
        rng = random.Random(w)
        base_lease = s.lease(f"w{w}-base")
        base = s.chain(f"w{w}-base", 1, base_lease)[0]
        held = {("snapshots/fusesnap", base)}
        mine = {base_lease: held}
        with lock:
            live[base_lease] = held
        deadline = time.monotonic() + duration
        for i in itertools.count():
            if time.monotonic() > deadline:
                break
            lease = s.lease(f"w{w}-{i}")
            res: set[tuple[str, str]] = set()
            data = f"w{w} i{i} ".encode() + os.urandom(rng.randrange(1, 5000))
            digest = s.blob(data, lease=lease)
            res.add(("content", digest))
            check(s.has_blob(digest) and read(s.content, digest) == data, f"blob {digest}")

            stream = s.open_ingest(f"w{w}-{i}-multi", data[:10], lease)
            time.sleep(rng.random() / 100)  # let collections see the leased ingest
            check(s.has_ingest(f"w{w}-{i}-multi"), f"ingest w{w}-{i}-multi")
            stream.send(action=WRITE, offset=10, data=data[10:] + b"!")
            resp = stream.send(action=COMMIT, offset=len(data) + 1, expected=sha(data + b"!"))
            assert stream.ended_ok()
            res.add(("content", resp.digest))
            check(s.has_blob(resp.digest), f"blob {resp.digest}")

            key, name = f"w{w}-{i}-active", f"w{w}-{i}"
            sid = s.prepare(key, base, lease, file=data if i % 3 == 0 else None)
            check(s.has_snapshot(key) and (d.root / "layers" / str(sid)).is_dir(), key)
            s.commit(name, key, lease)
            check(s.has_snapshot(name) and (d.mountpoint / str(sid)).is_dir(), name)
            res.add(("snapshots/fusesnap", name))
            view = f"w{w}-{i}-view"
            s.view(view, name, lease)
            res.add(("snapshots/fusesnap", view))
            check(s.has_snapshot(view), view)

            # Noise: what no lease holds may go at any moment.
            s.blob(b"noise " + os.urandom(16))
            with contextlib.suppress(grpc.RpcError):
                s.prepare(f"w{w}-{i}-noise", base)

            with lock:
                live[lease] = res
                counts["leases"] += 1
                counts["blobs"] += 2
                counts["snapshots"] += 2
            # What this client's earlier leases hold is all still there.
            for rtype, rid in set().union(*mine.values()):
                check(s.has_blob(rid) if rtype == "content" else s.has_snapshot(rid), rid)
            if rng.random() < 0.6:
                with lock:
                    del live[lease]
                s.drop_lease(lease, sync=rng.random() < 0.3)
            else:
                mine[lease] = res
                if len(mine) > 3:  # release old leases too, keeping the checks short
                    old = rng.choice(sorted(set(mine) - {base_lease}))
                    with lock:
                        del live[old]
                    del mine[old]
                    s.drop_lease(old, sync=rng.random() < 0.3)
        main.ids.update(s.ids)

    with ThreadPoolExecutor(9) as pool:
        loop = pool.submit(collect_loop)
        clients = [pool.submit(client, w) for w in range(8)]
        for f in clients:
            f.result()
        stop.set()
        loop.result()
    assert missing == []

    expected_blobs: set[str] = set()
    expected_snaps: set[str] = set()
    for lease, held in live.items():
        listed = main.leases.ListResources(lpb.ListResourcesRequest(id=lease),
                                           metadata=main.md()).resources
        assert {(r.type, r.id) for r in listed} == held, lease
        for rtype, rid in held:
            if rtype == "content":
                expected_blobs.add(rid)
                assert main.has_blob(rid) and sha(read(main.content, rid)) == rid
            else:
                expected_snaps.add(rid)
                assert main.has_snapshot(rid)
    for key in list(expected_snaps):  # and their parents
        while key:
            expected_snaps.add(key)
            key = main.snapshots.Stat(spb.StatSnapshotRequest(
                snapshotter="fusesnap", key=key)).info.parent
    main.collect()
    main.assert_exactly(blobs=expected_blobs, snapshots=expected_snaps)
    assert counts["collections"] > 20
    print(f"\n{counts}, {len(live)} leases live at the end")
