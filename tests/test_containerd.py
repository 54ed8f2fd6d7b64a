"""containerd as the client, for real (issue 5, part 1).

A private containerd 1.6 (tests/containerd_env.py) uses one fusesnap daemon in
the proxy role as its snapshotter and its content store; the tests drive it with
`ctr` and check the result both inside containers and in fusesnap's own store,
over fusesnap's socket. Images are built offline by tests/oci.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests import oci
from tests.conftest import Daemon, fuse_usable
from tests.containerd_env import SNAPSHOTTER, Containerd, unavailable
from tests.trees import Node, Tree, assert_same_tree, host_tree, xattrs
from tests.trees import node as _node

GC_TIMEOUT = 60.0  # a bound on waiting for containerd's collector, not a speed figure
GC_ROOT = "containerd.io/gc.root"

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
        self.containerd.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(built.path),
                            timeout=120)
        return built

    def snapshots_ctr(self, *args: str) -> str:
        """The output of `ctr snapshots --snapshotter fusesnap ARGS…`."""
        return self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, *args)

    def view(self, key: str, parent: str) -> Path:
        """`ctr snapshots view KEY PARENT`, kept from containerd's collector by a
        root label, as the directory its bind mount names. Nothing references
        a view made with ctr: a collection between view and label takes it, so
        retry."""
        for _ in range(3):
            mounts = json.loads(self.snapshots_ctr("view", "--mounts", key, parent))
            if self.containerd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "label", key,
                                   f"{GC_ROOT}=test", check=False).returncode == 0:
                assert [(m["Type"], m["Options"]) for m in mounts] == [("bind", ["rbind", "ro"])]
                return Path(mounts[0]["Source"])
        raise AssertionError(f"view {key} was collected three times")


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


NUDGE = 5.0
"""Seconds without progress before waiting for containerd's collector makes
it run again (see `wait_until`)."""


def wait_until(check: Callable[[], bool], what: str, timeout: float = GC_TIMEOUT,
               env: Env | None = None) -> None:
    """Wait for `check`; with `env`, a wait for containerd's collector: every
    NUDGE seconds a throwaway lease is created and deleted there. containerd
    1.6's scheduler forgets a deletion that lands while a collection runs (it
    drops events older than the collection's end: gc/scheduler/scheduler.go),
    so the second of two quick deletions may wait for the next one."""
    deadline = time.monotonic() + timeout
    nudge = time.monotonic() + NUDGE
    n = 0
    while not check():
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        if env is not None and now > nudge:
            n += 1
            env.containerd.ctr("leases", "create", "--id", f"gc-nudge-{n}")
            env.containerd.ctr("leases", "delete", f"gc-nudge-{n}")
            nudge = now + NUDGE
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
    view = env.view("test-layer-view", busybox.chain_ids[0])
    try:
        backend = env.snapshot_of("test-layer-view")
        assert backend.kind == spb.VIEW
        mounts = env.fusesnap.snapshots.Mounts(spb.MountsRequest(key=backend.name)).mounts
        assert [(m.type, m.source, list(m.options)) for m in mounts] == \
            [("bind", str(view), ["rbind", "ro"])]
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
    wait_until(lambda: active.name not in env.snapshots(), "the container's snapshot left fusesnap",
               env=env)


def test_non_root_user_is_refused_writes_the_modes_forbid(env: Env, busybox: oci.Built) -> None:
    # ctr 1.6 has no --user: root in the container becomes `user` (1000:1000) with su.
    out = env.containerd.run(
        busybox.name, "run-user", "su", "user", "-s", "/bin/sh", "-c",
        "id -u; echo x >> /etc/passwd || echo denied-passwd; "
        "touch /bin/new || echo denied-bin; "
        "rm /bin/ls || echo denied-rm; "
        "chmod 666 /etc/passwd || echo denied-chmod; "
        "ls /root || echo denied-root; "
        "echo mine > /home/user/f && cat /home/user/f; "
        "echo tmp > /tmp/f && stat -c '%u %g' /tmp/f", check=False)
    assert out.stdout.splitlines() == ["1000", "denied-passwd", "denied-bin", "denied-rm",
                                       "denied-chmod", "denied-root", "mine",
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
    wait_until(lambda: dgst not in env.blobs(), f"{dgst} left fusesnap's store", env=env)
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


def test_ctr_snapshots_label_usage_info_ls_of_a_container_snapshot(env: Env,
                                                                    busybox: oci.Built) -> None:
    cid = "snap-label"
    inherited = "containerd.io/snapshot/fusesnap.test"  # spec §9.3: passed down
    try:
        env.containerd.run(busybox.name, cid, "sh", "-c",
                           "dd if=/dev/zero of=/blob bs=1000 count=100 2>/dev/null; "
                           "mkdir /dir; echo x > /dir/f", rm=False)
        env.snapshots_ctr("label", cid, f"{inherited}=yes", "only.containerd=1")
        info = json.loads(env.snapshots_ctr("info", cid))
        assert (info["Kind"], info["Parent"]) == ("Active", busybox.chain_ids[0])
        assert {inherited: "yes", "only.containerd": "1"}.items() <= info["Labels"].items()
        backend = env.snapshot_of(cid)
        assert backend.labels.get(inherited) == "yes"
        assert "only.containerd" not in backend.labels

        env.snapshots_ctr("label", cid, f"{inherited}=")  # an empty value removes
        assert inherited not in env.snapshot_of(cid).labels
        assert inherited not in json.loads(env.snapshots_ctr("info", cid)).get("Labels", {})

        key, size, inodes = env.snapshots_ctr("usage", "-b", cid).splitlines()[1].split()
        usage = env.fusesnap.snapshots.Usage(spb.UsageRequest(key=backend.name))
        assert key == cid
        assert (int(size), int(inodes)) == (usage.size, usage.inodes)
        assert usage.size >= 100_000
        assert usage.inodes >= 3

        rows = [line.split() for line in env.snapshots_ctr("ls").splitlines()[1:]]
        assert [cid, busybox.chain_ids[0], "Active"] in rows
    finally:
        env.containerd.ctr("tasks", "rm", "-f", cid, check=False)
        env.containerd.ctr("containers", "rm", cid, check=False)


def test_ctr_snapshots_commit_view_rm_of_a_container_snapshot(env: Env,
                                                              busybox: oci.Built) -> None:
    cid, committed, view = "snap-commit", "snap-committed", "snap-committed-view"
    # Nothing references what `ctr snapshots commit` and `view` make; labels
    # on the container keep them from containerd's collector until `rm`.
    refs = [f"--label=containerd.io/gc.ref.snapshot.{SNAPSHOTTER}/{n}={n}"
            for n in (committed, view)]
    try:
        env.containerd.run(busybox.name, cid, "sh", "-c",
                           "echo committed > /c; rm /etc/group; mkdir -p /x/y",
                           rm=False, options=tuple(refs))
        active = env.snapshot_of(cid)
        base = env.snapshot_of(busybox.chain_ids[0])

        env.snapshots_ctr("commit", committed, cid)
        info = json.loads(env.snapshots_ctr("info", committed))
        assert (info["Kind"], info["Parent"]) == ("Committed", busybox.chain_ids[0])
        rows = [line.split() for line in env.snapshots_ctr("ls").splitlines()[1:]]
        assert [committed, busybox.chain_ids[0], "Committed"] in rows
        assert cid not in [row[0] for row in rows]
        backend = env.snapshot_of(committed)
        assert (backend.kind, backend.parent) == (spb.COMMITTED, base.name)
        assert active.name not in env.snapshots()

        mounts = json.loads(env.snapshots_ctr("view", "--mounts", view, committed))
        assert [(m["Type"], m["Options"]) for m in mounts] == [("bind", ["rbind", "ro"])]
        root = Path(mounts[0]["Source"])
        assert (root / "c").read_text() == "committed\n"
        assert not (root / "etc/group").exists()
        assert (root / "x/y").is_dir()
        assert (root / "bin/busybox").stat().st_size == oci.BUSYBOX.stat().st_size
        backend_view = env.snapshot_of(view)
        assert (backend_view.kind, backend_view.parent) == (spb.VIEW, backend.name)
        assert json.loads(env.snapshots_ctr("info", view))["Kind"] == "View"

        usage = env.snapshots_ctr("usage", "-b", committed).splitlines()[1].split()
        assert int(usage[1]) == env.fusesnap.snapshots.Usage(
            spb.UsageRequest(key=backend.name)).size

        env.snapshots_ctr("rm", view)
        env.snapshots_ctr("rm", committed)
        names = [line.split()[0] for line in env.snapshots_ctr("ls").splitlines()[1:]]
        assert committed not in names and view not in names
        # spec §9.3: a user's Remove deletes containerd's record; its collector
        # then removes fusesnap's copies.
        wait_until(lambda: not {backend.name, backend_view.name} & set(env.snapshots()),
                   "the committed snapshot and its view left fusesnap", env=env)
    finally:
        env.containerd.ctr("tasks", "rm", "-f", cid, check=False)
        env.containerd.ctr("containers", "rm", "--keep-snapshot", cid, check=False)
        for name in (view, committed):
            env.containerd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", name,
                               check=False)


# --------------------------------------------------------------------------- merged trees

# The mount points of ctr's default spec (/dev and what is under it, /proc,
# /run, /sys and /sys/fs/cgroup): runc creates their directories in the root
# filesystem, they do not come from the image and their content is the
# kernel's. Everything else in a container's root must be umoci's tree.
RUNTIME_MOUNTS = ("dev", "proc", "run", "sys")
_PRUNE = " -o ".join(f"-path ./{p}" for p in RUNTIME_MOUNTS)
_FIND = f"find . -xdev \\( {_PRUNE} \\) -prune -o"

# busybox in the container prints one line per entry: its stat, the sha256 of
# each regular file, the target of each symlink; then its mounts.
MANIFEST_SCRIPT = (
    f"cd / && {_FIND} -exec stat -c 'S|%n|%f|%u|%g|%h|%s' {{}} + && "
    f"{_FIND} -type f -exec sha256sum {{}} + && "
    f"{_FIND} -type l -exec stat -c 'L|%n|%N' {{}} + && "
    "sed 's/^/M|/' /proc/self/mountinfo"
)


def parse_container_tree(out: str) -> tuple[Tree, set[str]]:
    """The manifest MANIFEST_SCRIPT printed, and the container's mount targets."""
    nodes: dict[str, Node] = {}
    mounts: set[str] = set()
    for line in out.splitlines():
        if line.startswith("S|"):
            _, name, mode, uid, gid, nlink, size = line.split("|")
            nodes[name] = _node(int(mode, 16), int(uid), int(gid), int(nlink), int(size))
        elif line.startswith("L|"):
            _, name, quoted = line.split("|", 2)  # 'name' -> 'target'
            nodes[name] = replace(nodes[name], target=quoted.split(" -> ", 1)[1][1:-1])
        elif line.startswith("M|"):
            mounts.add(line.split()[4])
        else:
            digest, name = line.split("  ", 1)
            nodes[name] = replace(nodes[name], sha256=digest)
    return nodes, mounts


