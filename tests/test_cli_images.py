"""`fusesnap images …`: the real command, run as a subprocess against a real daemon.

Every test uses a namespace of its own (the global ``-n``), so tests never see
each other's images.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.images_pb2_grpc import ImagesStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from tests.conftest import Daemon, module_daemon

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
FUSESNAP = shutil.which("fusesnap", path=str(Path(sys.executable).parent))
COMMAND = [FUSESNAP] if FUSESNAP else [sys.executable, "-m", "fusesnap"]
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "cli-images")


_serial = itertools.count(1)


@pytest.fixture
def ns() -> str:
    return f"cli-{next(_serial)}"


class Cli:
    """`fusesnap --socket SOCKET -n NS images ARGS…` of one test."""

    def __init__(self, daemon: Daemon, ns: str) -> None:
        self.daemon = daemon
        self.ns = ns

    def run(self, *args: str, ns: str | None = None, global_args: tuple[str, ...] = (),
            env: dict[str, str] | None = None,
            group: str = "images") -> subprocess.CompletedProcess[bytes]:
        namespace = ("-n", ns or self.ns) if env is None else ()
        return subprocess.run(
            [*COMMAND, "--socket", str(self.daemon.socket), *namespace, *global_args,
             group, *args], capture_output=True, timeout=60,
            env=None if env is None else {**os.environ, **env})

    def ok(self, *args: str, **kw: object) -> str:
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""
        return proc.stdout.decode()

    def fails(self, *args: str, **kw: object) -> str:
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stdout == b""
        return proc.stderr.decode()

    def create(self, name: str, digest: str = D1, size: int = 100, media_type: str = INDEX,
               *extra: str) -> str:
        return self.ok("create", name, "--digest", digest, "--size", str(size),
                       "--media-type", media_type, *extra)

    def stub(self) -> tuple[ImagesStub, list[tuple[str, str]]]:
        return ImagesStub(self.daemon.channel), [("containerd-namespace", self.ns)]


@pytest.fixture
def cli(daemon: Daemon, ns: str) -> Cli:
    return Cli(daemon, ns)


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


# ---------------------------------------------------------------------- create


def test_create_records_the_image_and_prints_it_as_a_table_row(cli):
    out = cli.create("docker.io/library/busybox:latest", D1, 523, MANIFEST,
                     "--label", "team=infra", "--annotation", "a=1")
    rows = table(out)
    assert rows[0] == ["NAME", "TYPE", "DIGEST", "SIZE", "AGE", "LABELS"]
    assert rows[1][:4] == ["docker.io/library/busybox:latest", MANIFEST, D1, "523 B"]
    assert rows[1][5] == "team=infra"
    stub, md = cli.stub()
    got = stub.Get(ipb.GetImageRequest(name="docker.io/library/busybox:latest"), metadata=md)
    assert dict(got.image.labels) == {"team": "infra"}
    assert dict(got.image.target.annotations) == {"a": "1"}
    assert got.image.target.size == 523


def test_create_with_json_prints_the_image_document(cli):
    doc = json.loads(cli.create("img", D1, 100, INDEX, "--json", "--annotation", "k=v"))
    assert doc["name"] == "img"
    assert doc["target"] == {"media_type": INDEX, "digest": D1, "size": 100,
                             "annotations": {"k": "v"}}
    assert doc["labels"] == {}
    assert RFC3339_UTC.match(doc["created_at"]) and doc["updated_at"] == doc["created_at"]


def test_create_of_an_existing_name_fails_with_already_exists(cli):
    cli.create("img")
    assert cli.fails("create", "img", "--digest", D2, "--size", "1", "--media-type", INDEX) \
        == 'fusesnap: already exists: image "img"\n'


def test_create_with_an_invalid_digest_fails_with_invalid_argument(cli):
    err = cli.fails("create", "img", "--digest", "sha256:nope", "--size", "1",
                    "--media-type", INDEX)
    assert err.startswith("fusesnap: invalid argument: Target.Digest invalid")
    assert cli.ok("ls", "-q") == ""


@pytest.mark.parametrize("size", ["0", "-3", "ten"])
def test_create_with_a_size_that_is_not_positive_is_a_usage_error(cli, size):
    proc = cli.run("create", "img", "--digest", D1, "--size", size, "--media-type", INDEX)
    assert proc.returncode == 2


def test_create_requires_digest_size_and_media_type(cli):
    assert cli.run("create", "img", "--digest", D1, "--size", "1").returncode == 2


# ---------------------------------------------------------------------- ls and get


def test_ls_lists_the_namespace_images_by_name(cli):
    cli.create("b", D2, 2048, MANIFEST)
    cli.create("a", D1, 100, INDEX, "--label", "x=1", "--label", "y=2")
    rows = table(cli.ok("ls"))
    assert [r[:4] for r in rows[1:]] == [["a", INDEX, D1, "100 B"],
                                         ["b", MANIFEST, D2, "2.0 KiB"]]
    assert rows[1][5] == "x=1,y=2" and rows[2][5] == "-"


def test_ls_quiet_prints_only_names(cli):
    cli.create("a")
    cli.create("b")
    assert cli.ok("ls", "-q") == "a\nb\n"


def test_ls_filters_are_or_ed(cli):
    cli.create("docker.io/x:1", D1)
    cli.create("quay.io/y:1", D2, 100, INDEX, "--label", "keep=yes")
    cli.create("other", D2)
    assert cli.ok("list", "-q", "name~=^docker.io/", "labels.keep==yes") == \
        "docker.io/x:1\nquay.io/y:1\n"
    assert cli.ok("ls", "-q", f"target.digest=={D1}") == "docker.io/x:1\n"


def test_ls_with_an_annotation_filter(cli):
    cli.create("a", D1, 100, INDEX, "--annotation", "org.opencontainers.image.ref.name=1")
    cli.create("b")
    assert cli.ok("ls", "-q", 'annotations."org.opencontainers.image.ref.name"') == "a\n"


def test_ls_json_prints_a_list_of_documents(cli):
    cli.create("a", D1, 100, INDEX, "--label", "k=v")
    docs = json.loads(cli.ok("ls", "--json"))
    assert [d["name"] for d in docs] == ["a"]
    assert docs[0]["labels"] == {"k": "v"} and docs[0]["target"]["digest"] == D1


def test_ls_with_a_bad_filter_fails_with_invalid_argument(cli):
    assert cli.fails("ls", "name==").startswith("fusesnap: invalid argument: filters:")


def test_get_prints_the_image(cli):
    cli.create("img", D1, 100, INDEX, "--label", "k=v")
    rows = table(cli.ok("get", "img"))
    assert rows[1][:4] == ["img", INDEX, D1, "100 B"]
    doc = json.loads(cli.ok("get", "img", "--json"))
    assert doc["name"] == "img" and doc["labels"] == {"k": "v"}


def test_get_of_a_missing_image_fails_with_not_found(cli):
    assert cli.fails("get", "nope") == 'fusesnap: not found: image "nope"\n'


# ---------------------------------------------------------------------- label


def test_label_sets_and_removes_labels_and_prints_the_result(cli):
    cli.create("img", D1, 100, INDEX, "--label", "a=1", "--label", "b=2")
    assert cli.ok("label", "img", "c=3", "a=") == "b=2\nc=3\n"
    assert json.loads(cli.ok("label", "img", "containerd.io/gc.root=now", "--json")) == \
        {"b": "2", "c": "3", "containerd.io/gc.root": "now"}


def test_label_keeps_the_target(cli):
    cli.create("img", D2, 7, MANIFEST, "--annotation", "k=v")
    cli.ok("label", "img", "a=1")
    doc = json.loads(cli.ok("get", "img", "--json"))
    assert doc["target"] == {"media_type": MANIFEST, "digest": D2, "size": 7,
                             "annotations": {"k": "v"}}


def test_label_of_a_missing_image_fails_with_not_found(cli):
    assert cli.fails("label", "nope", "a=1") == 'fusesnap: not found: image "nope"\n'


def test_label_without_a_value_separator_is_a_usage_error(cli):
    assert cli.run("label", "img", "novalue").returncode == 2


# ---------------------------------------------------------------------- rm


def test_rm_deletes_every_named_image(cli):
    for name in ["a", "b", "c"]:
        cli.create(name)
    assert cli.ok("rm", "a", "c") == ""
    assert cli.ok("ls", "-q") == "b\n"


def test_rm_stops_at_the_first_failure(cli):
    cli.create("a")
    cli.create("b")
    assert cli.fails("remove", "a", "nope", "b") == \
        'fusesnap: rm nope: not found: image "nope"\n'
    assert cli.ok("ls", "-q") == "b\n"


def test_rm_sync_deletes_the_image(cli):
    cli.create("a")
    assert cli.ok("rm", "--sync", "a") == ""
    assert cli.ok("ls", "-q") == ""


# ---------------------------------------------------------------------- namespaces and leases


def test_images_live_in_the_namespace_of_the_global_option(cli, ns):
    cli.create("img")
    assert cli.ok("ls", "-q", ns=ns + "-other") == ""
    assert cli.ok("ls", "-q", env={"FUSESNAP_NAMESPACE": ns}) == "img\n"


def test_a_malformed_namespace_fails_with_invalid_argument(cli):
    assert cli.fails("ls", ns="bad/ns").startswith("fusesnap: invalid argument: identifier")


def test_image_is_an_alias_of_images(cli):
    cli.create("img")
    assert cli.ok("ls", "-q", group="image") == "img\n"


def test_create_under_a_lease_adds_an_expiring_image_to_it(cli, daemon, ns):
    leases = LeasesStub(daemon.channel)
    md = [("containerd-namespace", ns)]
    try:
        leases.Create(lpb.CreateRequest(id="pull"), metadata=md)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("the daemon serves no Leases service yet")
        raise
    cli.ok("create", "img", "--digest", D1, "--size", "100", "--media-type", INDEX,
           "--label", "containerd.io/gc.expire=2999-01-01T00:00:00Z",
           global_args=("--lease", "pull"))
    got = leases.ListResources(lpb.ListResourcesRequest(id="pull"), metadata=md).resources
    assert [(r.type, r.id) for r in got] == [("images", "img")]


def test_create_under_a_missing_lease_fails_with_not_found(cli):
    err = cli.fails("create", "img", "--digest", D1, "--size", "1", "--media-type", INDEX,
                    global_args=("--lease", "nope"))
    assert err.startswith("fusesnap: not found:")
    assert cli.ok("ls", "-q") == ""
