"""Special files recorded in an active snapshot without mknod(2).

Inside a user namespace the kernel refuses mknod(2) of a character or block
device whatever the file system (fs/namei.c, vfs_mknod: CAP_MKNOD in the
initial namespace), and an ordinary user's daemon cannot make one either:
but fusesnap records device nodes, it never makes them on the host. So
:func:`make_node` hands the daemon a one-member layer tar and asks its
Applier to apply it create-only: the node appears in the snapshot as a layer
would put it there, with the owner and mode asked for, and nothing else
changes. A path that exists, or whose directory does not, is refused.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import stat
import tarfile
import time

import grpc

from fusesnap.pb import apply_pb2 as apb
from fusesnap.pb.apply_pb2_grpc import ApplierStub

KINDS = {"c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE, "p": tarfile.FIFOTYPE}
"""mknod(1)'s type letters: character device, block device, FIFO."""
TAR_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


class NodeError(ValueError):
    """The node asked for cannot be described (the message says why)."""


def node_tar(path: str, kind: str, major: int, minor: int, mode: int, uid: int,
             gid: int) -> bytes:
    """A layer tar holding one special file at `path` (relative to the snapshot)."""
    if kind not in KINDS:
        raise NodeError(f"type must be c (character device), b (block device) or p (FIFO), "
                        f"not {kind!r}")
    name = posixpath.normpath(path.lstrip("/"))
    if name in (".", "") or name.startswith("../") or name == "..":
        raise NodeError(f"{path!r} names no entry inside the snapshot")
    if kind == "p" and (major or minor):
        raise NodeError("a FIFO has no device numbers")
    if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
        raise NodeError("device numbers: major 0-4095, minor 0-1048575")
    if mode & ~0o7777:
        raise NodeError(f"mode {mode:o} has bits other than permission bits")
    info = tarfile.TarInfo(name)
    info.type = KINDS[kind]
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = uid, gid
    info.devmajor, info.devminor = major, minor
    info.mtime = int(time.time())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    return out.getvalue()


def make_node(channel: grpc.Channel, key: str, layer: bytes) -> None:
    """Apply `layer` (from :func:`node_tar`), sent inline, to active snapshot
    `key`, create-only: no blob is stored, so nothing is left to collect and
    no deletion wakes the collector. Errors are the Applier's: NotFound (no
    snapshot `key`, or no such directory), FailedPrecondition (not active),
    AlreadyExists."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    ApplierStub(channel).Apply(apb.ApplyRequest(
        key=key, layer=layer, media_type=TAR_MEDIA_TYPE, diff_id=diff_id, create_only=True))