@dataclass
class Imported:
    """An image imported into containerd with fusesnap, and umoci's unpack of it."""
    built: oci.Built
    expected: Path  # umoci's root filesystem


def import_and_unpack(env: Env, image: oci.Image, name: str) -> Imported:
    built = env.import_(image)
    return Imported(built, oci.umoci_unpack(built.path, env.archives / f"umoci-{name}"))


@pytest.fixture(scope="module")
def rich(env: Env, busybox: oci.Built) -> Imported:
    """oci.rich_image: 10 layers, every kind of change, a 100 MB file."""
    return import_and_unpack(env, oci.rich_image(), "rich")


@pytest.fixture(scope="module")
def many(env: Env, busybox: oci.Built) -> Imported:
    """oci.many_layers_image: 62 layers."""
    return import_and_unpack(env, oci.many_layers_image(), "many")


@pytest.fixture(scope="module", params=["rich", "many"])
def imported(request: pytest.FixtureRequest) -> Imported:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def in_container(env: Env, imported: Imported) -> tuple[Tree, set[str]]:
    """The tree and the mounts a container of the image sees."""
    out = env.containerd.run(imported.built.name, "tree-" + imported.built.name.split("/")[1]
                             .replace(":", "-"), "sh", "-c", MANIFEST_SCRIPT, timeout=120)
    return parse_container_tree(out.stdout)


