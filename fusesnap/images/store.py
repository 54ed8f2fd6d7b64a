"""The image store: per namespace, a name pointing at a target descriptor, with
labels and timestamps (spec §5).

An image is only a record: neither its target nor anything its labels
reference need exist. Images are roots of the garbage collector
(fusesnap.gc, spec §8). Every mutation is one transaction, and every
check is made before anything is written, so a refused request changes nothing.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fusesnap import digests, filters
from fusesnap.errors import AlreadyExists, InvalidArgument, NotFound
from fusesnap.labels import apply_mask, clean, validate
from fusesnap.leases.store import EXPIRE_LABEL, IMAGES, Holder, LeaseStore, Resource
from fusesnap.quoting import quote
from fusesnap.store.db import Database

_ANNOTATIONS = "annotations"
_ANNOTATION_PREFIX = "annotations."
_TARGET = "target"
_TARGET_PATHS = (_TARGET, _ANNOTATIONS, _ANNOTATION_PREFIX)
"""Update mask paths other than labels (see `labels.apply_mask`'s extra_paths)."""


@dataclass(frozen=True)
class Descriptor:
    """An image's target: the stored fields of containerd.types.Descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0


_SELECT = ("SELECT name, media_type, digest, size, annotations, labels, created_ns, updated_ns "
           "FROM images")


def _image(name: str, media_type: str, digest: str, size: int, annotations: str, labels: str,
           created: int, updated: int) -> Image:
    """A row of :data:`_SELECT`."""
    return Image(name, Descriptor(media_type, digest, size, json.loads(annotations)),
                 json.loads(labels), created, updated)


def _require_name(name: str) -> None:
    if not name:
        raise InvalidArgument("Image.Name required")


def _validate(image: Image) -> None:
    """InvalidArgument unless `image` may be stored (spec §5.2)."""
    _require_name(image.name)
    validate(image.labels)
    target = image.target
    try:
        digests.parse(target.digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"Target.Digest invalid: {e.message}") from None
    if target.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero")
    if not target.media_type:
        raise InvalidArgument("Target.MediaType must be set")


def _cleaned(image: Image) -> Image:
    """`image` without empty label and annotation values (never stored, spec §1.4)."""
    target = replace(image.target, annotations=clean(image.target.annotations))
    return replace(image, target=target, labels=clean(image.labels))


def _merge(current: Image, requested: Image, paths: Sequence[str]) -> Image:
    """The image an Update with field mask `paths` leaves (spec §7.2): paths apply
    in order; ``target`` replaces the whole descriptor, annotations included;
    no paths replace everything but the name and creation time."""
    labels = apply_mask(current.labels, requested.labels, paths, what="image",
                        name=current.name, extra_paths=_TARGET_PATHS)
    if not paths:
        return replace(requested, labels=labels, created_ns=current.created_ns)
    target = current.target
    for path in paths:
        if path == _TARGET:
            target = requested.target
        elif path == _ANNOTATIONS:
            target = replace(target, annotations=requested.target.annotations)
        elif path.startswith(_ANNOTATION_PREFIX):
            key = path[len(_ANNOTATION_PREFIX):]
            annotations = dict(target.annotations)
            annotations[key] = requested.target.annotations.get(key, "")
            target = replace(target, annotations=annotations)
    return replace(current, target=target, labels=labels)


class ImageStore:
    """Images by (namespace, name). Every method takes the namespace first and
    runs on the thread that owns the database."""

    def __init__(self, db: Database, leases: LeaseStore) -> None:
        self.db = db
        self.leases = leases

    def _find(self, namespace: str, name: str) -> Image | None:
        return self.db.first(_image, _SELECT + " WHERE namespace = ? AND name = ?",
                             (namespace, name))

    def get(self, namespace: str, name: str) -> Image:
        """The image `name`; NotFound if there is none."""
        found = self._find(namespace, name)
        if found is None:
            raise NotFound(f"image {quote(name)}")
        return found

    def list(self, namespace: str, filter_strings: Sequence[str]) -> builtins.list[Image]:
        """The namespace's images matching any filter, by name; fields `name`,
        `target.digest`, `target.mediatype`, `labels.<k>`, `annotations.<k>` (the
        target's, spec §7.1). InvalidArgument for a filter that does not parse."""
        flt = filters.parse(filter_strings)
        found = self.db.rows(_image, _SELECT + " WHERE namespace = ? ORDER BY name",
                             (namespace,))
        if flt.matches_everything:
            return found
        return [image for image in found if flt.match(filters.object_adaptor(
            {"name": image.name, "target.digest": image.target.digest,
             "target.mediatype": image.target.media_type},
            image.labels, image.target.annotations))]

    def create(self, namespace: str, image: Image, holder: Holder | None,
               source_date_epoch_ns: int | None = None) -> Image:
        """Store a new image, created and updated now (or at `source_date_epoch_ns`);
        the timestamps in `image` are ignored. InvalidArgument for an invalid
        image, AlreadyExists if the name is taken, NotFound if `holder` names a
        missing lease. An image labelled ``containerd.io/gc.expire`` joins the
        request's lease (containerd 2.0)."""
        _require_name(image.name)
        with self.db.transaction():
            self.leases.check(holder)
            image = _cleaned(image)
            _validate(image)
            if self._find(namespace, image.name) is not None:
                raise AlreadyExists(f"image {quote(image.name)}")
            now = time.time_ns() if source_date_epoch_ns is None else source_date_epoch_ns
            self._write(namespace, replace(image, created_ns=now, updated_ns=now), insert=True)
            self._hold(holder, image)
            return self.get(namespace, image.name)

    def update(self, namespace: str, image: Image, paths: Sequence[str], holder: Holder | None,
               source_date_epoch_ns: int | None = None) -> Image:
        """Change the image `image.name` as the field mask `paths` says (spec §5.2,
        §7.2) and set its updated time to now (or `source_date_epoch_ns`).
        InvalidArgument for an empty name, another path or an invalid result,
        NotFound if the image or `holder`'s lease is missing."""
        _require_name(image.name)
        with self.db.transaction():
            self.leases.check(holder)
            merged = _cleaned(_merge(self.get(namespace, image.name), image, paths))
            _validate(merged)
            now = time.time_ns() if source_date_epoch_ns is None else source_date_epoch_ns
            self._write(namespace, replace(merged, updated_ns=now), insert=False)
            self._hold(holder, merged)
            return self.get(namespace, image.name)

    def delete(self, namespace: str, name: str, target_digest: str = "") -> None:
        """Remove the image; NotFound if there is none, or if `target_digest` is
        given and is not its target's digest (containerd 2.0)."""
        with self.db.transaction():
            current = self.get(namespace, name)
            if target_digest and current.target.digest != target_digest:
                raise NotFound(f"image {quote(name)} has target {current.target.digest}, "
                               f"not {target_digest}")
            self.db.execute("DELETE FROM images WHERE namespace = ? AND name = ?",
                            (namespace, name))

    def _write(self, namespace: str, image: Image, *, insert: bool) -> None:
        target = image.target
        values = (target.media_type, target.digest, target.size,
                  json.dumps(dict(target.annotations), sort_keys=True),
                  json.dumps(dict(image.labels), sort_keys=True),
                  image.created_ns, image.updated_ns, namespace, image.name)
        if insert:
            self.db.execute(
                "INSERT INTO images (media_type, digest, size, annotations, labels, "
                "created_ns, updated_ns, namespace, name) VALUES (?,?,?,?,?,?,?,?,?)", values)
        else:
            self.db.execute(
                "UPDATE images SET media_type = ?, digest = ?, size = ?, annotations = ?, "
                "labels = ?, created_ns = ?, updated_ns = ? WHERE namespace = ? AND name = ?",
                values)

    def _hold(self, holder: Holder | None, image: Image) -> None:
        # containerd 2.0: only an image that can expire needs its lease.
        if holder is not None and EXPIRE_LABEL in image.labels:
            self.leases.hold(holder, Resource(IMAGES, image.name))
