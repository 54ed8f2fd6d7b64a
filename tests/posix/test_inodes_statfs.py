"""Inode numbers (stable, unique, matching readdir), readdir while names are
deleted, and statfs."""

from __future__ import annotations

import os

import pytest

from tests.posix.helpers import ROOT_ONLY, drop_caches
from tests.posix.world import ORIGINS, Chain, dir_names

pytestmark = ROOT_ONLY


@pytest.mark.parametrize("origin", ORIGINS)
def test_st_ino_is_stable_across_lookups_and_dropped_caches(chain: Chain, origin: str) -> None:
    paths = [chain.obj(origin, w) for w in ("file", "dir", "link", "hard1", "fifo")]
    paths.append(chain.obj(origin, "dir") / "sub" / "deep")
    first = [os.lstat(p).st_ino for p in paths]
    assert [os.lstat(p).st_ino for p in paths] == first
    if not drop_caches():
        pytest.skip("cannot write /proc/sys/vm/drop_caches")
    assert [os.lstat(p).st_ino for p in paths] == first


@pytest.mark.parametrize("origin", ORIGINS)
def test_st_ino_survives_copy_up_and_rename(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    ino = p.stat().st_ino
    with open(p, "ab") as f:
        f.write(b"x")
    os.chmod(p, 0o600)
    assert p.stat().st_ino == ino
    os.rename(p, chain.obj("bottom", "dir") / "renamed")
    drop_caches()
    assert os.stat(chain.obj("bottom", "dir") / "renamed").st_ino == ino


@pytest.mark.parametrize("origin", ORIGINS)
def test_names_deleted_while_a_directory_is_read_stay_deleted(chain: Chain, origin: str) -> None:
    d = chain.obj(origin, "dir")
    names = [f"entry{i:03}" for i in range(300)]
    for n in names:
        (d / n).write_bytes(b"")
    if origin != "own":
        chain.active = chain.commit_and_child()
        d = chain.obj(origin, "dir")
    seen = []
    with os.scandir(d) as it:
        seen.append(next(it).name)
        for n in names:
            os.unlink(d / n)
        seen.extend(e.name for e in it)
    for n in names:
        assert not os.path.lexists(d / n), f"{n} came back after a readdir"
    assert len(set(seen)) == len(seen)
    assert sorted(os.listdir(d)) == dir_names(origin)


def test_inode_numbers_are_unique_and_match_readdir(chain: Chain) -> None:
    seen: dict[int, set[tuple[int, int]]] = {}
    for dirpath, _, _ in os.walk(chain.active):
        with os.scandir(dirpath) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                assert e.inode() == st.st_ino
                seen.setdefault(st.st_ino, set()).add((st.st_dev, st.st_nlink))
    counts: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(chain.active):
        for n in dirnames + filenames:
            ino = os.lstat(os.path.join(dirpath, n)).st_ino
            counts[ino] = counts.get(ino, 0) + 1
    for ino, n in counts.items():
        ((_, nlink),) = seen[ino]
        if n > 1:
            assert nlink == n  # only hard links share a number


def test_statfs_returns_sane_numbers(chain: Chain) -> None:
    st = os.statvfs(chain.active)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert 0 < st.f_blocks
    assert 0 <= st.f_bavail <= st.f_bfree <= st.f_blocks
    assert 0 <= st.f_ffree <= st.f_files
    assert st.f_namemax == 255
    assert os.statvfs(chain.bottom).f_blocks == st.f_blocks
