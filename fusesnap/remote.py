"""Lazy layers: eStargz layers whose files arrive the first time they are read.

containerd's remote-snapshot protocol (spec §2.5) asks for them: a Prepare
whose labels name the target (``containerd.io/snapshot.ref``), the layer's
digest and image (``containerd.io/snapshot/cri.layer-digest``,
``…/cri.image-ref``) and the digest of its table of contents
(``containerd.io/snapshot/stargz/toc.digest``, from the manifest, so the TOC
can be trusted) makes, instead of an active snapshot, the committed snapshot
``<target>`` from the layer's TOC alone, labelled
``containerd.io/snapshot/remote``, and answers AlreadyExists. ``fusesnap
images pull --lazy`` sends the same Prepare.

Such a layer has every object and entry of an applied layer; a regular
file's backing file is sparse, of the file's size, and listed in
``remote_files`` until its bytes are there. A read of it fetches the chunks
it reaches with HTTP Range requests, each checked against the TOC's chunk
digest, and writes them into the backing file; once every chunk is there the
whole file is checked against its digest. Opening it to write (or truncating
it, or opening a file of an upper layer whose bytes show it, or a Diff that
holds it) fetches it whole first. A read never sees a byte the TOC does not
vouch for, and one the registry cannot serve fails with EIO and a log line. Meanwhile the whole
layer is downloaded in the background into a content ingest, checked against
the layer's digest, used to fill the files not fetched yet, and committed as
the layer's blob; then the rows go and it is an ordinary committed snapshot.

A layer is fetched lazily only when the daemon can reach its registry, with
its own settings (``serve --insecure-registry``, ``--registry-ca``, the Docker
config file of the user it runs as); otherwise, or when the blob is not
eStargz or no TOC digest is given, Prepare makes an ordinary active snapshot
for a download, and says why in the log.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from fusesnap import estargz
from fusesnap import labels as labels_
from fusesnap.content.store import DATA, ContentStore
from fusesnap.digests import parse
from fusesnap.distribution import Reference, RegistryError, Session, docker_credentials
from fusesnap.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from fusesnap.leases.store import Holder
from fusesnap.snapshots.apply import STAGING, Change, LayerWriter, batches, discard, member_change
from fusesnap.snapshots.layers import ROOT_OID, Attr, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.metastore import Kind
from fusesnap.store.space import NO_SPACE

log = logging.getLogger(__name__)

REF = labels_.SNAPSHOT_REF
LAYER_DIGEST = labels_.CRI_LAYER_DIGEST
IMAGE_REF = labels_.CRI_IMAGE_REF
TOC_DIGEST = estargz.TOC_DIGEST_ANNOTATION
REMOTE = "containerd.io/snapshot/remote"

TAIL = 64 << 10
"""Bytes a remote-snapshot Prepare asks for at the end of a layer, in the
request that also tells its size: the footer and, unless it is larger, the
TOC (a layer of a few hundred files has a TOC of about 10 KiB gzipped)."""
REQUEST = 8 << 20
"""Most compressed bytes asked for in one Range request of a file's chunks."""
QUIET = 1.0
"""Seconds without a lazy Prepare or a fetch for a read before a background
download begins: what a pull and a container's first reads need goes first,
on the CPU and on the link (stargz-snapshotter's background fetcher waits
for such a silence too)."""
QUIET_MAX = 10.0
"""The longest a background download waits for that silence."""
BACKGROUND = 2
"""Layers downloaded in the background at once."""
RETRIES = 5
"""Background download attempts of a layer (1, 2, 4, 8 s apart) before it is
left until the next start."""

Run = Callable[..., Any]
"""Runs a function on the trio thread (TrioBridge.call)."""


@dataclass
class Access:
    """How this daemon reaches registries."""

    insecure: frozenset[str] = frozenset()
    """HOST[:PORT]s spoken to over plain HTTP."""
    ca: str | None = None
    docker_config: Path | None = None

    def session(self, image: str) -> Session:
        ref = Reference.parse(image)
        return Session(ref, creds=docker_credentials(ref.host, self.docker_config),
                       ca=self.ca, plain_http=ref.host in self.insecure)


@dataclass
class LazyFile:
    """A regular file of a lazy layer whose bytes are not all here yet."""

    layer: _Layer
    oid: int
    name: str
    lock: trio.Lock = field(default_factory=trio.Lock)
    done: bool = False
    have: set[int] = field(default_factory=set)
    """Indexes of its chunks fetched and checked so far (reads by range)."""


