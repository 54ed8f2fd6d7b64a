"""containerd as the client, for real (issue 5, part 1).

A private containerd 1.6 (tests/containerd_env.py) uses one fusesnap daemon in
the proxy role as its snapshotter and its content store; the tests drive it with
`ctr` and check the result both inside containers and in fusesnap's own store,
over fusesnap's socket. Images are built offline by tests/oci.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests import oci
from tests.conftest import Daemon, fuse_usable
from tests.containerd_env import SNAPSHOTTER, Containerd, unavailable

GC_TIMEOUT = 15.0

# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    containerd: Containerd
    fusesnap: Daemon
    content: ContentStub
    archives: Path

    def ctr(self, *args: str, input: str | None = None) -> str:
        """The output of `ctr ARGS…`, which must succeed."""
        return self.containerd.ctr(*args, input=input).stdout

    def blobs(self) -> set[str]:
        """Digests in fusesnap's content store."""
        return {i.digest for b in self.content.List(cpb.ListContentRequest()) for i in b.info}

    def snapshots(self) -> dict[str, spb.Info]:
        """fusesnap's snapshots by backend name (`<namespace>/<n>/<containerd name>`)."""
        return {i.name: i for b in self.fusesnap.snapshots.List(spb.ListSnapshotsRequest())
                for i in b.info}

    def snapshot_of(self, name: str) -> spb.Info:
        """fusesnap's record of containerd's snapshot `name`."""
        found = [i for key, i in self.snapshots().items() if key.split("/", 2)[-1] == name]
        assert len(found) == 1, f"{name} in {sorted(self.snapshots())}"
        return found[0]

    def import_(self, image: oci.Image) -> oci.Built:
        built = oci.write_archive(image, self.archives / f"{image.name.replace('/', '_')}.tar")
        self.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(built.path))
        return built


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """fusesnap (proxy role) and a containerd using it, both stopped at the end."""
    why = unavailable() or fuse_usable()
    if why:
        pytest.skip(f"containerd end-to-end tests skipped: {why}")
    base = tmp_path_factory.mktemp("ctd")
    daemon = Daemon(base / "fusesnap", args=("--role", "proxy"))
    containerd = Containerd(base / "containerd", daemon.socket)
    try:
        daemon.start()
        assert daemon.channel is not None
        containerd.start()
        archives = base / "archives"
        archives.mkdir()
        yield Env(containerd, daemon, ContentStub(daemon.channel), archives)
    finally:
        containerd.stop()
        daemon.cleanup()


@pytest.fixture(scope="module")
def busybox(env: Env) -> oci.Built:
    """The small busybox image, imported with --snapshotter fusesnap."""
    return env.import_(oci.busybox_image())


def wait_until(check: Callable[[], bool], what: str, timeout: float = GC_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- import


def test_import_puts_every_blob_in_fusesnap(env: Env, busybox: oci.Built) -> None:
    assert set(busybox.blobs) <= env.blobs()
    listed = env.ctr("content", "ls", "-q").split()
    assert set(busybox.blobs) <= set(listed)


def test_import_unpacks_layers_into_fusesnap_snapshots(env: Env, busybox: oci.Built) -> None:
    # Backend names are `<namespace>/<n>/<chain ID>` (spec §9.3).
    info = env.snapshot_of(busybox.chain_ids[0])
    assert info.name.startswith("test/")
    assert info.kind == spb.COMMITTED
    assert info.parent == ""


def test_unpacked_layer_holds_the_image_files(env: Env, busybox: oci.Built) -> None:
    # A view made through containerd (one made on fusesnap directly would be
    # fair game for containerd's collector), read in fusesnap's own directory.
    env.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "view", "test-layer-view",
            busybox.chain_ids[0])
    try:
        backend = env.snapshot_of("test-layer-view")
        assert backend.kind == spb.VIEW
        mounts = env.fusesnap.snapshots.Mounts(spb.MountsRequest(key=backend.name)).mounts
        assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rbind", "ro"])]
        view = Path(mounts[0].source)
        assert sha256((view / "bin/busybox").read_bytes()) == sha256(oci.BUSYBOX.read_bytes())
        assert (view / "bin/sh").readlink() == Path("busybox")
        assert (view / "tmp").stat().st_mode & 0o7777 == 0o1777
        assert (view / "home/user").stat().st_uid == 1000
    finally:
        env.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", "test-layer-view")


