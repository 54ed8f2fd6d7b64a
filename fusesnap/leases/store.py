"""Leases and the resources they hold (spec §4), per namespace.

A lease is a name for a set of references: content digests, ingest refs,
image names and snapshot keys. Anything a lease references is a root for the
garbage collector (fusesnap.gc) while the lease exists and has not
expired. A reference is only a record: the object need not exist.

Requests that create objects under a lease (the ``containerd-lease`` header)
reach the snapshotter and the content store with a :class:`Holder`; they call
:meth:`LeaseStore.hold` and :meth:`LeaseStore.release` inside the same
transaction that creates or removes the object, so the collector, which runs
on the same thread, never sees the object without its lease.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fusesnap import digests, filters
from fusesnap.errors import AlreadyExists, InvalidArgument, NotFound, NotImplementedYet
from fusesnap.labels import clean
from fusesnap.quoting import quote
from fusesnap.store.db import Database

CONTENT = "content"
INGESTS = "ingests"
IMAGES = "images"
SNAPSHOTS = "snapshots"

EXPIRE_LABEL = "containerd.io/gc.expire"
FLAT_LABEL = "containerd.io/gc.flat"


@dataclass
class Lease:
    id: str
    created_ns: int
    labels: dict[str, str] = field(default_factory=dict)


def _lease(lease_id: str, created_ns: int, labels_json: str) -> Lease:
    """A row of ``leases`` (id, created_ns, labels)."""
    return Lease(lease_id, created_ns, json.loads(labels_json))


@dataclass(frozen=True, order=True)
class Resource:
    type: str
    id: str


@dataclass(frozen=True)
class Holder:
    """The lease a request creates objects under: its namespace and id, and the
    snapshotter name the request used (for ``snapshots/<name>`` resources)."""

    namespace: str
    lease: str
    snapshotter: str = ""

    def snapshot(self, key: str) -> Resource:
        return Resource(f"{SNAPSHOTS}/{self.snapshotter}", key)


def canonical(resource: Resource) -> Resource:
    """`resource` with a validated type and, for content, a canonical digest.

    Types: ``content`` (the id must be a digest), ``ingests``, ``images``
    (containerd 2.0+) and ``snapshots/<snapshotter>``; ``content/…``,
    ``ingests/…``, ``snapshots`` or ``snapshots/a/b`` are InvalidArgument, any
    other type NotImplementedYet, as containerd answers."""
    parts = resource.type.split("/")
    kind = parts[0]
    if kind in (CONTENT, INGESTS, IMAGES):
        if len(parts) != 1:
            raise InvalidArgument(f"invalid resource type {quote(resource.type)}")
    elif kind == SNAPSHOTS:
        if len(parts) != 2:
            raise InvalidArgument(f"invalid snapshot resource type {quote(resource.type)}")
    else:
        raise NotImplementedYet(f"resource type {quote(resource.type)} not supported yet")
    if not resource.id:
        raise InvalidArgument(f"{resource.type} resource id must not be empty")
    if kind == CONTENT:
        try:
            return Resource(CONTENT, str(digests.parse(resource.id)))
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid content resource id {quote(resource.id)}: "
                                  f"{e.message}") from None
    return resource


def generate_id() -> str:
    """A fresh lease id in containerd's shape: ``<ns of the second>-<base64url>``."""
    nanos = time.time_ns() % 1_000_000_000
    return f"{nanos}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


