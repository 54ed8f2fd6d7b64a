"""Where `fusesnap images export` writes (issue 19, item 1): nothing it writes
replaces a path it was not asked to create. `-` is standard output, a pipe or
device (`/dev/stdout`) is written in place, an existing file is replaced only
with `--force`, and a new file appears only once complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import oci
from tests.conftest import Daemon, module_daemon

NAME = "fusesnap.test/export:1"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "export")


def fusesnap(daemon: Daemon, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
                           "images", *args], capture_output=True, timeout=120,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def reference(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The archive export writes to a new file."""
    work = tmp_path_factory.mktemp("export")
    built = oci.write_archive(oci.busybox_image(NAME), work / "busybox.tar")
    assert fusesnap(daemon, "import", str(built.path)).returncode == 0
    out = work / "out.tar"
    done = fusesnap(daemon, "export", NAME, str(out))
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    with tarfile.open(out) as tar:
        assert {"oci-layout", "index.json"} <= set(tar.getnames())
    assert sorted(os.listdir(work)) == ["busybox.tar", "out.tar"]  # no temporary left
    return out.read_bytes()


def test_dash_is_standard_output(daemon: Daemon, reference: bytes, tmp_path: Path) -> None:
    done = fusesnap(daemon, "export", NAME, "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference
    assert os.listdir(tmp_path) == []  # no file named "-"


@pytest.mark.skipif(os.geteuid() != 0, reason="the harm was root's: /dev/stdout replaced")
def test_dev_stdout_is_written_in_place_and_stays_a_link(daemon: Daemon,
                                                         reference: bytes) -> None:
    before = os.readlink("/dev/stdout")
    done = fusesnap(daemon, "export", NAME, "/dev/stdout")
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference
    assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == before


def test_a_fifo_is_written_in_place(daemon: Daemon, reference: bytes, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    done = fusesnap(daemon, "export", NAME, str(fifo))
    reader.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert got == [reference]
    assert fifo.is_fifo()


def test_an_existing_file_is_replaced_only_with_force(daemon: Daemon, reference: bytes,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    out.write_bytes(b"precious")
    refused = fusesnap(daemon, "export", NAME, str(out))
    assert refused.returncode == 1
    assert refused.stderr.decode().splitlines() == [
        f"fusesnap: {out} exists: --force replaces it"]
    assert out.read_bytes() == b"precious"
    done = fusesnap(daemon, "export", NAME, str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == reference
    assert os.listdir(tmp_path) == ["out.tar"]


def test_refusals_create_nothing(daemon: Daemon, reference: bytes, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    cases = [
        ((NAME, str(tmp_path / "dir")), f"{tmp_path}/dir is a directory: give a file name"),
        ((NAME, str(tmp_path / "missing" / "out.tar")), "No such file or directory"),
        (("fusesnap.test/absent:1", str(tmp_path / "out.tar")), "not found"),
    ]
    for args, said in cases:
        done = fusesnap(daemon, "export", *args)
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and said in lines[0], (args, lines)
    assert os.listdir(tmp_path) == ["dir"] and os.listdir(tmp_path / "dir") == []
