"""Our pyfuse3 patches (patches/pyfuse3/) reach the kernel.

vagrant/provision.sh builds pyfuse3 from its source release with the patches
applied. A small pyfuse3 file system of this file, served in a subprocess on a
real FUSE mount, notes every opendir, readdir, open and flush it is asked for;
each flag is checked both ways, so a flag that does not reach the kernel fails:

- opendir answering FileInfo(keep_cache=True, cache_readdir=True): listing a
  directory a second time sends no readdir (with a plain file handle it does);
- open answering FileInfo(noflush=True): close() sends no flush (without, it does).

pyfuse3.set_busy_poll (patch 0002) changes only when the loop sleeps: its
effect is a time (bench/fs.py shows it); tests/test_kernel_cache.py checks a
polling daemon still serves its other work during a burst of requests.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest

from tests.conftest import fuse_usable

START_TIMEOUT = 30.0

# The file system: a root holding a directory `d` (entries x, y, z) and an empty
# file `f`. Every handler the checks count appends its name to the log, line-buffered,
# before it answers: the kernel waits for the answer to readdir and flush, so the
# line is in the log when the system call returns.
FILESYSTEM = r'''
import os
import stat
import sys

import pyfuse3
import trio

mountpoint, log_path, dir_reply, file_reply = sys.argv[1:5]
ROOT = pyfuse3.ROOT_INODE
DIR, FILE = ROOT + 1, ROOT + 2
CHILDREN = {ROOT: [(b"d", DIR), (b"f", FILE)],
            DIR: [(b"x", ROOT + 3), (b"y", ROOT + 4), (b"z", ROOT + 5)]}


class Fs(pyfuse3.Operations):
    def __init__(self):
        super().__init__()
        self.log = open(log_path, "a", buffering=1)

    def note(self, op):
        self.log.write(op + "\n")

    def attr(self, inode):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = (stat.S_IFDIR | 0o755) if inode in CHILDREN else (stat.S_IFREG | 0o644)
        a.st_nlink = 2 if inode in CHILDREN else 1
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_size = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 1_000_000_000
        a.entry_timeout = a.attr_timeout = 300
        return a

    async def lookup(self, parent, name, ctx=None):
        for child, inode in CHILDREN.get(parent, []):
            if child == name:
                return self.attr(inode)
        raise pyfuse3.FUSEError(2)

    async def getattr(self, inode, ctx=None):
        return self.attr(inode)

    async def opendir(self, inode, ctx):
        self.note("opendir")
        if dir_reply == "cache":
            return pyfuse3.FileInfo(fh=inode, keep_cache=True, cache_readdir=True)
        return inode

    async def readdir(self, fh, start_id, token):
        self.note("readdir")
        entries = CHILDREN[fh]
        for i in range(start_id, len(entries)):
            name, inode = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attr(inode), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        self.note("open")
        return pyfuse3.FileInfo(fh=inode, noflush=file_reply == "noflush")

    async def read(self, fh, off, size):
        return b""

    async def flush(self, fh):
        self.note("flush")

    async def release(self, fh):
        pass


pyfuse3.init(Fs(), mountpoint, {"fsname=fusesnap-pyfuse3-patch", "default_permissions"})
try:
    trio.run(pyfuse3.main)
except BaseException:
    pyfuse3.close(unmount=False)
    raise
pyfuse3.close()
'''


@dataclass
class Mount:
    """The file system mounted at `path`, with its log of requests."""
    path: Path
    log: Path

    def count(self, op: str) -> int:
        return self.log.read_text().splitlines().count(op)


def _unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mount]:
    """The file system mounted with the replies request.param names:
    (opendir's: "fh" or "cache", open's: "plain" or "noflush")."""
    missing = fuse_usable()
    if missing:
        pytest.skip(missing)
    if shutil.which("fusermount3") is None:
        pytest.skip("fusermount3 is missing (./vagrant/provision.sh installs fuse3)")
    dir_reply, file_reply = request.param
    script, log, mnt, out = (tmp_path / "fs.py", tmp_path / "requests.log", tmp_path / "mnt",
                             tmp_path / "fs.out")
    script.write_text(FILESYSTEM)
    log.touch()
    mnt.mkdir()
    with open(out, "wb") as output:
        proc = subprocess.Popen([sys.executable, str(script), str(mnt), str(log), dir_reply,
                                 file_reply], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the file system did not mount:\n{out.read_text()}")
            time.sleep(0.02)
        yield Mount(mnt, log)
    finally:
        _unmount(mnt)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"the file system exited with {proc.returncode}:\n" \
        f"{out.read_text()}"


# --- the installed pyfuse3 is our build ------------------------------------------------


def test_installed_pyfuse3_is_the_patched_build() -> None:
    version = importlib.metadata.version("pyfuse3")
    info = pyfuse3.FileInfo()
    assert "+fusesnap" in version and hasattr(info, "cache_readdir") and \
        hasattr(info, "noflush"), (
            f"pyfuse3 {version} in {sys.prefix} is not fusesnap's patched build "
            "(patches/pyfuse3/): run ./vagrant/provision.sh (make setup) to build it")
    assert (info.cache_readdir, info.noflush) == (False, False)
    assert pyfuse3.FileInfo(fh=7, cache_readdir=True, noflush=True).cache_readdir is True
    assert pyfuse3.Operations.enable_symlink_caching is False  # patch 0003, off by default


def test_busy_poll_is_set_in_nanoseconds_never_negative() -> None:
    # Patch 0002; fusesnap's daemon sets it (serve --fuse-busy-poll).
    pyfuse3.set_busy_poll(50_000)
    pyfuse3.set_busy_poll(0)
    with pytest.raises(ValueError):
        pyfuse3.set_busy_poll(-1)


def test_checkpoint_interval_is_set_in_nanoseconds_never_negative() -> None:
    # Patch 0004: how long the loop may serve queued requests without
    # letting other trio tasks run.
    pyfuse3.set_checkpoint_interval(1_000_000)
    with pytest.raises(ValueError):
        pyfuse3.set_checkpoint_interval(-1)


# --- cache_readdir on opendir's reply ------------------------------------------------


@pytest.mark.parametrize("mount", [("fh", "plain")], indirect=True)
def test_without_cache_readdir_every_listing_reads_the_directory(mount: Mount) -> None:
    d = mount.path / "d"
    assert sorted(os.listdir(d)) == ["x", "y", "z"]
    first = mount.count("readdir")
    assert first >= 1
    assert sorted(os.listdir(d)) == ["x", "y", "z"]
    assert mount.count("opendir") == 2
    assert mount.count("readdir") > first


@pytest.mark.parametrize("mount", [("cache", "plain")], indirect=True)
def test_with_cache_readdir_and_keep_cache_a_second_listing_is_served_by_the_kernel(
        mount: Mount) -> None:
    d = mount.path / "d"
    assert sorted(os.listdir(d)) == ["x", "y", "z"]
    first = mount.count("readdir")
    assert first >= 1
    for _ in range(3):
        assert sorted(os.listdir(d)) == ["x", "y", "z"]
    # The directory was opened each time; its entries came from the kernel's cache.
    assert mount.count("opendir") == 4
    assert mount.count("readdir") == first


# --- noflush on open's reply ---------------------------------------------------------


@pytest.mark.parametrize("mount", [("fh", "plain")], indirect=True)
def test_without_noflush_close_sends_a_flush(mount: Mount) -> None:
    fd = os.open(mount.path / "f", os.O_RDONLY)
    os.close(fd)
    assert (mount.count("open"), mount.count("flush")) == (1, 1)


@pytest.mark.parametrize("mount", [("fh", "noflush")], indirect=True)
def test_with_noflush_close_sends_no_flush(mount: Mount) -> None:
    for _ in range(2):
        fd = os.open(mount.path / "f", os.O_RDONLY)
        os.close(fd)
    assert (mount.count("open"), mount.count("flush")) == (2, 0)
