"""Lazy pulls (issue 20, third and fourth parts): `fusesnap images pull --lazy`
of an eStargz image from a real registry (Debian's docker-registry on
127.0.0.1, behind the tests' proxy, tests/registry_env.py), and the
remote-snapshot Prepare (spec §2.5) it sends, as containerd's CRI does.

The image is tests/test_estargz.py's (whiteouts, an opaque directory, hard
links, xattrs, devices, a file of three chunks), converted by `images convert
--estargz` in a source daemon and pushed with `images push`. Each test pulls
it into a fresh daemon started with `--insecure-registry PROXY`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap import estargz, remote
from fusesnap.client.registry import Reference
from fusesnap.client.registry import Registry as RegistryClient
from fusesnap.distribution import Session
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub
from tests import oci, registry_env
from tests.conftest import Daemon, module_daemon
from tests.registry_env import Proxy, Registry
from tests.test_estargz import BIG, EXACT, EXTRA, NAME, NEW, source_image
from tests.test_images_import import COMMAND, Cli
from tests.trees import Tree, assert_same_tree, host_tree

pytestmark = pytest.mark.skipif(bool(registry_env.missing()), reason=registry_env.missing())

REPO = "lazy/esgz"
PLAIN_REPO = "lazy/plain"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    for daemon in module_daemon(tmp_path_factory, "lazy-source"):
        yield Cli(daemon)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, source: Cli) -> Iterator[Registry]:
    reg = registry_env.start_registry(tmp_path_factory.mktemp("lazy-registry"))
    try:
        work = tmp_path_factory.mktemp("lazy-image")
        source.ok("images", "import", str(oci.write_archive(source_image(),
                                                             work / "plain.tar").path))
        source.ok("images", "convert", "--estargz", NAME, NEW)
        source.ok("images", "push", "--plain-http", NEW, f"{reg.host}/{REPO}:1")
        source.ok("images", "push", "--plain-http", NAME, f"{reg.host}/{PLAIN_REPO}:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def expected(source: Cli) -> Tree:
    """The converted image's tree, as a full unpack shows it, without the
    landmark and TOC files a lazy layer does not show."""
    tree = host_tree(Path(source.ok("images", "mount", NEW).strip()))
    return {p: n for p, n in tree.items() if p not in EXTRA}


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Proxy]:
    p = Proxy(registry.host)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def lazy(new_daemon: type[Daemon], proxy: Proxy) -> Cli:
    return Cli(new_daemon(args=("--insecure-registry", proxy.host)).start())


def ref(proxy: Proxy, repo: str = REPO) -> str:
    return f"{proxy.host}/{repo}:1"


def manifest_of(cli: Cli, name: str) -> dict:
    image = cli.json("images", "get", name, "--json")
    return json.loads(cli.ok("content", "get", image["target"]["digest"]))  # type: ignore[index]


def layer_digests(cli: Cli, name: str) -> list[str]:
    return [d["digest"] for d in manifest_of(cli, name)["layers"]]


def wait_complete(cli: Cli, digests: list[str], seconds: float = 60) -> None:
    """Until every layer blob is in the daemon's content store (the background
    download done, the layers ordinary)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        have = set(cli.ok("content", "ls", "-q").split())
        if set(digests) <= have:
            return
        time.sleep(0.2)
    raise AssertionError(f"layers not complete after {seconds} s: "
                         f"{sorted(set(digests) - have)}")


