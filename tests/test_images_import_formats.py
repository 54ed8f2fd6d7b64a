"""`fusesnap images import` of what is not a plain OCI tar file (issue 19, item
10): standard input (``-``), gzip- and zstd-compressed archives, and
docker-archives (``manifest.json``, as ``docker save`` wrote before Docker
25). The real command against real daemons; trees compared with the OCI
import of the same layers (tests/oci.py builds both formats).
"""

from __future__ import annotations

import gzip
import os
import pty
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import oci
from tests.conftest import Daemon, module_daemon
from tests.test_images_import import COMMAND, Cli, assert_nothing_left, layered_image
from tests.trees import assert_same_tree, host_tree, xattrs

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

pytestmark = pytest.mark.skipif(not shutil.which("zstd"), reason="needs Debian's zstd")


class SpoolCli(Cli):
    """The CLI with a private TMPDIR (to see that spooled files go away) and
    standard input of the test's choosing."""

    def __init__(self, daemon: Daemon, tmp: Path) -> None:
        super().__init__(daemon)
        self.tmp = tmp
        tmp.mkdir(exist_ok=True)

    def run(self, *args: str, stdin: object = None,  # type: ignore[override]
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*COMMAND, "--socket", str(self.daemon.socket), *args],
                              stdin=stdin, input=input, capture_output=True, timeout=300,
                              env={**os.environ, "TMPDIR": str(self.tmp)})
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                           proc.stderr.decode())

    def import_json(self, *args: str, stdin: object = None,
                    input: bytes | None = None) -> list[dict[str, object]]:
        import json

        proc = self.run("images", "import", *args, "--json", stdin=stdin, input=input)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert list(self.tmp.iterdir()) == []  # the spool is gone
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "images-formats")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def reference(daemon: Daemon, work: Path) -> tuple[oci.Built, Path]:
    """The layered image imported from its plain OCI tar, and its mounted tree."""
    cli = SpoolCli(daemon, work / "tmp-reference")
    built = oci.write_archive(layered_image(), work / "layered.tar")
    [result] = cli.import_json(str(built.path))
    assert result["digest"] == built.manifest
    return built, Path(cli.ok("images", "mount", built.name).strip())


@pytest.fixture
def fresh(new_daemon: type[Daemon], tmp_path: Path) -> SpoolCli:
    return SpoolCli(new_daemon().start(), tmp_path / "tmp")


def _same_image(cli: SpoolCli, result: dict[str, object], built: oci.Built,
                reference: Path) -> None:
    """`result` imported `built` into the fresh daemon of `cli`, whose mounted
    tree is `reference`'s."""
    assert result["name"] == built.name
    assert result["chain_ids"] == built.chain_ids
    assert result["applied"] == built.chain_ids
    mounted = Path(cli.ok("images", "mount", built.name).strip())
    assert_same_tree(host_tree(mounted), host_tree(reference))
    assert xattrs(mounted) == xattrs(reference)


# --------------------------------------------------------------------------- standard input


@pytest.mark.parametrize("kind", ["pipe", "file"])
def test_import_from_standard_input_equals_import_from_the_file(
        fresh: SpoolCli, reference: tuple[oci.Built, Path], kind: str) -> None:
    built, tree = reference
    if kind == "pipe":
        [result] = fresh.import_json("-", input=built.path.read_bytes())
    else:
        with open(built.path, "rb") as f:
            [result] = fresh.import_json("-", stdin=f)
    assert result["digest"] == built.manifest
    _same_image(fresh, result, built, tree)
    assert set(fresh.blobs()) == set(built.blobs)


