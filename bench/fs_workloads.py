"""The workloads of the filesystem benchmark (bench/fs.py).

Each runs in a fresh view of a stack (`root`), returns seconds per result row
and verifies what it did (bytes read and where they came from, entries seen,
files created, entries removed); a mismatch raises :class:`Mismatch`, so a
broken backend posts an error instead of a figure. The runner drops the
caches between making the view and calling the workload; a workload measured
cold and warm runs its operation twice, the second time on what the first
left in the caches.
"""

from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fs_backends import Fusesnap
from fs_fixture import BLOCK, Fixture, MiB, Stack, walk_files

from fusesnap.pb import snapshots_pb2 as spb


class Mismatch(Exception):
    """The backend did not do what the workload asked."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise Mismatch(what)


Rows = dict[str, float]
Timer = Callable[[str, Callable[[], object]], float]
"""`timer(row, fn)`: the seconds `fn()` took, for result row `row` (the
runner's timer may profile the daemon meanwhile)."""


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Path, Fixture, Stack, Timer], Rows]
    stacks: Callable[[Fixture], list[Stack]]
    restart: bool = False
    """Measures cold reads: fusesnap restarts its daemon first (its own caches go)."""
    writes: tuple[str, ...] = ()
    """Paths the workload changes (native works on a fresh copy of them)."""
    prepare: Callable[[Fixture], None] | None = None
    """Untimed, after the caches were dropped (inputs that are not the backend's)."""
    times_open: bool = False
    """Report the time the backend took to make the view available."""
    op: str = ""
    """What one operation of a timed row is (the unit of the daemon's requests
    per operation, bench/fs.py)."""
    ops: Callable[[Fixture], int] = lambda fx: 1
    """Operations per timed row (each row of a repetition does them all once)."""


def _main(fx: Fixture) -> list[Stack]:
    return [fx.main]


def _deep(fx: Fixture) -> list[Stack]:
    return [fx.deep[n] for n in sorted(fx.deep)]