# --------------------------------------------------------------------------- run


def test_run_prints_expected_output(env: Env, busybox: oci.Built) -> None:
    out = env.containerd.run(busybox.name, "run-echo", "sh", "-c",
                             "echo hello from fusesnap; sha256sum /bin/busybox; "
                             "readlink /bin/sh; stat -c '%a %u %g' /tmp /home/user; id -u").stdout
    assert out.splitlines() == [
        "hello from fusesnap",
        f"{sha256(oci.BUSYBOX.read_bytes())}  /bin/busybox",
        "busybox",
        "1777 0 0",
        "755 1000 1000",
        "0",
    ]


def test_root_filesystem_is_the_fusesnap_mount(env: Env, busybox: oci.Built) -> None:
    out = env.containerd.run(busybox.name, "run-mountinfo", "cat", "/proc/self/mountinfo").stdout
    root = [line for line in out.splitlines() if line.split()[4] == "/"]
    assert len(root) == 1
    assert " - fuse.fusesnap fusesnap " in root[0]


def test_container_writes_to_its_root_filesystem(env: Env, busybox: oci.Built) -> None:
    cid = "run-write"
    try:
        out = env.containerd.run(busybox.name, cid, "sh", "-c", (
            "set -e; echo written > /new; mkdir -p /d/e; echo deep > /d/e/f; "
            "echo appended >> /etc/passwd; rm /bin/ls; mv /etc/group /etc/group2; "
            "cat /new /d/e/f; tail -n 1 /etc/passwd; test ! -e /bin/ls && echo no-ls; "
            "ls /etc"), rm=False).stdout
        assert out.splitlines() == ["written", "deep", "appended", "no-ls", "group2", "passwd"]

        # The writes are in the container's active snapshot in fusesnap.
        active = env.snapshot_of(cid)
        assert active.kind == spb.ACTIVE
        assert active.parent == env.snapshot_of(busybox.chain_ids[0]).name
        mounts = env.fusesnap.snapshots.Mounts(spb.MountsRequest(key=active.name)).mounts
        assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rbind", "rw"])]
        rootfs = Path(mounts[0].source)
        assert (rootfs / "new").read_text() == "written\n"
        assert (rootfs / "d/e/f").read_text() == "deep\n"
        assert not (rootfs / "bin/ls").exists()
        assert (rootfs / "etc/passwd").read_text().endswith("appended\n")
    finally:
        env.containerd.ctr("tasks", "rm", "-f", cid, check=False)
        env.containerd.ctr("containers", "rm", cid, check=False)
    # containerd removes a container's snapshot from its records; its GC then
    # removes fusesnap's copy.
    wait_until(lambda: active.name not in env.snapshots(), "the container's snapshot left fusesnap")


def test_non_root_user_is_refused_writes_the_modes_forbid(env: Env, busybox: oci.Built) -> None:
    # ctr 1.6 has no --user: root in the container becomes `user` (1000:1000) with su.
    out = env.containerd.run(
        busybox.name, "run-user", "su", "user", "-s", "/bin/sh", "-c",
        "id -u; echo x >> /etc/passwd || echo denied-passwd; "
        "touch /bin/new || echo denied-bin; "
        "echo mine > /home/user/f && cat /home/user/f; "
        "echo tmp > /tmp/f && stat -c '%u %g' /tmp/f", check=False)
    assert out.stdout.splitlines() == ["1000", "denied-passwd", "denied-bin", "mine",
                                       "1000 1000"], out.stderr


# --------------------------------------------------------------------------- ctr content


def test_ctr_content_get_reads_blobs_through_the_proxy(env: Env, busybox: oci.Built) -> None:
    config = env.ctr("content", "get", busybox.config)
    manifest = json.loads(env.ctr("content", "get", busybox.manifest))
    assert oci.digest(config.encode()) == busybox.config
    assert json.loads(config)["rootfs"]["diff_ids"] == busybox.diff_ids
    assert [layer["digest"] for layer in manifest["layers"]] == busybox.layers


