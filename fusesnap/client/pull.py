"""``fusesnap images pull``: an image from an OCI distribution registry into
the daemon, as :func:`fusesnap.client.importer.import_archive` imports one
from an archive.

The image's index (if any) is resolved to the manifest for a platform (the
host's by default), its config read and checked; then, under one lease
(the caller's or one of its own), the layers and the config are downloaded
in parallel, each into a content ingest named ``pull-DIGEST`` with the
daemon checking its digest at the commit (an ingest whose bytes do not match
is aborted): an ingest an interrupted pull left resumes with an HTTP Range
request from its offset. A failed pull keeps its own lease (it expires in
24 h) so that what it downloaded, its ingests included, is not collected
before the next attempt. The manifest and indexes
follow with containerd's ``gc.ref`` labels, the layers are applied by the
daemon's Applier into snapshots named by their chain IDs, and the image
record is written last, so that a failed pull leaves no record and changes
nothing stored already.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import threading
import time
from dataclasses import dataclass

import grpc

from fusesnap.client.archive import (
    ArchiveDescriptor,
    Platform,
    Resolved,
    parse_json,
    resolve,
    walk,
)
from fusesnap.client.importer import (
    REF_SNAPSHOT,
    SNAPSHOTTER,
    Client,
    Imported,
    ProgressFactory,
    leased,
    record_image,
    unpack,
)
from fusesnap.client.registry import Reference, Registry, RegistryError, docker_credentials
from fusesnap.estargz import TOC_DIGEST_ANNOTATION as TOC_DIGEST
from fusesnap.labels import CRI_IMAGE_REF as IMAGE_REF
from fusesnap.labels import CRI_LAYER_DIGEST as LAYER_DIGEST
from fusesnap.labels import SNAPSHOT_REF as REF
from fusesnap.pb import snapshots_pb2 as spb

PARALLEL = 4
"""Blobs downloaded at once."""
LOCKED_WAIT = 3600.0
"""Seconds a download waits for another pull that holds the same blob's ingest."""


@dataclass
class PullOptions:
    platform: Platform | None = None
    creds: tuple[str, str] | None = None
    """None: from the Docker config file, if it has any for the host."""
    ca: str | None = None
    plain_http: bool = False
    lazy: bool = False
    """Layers are not downloaded: the daemon makes them from their eStargz
    TOCs and fetches files as they are opened (fusesnap/remote.py)."""


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise RegistryError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    return Platform(*parts)


def pull_image(channel: grpc.Channel, reference: str, *, name: str | None = None,
               options: PullOptions | None = None, lease: str | None = None,
               progress: ProgressFactory | None = None) -> Imported:
    """Pull `reference` (see the module docstring) and record it as `name`
    (default: the normalized reference, e.g. ``docker.io/library/alpine:3``).
    Raises RegistryError (the registry refused or failed, a blob that does
    not match its digest), ArchiveError (an invalid document), LayerError or
    grpc.RpcError."""
    options = options or PullOptions()
    ref = Reference.parse(reference)
    creds = options.creds if options.creds is not None else docker_credentials(ref.host)
    registry = Registry(ref, creds=creds, ca=options.ca, plain_http=options.plain_http)
    image = resolve(registry, registry.target(), options.platform)
    if options.platform is not None and not image.indexes:
        _check_platform(registry, image, options.platform)
    if options.lazy:
        _check_lazy(image)
    with leased(Client(channel), lease, "pull", keep_on_failure=True) as client:
        _fetch(client, registry, image, progress, layers=not options.lazy)
        if options.lazy:
            applied = _unpack_lazily(client, ref, image)
        else:
            applied = unpack(client, registry, image, progress)
        record_image(client, name or str(ref), image.target)
    return Imported(name or str(ref), image.target, image.chain_ids, applied)


def _check_platform(registry: Registry, image: Resolved, plat: Platform) -> None:
    """A manifest that no index names a platform for: its config's must fit."""
    config = parse_json(registry.read_blob(image.config), f"config {image.config.digest}")
    if not plat.matches(config):
        raise RegistryError(f"{registry.ref} is one manifest, for "
                            f"{config.get('os')}/{config.get('architecture')}, not {plat}")


SOURCE_LABEL = "containerd.io/distribution.source."
"""containerd's content label ``…source.HOST=REPO[,REPO…]``: where a blob is
known to be. Pull sets it to the repository it pulled from (as containerd's
pull does; the last pull's repository, not a list); push tries a
cross-repository mount from the repositories it names."""


