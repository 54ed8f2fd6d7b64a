"""containerd's CRI, end to end, on lazy layers (issue 20, fourth part).

A private containerd 1.6 (tests/containerd_env.py) with its CRI plugin on,
fusesnap (proxy role, `--insecure-registry`) as its snapshotter and content
store, and `disable_snapshot_annotations = false`, so that CRI's pulls send
each layer's annotations as the labels of its Prepare: the remote-snapshot
protocol (spec §2.5). The tests drive it as the kubelet does, with CRI calls
(tests/cri.py), against Debian's docker-registry on 127.0.0.1 behind the
tests' proxy (tests/registry_env.py), which records every request.

The image is busybox and a layer of two files (a short text and 4 MiB that
do not compress), converted to eStargz by `images convert --estargz` and
pushed by `images push`; the pods' sandbox image is busybox running `sleep`,
pushed as it is (not eStargz: CRI pulls it whole, as before).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusesnap.pb import snapshots_pb2 as spb
from tests import oci, registry_env
from tests.conftest import Daemon, fuse_usable, module_daemon
from tests.containerd_env import CRI_NAMESPACE, Containerd, Cri, unavailable
from tests.cri import CriClient
from tests.registry_env import Proxy, Registry
from tests.test_images_import import Cli

REMOTE = "containerd.io/snapshot/remote"
HELLO = b"hello from a lazy layer, through containerd's CRI\n"
DATA = random.Random(20).randbytes(4 * 2**20)
PAUSE = "cri/pause:1"
LAZY = "cri/esgz:1"


def missing() -> str | None:
    return unavailable() or registry_env.missing() or fuse_usable()


pytestmark = pytest.mark.skipif(bool(missing()), reason=f"CRI end to end: {missing()}")


@dataclass
class Env:
    registry: Registry
    proxy: Proxy
    fusesnap: Daemon
    containerd: Containerd
    cri: CriClient

    def ref(self, repo_tag: str) -> str:
        return f"{self.proxy.host}/{repo_tag}"

    def snapshots(self) -> dict[str, spb.Info]:
        """fusesnap's snapshots in CRI's namespace, by name."""
        assert self.fusesnap.channel is not None
        return {i.name: i for r in self.fusesnap.snapshots.List(
            spb.ListSnapshotsRequest(snapshotter="fusesnap"),
            metadata=(("containerd-namespace", CRI_NAMESPACE),)) for i in r.info}

    def layer_gets(self, digests: list[str]) -> list[tuple[str, str]]:
        """(digest, Range header) of every GET the registry saw of these blobs."""
        return [(path.rpartition("/")[2], r) for path, r in self.proxy.gets
                if path.rpartition("/")[2] in digests]


def pushed_images(source: Cli, registry: Registry, work: Path) -> None:
    """The sandbox image and the eStargz image, in `registry`."""
    pause = oci.pause_image()
    app = oci.Image("fusesnap.test/app:1", [
        oci.busybox_layer(),
        oci.Layer([oci.Dir("data"), oci.File("data/hello.txt", HELLO),
                   oci.File("data/random.bin", DATA)])])
    for image in (pause, app):
        archive = oci.write_archive(image, work / f"{image.name.rpartition('/')[2]}.tar")
        source.ok("images", "import", str(archive.path))
    source.ok("images", "convert", "--estargz", app.name, "fusesnap.test/app:esgz")
    source.ok("images", "push", "--plain-http", pause.name, f"{registry.host}/{PAUSE}")
    source.ok("images", "push", "--plain-http", "fusesnap.test/app:esgz",
              f"{registry.host}/{LAZY}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("cri-registry")
    registry = registry_env.start_registry(base / "registry")
    try:
        for source in module_daemon(tmp_path_factory, "cri-source"):
            pushed_images(Cli(source), registry, base)
        yield registry
    finally:
        registry.stop()


def cri_env(base: Path, registry: Registry, annotations: bool) -> Iterator[Env]:
    """Body of a fixture: a proxy to `registry`, fusesnap and a containerd
    with CRI (`annotations`: its pulls send the layers' annotations)."""
    proxy = Proxy(registry.host)
    daemon = Daemon(base / "fusesnap", args=("--role", "proxy",
                                             "--insecure-registry", proxy.host))
    containerd = Containerd(base / "containerd", daemon.socket, cri=Cri(
        sandbox_image=f"{proxy.host}/{PAUSE}", plain_http=(proxy.host,),
        snapshot_annotations=annotations))
    cri = CriClient(containerd.socket, base / "pods")
    try:
        daemon.start()
        containerd.start()
        yield Env(registry, proxy, daemon, containerd, cri)
    finally:
        cri.close()
        containerd.stop()
        daemon.cleanup()
        proxy.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Env]:
    """CRI as a lazy-pulling cluster has it: snapshot annotations on."""
    yield from cri_env(tmp_path_factory.mktemp("cri-lazy"), registry, annotations=True)


