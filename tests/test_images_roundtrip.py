"""The rootless image round trip, for real: `fusesnap images import` →
`images prepare` → change files → `images commit` → `images export` →
`ctr images import` into a fresh containerd with its own content store and
`native` snapshotter → `ctr run` shows the changes."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import oci
from tests.conftest import Daemon, fuse_usable
from tests.containerd_env import Containerd, unavailable

BASE = "fusesnap.test/busybox:1"
COMMITTED = "fusesnap.test/busybox:changed"


def _skip_reason() -> str | None:
    why = unavailable() or fuse_usable()
    if why is None and not oci.BUSYBOX.exists():
        why = f"{oci.BUSYBOX} is missing (busybox-static)"
    return why


@pytest.fixture
def fusesnap(tmp_path: Path) -> Iterator[Daemon]:
    why = _skip_reason()
    if why:
        print(f"round trip skipped: {why}", file=sys.stderr)
        pytest.skip(f"round trip skipped: {why}")
    daemon = Daemon(tmp_path / "fusesnap")
    try:
        yield daemon.start()
    finally:
        daemon.cleanup()


@pytest.fixture
def containerd(tmp_path: Path, fusesnap: Daemon) -> Iterator[Containerd]:
    """A containerd of its own: built-in content store, native snapshotter."""
    ctd = Containerd(tmp_path / "containerd", None)
    try:
        yield ctd.start()
    finally:
        ctd.stop()


def cli(daemon: Daemon, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
                           "images", *args], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_a_committed_and_exported_image_runs_with_its_changes_in_containerd(
        fusesnap: Daemon, containerd: Containerd, tmp_path: Path) -> None:
    built = oci.write_archive(oci.busybox_image(BASE), tmp_path / "busybox.tar")
    cli(fusesnap, "import", str(built.path))
    root = Path(cli(fusesnap, "prepare", BASE, "work").strip())
    (root / "hello.txt").write_text("hello from fusesnap\n")
    with open(root / "etc/passwd", "a") as f:
        f.write("added:x:1001:1001::/:/bin/sh\n")
    (root / "etc/group").unlink()

    name, digest = cli(fusesnap, "commit", COMMITTED, "work").split()
    assert name == COMMITTED and digest.startswith("sha256:")
    archive = tmp_path / "changed.tar"
    cli(fusesnap, "export", COMMITTED, str(archive))
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["digest"] == digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == COMMITTED

    # The committed layer is the new image's top snapshot in fusesnap too.
    again = Path(cli(fusesnap, "mount", COMMITTED).strip())
    assert (again / "hello.txt").read_text() == "hello from fusesnap\n"

    containerd.ctr("images", "import", "--snapshotter", containerd.snapshotter, str(archive),
                   timeout=120)
    out = containerd.run(COMMITTED, "roundtrip", "sh", "-c",
                         "cat /hello.txt; tail -n 1 /etc/passwd; "
                         "test -e /etc/group && echo group-present || echo group-absent; "
                         "busybox true && echo busybox-ok").stdout
    assert out.splitlines() == ["hello from fusesnap", "added:x:1001:1001::/:/bin/sh",
                                "group-absent", "busybox-ok"]