@dataclass
class _Layer:
    sid: int
    image: str
    digest: str
    size: int
    toc: estargz.Toc
    chunks: dict[str, list[estargz.Chunk]]
    digests: dict[str, str]
    session: Session | None = None
    files: dict[int, LazyFile] = field(default_factory=dict)


def _layer(sid: int, image: str, digest: str, size: int, toc: estargz.Toc) -> _Layer:
    """The layer, its TOC checked: every chunk inside the payload (before the
    TOC), every regular file's chunks covering it."""
    for e in toc.entries:
        at = e.get("offset")
        if at is not None and (not isinstance(at, int) or not 0 <= at < toc.offset):
            raise estargz.EstargzError(
                f"{estargz.TOC_NAME}: {e.get('name')!r} points outside the layer's "
                f"payload (offset {at}; the payload is bytes 0-{toc.offset - 1})")
    by_name: dict[str, list[estargz.Chunk]] = {}
    for c in estargz.chunks(toc):
        by_name.setdefault(c.name, []).append(c)
    digests = {e["name"]: str(e.get("digest", "")) for e in toc.entries
               if e.get("type") == "reg" and e.get("size")}
    return _Layer(sid, image, digest, size, toc, by_name, digests)


def _modtime(text: str) -> int:
    if not text:
        return 0
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise estargz.EstargzError(f"{estargz.TOC_NAME}: bad modtime {text!r}") from None
    return int(when.timestamp())


_TAR_TYPES = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
              "fifo": tarfile.FIFOTYPE}


def _member(e: dict[str, Any]) -> tarfile.TarInfo:
    """The tar header a TOC entry describes (what the applier reads)."""
    kind = e.get("type")
    if kind not in _TAR_TYPES or not isinstance(e.get("name"), str):
        raise estargz.EstargzError(f"{estargz.TOC_NAME}: entry of type {kind!r}")
    info = tarfile.TarInfo(e["name"])
    info.type = _TAR_TYPES[kind]
    try:
        info.size = int(e.get("size", 0)) if kind == "reg" else 0
        info.mode = int(e.get("mode", 0)) & 0o7777
        info.uid, info.gid = int(e.get("uid", 0)), int(e.get("gid", 0))
        info.devmajor, info.devminor = int(e.get("devMajor", 0)), int(e.get("devMinor", 0))
        info.pax_headers = {f"SCHILY.xattr.{k}": base64.b64decode(v).decode(
            "utf-8", "surrogateescape") for k, v in (e.get("xattrs") or {}).items()}
    except (TypeError, ValueError) as err:
        raise estargz.EstargzError(f"{estargz.TOC_NAME}: {e['name']!r}: {err}") from None
    if info.size < 0:
        raise estargz.EstargzError(f"{estargz.TOC_NAME}: {e['name']!r}: negative size")
    info.mtime = _modtime(str(e.get("modtime", "")))
    info.linkname = str(e.get("linkName", ""))
    return info


def _changes(toc: estargz.Toc, staging: str) -> tuple[list[Change], list[str], dict[str, str]]:
    """The layer's entries; regular files staged as sparse files of their
    size; {staged path: TOC name} of those with bytes to fetch."""
    entries: list[Change] = []
    staged: list[str] = []
    remote: dict[str, str] = {}
    try:
        for e in toc.entries:
            if e.get("type") == "chunk":
                continue
            member = _member(e)
            if "/".join(p for p in member.name.split("/") if p not in ("", ".")) \
                    in estargz.RESERVED:
                continue
            change = member_change(member)
            if change.what == "file":
                change.staged = path = f"{staging}{len(staged)}"
                staged.append(path)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.ftruncate(fd, member.size)
                finally:
                    os.close(fd)
                change.size = member.size
                if member.size:
                    remote[path] = e["name"]
            entries.append(change)
    except BaseException:
        discard(staged)
        raise
    return entries, staged, remote


def _lookup(view: View, parts: Iterable[bytes]) -> int:
    oid = ROOT_OID
    for name in parts:
        oid = view.find(oid, name)
        if not oid:
            return 0
    return oid