@pytest.fixture
def full_env(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Env]:
    """CRI's default: no snapshot annotations, so every layer is downloaded."""
    yield from cri_env(tmp_path_factory.mktemp("cri-full"), registry, annotations=False)


def manifest_layers(env: Env, ref: str) -> list[str]:
    """The layer digests of image `ref`'s manifest, as containerd has it."""
    rows = [line.split() for line in env.containerd.ctr("images", "ls").stdout.splitlines()[1:]]
    manifest = next(row[2] for row in rows if row[0] == ref)
    return [d["digest"] for d in json.loads(env.containerd.ctr("content", "get",
                                                               manifest).stdout)["layers"]]


def test_a_cri_pull_makes_lazy_layers_and_downloads_none(env: Env) -> None:
    env.cri.pull(env.ref(LAZY))
    layers = manifest_layers(env, env.ref(LAZY))
    assert len(layers) == 2
    # containerd asked fusesnap for each layer with the remote-snapshot labels
    # and took AlreadyExists for an answer: the layers are fusesnap's remote
    # snapshots, made from their TOCs.
    snapshots = env.snapshots()
    remote = [s for s in snapshots.values() if REMOTE in s.labels]
    assert len(remote) == 2, {n: dict(s.labels) for n, s in snapshots.items()}
    assert env.fusesnap.logs().count("made from its TOC") >= 2
    # containerd fetched no layer itself: its fetches are whole GETs, and
    # every GET of a layer blob was one of fusesnap's Range requests.
    gets = env.layer_gets(layers)
    assert gets and all(r for _, r in gets), gets


COMMAND = ("/bin/sh", "-c", "cat /data/hello.txt; sha256sum /data/random.bin; "
           "echo written > /data/new; cat /data/new")
OUTPUT = HELLO.decode() + f"{hashlib.sha256(DATA).hexdigest()}  /data/random.bin\nwritten\n"


def run_app(env: Env, pod_name: str) -> None:
    """The eStargz image's container, in a new pod, prints OUTPUT."""
    pod = env.cri.run_pod(pod_name)
    try:
        cid = env.cri.start(pod, "app", env.ref(LAZY), *COMMAND)
        done = env.cri.wait(cid, pod, "app")
    finally:
        env.cri.remove_pod(pod)
    assert (done.exit_code, done.stderr, done.stdout) == (0, "", OUTPUT), done


def test_a_container_runs_on_lazy_layers(env: Env) -> None:
    env.cri.pull(env.ref(LAZY))
    run_app(env, "lazy")


def test_without_snapshot_annotations_cri_downloads_the_layers(full_env: Env) -> None:
    full_env.cri.pull(full_env.ref(LAZY))
    layers = manifest_layers(full_env, full_env.ref(LAZY))
    # Nothing lazy: containerd fetched each layer whole and applied it.
    assert not [s for s in full_env.snapshots().values() if REMOTE in s.labels]
    assert "made from its TOC" not in full_env.fusesnap.logs()
    assert {d for d, r in full_env.layer_gets(layers) if not r} == set(layers)
    run_app(full_env, "full")