@pytest.fixture(scope="module")
def top_view(env: Env, imported: Imported) -> Iterator[Path]:
    """A `ctr snapshots view` of the image's top layer, read on the host."""
    key = "view-" + imported.built.chain_ids[-1].removeprefix("sha256:")[:12]
    try:
        yield env.view(key, imported.built.chain_ids[-1])
    finally:
        env.containerd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", key, check=False)


def test_import_puts_blobs_and_a_snapshot_chain_in_fusesnap(env: Env,
                                                            imported: Imported) -> None:
    assert len(imported.built.layers) >= 10
    assert set(imported.built.blobs) <= env.blobs()
    by_chain_id = {key.split("/", 2)[-1]: i for key, i in env.snapshots().items()}
    chain = [by_chain_id[c] for c in imported.built.chain_ids]
    assert [i.parent for i in chain] == ["", *(i.name for i in chain[:-1])]
    assert {i.kind for i in chain} == {spb.COMMITTED}


def test_container_sees_the_tree_umoci_unpacks(in_container: tuple[Tree, set[str]],
                                               imported: Imported) -> None:
    tree, _ = in_container
    expected = host_tree(imported.expected)
    # runc adds its mount points to the root directory: one link each.
    root = tree.pop(".")
    assert replace(root, nlink=root.nlink - len(RUNTIME_MOUNTS)) == expected.pop(".")
    assert_same_tree(tree, expected)