class RemoteLayers:
    """The lazy layers of one daemon; its methods that touch the store run on
    the trio thread, :meth:`prepare` in a gRPC worker thread."""

    def __init__(self, snapshotter: Snapshotter, content: ContentStore, access: Access) -> None:
        self.snapshotter = snapshotter
        self.db = snapshotter.db
        self.content = content
        self.access = access
        self.layers: dict[int, _Layer] = {}
        self.pending: dict[tuple[int, int], LazyFile] = {}
        """Files whose bytes are not there yet, by (layer, oid)."""
        self._nursery: trio.Nursery | None = None
        self._queue: list[_Layer] = []
        self._slots = trio.Semaphore(BACKGROUND)
        self._last_busy = time.monotonic()
        snapshotter.on_removed.append(self._removed)

    # ------------------------------------------------------------------ start

    def load(self) -> None:
        """At start-up: the lazy layers the store records (those of removed
        snapshots dropped)."""
        known = {sid for sid, kind in self.snapshotter.meta.ids() if kind == Kind.COMMITTED}
        rows = self.db.all("SELECT sid, image, digest, size, payload_end, toc "
                           "FROM remote_layers")
        files = self.db.all("SELECT sid, oid, name FROM remote_files")
        with self.db.transaction():
            for sid, image, digest, size, payload_end, toc_json in rows:
                if sid not in known:
                    self._drop_rows(sid)
                    continue
                data = bytes(toc_json)
                toc = estargz.Toc(payload_end, data, json.loads(data)["entries"])
                layer = self.layers[sid] = _layer(sid, image, digest, size, toc)
                try:
                    layer.session = self.access.session(image)
                except RegistryError as e:
                    log.error("lazy layer %s of %s: %s", digest, image, e)
        for sid, oid, name in files:
            owner = self.layers.get(sid)
            if owner is not None:
                f = owner.files[oid] = LazyFile(owner, oid, name)
                self.pending[(sid, oid)] = f
        self._queue.extend(self.layers.values())

    async def run(self) -> None:
        """Complete the lazy layers in the background until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for layer in self._queue:
                nursery.start_soon(self._complete, layer)
            self._queue.clear()
            await trio.sleep_forever()

    def _start(self, layer: _Layer) -> None:
        if self._nursery is None:
            self._queue.append(layer)
        else:
            self._nursery.start_soon(self._complete, layer)

    # ------------------------------------------------------------------ Prepare

    def prepare(self, run: Run, key: str, parent: str, labels: Mapping[str, str],
                holder: Holder | None) -> bool:
        """In a gRPC worker: make the target of a remote-snapshot Prepare
        lazily and raise AlreadyExists; False when this Prepare is not one
        (or the layer cannot be fetched lazily: the log says why), for an
        ordinary Prepare."""
        self._busy()
        target, digest, image, toc_digest = (labels.get(k, "") for k in (
            REF, LAYER_DIGEST, IMAGE_REF, TOC_DIGEST))
        if not (target and digest and image and toc_digest):
            return False
        if run(self._existing, target, parent):
            raise AlreadyExists(f"target snapshot {target} exists")
        try:
            session = self.access.session(image)
            # The size, the footer and (mostly) the TOC in one round trip.
            size, tail = session.read_tail(digest, TAIL)

            def read(at: int, n: int) -> bytes:
                start = size - len(tail)
                if at >= start:
                    return tail[at - start:at - start + n]
                return session.read_range(digest, at, n)
            toc = estargz.read_toc(read, size)
        except (RegistryError, ValueError) as e:
            log.warning("layer %s of %s: not fetched lazily (%s); prepared for a download",
                        digest, image, e)
            return False
        except estargz.EstargzError as e:
            log.info("layer %s of %s: not eStargz (%s); prepared for a download",
                     digest, image, e)
            return False
        if toc.digest != toc_digest:
            raise InvalidArgument(f"layer {digest} of {image}: its TOC is {toc.digest}, the "
                                  f"manifest says {toc_digest}")
        try:
            layer = _layer(0, image, digest, size, toc)
        except estargz.EstargzError as e:
            raise InvalidArgument(f"layer {digest} of {image}: {e}") from None
        layer.session = session
        self._build(run, key, target, parent, labels, holder, layer)
        raise AlreadyExists(f"target snapshot {target} made from the layer's TOC")

    def _existing(self, target: str, parent: str) -> bool:
        return any(r.kind == Kind.COMMITTED and r.labels.get(REF) == target
                   and r.parent == parent for r in self.snapshotter.meta.walk())

    def _build(self, run: Run, key: str, target: str, parent: str, labels: Mapping[str, str],
               holder: Holder | None, layer: _Layer) -> None:
        build = f"remote-{secrets.token_hex(6)} {target}"
        snap = self.snapshotter
        run(snap.prepare, build, parent, {}, holder)
        try:
            view: View = run(lambda: snap.view_of(snap.meta.get(build).id))
            staging = f"{snap.tree.layers_dir}/{view.top}/{STAGING}{secrets.token_hex(6)}-"
            try:
                entries, staged, remote = _changes(layer.toc, staging)
            except estargz.EstargzError as e:
                raise InvalidArgument(f"layer {layer.digest} of {layer.image}: {e}") from None
            names = {c.parts: remote[c.staged] for c in entries
                     if c.staged is not None and c.staged in remote}
            try:
                writer: LayerWriter = run(LayerWriter, snap.tree, view,
                                          f"{staging}keep-", snap.entries_changed)
                try:
                    for batch in batches(entries):
                        run(writer.apply, batch)
                    run(writer.finish)
                except Exception as e:
                    raise InvalidArgument(f"layer {layer.digest} of {layer.image}: {e}") \
                        from None
                lbls = {**labels, REF: target, REMOTE: "remote snapshot"}
                run(self._commit, build, target, lbls, holder, view, layer, names)
            finally:
                discard(staged)
        except BaseException:
            with contextlib.suppress(Exception):
                run(snap.remove, build)
            raise

    def _commit(self, build: str, target: str, labels: Mapping[str, str],
                holder: Holder | None, view: View, layer: _Layer,
                names: dict[tuple[bytes, ...], str]) -> None:
        """On the trio thread: record the layer's files to fetch and commit
        it as `target`, in one transaction."""
        layer.sid = view.top
        with self.db.transaction():
            self.db.execute("INSERT INTO remote_layers (sid, image, digest, size, payload_end, "
                            "toc) VALUES (?,?,?,?,?,?)",
                            (layer.sid, layer.image, layer.digest, layer.size,
                             layer.toc.offset, layer.toc.json))
            for parts, name in names.items():
                oid = _lookup(view, parts)
                if oid and oid not in layer.files:
                    layer.files[oid] = LazyFile(layer, oid, name)
                    self.db.execute("INSERT INTO remote_files (sid, oid, name) VALUES (?,?,?)",
                                    (layer.sid, oid, name))
            self.snapshotter.commit(target, build, labels, holder=holder)
        self.layers[layer.sid] = layer
        for oid, f in layer.files.items():
            self.pending[(layer.sid, oid)] = f
        log.info("layer %s of %s: snapshot %s made from its TOC (%d files to fetch)",
                 layer.digest, layer.image, target, len(layer.files))
        self._start(layer)

    # ------------------------------------------------------------------ reads

    async def ensure(self, a: Attr) -> None:
        """Before `a`'s bytes are opened: fetch those still remote (its own
        layer's and those of the layers below that show through);
        OSError(EIO) if they cannot be had."""
        if not stat.S_ISREG(a.mode) or a.data is None:
            return
        layers = [a.data]
        if a.base is not None:
            layers += self.snapshotter.tree.files.lower_layers(a)
        for layer in layers:
            f = self.pending.get((layer, a.oid))
            if f is not None:
                await self._fetch(f)

    async def ensure_all(self, files: Iterable[Attr]) -> None:
        """Before the daemon itself reads the bytes of `files` (a Diff's tar):
        :meth:`ensure` for each; OSError(EIO) if some cannot be had."""
        if self.pending:
            for a in files:
                await self.ensure(a)

    def by_range(self, a: Attr, flags: int) -> LazyFile | None:
        """The lazy file whose chunks a read-only open of `a` with `flags`
        leaves to its reads (:meth:`ensure_range`); None when the open must
        :meth:`ensure` the whole file first (a write, a truncate, bytes that
        come from more than one layer, or nothing left to fetch)."""
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            return None
        if not stat.S_ISREG(a.mode) or a.data is None or a.base is not None:
            return None
        return self.pending.get((a.data, a.oid))

    async def ensure_range(self, f: LazyFile, off: int, size: int) -> None:
        """Before a read of bytes [off, off + size) of lazy file `f`: the
        chunks that hold them fetched, each checked against its chunk digest;
        once every chunk is, the whole file is checked against its digest
        and is no longer lazy. OSError(EIO) if they cannot be had."""
        chunks = f.layer.chunks.get(f.name, [])
        want = [i for i, c in enumerate(chunks) if i not in f.have
                and c.chunk_offset < off + size and off < c.chunk_offset + c.size]
        if not want or f.done:
            return
        self._busy()
        async with f.lock:
            if f.done:
                return
            want = [i for i in want if i not in f.have]
            path = self.snapshotter.tree.files.data_path(f.layer.sid, f.oid)
            await self._filling(f, _fill, f.layer, f.name, path, None, want)
            f.have.update(want)
            if len(f.have) == len(chunks):
                await self._filling(f, _check_file, f.layer, f.name, path)
                self._fetched(f)

    async def _fetch(self, f: LazyFile, blob: str | None = None) -> None:
        if blob is None:
            self._busy()  # a read waits for it
        async with f.lock:
            if f.done:
                return
            path = self.snapshotter.tree.files.data_path(f.layer.sid, f.oid)
            await self._filling(f, _fill, f.layer, f.name, path, blob, None)
            self._fetched(f)

    async def _filling(self, f: LazyFile, fill: Callable[..., None], *args: Any) -> None:
        """`fill(*args)` in a worker thread, writing bytes of `f`: ENOSPC
        on a full disk (checked first, as a write through the mount is),
        EIO and a log line for anything else."""
        layer = f.layer
        space = self.snapshotter.tree.space
        try:
            space.check()
        except ResourceExhausted as e:
            raise OSError(errno.ENOSPC, str(e)) from None
        try:
            await trio.to_thread.run_sync(fill, *args)
        except OSError as e:
            if e.errno in NO_SPACE:
                space.exhausted(f"fetching {f.name} of layer {layer.digest}")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            log.error("layer %s of %s: %s: cannot fetch its bytes: %s",
                      layer.digest, layer.image, f.name, e)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        except Exception as e:  # a read must get EIO, not the daemon's exception
            log.error("layer %s of %s: %s: cannot fetch its bytes: %s",
                      layer.digest, layer.image, f.name, e)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None

    def _fetched(self, f: LazyFile) -> None:
        """`f`'s bytes are all there and checked: no longer lazy."""
        layer = f.layer
        if layer.sid in self.layers:
            with self.db.transaction():
                self.db.execute("DELETE FROM remote_files WHERE sid = ? AND oid = ?",
                                (layer.sid, f.oid))
        f.done = True
        self.pending.pop((layer.sid, f.oid), None)

    # ------------------------------------------------------------------ background

    def _busy(self) -> None:
        """Something in the foreground needs a registry now (any thread)."""
        self._last_busy = time.monotonic()

    async def _quiet(self) -> None:
        """Until QUIET seconds have passed without :meth:`_busy`, QUIET_MAX at most."""
        deadline = time.monotonic() + QUIET_MAX
        while (wait := min(self._last_busy + QUIET, deadline) - time.monotonic()) > 0:
            await trio.sleep(wait)

    async def _complete(self, layer: _Layer) -> None:
        self._announce(layer)
        await self._quiet()
        async with self._slots:
            for attempt in range(RETRIES):
                if layer.sid not in self.layers:
                    return
                try:
                    await self._download(layer)
                    return
                except Exception as e:  # a background task must not end the daemon
                    log.warning("layer %s of %s: background download, attempt %d of %d: %s",
                                layer.digest, layer.image, attempt + 1, RETRIES, e)
                if attempt + 1 < RETRIES:
                    await trio.sleep(2 ** attempt)
            log.error("layer %s of %s: left lazy until the next start", layer.digest,
                      layer.image)

    def _announce(self, layer: _Layer) -> None:
        """The layer's download ingest exists from now on, empty until its
        turn: what a client that needs the blob (export, push) finds with
        Content.Status, to say why it is missing."""
        store = self.content
        try:
            store.info(layer.digest)
            return
        except NotFound:
            pass
        try:
            lock, _ = store.begin_write(labels_.REMOTE_INGEST + layer.digest, layer.size,
                                        layer.digest)
        except (AlreadyExists, Unavailable):
            return
        store.end_write(lock)

    async def _download(self, layer: _Layer) -> None:
        store = self.content
        ref = labels_.REMOTE_INGEST + layer.digest
        try:
            store.info(layer.digest)
        except NotFound:
            try:
                lock, _ = store.begin_write(ref, layer.size, layer.digest)
            except AlreadyExists:
                pass
            else:
                try:
                    data = store.ingest_dir(ref) / DATA
                    await trio.to_thread.run_sync(_download_blob, layer, str(data))
                    with contextlib.suppress(AlreadyExists):
                        store.commit(lock, layer.digest, layer.size, {})
                finally:
                    store.end_write(lock)
        blob = str(store.blob_path(parse(layer.digest)))
        for f in list(layer.files.values()):
            if layer.sid not in self.layers:
                return
            await self._fetch(f, blob)
        with self.db.transaction():
            self._drop_rows(layer.sid)
        self.layers.pop(layer.sid, None)
        log.info("layer %s of %s: complete and verified; snapshot %s is ordinary",
                 layer.digest, layer.image, layer.sid)

    # ------------------------------------------------------------------ removal

    def _drop_rows(self, sid: int) -> None:
        self.db.execute("DELETE FROM remote_files WHERE sid = ?", (sid,))
        self.db.execute("DELETE FROM remote_layers WHERE sid = ?", (sid,))

    def _removed(self, sid: int) -> None:
        layer = self.layers.pop(sid, None)
        if layer is None:
            return
        for oid in layer.files:
            self.pending.pop((sid, oid), None)
        with self.db.transaction():
            self._drop_rows(sid)


def _fill(layer: _Layer, name: str, path: str, blob: str | None,
          only: list[int] | None) -> None:
    """In a worker thread: the bytes of file `name` of `layer` written into
    its backing file `path`, every chunk checked against the TOC, and the
    whole file; from the local copy `blob` of the layer when given. With
    `only`, just those chunks (indexes, ascending), and not the whole file."""
    chunks = layer.chunks.get(name, [])
    if blob is not None:
        bfd = os.open(blob, os.O_RDONLY | os.O_CLOEXEC)

        def read_range(at: int, n: int) -> bytes:
            return os.pread(bfd, n, at)
    else:
        bfd = -1
        session = layer.session
        if session is None:
            raise RegistryError(f"no access to {layer.image}")

        def read_range(at: int, n: int) -> bytes:
            return session.read_range(layer.digest, at, n)
    todo = list(range(len(chunks))) if only is None else only
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        whole = hashlib.sha256()
        k = 0
        while k < len(todo):
            # One request for the next chunks that follow each other in the
            # blob, up to REQUEST bytes.
            first = chunks[todo[k]]
            n = 1
            while (k + n < len(todo) and todo[k + n] == todo[k] + n
                   and chunks[todo[k + n]].end - first.offset <= REQUEST):
                n += 1
            data = read_range(first.offset, chunks[todo[k + n - 1]].end - first.offset)
            for c in (chunks[i] for i in todo[k:k + n]):
                plain = estargz.read_chunk(data[c.offset - first.offset:c.end - first.offset], c)
                whole.update(plain)
                os.pwrite(fd, plain, c.chunk_offset)
            k += n
        if only is None:
            _check_digest(layer, name, whole)
            os.fsync(fd)
    finally:
        os.close(fd)
        if bfd >= 0:
            os.close(bfd)


def _check_file(layer: _Layer, name: str, path: str) -> None:
    """In a worker thread: file `name`'s backing file, whole now, checked
    against the TOC's digest of it, and made durable."""
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            whole.update(block)
        _check_digest(layer, name, whole)
        os.fsync(f.fileno())


def _check_digest(layer: _Layer, name: str, whole: Any) -> None:
    got = "sha256:" + whole.hexdigest()
    if got != layer.digests.get(name):
        raise estargz.EstargzError(f"{name}: digest {got}, the TOC says "
                                   f"{layer.digests.get(name)}")


def _download_blob(layer: _Layer, path: str) -> None:
    """In a worker thread: the whole blob into `path` (resumed from its
    size), checked against the layer's digest."""
    session = layer.session
    assert session is not None
    with open(path, "ab") as out:
        done = out.tell()
        while done < layer.size:
            n = min(REQUEST, layer.size - done)
            out.write(session.read_range(layer.digest, done, n))
            done += n
        out.flush()
        os.fsync(out.fileno())
    h = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            h.update(chunk)
    got = "sha256:" + h.hexdigest()
    if got != layer.digest:
        os.unlink(path)
        open(path, "wb").close()
        raise estargz.EstargzError(f"the layer's bytes are {got}, not {layer.digest}")
