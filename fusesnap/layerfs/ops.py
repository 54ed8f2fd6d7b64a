"""The FUSE filesystem: pyfuse3.Operations over the layer tree, nothing else.

The mount's root lists every snapshot by id; `<mountpoint>/<id>` is that
snapshot's merged view. A FUSE inode number packs the snapshot id and the
object id (`sid << 36 | oid`), so it is stable for the life of the mount (and
across restarts), two names of one object share it, and a handler finds its
view and object without a table. Every handler turns OSError and domain
errors into FUSEError; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pyfuse3

from fusesnap.errors import ResourceExhausted
from fusesnap.layerfs.stats import FuseStats
from fusesnap.remote import LazyFile, RemoteLayers
from fusesnap.snapshots.layers import NAME_MAX, ROOT_OID, Attr, LayerTree, OpenFile, View
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store.space import NO_SPACE

log = logging.getLogger(__name__)

OID_BITS = 36
OID_MASK = (1 << OID_BITS) - 1
RENAME_WHITEOUT = 4  # linux/fs.h; pyfuse3 does not export it
# Every change to a snapshot passes through this mount, so the kernel may keep
# what it learned; changes made behind its back invalidate explicitly.
CACHE_TIMEOUT = 3600.0

T = TypeVar("T")

# Our handlers, by the name of the FUSE request each serves (layerfs/stats.py).
OPCODES = {
    "lookup": "LOOKUP", "forget": "FORGET", "getattr": "GETATTR", "setattr": "SETATTR",
    "readlink": "READLINK", "opendir": "OPENDIR", "readdir": "READDIRPLUS",
    "releasedir": "RELEASEDIR", "fsyncdir": "FSYNCDIR", "mkdir": "MKDIR", "mknod": "MKNOD",
    "symlink": "SYMLINK", "unlink": "UNLINK", "rmdir": "RMDIR", "rename": "RENAME",
    "link": "LINK", "open": "OPEN", "create": "CREATE", "read": "READ", "write": "WRITE",
    "flush": "FLUSH", "release": "RELEASE", "fsync": "FSYNC", "setxattr": "SETXATTR",
    "getxattr": "GETXATTR", "listxattr": "LISTXATTR", "removexattr": "REMOVEXATTR",
    "statfs": "STATFS",
}


def nodeid(sid: int, oid: int) -> int:
    return (sid << OID_BITS) | oid


def _negative_entry() -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = CACHE_TIMEOUT
    return e


_NEGATIVE = _negative_entry()


class LayerFS(pyfuse3.Operations):
    """The Operations of the snapshot filesystem."""

    supports_dot_lookup = False
    # Off (issue 16 measured it): tar x of small files sends one SETATTR more
    # per file (the kernel's times at writeback) for a third of a WRITE less,
    # and writes buffered in the kernel would be invisible to a Commit.
    enable_writeback_cache = False
    enable_acl = False
    # A symlink object's target never changes (patches/pyfuse3/0003): the
    # kernel keeps it, and following a link sends no READLINK.
    enable_symlink_caching = True

    def __init__(self, snapshotter: Snapshotter, stats: FuseStats | None = None,
                 remote: RemoteLayers | None = None) -> None:
        super().__init__()
        if stats is not None:
            for name, opcode in OPCODES.items():
                setattr(self, name, stats.timed(opcode, getattr(self, name)))
        self.snapshotter = snapshotter
        self.remote = remote
        """Lazy layers: a file's bytes are fetched before it is opened."""
        self.tree: LayerTree = snapshotter.tree
        self.files = self.tree.files
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started_ns = time.time_ns()
        self._files: dict[int, OpenFile] = {}
        self._lazy: dict[int, LazyFile] = {}
        """Handles of read-only opens of lazy files: reads fetch their chunks."""
        # Open directories: (view, directory oid, entries at opendir); None, 0 for
        # the mount's root.
        self._dirs: dict[int, tuple[View | None, int, list[tuple[bytes, int, Attr]]]] = {}
        self._next_fh = 1
        snapshotter.on_removed.append(self._forget_snapshot)
        snapshotter.on_changed.append(self._invalidate_entries)

    # ----------------------------------------------------------------- plumbing

    def _view(self, inode: int) -> tuple[View, int]:
        view = self.snapshotter.view_of(inode >> OID_BITS)
        if view is None or not view.alive:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return view, inode & OID_MASK

    def _entry(self, view: View, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = nodeid(view.sid, a.oid)
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = self.files.blocks(a) if a.data is not None else 0
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _top_entry(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.ROOT_INODE
        # Cached like everything else: a stale mount left by a killed daemon
        # is found by statfs, which always reaches the daemon (daemon.py).
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        # Private to the daemon's user wherever the mountpoint is: a root
        # daemon's snapshots hold setuid binaries and device nodes
        # (fusesnap/permissions.py).
        e.st_mode = stat.S_IFDIR | 0o700
        e.st_nlink = 2
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_blksize = 4096
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self.started_ns
        return e

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            if e.errno in NO_SPACE:
                self.tree.space.exhausted("writing through the mount")
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except ResourceExhausted:
            raise pyfuse3.FUSEError(errno.ENOSPC) from None

    def _forget_snapshot(self, sid: int) -> None:
        try:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, str(sid).encode(),
                                           ignore_enoent=True)
        except Exception:  # the mount may not be up (tests, shutdown)
            log.debug("could not invalidate snapshot %d", sid, exc_info=True)

    def _invalidate_entries(self, sid: int, keys: Iterable[tuple[int, bytes]]) -> None:
        """Entries of snapshot `sid` changed behind the kernel's back (the
        Applier): drop the snapshot root's attributes, every entry named
        (queued: safe on the trio thread), and the cached listing and
        attributes of every directory they are in (a directory's pages, which
        never wait for a writeback)."""
        try:
            with contextlib.suppress(OSError):  # the kernel may not know the root yet
                pyfuse3.invalidate_inode(nodeid(sid, ROOT_OID), attr_only=True)
            dirs = set()
            for dir_oid, name in keys:
                pyfuse3.invalidate_entry_async(nodeid(sid, dir_oid), name, ignore_enoent=True)
                dirs.add(dir_oid)
            for dir_oid in dirs:
                with contextlib.suppress(OSError):  # one the kernel never saw
                    pyfuse3.invalidate_inode(nodeid(sid, dir_oid))
        except Exception:  # the mount may not be up (tests, shutdown)
            log.debug("could not invalidate entries of snapshot %d", sid, exc_info=True)

    # ----------------------------------------------------------------- lookups

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            if not name.isdigit():
                raise pyfuse3.FUSEError(errno.ENOENT)
            view = self.snapshotter.view_of(int(name))
            if view is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._entry(view, self._call(view.attr, ROOT_OID))
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        view, oid = self._view(parent_inode)
        child = view.find(oid, name)
        if not child:
            # A negative entry: the kernel remembers the miss. A name appears
            # behind its back only through the Applier, which invalidates
            # every entry it touches (snapshots/apply.py).
            return _NEGATIVE
        return self._entry(view, self._call(view.attr, child))

    async def forget(self, inode_list: Any) -> None:
        return None

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._top_entry()
        view, oid = self._view(inode)
        return self._entry(view, self._call(view.attr, oid))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(inode)
        if fields.update_size and self.remote is not None and self.remote.pending:
            await self._fetch(self._call(view.attr, oid))  # a truncate copies the bytes kept
        a = self._call(
            self.tree.setattr, view, oid,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self._entry(view, a)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        view, oid = self._view(inode)
        a = self._call(view.attr, oid)
        if not stat.S_ISLNK(a.mode) or a.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return bytes(a.target)

    # ----------------------------------------------------------------- directories

    async def opendir(self, inode: int, ctx: Any) -> int | pyfuse3.FileInfo:
        dir_view: View | None = None
        oid = 0
        if inode == pyfuse3.ROOT_INODE:
            entries = []
            for sid in self.snapshotter.snapshot_ids():
                view = self.snapshotter.view_of(sid)
                if view is not None:
                    a = self._call(view.attr, ROOT_OID)
                    entries.append((str(sid).encode(), sid, a))
        else:
            dir_view, oid = self._view(inode)
            a = self._call(dir_view.attr, oid)
            if not a.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            entries = [(n, dir_view.sid, x)
                       for n, x in self._call(dir_view.listdir, oid)]
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = (dir_view, oid, entries)
        if dir_view is None:
            return fh  # the mount's root: snapshots come and go through the API
        # The kernel keeps the listing (FOPEN_CACHE_DIR, kept across opens): it
        # drops it itself when it changes the directory, and the Applier,
        # which changes it behind its back, invalidates it (snapshots/apply.py).
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        dir_view, dir_oid, entries = self._dirs[fh]
        for i in range(start_id, len(entries)):
            name, sid, a = entries[i]
            if dir_view is None:
                view = self.tree.views.get(sid)
                if view is None:
                    continue
            else:
                # readdirplus makes the kernel cache each entry it is given:
                # skip names removed or replaced since opendir.
                view = dir_view
                if view.find(dir_oid, name) != a.oid:
                    continue
            if not pyfuse3.readdir_reply(token, name, self._entry(view, a), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.tree.sync()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, mode, ctx, rdev=rdev)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target)

    async def _make(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                    rdev: int = 0, target: bytes | None = None) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(parent_inode)
        a = self._call(self.tree.make, view, oid, name, mode, ctx.uid, ctx.gid, rdev, target)
        return self._entry(view, a)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        if parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(parent_inode)
        self._call(self.tree.unlink, view, oid, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        if parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(parent_inode)
        self._call(self.tree.rmdir, view, oid, name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if pyfuse3.ROOT_INODE in (parent_inode_old, parent_inode_new):
            raise pyfuse3.FUSEError(errno.EPERM)
        if flags & ~(pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE | RENAME_WHITEOUT):
            raise pyfuse3.FUSEError(errno.EINVAL)
        view, old = self._view(parent_inode_old)
        view_new, new = self._view(parent_inode_new)
        if view is not view_new:
            raise pyfuse3.FUSEError(errno.EXDEV)  # two snapshots, not two layers
        self._call(self.tree.rename, view, old, name_old, new, name_new,
                   exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
                   noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                   whiteout=(ctx.uid, ctx.gid) if flags & RENAME_WHITEOUT else None)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> pyfuse3.EntryAttributes:
        if new_parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(inode)
        view_new, parent = self._view(new_parent_inode)
        if view is not view_new:
            raise pyfuse3.FUSEError(errno.EXDEV)
        return self._entry(view, self._call(self.tree.link, view, oid, parent, new_name))

    # ----------------------------------------------------------------- files

    def _new_handle(self, of: OpenFile) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = of
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        view, oid = self._view(inode)
        lazy = None
        if self.remote is not None and self.remote.pending:
            # A read-only open of a lazy file fetches nothing: each read
            # fetches the chunks it reaches. Other opens fetch it whole.
            a = self._call(view.attr, oid)
            lazy = self.remote.by_range(a, flags)
            if lazy is None:
                await self._fetch(a)
        fi = self._new_handle(self._call(self.tree.open, view, oid, flags))
        if lazy is not None:
            self._lazy[fi.fh] = lazy
        return fi

    async def _fetch(self, a: Attr) -> None:
        """Bytes of `a` still in a lazy layer's registry: here first (EIO if not)."""
        assert self.remote is not None
        try:
            await self.remote.ensure(a)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, parent = self._view(parent_inode)
        a, of = self._call(self.tree.create, view, parent, name, mode, ctx.uid, ctx.gid)
        return self._new_handle(of), self._entry(view, a)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if self._lazy:
            lazy = self._lazy.get(fh)
            if lazy is not None and not lazy.done:
                assert self.remote is not None
                try:
                    await self.remote.ensure_range(lazy, off, size)
                except OSError as e:
                    raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        try:
            return self.files.read(self._files[fh], off, size)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self._call(self.files.write, self._files[fh], off, buf)

    async def flush(self, fh: int) -> None:
        # ENOSYS: the kernel sends no FLUSH again. Nothing is lost: every
        # write reaches the daemon as it happens (no writeback cache), and
        # durability comes from fsync and the grouped commits.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        self._lazy.pop(fh, None)
        of = self._files.pop(fh, None)
        if of is not None:
            self._call(self.tree.release, of)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._call(self.files.fsync, self._files[fh], datasync)

    # ----------------------------------------------------------------- xattrs, statfs

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        view, oid = self._view(inode)
        self._call(self.tree.set_xattr, view, oid, name, value)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        view, oid = self._view(inode)
        a = self._call(view.attr, oid)
        value = view.xattrs(a).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return []
        view, oid = self._view(inode)
        a = self._call(view.attr, oid)
        return list(view.xattrs(a))

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        view, oid = self._view(inode)
        try:
            self.tree.remove_xattr(view, oid, name)
        except OSError as e:
            code = pyfuse3.ENOATTR if e.errno == errno.ENODATA else e.errno or errno.EIO
            raise pyfuse3.FUSEError(code) from None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.tree.layers_dir)
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = 255
        return out