def test_container_tree_leaves_out_only_runtime_mounts(in_container: tuple[Tree, set[str]],
                                                       imported: Imported) -> None:
    _, mounts = in_container
    assert {m.split("/")[1] for m in mounts if m != "/"} == set(RUNTIME_MOUNTS)
    assert not {p for p in RUNTIME_MOUNTS if (imported.expected / p).exists()}


def test_view_of_top_layer_is_the_tree_umoci_unpacks(top_view: Path,
                                                     imported: Imported) -> None:
    assert_same_tree(host_tree(top_view), host_tree(imported.expected))


def test_view_of_top_layer_has_the_xattrs_umoci_unpacks(top_view: Path,
                                                        imported: Imported) -> None:
    assert xattrs(top_view) == xattrs(imported.expected)


def test_rich_image_as_umoci_unpacks_it_has_every_case(rich: Imported) -> None:
    # The oracle itself: umoci's tree holds what the layers were written to
    # produce, so that the comparisons above compare something.
    root = rich.expected
    d = root / "data"
    for gone in ("deldir", "partial/gone", "opq/a", "opq/sub", "recreate/old",
                 "links/dangling", "d2f/x"):
        assert not os.path.lexists(d / gone), gone
    assert (d / "del").read_text() == "back as a new file\n"
    assert (d / "d2f").is_file() and (d / "f2d").is_dir()
    assert stat.S_IMODE((root / "usr/local/bin/suid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "usr/local/bin/sgid").stat().st_mode) == 0o2755
    assert stat.S_ISFIFO((d / "fifo").lstat().st_mode)
    assert [(d / "links" / n).stat().st_nlink for n in ("orig", "hl1", "hl2")] == [2, 1, 2]
    assert (d / "links/abs").readlink() == Path("/data/links/orig")
    assert (d / "big").stat().st_size == oci.BIG_SIZE
    assert os.getxattr(d / "xattr/cap", "security.capability") == \
        oci.capability(oci.CAP_NET_BIND_SERVICE, oci.CAP_NET_RAW)
    assert os.getxattr(d / "xattr/dir", "user.dir") == b"changed"
    assert os.listxattr(d / "xattr/dropped") == []
    assert list((d / "empty").iterdir()) == []


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
    wait_until(lambda: not set(built.blobs) & env.blobs(), "the image's blobs left fusesnap",
               env=env)
    wait_until(lambda: not {lower.name, upper.name} & set(env.snapshots()),
               "the image's snapshots left fusesnap", env=env)