def _check_lazy(image: Resolved) -> None:
    for i, layer in enumerate(image.layers):
        if not layer.annotations.get(TOC_DIGEST):
            raise RegistryError(
                f"layer {i + 1} ({layer.digest}) has no {TOC_DIGEST} annotation, so it is "
                "not eStargz and cannot be pulled lazily; pull without --lazy, or make an "
                "eStargz image with 'fusesnap images convert --estargz' and push that")


def _unpack_lazily(client: Client, ref: Reference, image: Resolved) -> list[str]:
    """Each layer made by the daemon from its TOC: a remote-snapshot Prepare
    (spec §2.5), answered AlreadyExists. Returns the chain IDs made."""
    made: list[str] = []
    parent = ""
    for layer, chain_id in zip(image.layers, image.chain_ids, strict=True):
        if not client.committed(chain_id):
            key = f"{chain_id}-extract-{secrets.token_hex(6)}"
            labels = {REF: chain_id, LAYER_DIGEST: layer.digest, IMAGE_REF: str(ref),
                      TOC_DIGEST: layer.annotations[TOC_DIGEST]}
            try:
                client.snapshots.Prepare(spb.PrepareSnapshotRequest(
                    snapshotter=SNAPSHOTTER, key=key, parent=parent, labels=labels),
                    metadata=client.metadata)
            except grpc.RpcError as err:
                if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.ALREADY_EXISTS:
                    made.append(chain_id)
                    parent = chain_id
                    continue
                raise
            client.snapshots.Remove(spb.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER,
                                                              key=key),
                                    metadata=client.metadata)
            raise RegistryError(
                f"the daemon did not make layer {layer.digest} lazily (its log says why; for "
                f"a registry on plain HTTP it needs serve --insecure-registry {ref.host}, "
                "for a private CA serve --registry-ca FILE, for credentials its user's "
                "Docker config file)")
        parent = chain_id
    return made


def _fetch(client: Client, registry: Registry, image: Resolved,
           progress: ProgressFactory | None, layers: bool = True) -> None:
    """Every blob of `image` into the content store (without `layers`, all
    but the layers): layers and config in parallel, then the documents that
    name them."""
    stop = threading.Event()  # set on a failure or Ctrl-C: the downloads end at their next read

    def store(desc: ArchiveDescriptor, labels: dict[str, str]) -> None:
        deadline = time.monotonic() + LOCKED_WAIT
        moved = 0  # times the ingest moved under us; a few at most
        while True:
            try:
                client.store_blob(desc, lambda offset: registry.open_blob(desc, offset, stop),
                                  labels, progress, ref=f"pull-{desc.digest}")
                return
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                details = err.details() if isinstance(err, grpc.Call) else ""
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise RegistryError(f"blob {desc.digest} from {registry.ref.api_host} "
                                        f"does not match its digest or size, refused "
                                        f"({details})") from None
                # Another pull downloads this blob now (the ingest is locked,
                # or it moved on between our Status and Write): wait, then
                # find the blob stored or the ingest free to resume.
                busy = code == grpc.StatusCode.UNAVAILABLE and "locked" in (details or "")
                moved += code == grpc.StatusCode.OUT_OF_RANGE
                if not (busy or code == grpc.StatusCode.OUT_OF_RANGE) or moved > 5 \
                        or time.monotonic() > deadline:
                    raise
            if stop.wait(0.5):
                raise RegistryError(f"blob {desc.digest}: download stopped")

    pool = concurrent.futures.ThreadPoolExecutor(PARALLEL)
    futures: list[concurrent.futures.Future[None]] = []
    try:
        started: set[str] = set()  # a layer twice in a manifest is one ingest
        source = {SOURCE_LABEL + registry.ref.host: registry.ref.repository}
        for desc, labels in walk(registry, image):
            labels = {**labels, **source}
            if desc == image.config and image.layers:
                labels = {**labels, REF_SNAPSHOT: image.chain_ids[-1]}
            if desc in image.layers and not layers:
                continue
            if desc in image.layers or desc == image.config:
                if desc.digest not in started:
                    started.add(desc.digest)
                    futures.append(pool.submit(store, desc, labels))
                continue
            _wait(futures)
            store(desc, labels)
        _wait(futures)
    except BaseException:
        stop.set()
        registry.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _wait(futures: list[concurrent.futures.Future[None]]) -> None:
    """Wait for all; on the first failure raise it at once (the caller stops
    the other downloads rather than waiting for them to finish)."""
    done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for f in futures:
        if f in done and f.exception() is not None:
            for other in futures:
                other.cancel()
            f.result()


__all__ = ["PullOptions", "parse_platform", "pull_image"]