def test_import_from_a_terminal_is_refused(fresh: SpoolCli) -> None:
    master, slave = pty.openpty()
    try:
        proc = fresh.run("images", "import", "-", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ("fusesnap: reading the archive from standard input, which is a "
                           "terminal: redirect a file (fusesnap images import - < FILE)\n")
    assert_nothing_left(fresh)


# --------------------------------------------------------------------------- compressed


@pytest.mark.parametrize("how", ["gz", "zst", "zst-stdin"])
def test_compressed_archive_imports_like_the_tar(
        fresh: SpoolCli, reference: tuple[oci.Built, Path], work: Path, how: str) -> None:
    built, tree = reference
    raw = built.path.read_bytes()
    data = oci.gzip_bytes(raw) if how == "gz" else oci.zstd_bytes(raw)
    path = work / f"layered.tar.{how}"
    path.write_bytes(data)
    [result] = (fresh.import_json("-", input=data) if how.endswith("stdin")
                else fresh.import_json(str(path)))
    assert result["digest"] == built.manifest
    _same_image(fresh, result, built, tree)


def test_compression_is_recognised_by_its_magic_bytes_not_the_name(
        fresh: SpoolCli, work: Path) -> None:
    built = oci.write_archive(oci.busybox_image(), work / "busybox.tar")
    named = work / "busybox-really-gzip.tar"
    named.write_bytes(oci.gzip_bytes(built.path.read_bytes()))
    [result] = fresh.import_json(str(named))
    assert result["digest"] == built.manifest


def test_truncated_compressed_archive_is_refused(fresh: SpoolCli, work: Path) -> None:
    built = oci.write_archive(oci.busybox_image(), work / "busybox.tar")
    data = oci.gzip_bytes(built.path.read_bytes())
    path = work / "cut.tar.gz"
    path.write_bytes(data[:len(data) // 2])
    err = fresh.fails("images", "import", str(path))
    assert f"{path}: corrupt or truncated compressed stream" in err
    assert list(fresh.tmp.iterdir()) == []
    assert_nothing_left(fresh)


# --------------------------------------------------------------------------- docker-archive


def test_docker_archive_imports_the_tree_of_the_oci_archive(
        fresh: SpoolCli, reference: tuple[oci.Built, Path], work: Path) -> None:
    built, tree = reference
    docker = oci.write_docker_archive(layered_image(), work / "layered-docker.tar")
    assert docker.diff_ids == built.diff_ids and docker.config == built.config
    [result] = fresh.import_json(str(docker.path))
    assert result["media_type"] == DOCKER_MANIFEST
    _same_image(fresh, result, docker, tree)
    blobs = fresh.blobs()
    # The config as it is, each layer.tar as an uncompressed layer (digest = diff_id).
    assert {docker.config, *docker.diff_ids, str(result["digest"])} == set(blobs)
    image = fresh.json("images", "get", built.name, "--json")
    assert image["target"]["digest"] == result["digest"]  # type: ignore[index]
    # Again, from standard input, gzipped: the same manifest, nothing applied.
    [again] = fresh.import_json("-", input=oci.gzip_bytes(docker.path.read_bytes()))
    assert (again["digest"], again["applied"]) == (result["digest"], [])


def test_docker_archive_names_an_image_per_repo_tag(fresh: SpoolCli, work: Path) -> None:
    docker = oci.write_docker_archive(oci.busybox_image(), work / "tags.tar",
                                      repo_tags=["busybox:latest", "example.com/bb:1"])
    out = fresh.ok("images", "import", str(docker.path)).splitlines()
    assert [line.split()[0] for line in out] == ["busybox:latest", "example.com/bb:1"]
    assert len({line.split()[1] for line in out}) == 1
    assert sorted(i["name"] for i in fresh.json("images", "ls", "--json")) == \
        ["busybox:latest", "example.com/bb:1"]  # type: ignore[index]


def test_docker_archive_with_several_tags_takes_one_name(fresh: SpoolCli, work: Path) -> None:
    docker = oci.write_docker_archive(oci.busybox_image(), work / "tags.tar",
                                      repo_tags=["busybox:latest", "example.com/bb:1"])
    [line] = fresh.ok("images", "import", str(docker.path), "--name", "mine:1").splitlines()
    assert line.split()[0] == "mine:1"
    assert [i["name"] for i in fresh.json("images", "ls", "--json")] == ["mine:1"]  # type: ignore[index]


def test_interrupted_import_from_standard_input_leaves_no_spool(fresh: SpoolCli,
                                                               work: Path) -> None:
    built = oci.write_archive(oci.busybox_image(), work / "busybox.tar")
    data = built.path.read_bytes()
    proc = subprocess.Popen([*COMMAND, "--socket", str(fresh.daemon.socket), "images",
                             "import", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(fresh.tmp)})
    assert proc.stdin is not None
    proc.stdin.write(data[:len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not list(fresh.tmp.iterdir()):  # the spool's directory is made
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    proc.communicate(timeout=30)
    assert list(fresh.tmp.iterdir()) == []
    assert_nothing_left(fresh)


def test_docker_archive_whose_layer_is_not_its_diff_id_is_refused(
        fresh: SpoolCli, work: Path) -> None:
    image = layered_image()
    real = oci.write_docker_archive(image, work / "real-docker.tar")
    lying = [*real.diff_ids[:-1], oci.digest(b"not the layer")]
    docker = oci.write_docker_archive(image, work / "lying-docker.tar", config_diff_ids=lying)
    err = fresh.fails("images", "import", str(docker.path))
    assert "rootfs.diff_ids" in err and real.diff_ids[-1] in err
    assert_nothing_left(fresh)


# --------------------------------------------------------------------------- neither


def _plain_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        tar.add(__file__, arcname="readme.txt")


@pytest.mark.parametrize("what", ["random", "text", "tar", "gzip-text"])
def test_a_file_that_is_no_image_archive_is_refused(fresh: SpoolCli, tmp_path: Path,
                                                    what: str) -> None:
    path = tmp_path / f"{what}.bin"
    if what == "random":
        path.write_bytes(os.urandom(20000))
    elif what == "text":
        path.write_text("hello\n")
    elif what == "tar":
        _plain_tar(path)
    else:
        path.write_bytes(gzip.compress(b"hello\n"))
    err = fresh.fails("images", "import", str(path))
    if what == "tar":
        assert "neither an OCI image layout nor a docker-archive" in err
    else:
        assert "not a tar archive" in err
    assert list(fresh.tmp.iterdir()) == []
    assert_nothing_left(fresh)


def test_docker_archive_naming_a_file_outside_it_is_refused(fresh: SpoolCli,
                                                            tmp_path: Path) -> None:
    layout = tmp_path / "unpacked"
    layout.mkdir()
    (tmp_path / "secret.json").write_text('{"rootfs": {"diff_ids": []}}')
    (layout / "manifest.json").write_text(
        '[{"Config": "../secret.json", "RepoTags": ["x:1"], "Layers": []}]')
    err = fresh.fails("images", "import", str(layout))
    assert "manifest.json names '../secret.json', outside the archive" in err
    assert_nothing_left(fresh)
