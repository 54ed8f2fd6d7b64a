"""chmod, chown (and what it clears), setuid/setgid/sticky bits, utime, and which
times a change updates."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.posix.helpers import ROOT_ONLY
from tests.posix.world import ORIGINS, Chain, content

pytestmark = ROOT_ONLY


@pytest.mark.parametrize("origin", ORIGINS)
def test_chmod_changes_mode(chain: Chain, origin: str) -> None:
    for what, mode in (("file", 0o600), ("dir", 0o700), ("fifo", 0o640), ("null", 0o600)):
        p = chain.obj(origin, what)
        os.chmod(p, mode)
        assert stat.S_IMODE(os.lstat(p).st_mode) == mode
    assert chain.obj(origin, "file").read_bytes() == content(origin, "file")


@pytest.mark.parametrize("origin", ORIGINS)
def test_executable_of_layer_runs(chain: Chain, origin: str) -> None:
    out = subprocess.run([chain.obj(origin, "exec")], capture_output=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, origin.encode() + b"\n")


@pytest.mark.parametrize("origin", ORIGINS)
def test_setuid_setgid_and_sticky_bits_are_kept(chain: Chain, origin: str) -> None:
    f, d = chain.obj(origin, "exec"), chain.obj(origin, "empty")
    os.chmod(f, 0o6755)
    os.chmod(d, 0o1777)
    assert os.stat(f).st_mode == stat.S_IFREG | 0o6755
    assert os.stat(d).st_mode == stat.S_IFDIR | 0o1777
    child = chain.commit_and_child()
    assert os.stat(child / f.name).st_mode == stat.S_IFREG | 0o6755
    assert os.stat(child / d.name).st_mode == stat.S_IFDIR | 0o1777


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_changes_owner_and_group(chain: Chain, origin: str) -> None:
    for what in ("file", "dir", "fifo"):
        p = chain.obj(origin, what)
        os.chown(p, 1234, 5678)
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(chain.obj(origin, "link"), 4321, 8765, follow_symlinks=False)
    st = os.lstat(chain.obj(origin, "link"))
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert os.stat(chain.obj(origin, "link")).st_uid == 1234  # the target's


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_clears_setuid_and_setgid_of_executable(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    os.chmod(p, 0o6755)
    os.chown(p, 1000, 1000)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755


@pytest.mark.parametrize("origin", ORIGINS)
def test_chown_keeps_setgid_without_group_execute(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.chmod(p, 0o2644)
    os.chown(p, 1000, 1000)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o2644


@pytest.mark.parametrize("origin", ORIGINS)
def test_setgid_directory_passes_group_and_bit_to_new_entries(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    (d / "f").write_bytes(b"")
    os.mkdir(d / "sd")
    os.mkfifo(d / "p")
    os.symlink("x", d / "l")
    assert os.stat(d / "f").st_gid == 4242
    assert not os.stat(d / "f").st_mode & stat.S_ISGID
    sd = os.stat(d / "sd")
    assert sd.st_gid == 4242 and sd.st_mode & stat.S_ISGID
    assert os.lstat(d / "p").st_gid == 4242
    assert os.lstat(d / "l").st_gid == 4242
    assert os.stat(d / "child").st_gid == 0  # existing entries keep theirs


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_sets_times_with_nanosecond_precision(chain: Chain, origin: str) -> None:
    times = (1_000_000_001_123_456_789, 1_500_000_002_987_654_321)
    for what in ("file", "dir", "fifo"):
        p = chain.obj(origin, what)
        os.utime(p, ns=times)
        st = os.stat(p)
        assert (st.st_atime_ns, st.st_mtime_ns) == times
    os.utime(chain.obj(origin, "link"), ns=times, follow_symlinks=False)
    st = os.lstat(chain.obj(origin, "link"))
    assert (st.st_atime_ns, st.st_mtime_ns) == times
    child = chain.commit_and_child()
    st = os.stat(child / f"{origin}_file")
    assert (st.st_atime_ns, st.st_mtime_ns) == times


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_to_the_epoch(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(0, 0))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (0, 0)


@pytest.mark.parametrize("origin", ORIGINS)
def test_utime_now_sets_current_time(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(0, 0))
    before = os.stat(p)
    os.utime(p)
    st = os.stat(p)
    assert st.st_mtime_ns > before.st_mtime_ns
    assert st.st_atime_ns > before.st_atime_ns


def test_touch_after_write_is_not_older_than_the_write(chain: Chain) -> None:
    a, b = chain.active / "written", chain.active / "touched"
    b.write_bytes(b"")
    for _ in range(50):
        a.write_bytes(b"x")
        os.utime(b)
        assert os.stat(b).st_mtime_ns >= os.stat(a).st_mtime_ns
        os.utime(a)
        assert os.stat(a).st_ctime_ns >= os.stat(b).st_ctime_ns


@pytest.mark.parametrize("origin", ORIGINS)
def test_metadata_change_updates_ctime_only(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.utime(p, ns=(5, 5))
    ctime = os.stat(p).st_ctime_ns
    os.chmod(p, 0o640)
    st = os.stat(p)
    assert st.st_mtime_ns == 5 and st.st_ctime_ns >= ctime


@pytest.mark.parametrize("origin", ORIGINS)
def test_creating_an_entry_updates_directory_mtime(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    os.utime(d, ns=(5, 5))
    (d / "new").write_bytes(b"")
    assert os.stat(d).st_mtime_ns > 5
    os.utime(d, ns=(5, 5))
    (d / "new").unlink()
    assert os.stat(d).st_mtime_ns > 5