def timed(row: str, fn: Callable[[], object]) -> float:
    """The plain :data:`Timer`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- reads


def _read_all(path: Path, size: int) -> None:
    """Read with 1 MiB reads; the first block of each MiB must be that block."""
    buf = bytearray(MiB)
    mv = memoryview(buf)
    offset = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(mv):
            if offset % MiB == 0 and n >= 8:
                _check(struct.unpack_from("<Q", buf)[0] == offset // BLOCK,
                       f"{path}: wrong data at offset {offset}")
            offset += n
    _check(offset == size, f"{path}: read {offset} bytes, expected {size}")


def seq_read(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    path, size = root / fx.expected.seq_path, fx.sizes.seq_bytes
    return {row: timed(row, lambda: _read_all(path, size))
            for row in ("seq-read cold", "seq-read warm")}


def _preads(path: Path, blocks: list[int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        bad = [b for b in blocks
               if struct.unpack_from("<Q", os.pread(fd, BLOCK, b * BLOCK).ljust(8))[0] != b]
    finally:
        os.close(fd)
    _check(not bad, f"{path}: {len(bad)} of {len(blocks)} 4 KiB reads returned wrong data")


def rand_read(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    path = root / fx.expected.seq_path
    n_blocks = fx.sizes.seq_bytes // BLOCK
    rng = random.Random(4096)
    n = fx.sizes.rand_reads
    blocks = rng.sample(range(n_blocks), n) if n <= n_blocks else rng.choices(range(n_blocks), k=n)
    return {row: timed(row, lambda: _preads(path, blocks))
            for row in ("rand-read cold", "rand-read warm")}


def _find(root: Path, fx: Fixture) -> None:
    """`find tree -printf` of type and size: one lstat per entry, in C."""
    out = subprocess.run(["find", "tree", "-printf", "%y %s\n"], cwd=root, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    size = sum(int(line[2:]) for line in out if line[0] == "f")
    _check((len(out), size) == (fx.expected.walk_entries, fx.expected.walk_bytes),
           f"walk saw {len(out)} entries, {size} bytes; expected "
           f"{fx.expected.walk_entries}, {fx.expected.walk_bytes}")


def meta_walk(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    return {row: timed(row, lambda: _find(root, fx))
            for row in ("meta-walk cold", "meta-walk warm")}


def _stat_all(root: Path, fx: Fixture) -> None:
    base = str(root)
    sizes = []
    for p in fx.expected.deep_paths:
        st = os.lstat(f"{base}/{p}")
        sizes.append(st.st_size if stat.S_ISREG(st.st_mode) else -1)
    _check(sizes == fx.expected.deep_sizes, "lstat of the bottom layer's files: wrong sizes")


def deep_chain(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    return {row: timed(row, lambda: _stat_all(root, fx))
            for row in (f"{stack.name} cold", f"{stack.name} warm")}


# --------------------------------------------------------------------------- writes


def small_create(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    """4 KiB files, 100 per directory, in directories only lower layers hold; one sync."""
    dirs, n = fx.expected.create_dirs, fx.sizes.create_files
    paths = [f"{root}/{dirs[j // 100]}/new-{j:05}" for j in range(n)]
    data = os.urandom(BLOCK)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def create() -> None:
        for p in paths:
            fd = os.open(p, flags, 0o644)
            os.write(fd, data)
            os.close(fd)
        os.sync()

    seconds = timed("small-create", create)
    files = [e.stat(follow_symlinks=False).st_size for e in walk_files(root / "create")]
    expected = n + fx.expected.create_lower_files
    _check(len(files) == expected and files.count(BLOCK) == n,
           f"small-create: {len(files)} files ({files.count(BLOCK)} of 4 KiB), "
           f"expected {expected} ({n})")
    return {"small-create": seconds}


def copy_up(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    """A durable 1-byte append to one lower file, a durable 4 KiB overwrite in
    the middle of another: open, write, fsync, close."""
    size = fx.sizes.copy_bytes
    append, overwrite = root / fx.expected.append_path, root / fx.expected.overwrite_path
    middle = size // 2 // BLOCK * BLOCK
    data = b"\xff" * BLOCK

    def do_append() -> None:
        fd = os.open(append, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"!")
        os.fsync(fd)
        os.close(fd)

    def do_overwrite() -> None:
        fd = os.open(overwrite, os.O_WRONLY)
        os.pwrite(fd, data, middle)
        os.fsync(fd)
        os.close(fd)

    rows = {"copy-up append": timed("copy-up append", do_append),
            "copy-up overwrite": timed("copy-up overwrite", do_overwrite)}
    with open(append, "rb") as f:
        head = f.read(8)
        f.seek(size)
        tail = f.read()
    _check(tail == b"!" and struct.unpack("<Q", head)[0] == 0,
           f"copy-up append: file ends {tail[-8:]!r}, expected one byte after the copy")
    with open(overwrite, "rb") as f:
        f.seek(middle)
        got = f.read(2 * BLOCK)
        f.seek(0, os.SEEK_END)
        end = f.tell()
    _check(end == size and got[:BLOCK] == data
           and struct.unpack_from("<Q", got, BLOCK)[0] == middle // BLOCK + 1,
           "copy-up overwrite: wrong bytes around the overwritten block")
    return rows


def _cache_tarball(fx: Fixture) -> None:
    with open(fx.expected.tarball, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def untar(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    """GNU tar extracts the tarball (in the page cache) into a lower directory; one sync."""
    target = root / "untar"

    def extract() -> None:
        subprocess.run(["tar", "-xf", str(fx.expected.tarball), "-C", str(target)], check=True)
        os.sync()

    seconds = timed("untar", extract)
    sizes = [e.stat(follow_symlinks=False).st_size for e in walk_files(target)]
    exp = fx.expected
    _check((len(sizes), sum(sizes)) == (exp.untar_files, exp.untar_bytes),
           f"untar: {len(sizes)} files, {sum(sizes)} bytes; expected "
           f"{exp.untar_files}, {exp.untar_bytes}")
    return {"untar": seconds}


def _remove_tree(path: str) -> int:
    """rm -rf, counting what it removed."""
    n = 0
    with os.scandir(path) as it:
        entries = list(it)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            n += _remove_tree(e.path)
        else:
            os.unlink(e.path)
            n += 1
    os.rmdir(path)
    return n + 1


def rm_rf(root: Path, fx: Fixture, stack: Stack, timed: Timer) -> Rows:
    removed: list[int] = []
    seconds = timed("rm-rf", lambda: removed.append(_remove_tree(f"{root}/rmtree")))
    _check(removed == [fx.expected.rm_entries + 1] and not (root / "rmtree").exists(),
           f"rm-rf removed {removed} entries, expected {fx.expected.rm_entries + 1}")
    return {"rm-rf": seconds}


WORKLOADS = [
    Workload("seq-read", seq_read, _main, restart=True,
             op="MiB read", ops=lambda fx: fx.sizes.seq_bytes // MiB),
    Workload("rand-read", rand_read, _main, restart=True,
             op="4 KiB read", ops=lambda fx: fx.sizes.rand_reads),
    Workload("meta-walk", meta_walk, _main, restart=True,
             op="entry walked", ops=lambda fx: fx.expected.walk_entries),
    Workload("small-create", small_create, _main, writes=("create",),
             op="file created", ops=lambda fx: fx.sizes.create_files),
    Workload("copy-up", copy_up, _main, writes=("big/append.bin", "big/overwrite.bin"),
             op="durable write", ops=lambda fx: 1),
    Workload("deep-chain", deep_chain, _deep, restart=True, times_open=True,
             op="entry stat'd", ops=lambda fx: len(fx.expected.deep_paths)),
    Workload("untar", untar, _main, writes=("untar",), prepare=_cache_tarball,
             op="file extracted", ops=lambda fx: fx.expected.untar_files),
    Workload("rm-rf", rm_rf, _main, writes=("rmtree",),
             op="entry removed", ops=lambda fx: fx.expected.rm_entries + 1),
]
"""In run order (snapshot-ops, fusesnap only, runs last: bench/fs.py)."""


# --------------------------------------------------------------------------- snapshot ops

OPS = ("Prepare", "Commit", "View", "Stat", "Remove")


def snapshot_ops(snap: Fusesnap, parent: str, n: int, tag: str) -> dict[str, list[float]]:
    """`n` rounds of Prepare on `parent`, Commit, View of it, Stat, Remove of
    the view and of the committed snapshot; latency of every call."""
    s = snap.snapshots
    lat: dict[str, list[float]] = {op: [] for op in OPS}
    clock = time.perf_counter
    for i in range(n):
        key, name, view = f"{tag}-{i}-active", f"{tag}-{i}", f"{tag}-{i}-view"
        t0 = clock()
        s.Prepare(spb.PrepareSnapshotRequest(key=key, parent=parent))
        t1 = clock()
        s.Commit(spb.CommitSnapshotRequest(name=name, key=key))
        t2 = clock()
        s.View(spb.ViewSnapshotRequest(key=view, parent=name))
        t3 = clock()
        info = s.Stat(spb.StatSnapshotRequest(key=name)).info
        t4 = clock()
        s.Remove(spb.RemoveSnapshotRequest(key=view))
        t5 = clock()
        s.Remove(spb.RemoveSnapshotRequest(key=name))
        t6 = clock()
        _check((info.name, info.parent, info.kind) == (name, parent, spb.COMMITTED),
               f"Stat of {name}: {info.name} on {info.parent}, kind {info.kind}")
        lat["Prepare"].append(t1 - t0)
        lat["Commit"].append(t2 - t1)
        lat["View"].append(t3 - t2)
        lat["Stat"].append(t4 - t3)
        lat["Remove"] += [t5 - t4, t6 - t5]
    return lat