class LeaseStore:
    """Every method is one transaction (or joins the caller's)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _find(self, namespace: str, lease: str) -> Lease | None:
        return self.db.first(_lease, "SELECT id, created_ns, labels FROM leases "
                             "WHERE namespace = ? AND id = ?", (namespace, lease))

    def get(self, namespace: str, lease: str) -> Lease:
        """The lease; NotFound ("lease does not exist") if there is none."""
        found = self._find(namespace, lease)
        if found is None:
            raise NotFound(f"lease {quote(lease)}: lease does not exist")
        return found

    def create(self, namespace: str, lease: str, labels: Mapping[str, str]) -> Lease:
        """A new lease (`lease` "" picks an id); AlreadyExists if the id is taken."""
        lease = lease or generate_id()
        with self.db.transaction():
            if self._find(namespace, lease) is not None:
                raise AlreadyExists(f"lease {quote(lease)}")
            self.db.execute(
                "INSERT INTO leases (namespace, id, created_ns, labels) VALUES (?,?,?,?)",
                (namespace, lease, time.time_ns(), json.dumps(clean(labels), sort_keys=True)))
            return self.get(namespace, lease)

    def delete(self, namespace: str, lease: str) -> None:
        """Remove the lease and its references; NotFound if there is none."""
        with self.db.transaction():
            if self.db.execute("DELETE FROM leases WHERE namespace = ? AND id = ?",
                               (namespace, lease)).rowcount == 0:
                raise NotFound(f"lease {quote(lease)}: lease does not exist")
            self.db.execute("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?",
                            (namespace, lease))

    def list(self, namespace: str, filter_strings: Sequence[str]) -> builtins.list[Lease]:
        """The namespace's leases matching any filter (fields `id`, `labels.<k>`), by id."""
        flt = filters.parse(filter_strings)
        found = self.db.rows(
            _lease, "SELECT id, created_ns, labels FROM leases WHERE namespace = ? ORDER BY id",
            (namespace,))
        return [rec for rec in found
                if flt.match(filters.object_adaptor({"id": rec.id}, rec.labels))]

    def add_resource(self, namespace: str, lease: str, resource: Resource) -> None:
        """Reference `resource` from the lease (idempotent); the object need not exist.
        NotFound for a missing lease comes before the checks of :func:`canonical`,
        as in containerd."""
        with self.db.transaction():
            self.get(namespace, lease)
            self._insert(namespace, lease, canonical(resource))

    def delete_resource(self, namespace: str, lease: str, resource: Resource) -> None:
        """Drop the reference (OK if it is not there); NotFound if the lease is
        missing, before the checks of :func:`canonical`."""
        with self.db.transaction():
            self.get(namespace, lease)
            self._delete(namespace, lease, canonical(resource))

    def resources(self, namespace: str, lease: str) -> builtins.list[Resource]:
        """What the lease references: content, images, ingests, then snapshots."""
        self.get(namespace, lease)
        rows = self.db.all("SELECT type, id FROM lease_resources "
                           "WHERE namespace = ? AND lease = ?", (namespace, lease))
        order = {CONTENT: 0, IMAGES: 1, INGESTS: 2}
        return sorted((Resource(t, i) for t, i in rows),
                      key=lambda r: (order.get(r.type, 3), r.type, r.id))

    # ------------------------------------------------------------------ implicit membership

    def check(self, holder: Holder | None) -> None:
        """NotFound if the request names a lease that does not exist."""
        if holder is not None:
            self.get(holder.namespace, holder.lease)

    def hold(self, holder: Holder | None, resource: Resource) -> None:
        """Add `resource` to the request's lease (nothing without one)."""
        if holder is not None:
            self.check(holder)
            self._insert(holder.namespace, holder.lease, resource)

    def release(self, holder: Holder | None, resource: Resource) -> None:
        """Remove `resource` from the request's lease (nothing without one). For a
        snapshot, any ``snapshots/<name>`` type matches: there is one snapshotter."""
        if holder is None:
            return
        if resource.type.startswith(SNAPSHOTS + "/"):
            self.db.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? "
                "AND type LIKE 'snapshots/%' AND id = ?",
                (holder.namespace, holder.lease, resource.id))
        else:
            self._delete(holder.namespace, holder.lease, resource)

    def _insert(self, namespace: str, lease: str, resource: Resource) -> None:
        self.db.execute("INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) "
                        "VALUES (?,?,?,?)", (namespace, lease, resource.type, resource.id))

    def _delete(self, namespace: str, lease: str, resource: Resource) -> None:
        self.db.execute("DELETE FROM lease_resources WHERE namespace = ? AND lease = ? "
                        "AND type = ? AND id = ?",
                        (namespace, lease, resource.type, resource.id))
