"""The Differ service and `fusesnap snapshots diff`: a snapshot's own changes
as an OCI layer that, applied onto a copy of its parent's tree, gives the
snapshot's tree (checked with tests/trees.py, independent of the differ)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.pb.diff_pb2 import DiffRequest
from fusesnap.pb.diff_pb2_grpc import DifferStub
from tests.conftest import PROXY, Daemon, module_daemon
from tests.layer_applier import apply_layer
from tests.trees import assert_same_tree, host_tree, xattrs

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the diff suite sets owners, setuid bits and devices")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "diff", PROXY)


def diff(daemon: Daemon, key: str) -> bytes:
    return b"".join(r.data for r in DifferStub(daemon.channel).Diff(DiffRequest(key=key)))


def write(path: Path, data: bytes = b"", mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def build_base(root: Path) -> None:
    write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    write(root / "etc/gone", b"deleted above\n")
    write(root / "bin/tool", b"#!/bin/sh\n", 0o755)
    write(root / "old/a", b"a\n")
    write(root / "old/sub/b", b"b\n")
    write(root / "del/x", b"x\n")
    write(root / "del/y/z", b"z\n")
    write(root / "moved/m1", b"m1\n")
    write(root / "moved/deep/m2", b"m2\n")
    write(root / "linked1", b"linked\n")
    os.link(root / "linked1", root / "linked2")
    os.symlink("etc/passwd", root / "lower_sym")
    write(root / "mod", b"before\n")
    write(root / "xattr_lower", b"x\n")
    write(root / "to_file/inside", b"i\n")
    write(root / "to_dir", b"file\n")


def build_mid(root: Path) -> None:
    write(root / "mid/file", b"mid\n")
    (root / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n")


def change_top(root: Path) -> None:
    # additions
    write(root / "new/file", b"new\n")
    write(root / "new/dir/f2", b"f2\n", 0o600)
    os.mkfifo(root / "new/fifo", 0o640)
    os.symlink("../etc/passwd", root / "new/sym")
    write(root / "new/h1", b"hard\n")
    os.link(root / "new/h1", root / "new/h2")
    write(root / "new/suid", b"suid\n", 0o755)
    os.chmod(root / "new/suid", 0o4755)
    write(root / "new/owned", b"owned\n")
    os.chown(root / "new/owned", 1000, 1000)
    os.setxattr(root / "new/file", "user.test", b"value\x00\xff")
    os.mknod(root / "new/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    # modifications of lower objects
    with open(root / "mod", "ab") as f:
        f.write(b"after\n")
    os.chmod(root / "bin/tool", 0o4755)
    os.chmod(root / "linked1", 0o600)
    os.setxattr(root / "xattr_lower", "user.x", b"1")
    os.link(root / "etc/passwd", root / "passwd.link")
    os.lchown(root / "mid/file", 1000, 0)
    # deletions
    (root / "etc/gone").unlink()
    shutil.rmtree(root / "del")
    # a replaced directory, a renamed one, type changes
    shutil.rmtree(root / "old")
    write(root / "old/new_a", b"new a\n")
    os.rename(root / "moved", root / "renamed")
    write(root / "renamed/added", b"added\n")
    shutil.rmtree(root / "to_file")
    write(root / "to_file", b"now a file\n")
    (root / "to_dir").unlink()
    write(root / "to_dir/inside", b"now a dir\n")


@pytest.fixture(scope="module")
def layers(daemon: Daemon) -> tuple[Path, Path]:
    """(a view of the parent "mid", the active snapshot "top") after the changes."""
    build_base(daemon.prepare("base-a"))
    daemon.commit("base", "base-a")
    build_mid(daemon.prepare("mid-a", "base"))
    daemon.commit("mid", "mid-a")
    top = daemon.prepare("top", "mid")
    change_top(top)
    return daemon.view("mid-view", "mid"), top


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name: m for m in t.getmembers()}


def test_applying_the_diff_to_the_parent_gives_the_snapshot(daemon, layers, tmp_path):
    parent, top = layers
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["cp", "-a", f"{parent}/.", str(work)], check=True)
    apply_layer(io.BytesIO(diff(daemon, "top")), work)
    expected = host_tree(top)
    assert "./new/null" in expected and "./renamed/deep/m2" in expected
    assert_same_tree(host_tree(work), expected)
    assert xattrs(work) == xattrs(top)


def test_the_diff_holds_only_the_changes_with_whiteouts_and_opaque_markers(daemon, layers):
    names = members(diff(daemon, "top"))
    assert "etc/.wh.gone" in names
    assert ".wh.del" in names and ".wh.moved" in names
    assert "old/.wh..wh..opq" in names
    assert "to_dir/.wh..wh..opq" not in names  # a file was there below
    assert "etc/passwd" in names and names["passwd.link"].islnk()
    assert names["passwd.link"].linkname == "etc/passwd"
    assert names["linked2"].islnk() and names["linked1"].mode == 0o600
    assert names["bin/tool"].mode == 0o4755
    assert names["new/h2"].islnk() and names["new/h2"].linkname == "new/h1"
    assert names["new/fifo"].isfifo() and names["new/sym"].linkname == "../etc/passwd"
    assert names["new/owned"].uid == 1000
    assert names["new/file"].pax_headers["SCHILY.xattr.user.test"].encode(
        "utf-8", "surrogateescape") == b"value\x00\xff"
    assert names["renamed/deep/m2"].isfile()  # a renamed directory comes whole
    assert "mid/file" in names and "del/x" not in names
    for unchanged in ("old/a", "lower_sym", "etc/.wh.passwd", "moved/m1", "mod.wh"):
        assert unchanged not in names
    order = list(names)
    assert order.index("old") < order.index("old/.wh..wh..opq") < order.index("old/new_a")


def test_the_diff_is_deterministic_and_a_commit_does_not_change_it(daemon, layers):
    path = daemon.prepare("commit-a", "mid")
    write(path / "c/file", b"c\n")
    (path / "etc/passwd").unlink()
    before = diff(daemon, "commit-a")
    assert diff(daemon, "commit-a") == before
    daemon.commit("commit-c", "commit-a")
    assert diff(daemon, "commit-c") == before
    assert "etc/.wh.passwd" in members(before)


def test_an_empty_snapshot_gives_an_empty_tar(daemon, layers):
    daemon.prepare("empty", "mid")
    assert members(diff(daemon, "empty")) == {}


def test_diff_of_an_unknown_key_is_not_found(daemon):
    with pytest.raises(grpc.RpcError) as err:
        diff(daemon, "no-such-snapshot")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_diff_of_a_view_is_failed_precondition(daemon, layers):
    with pytest.raises(grpc.RpcError) as err:
        diff(daemon, "mid-view")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_cli_writes_the_same_tar_and_refuses_a_terminal(daemon, layers):
    command = [sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
               "snapshots", "diff", "top"]
    proc = subprocess.run(command, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == diff(daemon, "top")
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(command, stdout=secondary, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode != 0
    assert b"terminal" in proc.stderr