def stat_tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """(mode, uid, gid, size) of every path under `root`, by lstat only."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            out["./" + str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid,
                                                       st.st_size if not stat.S_ISDIR(
                                                           st.st_mode) else 0)
    return out


# ---------------------------------------------------------------------- pulls


def test_lazy_pull_reads_every_file_right_and_completes(lazy: Cli, proxy: Proxy,
                                                        expected: Tree, tmp_path: Path) -> None:
    out = lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    assert out.split()[0] == ref(proxy)
    root = Path(lazy.ok("images", "mount", ref(proxy)).strip())
    assert (root / "d" / "small").read_bytes() == b"rewritten\n"
    assert (root / "d" / "big").read_bytes() == BIG
    assert_same_tree(host_tree(root), expected)
    # Every request for a layer's bytes was a Range request: no layer was
    # downloaded whole by one GET (the client reads the config whole).
    layers = layer_digests(lazy, ref(proxy))
    asked = [(path.rpartition("/")[2], r) for path, r in proxy.gets]
    assert {d for d, _ in asked} >= set(layers)
    assert all(r for d, r in asked if d in layers), asked
    wait_complete(lazy, layers)
    assert_same_tree(host_tree(root), expected)
    # Complete, the image exports as any other (every blob is in the store).
    archive = tmp_path / "lazy-export.tar"
    lazy.ok("images", "export", ref(proxy), str(archive))
    with tarfile.open(archive) as tar:
        assert {f"blobs/sha256/{d.partition(':')[2]}" for d in layers} <= set(tar.getnames())


def test_the_tree_shows_before_any_file_byte_and_reads_fail_with_eio(
        lazy: Cli, proxy: Proxy, source: Cli) -> None:
    # The registry serves only the blobs' tails (footers and TOCs): the image
    # is there whole, names, owners, modes and sizes; a file's bytes are not.
    proxy.tail_only = True
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    root = Path(lazy.ok("images", "mount", ref(proxy)).strip())
    want = stat_tree(Path(source.ok("images", "mount", NEW).strip()))
    assert stat_tree(root) == {p: v for p, v in want.items() if p not in EXTRA}
    with pytest.raises(OSError) as err:
        (root / "d" / "big").read_bytes()
    assert err.value.errno == errno.EIO
    assert "cannot fetch its bytes" in lazy.daemon.logs()
    # The registry back: the same file opens and reads right.
    proxy.tail_only = False
    assert (root / "d" / "big").read_bytes() == BIG


def test_a_lazy_layer_costs_one_request_until_its_files_are_read(lazy: Cli, proxy: Proxy,
                                                                source: Cli) -> None:
    # Its size, footer and TOC come in one suffix Range request (no HEAD).
    layers = layer_digests(source, NEW)
    proxy.refused_starts.update(layers)  # the background download stays out of it
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    asked = sorted((path.rpartition("/")[2], r) for path, r in proxy.gets
                   if path.rpartition("/")[2] in layers and not r.startswith("bytes=0-"))
    assert asked == sorted((d, f"bytes=-{remote.TAIL}") for d in layers)


def test_a_session_keeps_its_connection_and_replaces_one_the_server_closed(
        proxy: Proxy, source: Cli) -> None:
    digest = layer_digests(source, NEW)[-1]
    session = Session(Reference.parse(ref(proxy)), plain_http=True)
    tail = session.read_range(digest, 0, 10)
    for _ in range(4):
        assert session.read_range(digest, 0, 10) == tail
    assert session.read_tail(digest, 10)[1]
    assert proxy.connections == 1  # six requests, one round trip each
    # From now on the proxy closes each connection after its response: the
    # first read still goes on the kept one, the next two each find theirs
    # closed and go again on a new one.
    proxy.drop_kept = True
    for _ in range(3):
        assert session.read_range(digest, 0, 10) == tail
    assert proxy.connections == 3


def chunk_ranges(registry: Registry, digests: list[str], name: str) -> list[str]:
    """The Range header of each chunk of file `name`, from the TOC of the
    topmost of the layers `digests` that holds it."""
    for digest in reversed(digests):
        with urllib.request.urlopen(f"http://{registry.host}/v2/{REPO}/blobs/{digest}",
                                    timeout=30) as resp:
            blob = resp.read()
        toc = estargz.read_toc(lambda at, n, blob=blob: blob[at:at + n], len(blob))
        found = [c for c in estargz.chunks(toc) if c.name == name]
        if found:
            return [f"bytes={c.offset}-{c.end - 1}" for c in found]
    raise AssertionError(f"no layer holds {name}")


def test_a_read_fetches_only_the_chunks_it_reaches(lazy: Cli, proxy: Proxy, source: Cli,
                                                   registry: Registry) -> None:
    layers = layer_digests(source, NEW)
    proxy.refused_starts.update(layers)  # no background download: only reads fetch
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    first, middle, last = chunk_ranges(registry, layers, "d/big")
    root = Path(lazy.ok("images", "mount", ref(proxy)).strip())

    def asked(since: int) -> list[str]:
        return [r for _, r in proxy.ranges[since:]]
    n = len(proxy.ranges)
    with open(root / "d" / "big", "rb") as f:
        assert asked(n) == []  # the open fetched nothing
        assert f.read(10) == BIG[:10]
        assert asked(n) == [first]
        n = len(proxy.ranges)
        f.seek(len(BIG) - 5)
        assert f.read() == BIG[-5:]
        assert asked(n) == [last]
        n = len(proxy.ranges)
        f.seek(0)
        assert f.read() == BIG
        assert asked(n) == [middle]
    # Whole and checked: no longer lazy, a new open and read fetch nothing.
    n = len(proxy.ranges)
    assert (root / "d" / "big").read_bytes() == BIG
    assert asked(n) == []


def test_export_and_push_of_an_incomplete_lazy_image_say_why_and_write_nothing(
        lazy: Cli, proxy: Proxy, tmp_path: Path) -> None:
    proxy.tail_only = True  # the background download cannot complete
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    archive = tmp_path / "lazy.tar"
    err = lazy.fails("images", "export", ref(proxy), str(archive))
    assert "was pulled lazily and its background download is not complete" in err, err
    assert not archive.exists()
    err = lazy.fails("images", "push", "--plain-http", ref(proxy), f"{proxy.upstream}/lazy/copy:1")
    assert "was pulled lazily and its background download is not complete" in err, err
    err = lazy.fails("images", "convert", "--estargz", ref(proxy), "again")
    assert "was pulled lazily and its background download is not complete" in err, err
    assert lazy.ok("images", "ls", "-q").split() == [ref(proxy)]


def test_a_written_file_of_a_lazy_layer_is_copied_up_whole(lazy: Cli, proxy: Proxy) -> None:
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    work = Path(lazy.ok("images", "prepare", ref(proxy), "work").strip())
    with open(work / "d" / "big", "r+b") as f:
        f.seek(5)
        f.write(b"XY")
    assert (work / "d" / "big").read_bytes() == BIG[:5] + b"XY" + BIG[7:]
    os.truncate(work / "exact", 10)
    assert (work / "exact").read_bytes() == EXACT[:10]


def test_a_diff_holds_the_bytes_of_lazy_files_it_shows_never_zeros(lazy: Cli,
                                                                  proxy: Proxy) -> None:
    # A metadata change and a hard link in an upper snapshot put two files of
    # the lazy layer in its diff, whole, though their bytes stay below.
    proxy.tail_only = True
    lazy.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    work = Path(lazy.ok("images", "prepare", ref(proxy), "work").strip())
    os.chmod(work / "d" / "big", 0o600)
    os.link(work / "exact", work / "exact-link")
    # The registry cannot serve them: the diff fails, it never holds zeros.
    proc = lazy.run("snapshots", "diff", "work")
    assert proc.returncode == 1 and "cannot serve" in proc.stderr, proc.stderr
    proxy.tail_only = False
    with tarfile.open(fileobj=io.BytesIO(subprocess.run(
            [*COMMAND, "--socket", str(lazy.daemon.socket), "snapshots", "diff", "work"],
            capture_output=True, check=True, timeout=300).stdout)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar  # type: ignore[union-attr]
               if m.isreg()}
        links = {m.name: m.linkname for m in tar if m.islnk()}
    assert got["d/big"] == BIG
    assert EXACT in (got.get("exact"), got.get("exact-link"))
    assert set(links.items()) <= {("exact-link", "exact"), ("exact", "exact-link")}


def test_a_plain_image_is_refused_lazily_and_nothing_is_recorded(lazy: Cli,
                                                                  proxy: Proxy) -> None:
    err = lazy.fails("images", "pull", "--lazy", "--plain-http", ref(proxy, PLAIN_REPO))
    assert "not eStargz" in err and "images convert --estargz" in err
    assert lazy.ok("images", "ls", "-q") == ""
    assert lazy.ok("snapshots", "ls", "-q") == ""


def test_a_daemon_that_cannot_reach_the_registry_says_so(new_daemon: type[Daemon],
                                                          proxy: Proxy) -> None:
    cli = Cli(new_daemon().start())  # no --insecure-registry
    err = cli.fails("images", "pull", "--lazy", "--plain-http", ref(proxy))
    assert f"serve --insecure-registry {proxy.host}" in err
    assert cli.ok("images", "ls", "-q") == ""
    assert cli.ok("snapshots", "ls", "-q") == ""


def test_lazy_layers_survive_a_restart(new_daemon: type[Daemon], proxy: Proxy) -> None:
    d = new_daemon(args=("--insecure-registry", proxy.host)).start()
    cli = Cli(d)
    proxy.tail_only = True  # nothing completes, before the stop or after it
    cli.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
    d.stop()
    d.start()
    root = Path(cli.ok("images", "mount", ref(proxy)).strip())
    # Still lazy after the restart: the bytes are fetched, never zeros read.
    with pytest.raises(OSError) as err:
        (root / "d" / "big").read_bytes()
    assert err.value.errno == errno.EIO
    proxy.tail_only = False
    assert (root / "d" / "big").read_bytes() == BIG
    wait_complete(cli, layer_digests(cli, ref(proxy)))


# ---------------------------------------------------------------------- containerd's protocol


def remote_prepare(d: Daemon, proxy: Proxy, key: str, target: str, parent: str,
                   layer: dict, extra: dict[str, str] | None = None) -> grpc.RpcError | None:
    stub = SnapshotsStub(d.channel)
    labels = {"containerd.io/snapshot.ref": target,
              "containerd.io/snapshot/cri.layer-digest": layer["digest"],
              "containerd.io/snapshot/cri.image-ref": ref(proxy),
              **{k: v for k, v in (layer.get("annotations") or {}).items()
                 if k.startswith("containerd.io/snapshot/")},
              **(extra or {})}
    try:
        stub.Prepare(spb.PrepareSnapshotRequest(snapshotter="fusesnap", key=key, parent=parent,
                                                labels=labels), timeout=60)
    except grpc.RpcError as err:
        return err
    return None


def test_remote_snapshot_prepare_answers_already_exists(new_daemon: type[Daemon],
                                                          proxy: Proxy, source: Cli) -> None:
    d = new_daemon(args=("--insecure-registry", proxy.host)).start()
    layer = manifest_of(source, NEW)["layers"][0]
    err = remote_prepare(d, proxy, "extract-1 chain-1", "chain-1", "", layer)
    assert err is not None and err.code() == grpc.StatusCode.ALREADY_EXISTS
    stub = SnapshotsStub(d.channel)
    # What containerd's metadata layer asks next (spec §2.5): the target, by label and parent.
    found = [i for r in stub.List(spb.ListSnapshotsRequest(
        snapshotter="fusesnap",
        filters=['labels."containerd.io/snapshot.ref"==chain-1,parent==""']))
        for i in r.info]
    assert [(i.name, i.kind, i.parent) for i in found] == [("chain-1", spb.COMMITTED, "")]
    assert found[0].labels["containerd.io/snapshot/remote"] == "remote snapshot"
    # No active snapshot for the key; a second Prepare finds the target.
    with pytest.raises(grpc.RpcError) as gone:
        stub.Stat(spb.StatSnapshotRequest(snapshotter="fusesnap", key="extract-1 chain-1"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    again = remote_prepare(d, proxy, "extract-2 chain-1", "chain-1", "", layer)
    assert again is not None and again.code() == grpc.StatusCode.ALREADY_EXISTS
    # Without the TOC digest (the layer cannot be verified): an ordinary Prepare.
    plain = {k: v for k, v in layer.items() if k != "annotations"}
    assert remote_prepare(d, proxy, "extract-3", "chain-x", "", plain) is None


def bad_toc_layer(tmp_path: Path) -> tuple[bytes, str]:
    """An eStargz blob whose TOC's entry points past the payload: a valid
    layer whose TOC is rewritten; (blob, its TOC's digest)."""
    tar = tmp_path / "l.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("f")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    out = io.BytesIO()
    estargz.write_estargz(str(tar), out)
    blob = out.getvalue()
    toc = estargz.read_toc(lambda at, n: blob[at:at + n], len(blob))
    entries = [dict(e, offset=toc.offset + 100) if e.get("offset") else e
               for e in toc.entries]
    data = json.dumps({"version": 1, "entries": entries}).encode()
    member = io.BytesIO()
    with tarfile.open(fileobj=member, mode="w") as t:
        info = tarfile.TarInfo(estargz.TOC_NAME)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    bad = blob[:toc.offset] + gzip.compress(member.getvalue()) + estargz.footer(toc.offset)
    return bad, "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_toc_that_points_outside_its_layer_is_refused(new_daemon: type[Daemon],
                                                          tmp_path: Path,
                                                          registry: Registry) -> None:
    d = new_daemon(args=("--insecure-registry", registry.host)).start()
    blob, toc_digest = bad_toc_layer(tmp_path)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    RegistryClient(Reference.parse(f"{registry.host}/lazy/bad:1"), plain_http=True,
                   push=True).upload_blob(digest, len(blob), [blob], chunked=False)
    stub = SnapshotsStub(d.channel)
    labels = {"containerd.io/snapshot.ref": "bad", "containerd.io/snapshot/cri.layer-digest":
              digest, "containerd.io/snapshot/cri.image-ref": f"{registry.host}/lazy/bad:1",
              "containerd.io/snapshot/stargz/toc.digest": toc_digest}
    with pytest.raises(grpc.RpcError) as err:
        stub.Prepare(spb.PrepareSnapshotRequest(snapshotter="fusesnap", key="k", parent="",
                                                labels=labels), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "points outside the layer's payload" in (err.value.details() or "")
    listed = [i for r in stub.List(spb.ListSnapshotsRequest(snapshotter="fusesnap"))
              for i in r.info]
    assert listed == []


def test_a_full_disk_refuses_a_fetch_with_enospc_and_the_daemon_serves_on(
        new_daemon: type[Daemon], proxy: Proxy, tmp_path: Path) -> None:
    from tests.test_full_disk import fill_file, tmpfs
    for small in tmpfs(tmp_path / "small", "64m"):
        d = new_daemon(root=small / "root", args=("--insecure-registry", proxy.host)).start()
        cli = Cli(d)
        proxy.tail_only = True  # nothing fetched in the background meanwhile
        cli.ok("images", "pull", "--lazy", "--plain-http", ref(proxy))
        root = Path(cli.ok("images", "mount", ref(proxy)).strip())
        work = Path(cli.ok("images", "prepare", ref(proxy), "work").strip())
        assert fill_file(work / "filler") == errno.ENOSPC
        proxy.tail_only = False
        with pytest.raises(OSError) as err:
            (root / "d" / "big").read_bytes()
        assert err.value.errno == errno.ENOSPC
        os.unlink(work / "filler")
        # Space back (the daemon looks every second): the same read works.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert (root / "d" / "big").read_bytes() == BIG
                break
            except OSError as e:
                if e.errno != errno.ENOSPC or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        d.stop()
