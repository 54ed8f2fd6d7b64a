"""`fusesnap images pull` (issue 20, first part) from real registries: Debian's
docker-registry on 127.0.0.1 (tests/registry_env.py), anonymous on plain
HTTP, with htpasswd basic auth over TLS from a test CA, and with token auth
from a token server written in the tests; a proxy in front of the plain one
corrupts a blob, cuts one off, or serves an oversized manifest. The pulled
tree is compared with the import of the same archive.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.client.registry import Reference, RegistryError, docker_credentials
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from tests import oci, registry_env
from tests.conftest import Daemon, module_daemon
from tests.registry_env import Proxy, Registry, TokenServer
from tests.test_images_import import Cli, small_image
from tests.trees import host_tree

pytestmark = pytest.mark.skipif(bool(registry_env.missing()), reason=registry_env.missing())

CREDS = ("puller", "s3cret pass")
REPO = "fusesnap/small"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "registry-pull")


@pytest.fixture(scope="module")
def cli(daemon: Daemon) -> Cli:
    return Cli(daemon)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> oci.Built:
    return oci.write_archive(small_image(), tmp_path_factory.mktemp("archive") / "small.tar")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, built: oci.Built) -> Iterator[Registry]:
    reg = registry_env.start_registry(tmp_path_factory.mktemp("plain"))
    try:
        registry_env.skopeo_copy(built.path, reg, f"{REPO}:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> registry_env.Ca:
    return registry_env.make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, built: oci.Built,
           ca: registry_env.Ca) -> Iterator[Registry]:
    reg = registry_env.start_registry(tmp_path_factory.mktemp("secure"), ca=ca, creds=CREDS)
    try:
        registry_env.skopeo_copy(built.path, reg, f"{REPO}:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory, built: oci.Built) -> Iterator[Registry]:
    directory = tmp_path_factory.mktemp("tokened")
    token = TokenServer(directory / "token", *CREDS)
    reg = registry_env.start_registry(directory / "registry", token=token)
    reg.creds = CREDS
    try:
        registry_env.skopeo_copy(built.path, reg, f"{REPO}:1")
        yield reg
    finally:
        reg.stop()


def tree_of(cli: Cli, name: str) -> object:
    return host_tree(Path(cli.ok("images", "mount", name).strip()))


@pytest.fixture(scope="module")
def imported_tree(cli: Cli, built: oci.Built) -> object:
    cli.ok("images", "import", str(built.path), "--name", "imported/small:1")
    return tree_of(cli, "imported/small:1")


def blob_count(daemon: Daemon) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
                          "content", "ls", "-q"], capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


# ---------------------------------------------------------------------- pulls


def test_pull_anonymous_plain_http(cli: Cli, plain: Registry, built: oci.Built,
                                   imported_tree: object) -> None:
    out = cli.ok("images", "pull", "--plain-http", f"{plain.host}/{REPO}:1")
    assert out == f"{plain.host}/{REPO}:1 {built.manifest}\n"
    image = cli.json("images", "get", f"{plain.host}/{REPO}:1", "--json")
    assert image["target"]["digest"] == built.manifest  # type: ignore[index]
    assert tree_of(cli, f"{plain.host}/{REPO}:1") == imported_tree
    info = cli.json("content", "info", built.manifest, "--json")
    labels = info["labels"]  # type: ignore[index]
    assert labels["containerd.io/gc.ref.content.config"] == built.config
    # Where each blob came from, as containerd's pull records it (push mounts from it).
    for digest in (built.manifest, built.config, *built.layers):
        info = cli.json("content", "info", digest, "--json")
        assert info["labels"][f"containerd.io/distribution.source.{plain.host}"] == REPO  # type: ignore[index]
    assert cli.ok("leases", "ls", "-q") == ""  # the pull's lease is gone


def test_pull_basic_auth_tls(cli: Cli, secure: Registry, ca: registry_env.Ca,
                             built: oci.Built, imported_tree: object) -> None:
    out = cli.ok("images", "pull", "--ca", str(ca.cert), "--creds", ":".join(CREDS),
                 "--name", "secure/small:1", f"{secure.host}/{REPO}:1")
    assert out == f"secure/small:1 {built.manifest}\n"
    assert tree_of(cli, "secure/small:1") == imported_tree


def test_pull_creds_from_docker_config(cli: Cli, secure: Registry, ca: registry_env.Ca,
                                       tmp_path: Path, built: oci.Built) -> None:
    (tmp_path / ".docker").mkdir()
    auth = base64.b64encode(":".join(CREDS).encode()).decode()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {secure.host: {"auth": auth}}}))
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(cli.daemon.socket),
                           "images", "pull", "--ca", str(ca.cert), "--name", "config/small:1",
                           f"{secure.host}/{REPO}:1"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"config/small:1 {built.manifest}\n"


def test_pull_bearer_token(cli: Cli, tokened: Registry, built: oci.Built,
                           imported_tree: object) -> None:
    out = cli.ok("images", "pull", "--plain-http", "--creds", ":".join(CREDS),
                 "--name", "token/small:1", f"{tokened.host}/{REPO}:1")
    assert out == f"token/small:1 {built.manifest}\n"
    assert tree_of(cli, "token/small:1") == imported_tree
    assert tokened.token is not None
    assert any(f"scope=repository%3A{REPO.replace('/', '%2F')}%3Apull" in r
               for r in tokened.token.requests), tokened.token.requests


def test_pull_by_digest_and_platform_from_an_index(cli: Cli, plain: Registry,
                                                   built: oci.Built) -> None:
    plat = oci.host_platform()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [
                            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": built.manifest, "size": built.sizes[built.manifest],
                             "platform": plat},
                        ]}).encode()
    registry_env.put_manifest(plain, REPO, "multi", index,
                              "application/vnd.oci.image.index.v1+json")
    out = cli.ok("images", "pull", "--plain-http", "--name", "index/small:1",
                 f"{plain.host}/{REPO}:multi")
    assert out.split()[1] == oci.digest(index)
    cli.ok("images", "pull", "--plain-http", "--name", "digest/small:1",
           f"{plain.host}/{REPO}@{built.manifest}")
    err = cli.fails("images", "pull", "--plain-http", "--platform", "windows/s390x",
                    f"{plain.host}/{REPO}:multi")
    assert "no manifest for windows/s390x" in err
    err = cli.fails("images", "pull", "--plain-http", "--platform", "windows/s390x",
                    f"{plain.host}/{REPO}:1")
    assert "one manifest, for linux/" in err and "not windows/s390x" in err


# ---------------------------------------------------------------------- refusals


def test_wrong_credentials(cli: Cli, secure: Registry, tokened: Registry,
                           ca: registry_env.Ca) -> None:
    err = cli.fails("images", "pull", "--ca", str(ca.cert), "--creds", "puller:wrong",
                    f"{secure.host}/{REPO}:1")
    assert "authentication failed" in err
    err = cli.fails("images", "pull", "--ca", str(ca.cert), f"{secure.host}/{REPO}:1")
    assert "needs credentials" in err
    err = cli.fails("images", "pull", "--plain-http", "--creds", "puller:wrong",
                    f"{tokened.host}/{REPO}:1")
    assert "token server" in err and "refused" in err


def test_unknown_repository_and_tag(cli: Cli, plain: Registry) -> None:
    assert "not found" in cli.fails("images", "pull", "--plain-http",
                                    f"{plain.host}/no/such:1")
    assert "tag nosuchtag not found" in cli.fails("images", "pull", "--plain-http",
                                                  f"{plain.host}/{REPO}:nosuchtag")


def test_tls_needs_ca_and_plain_http_needs_asking(cli: Cli, secure: Registry,
                                                  plain: Registry) -> None:
    err = cli.fails("images", "pull", "--creds", ":".join(CREDS), f"{secure.host}/{REPO}:1")
    assert "not trusted" in err and "--ca" in err
    err = cli.fails("images", "pull", f"{plain.host}/{REPO}:1")
    assert "--plain-http" in err


def test_corrupt_blob_refused_and_nothing_lost(cli: Cli, daemon: Daemon, plain: Registry,
                                               built: oci.Built) -> None:
    cli.ok("images", "pull", "--plain-http", "--name", "before/small:1",
           f"{plain.host}/{REPO}:1")
    before = blob_count(daemon)
    other = oci.write_archive(oci.Image("x", [oci.Layer([oci.File("c", b"corrupt me\n" * 100)]),
                                              *small_image().layers]),
                              built.path.parent / "other.tar")
    registry_env.skopeo_copy(other.path, plain, "fusesnap/other:1")
    proxy = Proxy(plain.host, corrupt={other.layers[0]})
    try:
        err = cli.fails("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/other:1")
    finally:
        proxy.stop()
    assert f"blob {other.layers[0]} from {proxy.host} does not match its digest" in err, err
    names = cli.ok("images", "ls", "-q").split()
    assert f"{proxy.host}/fusesnap/other:1" not in names and "before/small:1" in names
    assert before <= blob_count(daemon)
    assert other.layers[0] not in blob_count(daemon)
    assert cli.ok("content", "active", "-q") == ""  # the bad ingest is gone


def test_interrupted_pull_resumes_with_range(cli: Cli, daemon: Daemon, plain: Registry,
                                             built: oci.Built) -> None:
    data = os.urandom(2 << 20)  # gzip keeps it at about 2 MiB (skopeo keeps a gzip layer)
    resumed = oci.write_archive(oci.Image("r", [oci.Layer([oci.File("big", data)])]),
                                built.path.parent / "resume.tar")
    registry_env.skopeo_copy(resumed.path, plain, "fusesnap/resume:1")
    layer = resumed.layers[0]
    proxy = Proxy(plain.host, cut={layer: 1_500_000})
    try:
        err = cli.fails("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/resume:1")
        assert "broke off" in err
        active = cli.ok("content", "active", "-q").split()
        assert active == [f"pull-{layer}"]
        cli.ok("gc")  # the failed pull's lease keeps the ingest for the next attempt
        assert cli.ok("content", "active", "-q").split() == active
        assert f"{proxy.host}/fusesnap/resume:1" not in cli.ok("images", "ls", "-q").split()
        proxy.cut.clear()
        cli.ok("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/resume:1")
        ranges = [r for p, r in proxy.ranges if p.endswith(layer)]
        assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"
        assert int(ranges[0][6:].rstrip("-")) > 0
    finally:
        proxy.stop()
    mounted = Path(cli.ok("images", "mount", f"{proxy.host}/fusesnap/resume:1").strip())
    assert (mounted / "big").read_bytes() == data
    assert cli.ok("content", "active", "-q") == ""
    leases = cli.ok("leases", "ls", "-q").split()
    assert leases and all(i.startswith("fusesnap-pull-") for i in leases)  # failed pulls'
    for lease in leases:
        cli.ok("leases", "rm", lease)


def test_manifest_over_4_mib_refused(cli: Cli, plain: Registry) -> None:
    big = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "annotations": {"pad": "x" * (4 << 20)}}).encode()
    proxy = Proxy(plain.host, manifests={"fusesnap/huge/manifests/1": (
        "application/vnd.oci.image.manifest.v1+json", big)})
    try:
        err = cli.fails("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/huge:1")
    finally:
        proxy.stop()
    assert "larger than" in err


def test_a_layer_twice_in_one_manifest(cli: Cli, plain: Registry, built: oci.Built) -> None:
    same = oci.Layer([oci.File("twice", b"the same layer\n")])
    twice = oci.write_archive(oci.Image("t", [same, oci.Layer([oci.File("x", b"x\n")]), same]),
                              built.path.parent / "twice.tar")
    registry_env.skopeo_copy(twice.path, plain, "fusesnap/twice:1")
    out = cli.ok("images", "pull", "--plain-http", f"{plain.host}/fusesnap/twice:1")
    assert out.split()[1] == twice.manifest
    mounted = Path(cli.ok("images", "mount", f"{plain.host}/fusesnap/twice:1").strip())
    assert sorted(p.name for p in mounted.iterdir()) == ["twice", "x"]


@pytest.mark.parametrize(("text", "host", "repo", "tag", "digest"), [
    ("alpine", "docker.io", "library/alpine", "latest", ""),
    ("user/app:2", "docker.io", "user/app", "2", ""),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", ""),
    ("localhost/a:1", "localhost", "a", "1", ""),
    ("example.com/a@sha256:" + "0" * 64, "example.com", "a", "", "sha256:" + "0" * 64),
])
def test_reference_parse(text: str, host: str, repo: str, tag: str, digest: str) -> None:
    assert Reference.parse(text) == Reference(host, repo, tag, digest)


@pytest.mark.parametrize("text", ["UPPER/case", "a:b:c", "a@sha256", "a/:1", ""])
def test_reference_parse_refuses(text: str) -> None:
    with pytest.raises(RegistryError):
        Reference.parse(text)


def test_docker_config_entries(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"u:p:with:colons").decode()
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "http://127.0.0.1:5000": {"username": "a", "password": "b"},
    }}))
    assert docker_credentials("docker.io", config) == ("u", "p:with:colons")
    assert docker_credentials("127.0.0.1:5000", config) == ("a", "b")
    assert docker_credentials("other.example", config) is None
    assert docker_credentials("docker.io", tmp_path / "none.json") is None


def test_ctrl_c_stops_a_stalled_pull_at_once(cli: Cli, plain: Registry,
                                              built: oci.Built) -> None:
    data = os.urandom(1 << 20)
    stalled = oci.write_archive(oci.Image("s", [oci.Layer([oci.File("s", data)])]),
                                built.path.parent / "stall.tar")
    registry_env.skopeo_copy(stalled.path, plain, "fusesnap/stall:1")
    layer = stalled.layers[0]
    proxy = Proxy(plain.host, stall={layer: 400_000})
    ref = f"{proxy.host}/fusesnap/stall:1"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fusesnap", "--socket",
                                 str(cli.daemon.socket), "images", "pull", "--plain-http", ref],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.stalled.wait(30)
            time.sleep(0.3)  # the bytes before the stall reach the client
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
            assert time.monotonic() - began < 5  # not the proxy's 20 s
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
        status = cli.json("content", "active", "--json")
        offsets = {s["ref"]: s["offset"] for s in status}  # type: ignore[union-attr, index]
        assert offsets.get(f"pull-{layer}", 0) > 0, offsets
        proxy.stall.clear()
        proxy.release.set()
        cli.ok("images", "pull", "--plain-http", ref)
        assert any(p.endswith(layer) and r != "bytes=0-" for p, r in proxy.ranges)
    finally:
        proxy.release.set()
        proxy.stop()


def test_two_pulls_of_one_image_at_once(cli: Cli, plain: Registry, built: oci.Built) -> None:
    data = os.urandom(3 << 20)
    shared = oci.write_archive(oci.Image("c", [oci.Layer([oci.File("c", data)])]),
                               built.path.parent / "concurrent.tar")
    registry_env.skopeo_copy(shared.path, plain, "fusesnap/concurrent:1")
    layer = shared.layers[0]
    proxy = Proxy(plain.host, stall={layer: 1_500_000})  # the first MiB reaches the ingest
    ref = f"{proxy.host}/fusesnap/concurrent:1"
    command = [sys.executable, "-m", "fusesnap", "--socket", str(cli.daemon.socket),
               "images", "pull", "--plain-http"]
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(subprocess.Popen([*command, "--name", "first", ref], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        assert proxy.stalled.wait(30)  # the first holds the layer's ingest
        proxy.stall.clear()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and f"pull-{layer}" not in cli.ok(
                "content", "active", "-q").split():
            time.sleep(0.05)
        procs.append(subprocess.Popen([*command, "--name", "second", ref], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(1)  # the second waits for the ingest the first holds
        assert procs[1].poll() is None
        proxy.release.set()  # the first's download breaks off; it fails or resumes
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        proxy.release.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        proxy.stop()
    assert procs[1].returncode == 0, outs[1]
    assert outs[1][0] == f"second {shared.manifest}\n"
    mounted = Path(cli.ok("images", "mount", "second").strip())
    assert (mounted / "c").read_bytes() == data


def test_docker_v2_media_types(cli: Cli, plain: Registry, built: oci.Built) -> None:
    gzipped = oci.write_archive(oci.Image("d", [
        oci.Layer([oci.Dir("s"), oci.File("s/a", b"first layer\n")]),
        oci.Layer([oci.File("s/b", b"second layer\n", 0o600)])]),
        built.path.parent / "docker.tar")  # skopeo makes no Docker image of zstd layers
    registry_env.skopeo_copy(gzipped.path, plain, "fusesnap/docker:1", fmt="v2s2")
    info = cli.json("images", "pull", "--plain-http", "--json", "--name", "docker/small:1",
                    f"{plain.host}/fusesnap/docker:1")
    docker_manifest = "application/vnd.docker.distribution.manifest.v2+json"
    assert info["media_type"] == docker_manifest  # type: ignore[index]
    cli.ok("images", "import", str(gzipped.path), "--name", "docker/imported:1")
    expected = tree_of(cli, "docker/imported:1")
    assert tree_of(cli, "docker/small:1") == expected
    digest = info["digest"]  # type: ignore[index]
    size = cli.json("content", "info", digest, "--json")["size"]  # type: ignore[index]
    manifest_list = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": docker_manifest, "digest": digest, "size": size,
                       "platform": oci.host_platform()}]}).encode()
    registry_env.put_manifest(plain, "fusesnap/docker", "list", manifest_list,
                              "application/vnd.docker.distribution.manifest.list.v2+json")
    out = cli.ok("images", "pull", "--plain-http", "--name", "docker/list:1",
                 f"{plain.host}/fusesnap/docker:list")
    assert out == f"docker/list:1 {oci.digest(manifest_list)}\n"
    assert tree_of(cli, "docker/list:1") == expected


def test_an_ingest_with_every_byte_is_committed_without_a_request(
        cli: Cli, plain: Registry, built: oci.Built) -> None:
    data = os.urandom(200_000)
    whole = oci.write_archive(oci.Image("w", [oci.Layer([oci.File("w", data)])]),
                              built.path.parent / "whole.tar")
    registry_env.skopeo_copy(whole.path, plain, "fusesnap/whole:1")
    layer = whole.layers[0]
    with tarfile.open(whole.path) as tar:
        member = tar.extractfile(f"blobs/sha256/{layer.removeprefix('sha256:')}")
        assert member is not None
        blob = member.read()
    stub = ContentStub(cli.daemon.channel)
    lease = "test-whole-ingest"
    ns = [("containerd-namespace", "default")]
    LeasesStub(cli.daemon.channel).Create(lpb.CreateRequest(id=lease), metadata=ns)
    list(stub.Write(iter([cpb.WriteContentRequest(action=cpb.WRITE, ref=f"pull-{layer}",
                                                  offset=0, data=blob, total=len(blob),
                                                  expected=layer)]),
                    metadata=[*ns, ("containerd-lease", lease)]))
    proxy = Proxy(plain.host)
    try:
        cli.ok("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/whole:1")
        assert not [p for p, _ in proxy.ranges if p.endswith(layer)]
    finally:
        proxy.stop()
        LeasesStub(cli.daemon.channel).Delete(lpb.DeleteRequest(id=lease), metadata=ns)
    mounted = Path(cli.ok("images", "mount", f"{proxy.host}/fusesnap/whole:1").strip())
    assert (mounted / "w").read_bytes() == data


def test_a_failed_blob_stops_the_other_downloads(cli: Cli, plain: Registry,
                                                 built: oci.Built) -> None:
    slow = oci.write_archive(oci.Image("f", [
        oci.Layer([oci.File("big", os.urandom(2 << 20))]),
        oci.Layer([oci.File("small", b"small\n")])]), built.path.parent / "fail.tar")
    registry_env.skopeo_copy(slow.path, plain, "fusesnap/fail:1")
    proxy = Proxy(plain.host, stall={slow.layers[0]: 100_000}, corrupt={slow.layers[1]})
    try:
        began = time.monotonic()
        err = cli.fails("images", "pull", "--plain-http", f"{proxy.host}/fusesnap/fail:1")
        assert time.monotonic() - began < 10  # not the stalled download's 20 s
    finally:
        proxy.release.set()
        proxy.stop()
    assert "does not match its digest" in err