def human_size(size: int) -> str:
    """go-units HumanSize, as `ctr content ls` prints sizes."""
    value, units = float(size), ["B", "kB", "MB", "GB"]
    while value >= 1000 and len(units) > 1:
        value /= 1000
        units.pop(0)
    return f"{value:.4g}{units[0]}"


def test_ctr_content_ls_shows_sizes_of_fusesnap_blobs(env: Env, busybox: oci.Built) -> None:
    sizes = {line.split()[0]: line.split()[1]
             for line in env.ctr("content", "ls").splitlines()[1:]}
    for dgst in busybox.blobs:
        assert env.content.Info(cpb.InfoRequest(digest=dgst)).info.size == busybox.sizes[dgst]
        assert sizes[dgst] == human_size(busybox.sizes[dgst])


def test_ctr_content_ingest_then_rm_deletes_the_blob_from_fusesnap(env: Env) -> None:
    data = b"a blob for ctr content rm\n" * 100
    dgst = oci.digest(data)
    # Nothing references the blob: a root label keeps it until rm. A collection
    # between ingest and label (ctr ingests on no lease) would take it: retry.
    for _ in range(3):
        env.ctr("content", "ingest", "--expected-digest", dgst,
                "--expected-size", str(len(data)), "test-ctr-ingest", input=data.decode())
        if env.containerd.ctr("content", "label", dgst, "containerd.io/gc.root=test",
                              check=False).returncode == 0:
            break
    assert dgst in env.blobs()
    assert env.ctr("content", "get", dgst).encode() == data
    assert dgst in env.ctr("content", "ls", "-q").split()

    env.ctr("content", "rm", dgst)
    assert dgst not in env.ctr("content", "ls", "-q").split()
    wait_until(lambda: dgst not in env.blobs(), f"{dgst} left fusesnap's store")
    with pytest.raises(grpc.RpcError) as err:
        env.content.Info(cpb.InfoRequest(digest=dgst))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- ctr snapshots


def test_ctr_snapshots_ls_shows_the_image_layer(env: Env, busybox: oci.Built) -> None:
    rows = [line.split() for line in
            env.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").splitlines()[1:]]
    assert [busybox.chain_ids[0], "Committed"] in rows


def test_ctr_snapshots_info_is_the_committed_layer(env: Env, busybox: oci.Built) -> None:
    info = json.loads(env.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info",
                              busybox.chain_ids[0]))
    assert info["Name"] == busybox.chain_ids[0]
    assert info["Kind"] == "Committed"
    assert "Parent" not in info or info["Parent"] == ""


def test_ctr_snapshots_usage_is_fusesnaps_usage(env: Env, busybox: oci.Built) -> None:
    out = env.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "usage", busybox.chain_ids[0])
    key, size, unit, inodes = out.splitlines()[1].split()
    backend = env.snapshot_of(busybox.chain_ids[0]).name
    usage = env.fusesnap.snapshots.Usage(spb.UsageRequest(key=backend))
    assert key == busybox.chain_ids[0]
    assert int(inodes) == usage.inodes
    assert usage.size >= oci.BUSYBOX.stat().st_size
    assert (size, unit) == (f"{usage.size / 2**20:.1f}", "MiB")


# --------------------------------------------------------------------------- garbage collection


def test_images_rm_and_gc_remove_blobs_and_snapshots_from_fusesnap(env: Env) -> None:
    # An image sharing nothing with the others: two layers, one of them uncompressed.
    image = oci.Image("fusesnap.test/gc:1", [
        oci.Layer([oci.Dir("gc"), oci.File("gc/a", b"only in the gc image\n")]),
        oci.Layer([oci.File("gc/b", b"second layer\n", 0o600)], gzip=False),
    ])
    built = env.import_(image)
    assert set(built.blobs) <= env.blobs()
    lower, upper = (env.snapshot_of(c) for c in built.chain_ids)
    assert upper.parent == lower.name

    env.ctr("images", "rm", "--sync", built.name)
    assert not set(built.blobs) & set(env.ctr("content", "ls", "-q").split())
    wait_until(lambda: not set(built.blobs) & env.blobs(), "the image's blobs left fusesnap")
    wait_until(lambda: not {lower.name, upper.name} & set(env.snapshots()),
               "the image's snapshots left fusesnap")
