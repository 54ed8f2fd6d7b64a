"""The daemon's Applier service (issue 5, part 2: "applying a layer writes
straight into the snapshot's own storage … and produces exactly the same view
as applying through the mount would"): every layer of the test images applied
both ways, into two snapshot chains of one real daemon, the trees compared
file by file; and the errors, which leave the snapshot as it was.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.client.archive import ArchiveDescriptor
from fusesnap.client.importer import Client, apply_into
from fusesnap.pb import apply_pb2 as apb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.apply_pb2_grpc import ApplierStub
from tests import oci
from tests.conftest import PROXY, Daemon, module_daemon
from tests.layer_applier import apply_through_mount
from tests.trees import Tree, assert_same_tree, host_tree, paths, xattrs

pytestmark = pytest.mark.skipif(not shutil.which("zstd"),
                                reason="needs Debian's zstd (make setup)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # The proxy role: no collection removes the snapshots the tests make.
    yield from module_daemon(tmp_path_factory, "apply", PROXY)


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Client:
    assert daemon.channel is not None
    return Client(daemon.channel)


@pytest.fixture(scope="module")
def applier(daemon: Daemon) -> ApplierStub:
    assert daemon.channel is not None
    return ApplierStub(daemon.channel)


@dataclasses.dataclass
class Blob:
    desc: ArchiveDescriptor
    data: bytes
    diff_id: str
    size: int


def store(client: Client, layer: oci.Layer) -> Blob:
    """The layer's blob, put into the daemon's content store."""
    raw = oci.layer_tar(layer.entries)
    data, media_type = oci.compressed(layer, raw)
    desc = ArchiveDescriptor(media_type, oci.digest(data), len(data))
    client.put_blob(desc, lambda: io.BytesIO(data), {})
    return Blob(desc, data, oci.digest(raw), len(raw))


def layered(image: oci.Image) -> list[oci.Layer]:
    """The image's layers without the 100 MB one, compressed in turn with
    zstd, gzip and not at all."""
    layers = [layer for layer in image.layers
              if not any(getattr(e, "path", "") == "data/big" for e in layer.entries)]
    return [dataclasses.replace(layer, zstd=i % 3 == 1, gzip=i % 3 == 2)
            for i, layer in enumerate(layers)]


def view(daemon: Daemon, name: str) -> Path:
    """A read-only view of committed `name` (made once)."""
    try:
        return daemon.view(f"view-{name}", name)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    resp = daemon.snapshots.Mounts(spb.MountsRequest(key=f"view-{name}"))
    return Path(resp.mounts[0].source)


def mtimes(root: Path) -> dict[str, int]:
    """Modification times of everything but directories (an apply stamps the
    directories a layer does not name with the time it runs)."""
    return {os.path.relpath(p, root): st.st_mtime_ns for p in paths(root)
            if not stat.S_ISDIR((st := os.lstat(p)).st_mode)}


def assert_same_view(a: Path, b: Path) -> None:
    tree = host_tree(a)
    assert_same_tree(tree, host_tree(b))
    assert len(tree) > 10
    assert xattrs(a) == xattrs(b)
    assert mtimes(a) == mtimes(b)


IMAGES = {
    "rich": lambda: layered(oci.rich_image()),
    "busybox": lambda: oci.busybox_image().layers,
    "many": lambda: oci.many_layers_image().layers,
}


@pytest.mark.skipif(os.geteuid() != 0, reason="the reference apply through the mount sets "
                    "owners and makes device nodes, which needs root")
@pytest.mark.parametrize("image", list(IMAGES))
def test_direct_apply_makes_the_view_the_mount_apply_makes(
        daemon: Daemon, client: Client, image: str) -> None:
    parents = {"direct": "", "mount": ""}
    layers = list(IMAGES[image]())
    for i, layer in enumerate(layers):
        blob = store(client, layer)
        names = {way: f"{image}-{way}-{i}" for way in parents}
        applied = apply_into(client, names["direct"], parents["direct"], blob.desc, blob.diff_id)
        assert (applied.diff_id, applied.size) == (blob.diff_id, blob.size)
        assert applied.skipped == []
        apply_through_mount(client, names["mount"], parents["mount"], io.BytesIO(blob.data),
                            blob.diff_id)
        parents = names
        if image != "many" or i % 10 == 0 or i == len(layers) - 1:
            assert_same_view(view(daemon, names["direct"]), view(daemon, names["mount"]))
    if image == "rich":
        top = view(daemon, parents["direct"]) / "data"
        assert os.stat(top / "links/orig").st_nlink == 2  # hl1 was replaced by layer 8
        assert os.getxattr(top / "xattr/dir", "user.dir") == b"changed"
        assert not (top / "opq/a").exists() and (top / "opq/c").exists()


# --------------------------------------------------------------------------- errors


@pytest.fixture
def active(daemon: Daemon, client: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """An active snapshot holding a file written through the mount."""
    key = f"active-{request.node.name}"
    path = daemon.prepare(key)
    (path / "keep").write_bytes(b"written through the mount\n")
    (path / "dir").mkdir()
    yield key
    daemon.snapshots.Remove(spb.RemoveSnapshotRequest(key=key))


def state(daemon: Daemon, key: str) -> tuple[Tree, object, tuple[int, int]]:
    resp = daemon.snapshots.Mounts(spb.MountsRequest(key=key))
    root = Path(resp.mounts[0].source)
    usage = daemon.snapshots.Usage(spb.UsageRequest(key=key))
    return host_tree(root), xattrs(root), (usage.size, usage.inodes)


def refused(applier: ApplierStub, request: apb.ApplyRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        applier.Apply(request)
    return info.value


def test_diff_id_mismatch_is_failed_precondition_and_changes_nothing(
        daemon: Daemon, client: Client, applier: ApplierStub, active: str) -> None:
    blob = store(client, oci.Layer([oci.Whiteout("keep"), oci.File("new", b"new\n")]))
    before = state(daemon, active)
    err = refused(applier, apb.ApplyRequest(key=active, digest=blob.desc.digest,
                                            diff_id=oci.digest(b"not the layer")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "diff_id mismatch" in err.details() and blob.diff_id in err.details()
    assert state(daemon, active) == before
    assert not list(daemon.root.rglob(".apply-*"))  # no staging or backup file left


def test_impossible_entry_is_invalid_argument_and_rolls_back(
        daemon: Daemon, client: Client, applier: ApplierStub, active: str) -> None:
    # Entries before the bad one delete and write: all of it is undone.
    buf = io.BytesIO(oci.layer_tar([oci.Whiteout("keep"), oci.Whiteout("dir"),
                                    oci.File("new", b"new\n")])[:-1024])
    with tarfile.open(fileobj=buf, mode="a", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("bad")
        link.type, link.linkname = tarfile.LNKTYPE, "missing"
        tar.addfile(link)
    raw = buf.getvalue()
    desc = ArchiveDescriptor(oci.MEDIA_LAYER, oci.digest(raw), len(raw))
    client.put_blob(desc, lambda: io.BytesIO(raw), {})
    before = state(daemon, active)
    err = refused(applier, apb.ApplyRequest(key=active, digest=desc.digest))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing" in err.details()
    assert state(daemon, active) == before
    assert not list(daemon.root.rglob(".apply-*"))  # no staging or backup file left
    root = Path(daemon.snapshots.Mounts(spb.MountsRequest(key=active)).mounts[0].source)
    assert (root / "keep").read_bytes() == b"written through the mount\n"
    # The snapshot still works, and applies what it is given.
    ok = store(client, oci.Layer([oci.File("later", b"later\n")]))
    applier.Apply(apb.ApplyRequest(key=active, digest=ok.desc.digest, diff_id=ok.diff_id))
    assert (root / "later").read_bytes() == b"later\n"
    assert (root / "keep").exists() and (root / "dir").is_dir()


def test_dotdot_entry_is_invalid_argument_with_nothing_applied(
        daemon: Daemon, client: Client, applier: ApplierStub, active: str) -> None:
    blob = store(client, oci.Layer([oci.File("ok", b"fine\n"),
                                    oci.File("dir/../../escape", b"out\n")]))
    before = state(daemon, active)
    err = refused(applier, apb.ApplyRequest(key=active, digest=blob.desc.digest))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "escapes" in err.details()
    assert state(daemon, active) == before
    assert not list(daemon.root.rglob(".apply-*"))  # no staging or backup file left
    assert not (daemon.mountpoint / "escape").exists()
    assert not list(daemon.root.rglob("escape"))


def test_apply_to_a_committed_snapshot_is_failed_precondition(
        daemon: Daemon, client: Client, applier: ApplierStub) -> None:
    blob = store(client, oci.Layer([oci.File("f", b"f\n")]))
    daemon.prepare("to-commit")
    daemon.commit("committed", "to-commit")
    err = refused(applier, apb.ApplyRequest(key="committed", digest=blob.desc.digest))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_apply_to_an_unknown_snapshot_is_not_found(client: Client,
                                                   applier: ApplierStub) -> None:
    blob = store(client, oci.Layer([oci.File("f", b"f\n")]))
    err = refused(applier, apb.ApplyRequest(key="no-such-key", digest=blob.desc.digest))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_apply_of_an_unknown_blob_is_not_found(applier: ApplierStub, active: str) -> None:
    err = refused(applier, apb.ApplyRequest(key=active, digest=oci.digest(b"absent")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_names_the_mount_found_missing_appear_after_an_apply(
        daemon: Daemon, client: Client, applier: ApplierStub, active: str) -> None:
    # The kernel keeps a miss (a negative entry, layerfs/ops.py); an Apply
    # adds names behind its back and must invalidate them.
    root = Path(daemon.snapshots.Mounts(spb.MountsRequest(key=active)).mounts[0].source)
    for _ in range(2):
        assert not (root / "appears").exists()
        assert not (root / "dir" / "inner").exists()
        assert os.listdir(root / "dir") == []  # a listing the kernel keeps
    blob = store(client, oci.Layer([oci.File("appears", b"a\n"), oci.File("dir/inner", b"i\n")]))
    applier.Apply(apb.ApplyRequest(key=active, digest=blob.desc.digest, diff_id=blob.diff_id))
    assert (root / "appears").read_bytes() == b"a\n"
    assert (root / "dir" / "inner").read_bytes() == b"i\n"
    assert os.listdir(root / "dir") == ["inner"]
