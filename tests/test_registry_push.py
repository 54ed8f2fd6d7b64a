"""`fusesnap images push` (issue 20, second part) to real registries: Debian's
docker-registry on 127.0.0.1 (tests/registry_env.py), anonymous on plain
HTTP, with htpasswd basic auth over TLS, and with token auth; a recording
proxy in front of a plain one counts the uploads (POST, PATCH, PUT). What
was pushed is read back with the registry API (manifest bytes and digest,
each blob's sha256) and pulled back into the daemon under another name.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import oci, registry_env
from tests import test_registry_pull as pull
from tests.registry_env import Registry
from tests.test_images_import import Cli, small_image
from tests.test_registry_pull import CREDS

# The fixtures of the pull tests: the daemon, its CLI, the registries (this
# module's own instances: they are module-scoped).
daemon, cli, built, plain, ca = pull.daemon, pull.cli, pull.built, pull.plain, pull.ca
secure, tokened = pull.secure, pull.tokened

pytestmark = pytest.mark.skipif(bool(registry_env.missing()), reason=registry_env.missing())

NAME = "fusesnap.test/small:1"
BIG = "fusesnap.test/big:1"
BIG_SIZE = 20 << 20


@pytest.fixture(scope="module")
def small(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> oci.Built:
    built = oci.write_archive(small_image(NAME), tmp_path_factory.mktemp("small") / "s.tar")
    cli.ok("images", "import", str(built.path), "--name", NAME)
    return built


@pytest.fixture(scope="module")
def big(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> oci.Built:
    image = oci.Image(BIG, [oci.Layer([oci.File("random", os.urandom(BIG_SIZE))],
                                      gzip=False)])
    built = oci.write_archive(image, tmp_path_factory.mktemp("big") / "b.tar")
    cli.ok("images", "import", str(built.path), "--name", BIG)
    return built


class Recorder:
    """A plain-HTTP proxy to `upstream` that records (method, path) of every
    request and rewrites upload Locations to point at itself."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str]] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def forward(self) -> None:
                rec.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(rec.upstream, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in ("connection", "transfer-encoding", "content-length"):
                        continue
                    if k.lower() == "location":
                        v = v.replace(rec.upstream, rec.host)
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = forward  # noqa: N815

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def methods(self) -> list[str]:
        return [m for m, _ in self.requests]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder(plain: Registry) -> Iterator[Recorder]:
    rec = Recorder(plain.host)
    try:
        yield rec
    finally:
        rec.stop()


def fetch(reg: Registry, path: str, ca: registry_env.Ca | None = None,
          accept: str = "") -> tuple[bytes, dict[str, str]]:
    """GET /v2/PATH from the registry (basic auth if it has creds)."""
    if reg.tls:
        assert ca is not None
        context = ssl.create_default_context(cafile=str(ca.cert))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            reg.host, timeout=60, context=context)
    else:
        conn = http.client.HTTPConnection(reg.host, timeout=60)
    headers = {"Accept": accept} if accept else {}
    if reg.creds and reg.token is None:
        import base64
        headers["Authorization"] = "Basic " + base64.b64encode(
            ":".join(reg.creds).encode()).decode()
    conn.request("GET", f"/v2/{path}", headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200, (path, resp.status, data)
    return data, {k.lower(): v for k, v in resp.getheaders()}


def check_pushed(reg: Registry, repo_tag: str, built: oci.Built,
                 ca: registry_env.Ca | None = None) -> None:
    """The registry's manifest at REPO:TAG is the built one, byte for byte,
    and so is every blob."""
    repo, _, tag = repo_tag.rpartition(":")
    data, headers = fetch(reg, f"{repo}/manifests/{tag}", ca,
                          "application/vnd.oci.image.manifest.v1+json")
    assert "sha256:" + hashlib.sha256(data).hexdigest() == built.manifest
    assert headers["docker-content-digest"] == built.manifest
    doc = json.loads(data)
    assert [d["digest"] for d in doc["layers"]] == built.layers
    for digest in (built.config, *built.layers):
        blob, _ = fetch(reg, f"{repo}/blobs/{digest}", ca)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == digest
        assert len(blob) == built.sizes[digest]


# ---------------------------------------------------------------------- pushes


def test_push_plain_http_then_skip_and_pull_back(cli: Cli, small: oci.Built, plain: Registry,
                                                 recorder: Recorder) -> None:
    ref = f"{recorder.host}/pushed/small:1"
    out = cli.ok("images", "push", "--plain-http", NAME, ref)
    assert out == f"{ref} {small.manifest}\n"
    check_pushed(plain, "pushed/small:1", small)
    first = recorder.methods()
    assert first.count("HEAD") == 3 and first.count("PUT") == 4  # 3 blobs, 1 manifest
    assert "PATCH" not in first
    recorder.requests.clear()
    done = cli.json("images", "push", "--plain-http", "--json", NAME, ref)
    assert done["uploaded"] == [] and len(done["skipped"]) == 3  # type: ignore[index]
    assert recorder.methods() == ["HEAD"] * 3 + ["PUT"]  # the manifest only
    # pulled back into the daemon under its registry name: the same manifest
    out = cli.ok("images", "pull", "--plain-http", f"{plain.host}/pushed/small:1")
    assert out == f"{plain.host}/pushed/small:1 {small.manifest}\n"


def test_push_tls_basic_auth(cli: Cli, small: oci.Built, secure: Registry,
                             ca: registry_env.Ca) -> None:
    ref = f"{secure.host}/pushed/small:2"
    out = cli.ok("images", "push", "--ca", str(ca.cert), "--creds", ":".join(CREDS), NAME, ref)
    assert out == f"{ref} {small.manifest}\n"
    check_pushed(secure, "pushed/small:2", small, ca)


def test_push_token_auth_asks_for_push_scope(cli: Cli, small: oci.Built,
                                             tokened: Registry) -> None:
    ref = f"{tokened.host}/pushed/small:3"
    out = cli.ok("images", "push", "--plain-http", "--creds", ":".join(CREDS), NAME, ref)
    assert out == f"{ref} {small.manifest}\n"
    assert tokened.token is not None
    assert any("pull%2Cpush" in r or "pull,push" in r for r in tokened.token.requests)


def test_big_layer_chunked(cli: Cli, big: oci.Built, plain: Registry,
                           recorder: Recorder) -> None:
    ref = f"{recorder.host}/pushed/big:1"
    done = cli.json("images", "push", "--plain-http", "--json", BIG, ref)
    assert done["patches"] == 2  # type: ignore[index]  # 16 MiB + the rest
    assert recorder.methods().count("PATCH") == 2
    check_pushed(plain, "pushed/big:1", big)


# ---------------------------------------------------------------------- refusals


def test_wrong_credentials(cli: Cli, small: oci.Built, secure: Registry,
                           ca: registry_env.Ca, tokened: Registry) -> None:
    err = cli.fails("images", "push", "--ca", str(ca.cert), "--creds", "puller:wrong", NAME,
                    f"{secure.host}/pushed/wrong:1")
    assert "authentication failed" in err
    err = cli.fails("images", "push", "--plain-http", "--creds", "puller:wrong", NAME,
                    f"{tokened.host}/pushed/wrong:1")
    assert "token server" in err and "refused" in err


def test_missing_image_uploads_nothing(cli: Cli, recorder: Recorder) -> None:
    err = cli.fails("images", "push", "--plain-http", "no/such:1",
                    f"{recorder.host}/pushed/none:1")
    assert "no/such:1" in err and "not found" in err
    assert recorder.requests == []


def test_mount_from_another_repository(small: oci.Built, plain: Registry,
                                       cli: Cli) -> None:
    from fusesnap.client.registry import Reference
    from fusesnap.client.registry import Registry as Client
    cli.ok("images", "push", "--plain-http", NAME, f"{plain.host}/pushed/mount-src:1")
    reg = Client(Reference.parse(f"{plain.host}/pushed/mount-dst:1"), plain_http=True,
                 push=True)
    assert not reg.blob_exists(small.config)
    assert reg.mount_blob(small.config, "pushed/mount-src")
    assert reg.blob_exists(small.config)


def test_index_pushed_whole_or_as_its_platform_manifest(
        cli: Cli, small: oci.Built, plain: Registry, recorder: Recorder,
        tmp_path: Path) -> None:
    """An index whose manifests the store has is pushed whole (same digest);
    one with a manifest the pull did not fetch (another platform) is pushed
    as the manifest for this platform."""
    cli.ok("images", "push", "--plain-http", NAME, f"{plain.host}/pushed/idx-src:1")
    elsewhere = oci.write_archive(oci.Image("o", [oci.Layer([oci.File("o", b"other\n")])]),
                                  tmp_path / "o.tar")  # in the registry, not in the store
    registry_env.skopeo_copy(elsewhere.path, plain, "pushed/idx-src:other")
    index_type = "application/vnd.oci.image.index.v1+json"
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    child = {"mediaType": manifest_type, "digest": small.manifest,
             "size": small.sizes[small.manifest], "platform": oci.host_platform()}
    other = {"mediaType": manifest_type, "digest": elsewhere.manifest,
             "size": elsewhere.sizes[elsewhere.manifest],
             "platform": {"os": "linux", "architecture": "s390x"}}
    one = json.dumps({"schemaVersion": 2, "mediaType": index_type,
                      "manifests": [child]}).encode()
    two = json.dumps({"schemaVersion": 2, "mediaType": index_type,
                      "manifests": [child, other]}).encode()
    registry_env.put_manifest(plain, "pushed/idx-src", "one", one, index_type)
    registry_env.put_manifest(plain, "pushed/idx-src", "two", two, index_type)
    cli.ok("images", "pull", "--plain-http", "--name", "idx/one:1",
           f"{plain.host}/pushed/idx-src:one")
    cli.ok("images", "pull", "--plain-http", "--name", "idx/two:1",
           f"{plain.host}/pushed/idx-src:two")

    out = cli.ok("images", "push", "--plain-http", "idx/one:1", f"{recorder.host}/pushed/idx:one")
    assert out == f"{recorder.host}/pushed/idx:one {oci.digest(one)}\n"
    data, _ = fetch(plain, "pushed/idx/manifests/one", accept=index_type)
    assert data == one
    data, _ = fetch(plain, f"pushed/idx/manifests/{small.manifest}", accept=manifest_type)
    assert oci.digest(data) == small.manifest
    assert ("PUT", f"/v2/pushed/idx/manifests/{small.manifest}") in recorder.requests

    out = cli.ok("images", "push", "--plain-http", "idx/two:1", f"{recorder.host}/pushed/idx:two")
    assert out == f"{recorder.host}/pushed/idx:two {small.manifest}\n"
    check_pushed(plain, "pushed/idx:two", small)


def test_push_mounts_from_the_source_label(cli: Cli, small: oci.Built, plain: Registry,
                                           recorder: Recorder) -> None:
    """A blob labelled ``containerd.io/distribution.source.HOST=REPO`` is
    mounted from REPO (POST ?mount=&from=, 201), not uploaded."""
    cli.ok("images", "push", "--plain-http", NAME, f"{recorder.host}/pushed/mnt-src:1")
    label = f"containerd.io/distribution.source.{recorder.host}=no/such,pushed/mnt-src"
    for digest in (small.config, *small.layers):
        cli.ok("content", "label", digest, label)
    try:
        recorder.requests.clear()
        done = cli.json("images", "push", "--plain-http", "--json", NAME,
                        f"{recorder.host}/pushed/mnt-dst:1")
    finally:
        for digest in (small.config, *small.layers):
            cli.ok("content", "label", digest, label.partition("=")[0] + "=")
    assert sorted(done["mounted"]) == sorted([small.config, *small.layers])  # type: ignore[index]
    assert done["uploaded"] == []  # type: ignore[index]
    assert "PATCH" not in recorder.methods()
    assert recorder.methods().count("PUT") == 1  # the manifest
    check_pushed(plain, "pushed/mnt-dst:1", small)


def test_a_pushed_image_pulled_back_is_mounted_into_another_repository(
        cli: Cli, small: oci.Built, plain: Registry, recorder: Recorder) -> None:
    """Pull records where each blob came from (containerd's
    distribution.source label), so pushing the pulled image to another
    repository of the same registry mounts every blob instead of sending it."""
    cli.ok("images", "push", "--plain-http", NAME, f"{recorder.host}/pushed/pulled-src:1")
    cli.ok("images", "pull", "--plain-http", "--name", "pulled/small:1",
           f"{recorder.host}/pushed/pulled-src:1")
    recorder.requests.clear()
    done = cli.json("images", "push", "--plain-http", "--json", "pulled/small:1",
                    f"{recorder.host}/pushed/pulled-dst:1")
    assert sorted(done["mounted"]) == sorted([small.config, *small.layers])  # type: ignore[index]
    assert done["uploaded"] == [] and "PATCH" not in recorder.methods()  # type: ignore[index]
    check_pushed(plain, "pushed/pulled-dst:1", small)
