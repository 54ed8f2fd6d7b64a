"""The floor under every FUSE request on this machine (issue 16): what a
round trip costs before fusesnap does anything, and fusesnap's own time per
request beside a minimal pyfuse3 file system's for the same request.

Prints, from one run:

1. a pipe ping-pong between two processes (one byte each way): the cost of
   waking a process that sleeps, with both free to run on any CPU, both
   pinned to one CPU, and with the server polling instead of sleeping; and
   a plain open(O_CREAT)+close in the working directory, no FUSE (what
   making a backing file costs fusesnap's CREATE, and a create natively);
2. LOOKUP of a missing name with pyfuse3's busy polling off (poll 0 µs,
   patches/pyfuse3/0002), on the minimal file system and on fusesnap (the
   "new dir" row below, in a view with no parent);
3. a table, busy polling 50 µs on both sides (fusesnap's default), with for
   each request: the round trip the client sees (µs per operation, the
   whole loop's wall time / n), and the handler's own time per request
   (median, and mean in brackets) of the request named, on both sides, and
   fusesnap's own median over the minimal one's;
4. the requests that reached each file system per operation, by opcode,
   and each run's handler median (the spread between runs: this machine is
   shared, and file creation on its disk varies tenfold from one minute to
   the next).

Both sides are timed by the same instrument: fusesnap's FuseStats
(fusesnap/layerfs/stats.py), which fusesnap wraps around each handler
(layerfs/ops.py) and which MINIMAL below wraps around each of its own the
same way; the minimal file system hands its counters back over a pipe,
fusesnap through `fusesnap debug fuse-stats --reset --json`. Medians come
from FuseStats' histogram (four buckets per power of two, within 19 %), so
two close figures can read alike. The counters are reset after the set-up
of each run and read after each loop, so "requests per op" counts every
request that reached the handlers during that loop (a RELEASE arrives after
close returns, before the read that ends the loop: a CLI call or a pipe
round trip); requests the kernel answers itself are not in it, and neither
are the INIT, ACCESS or INTERRUPT pyfuse3 answers.

The minimal file system (MINIMAL): Python dicts (names by (parent inode,
name), modes, and each file's bytes in a bytearray), a new
pyfuse3.EntryAttributes built per answer, the same mount option the kernel
acts on (default_permissions), the same entry and attribute timeouts and
file flags as fusesnap (so the kernel sends the same requests), a negative
entry for a missing name, FLUSH answered ENOSYS and GETXATTR ENOATTR as
fusesnap answers them, one pyfuse3 worker as fusesnap runs.

The rows (n operations each, names never asked before unless said):

- LOOKUP missing, new dir: os.stat of n names that are not there, in a
  directory made in this view (fusesnap knows the whole directory and
  answers without SQL); one LOOKUP each (a negative entry each).
- LOOKUP missing, lower dir: the same in the view's root, which fusesnap
  takes from the committed parent (an SQL probe each).
- LOOKUP existing: os.stat of n distinct files that exist: in fusesnap, the
  files were created through the mount in a snapshot then committed, and
  each run stats them in a new active snapshot on that parent (new inode
  numbers, so nothing is cached); in the minimal one, names pre-made in its
  table. One LOOKUP each.
- GETATTR: statx(2) with AT_STATX_FORCE_SYNC of one file already looked up,
  which makes the kernel send a GETATTR whatever the attribute timeout; one
  GETATTR each.
- CREATE+close: os.open(O_CREAT | O_WRONLY) of a new name and os.close: a
  LOOKUP (the name is not known), CREATE and RELEASE each, and a GETATTR of
  the directory (each CREATE makes the kernel drop the directory's
  attributes, and the next path walk's permission check, default_permissions,
  asks again: seen by logging the minimal one's GETATTR inodes); the kernel
  sends no FLUSH (both answered ENOSYS once before the table's first run).
- WRITE 4 KiB: os.pwrite of 4 KiB into a file open for writing, made in
  this view and filled with 1 MiB before the loop, at offsets cycling
  through that 1 MiB (overwrites: no file grows, so neither side pays for
  new memory or new blocks in the loop): one WRITE, and the kernel's
  GETXATTR security.capability before each write, on both sides.
- READ 4 KiB O_DIRECT: os.pread of 4 KiB, offsets cycling through a 1 MiB
  file opened with O_DIRECT, so the page cache never answers: one READ each.
  The minimal file system copies from its bytearray; fusesnap preads the
  file's backing file (in its parent layer), which the host's page cache
  holds after the first pass: neither reads a disk.

Each side runs the table --reps times (a new active snapshot each for
fusesnap, new names each for the minimal one, one process each) and prints
the median over runs of each figure (for the handler's time, the median of
the runs' medians).

Verified that exactly the requests named reach the daemon: the "requests
per op" lines, from the counters themselves (fusesnap's and the minimal
one's FuseStats).

With --profile DIR, py-spy (`record --native -r 500`, raw format) samples
the fusesnap daemon during the LOOKUP existing and CREATE+close loops and
prints the functions in most samples; the table is then slowed by the
sampling, so profile in a separate run (e.g. --reps 1 --n 10000).

The daemon (and the FuseStats MINIMAL imports) come from this checkout, or
from --source DIR, e.g. a `git archive COMMIT | tar -x -C DIR` of a commit
while the checkout is being edited.

Run as root or as a user who may mount FUSE, with a work directory on a
healthy file system (this machine's /tmp is slow to create files in):

    python bench/fuse_floor.py [--n 2000] [--reps 3] [--workdir /var/tmp]
                               [--source DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO  # the fusesnap tree both daemons import (--source)
DATA_SIZE = 1 << 20  # the READ row's file
BLOCK = 4096

MINIMAL = r'''
import errno, json, os, stat, sys
import pyfuse3, trio
from fusesnap.layerfs.stats import FuseStats

TIMEOUT = 3600.0  # fusesnap's entry and attribute timeout
UID, GID = os.getuid(), os.getgid()


class Minimal(pyfuse3.Operations):
    def __init__(self, stats, existing, data_size):
        super().__init__()
        for name in ("lookup", "forget", "getattr", "mkdir", "open", "create", "read",
                     "write", "flush", "release", "getxattr"):
            setattr(self, name, stats.timed(name.upper(), getattr(self, name)))
        self.children = {}  # (parent inode, name) -> inode
        self.modes = {pyfuse3.ROOT_INODE: stat.S_IFDIR | 0o755}
        self.data = {}  # inode -> bytearray
        self.next_inode = pyfuse3.ROOT_INODE + 1
        for name in existing:
            self.data[self._add(pyfuse3.ROOT_INODE, name, stat.S_IFREG | 0o644)] = bytearray()
        ino = self._add(pyfuse3.ROOT_INODE, b"data", stat.S_IFREG | 0o644)
        self.data[ino] = bytearray(b"x" * data_size)

    def _add(self, parent, name, mode):
        ino = self.next_inode
        self.next_inode += 1
        self.children[(parent, name)] = ino
        self.modes[ino] = mode
        return ino

    def _entry(self, ino):
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = self.modes[ino]
        e.st_nlink = 1
        e.st_uid = UID
        e.st_gid = GID
        data = self.data.get(ino)
        e.st_size = len(data) if data is not None else 0
        e.st_blksize = 4096
        return e

    async def lookup(self, parent, name, ctx=None):
        ino = self.children.get((parent, name))
        if ino is None:
            e = pyfuse3.EntryAttributes()  # a negative entry, as fusesnap's
            e.st_ino = 0
            e.entry_timeout = TIMEOUT
            return e
        return self._entry(ino)

    async def forget(self, inode_list):
        pass

    async def getattr(self, inode, ctx=None):
        return self._entry(inode)

    async def mkdir(self, parent, name, mode, ctx):
        return self._entry(self._add(parent, name, stat.S_IFDIR | stat.S_IMODE(mode)))

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def create(self, parent, name, mode, flags, ctx):
        ino = self._add(parent, name, stat.S_IFREG | stat.S_IMODE(mode))
        self.data[ino] = bytearray()
        return pyfuse3.FileInfo(fh=ino, keep_cache=True), self._entry(ino)

    async def read(self, fh, off, size):
        return bytes(self.data[fh][off:off + size])

    async def write(self, fh, off, buf):
        self.data[fh][off:off + len(buf)] = buf
        return len(buf)

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # as fusesnap: no FLUSH after the first

    async def release(self, fh):
        pass

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)


async def control(stats):
    """A line on stdin: our counters on stdout as JSON, and counting afresh."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    pending = b""
    while True:
        chunk = await stream.receive_some()
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            _, pending = pending.split(b"\n", 1)
            _, ops = stats.report(reset=True)
            print(json.dumps({o.opcode: [o.count, o.total_ns, o.median_ns] for o in ops}),
                  flush=True)


async def serve(stats):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control, stats)
        await pyfuse3.main(1, 1)
        nursery.cancel_scope.cancel()


mountpoint, poll_ns, reps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
existing = [f"e-{r}-{i}".encode() for r in range(reps) for i in range(n)]
stats = FuseStats()
pyfuse3.init(Minimal(stats, existing, int(sys.argv[5])), mountpoint,
             {"fsname=minimal", "default_permissions"})
pyfuse3.set_busy_poll(poll_ns)
print("serving", flush=True)
try:
    trio.run(serve, stats)
finally:
    pyfuse3.close()
'''

# ----------------------------------------------------------------- the client's side

_libc = ctypes.CDLL(None, use_errno=True)
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                        ctypes.c_void_p]
AT_FDCWD = -100
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF
_statx_buf = ctypes.create_string_buffer(256)


def statx_sync(path: bytes) -> None:
    """statx(2) that makes FUSE ask the file system (a GETATTR) whatever it caches."""
    if _libc.statx(AT_FDCWD, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, _statx_buf):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


@dataclass(frozen=True)
class Row:
    label: str
    opcode: str  # the request whose own time is reported


ROWS = [
    Row("LOOKUP missing, new dir", "LOOKUP"),
    Row("LOOKUP missing, lower dir", "LOOKUP"),
    Row("LOOKUP existing", "LOOKUP"),
    Row("GETATTR", "GETATTR"),
    Row("CREATE+close", "CREATE"),
    Row("WRITE 4 KiB", "WRITE"),
    Row("READ 4 KiB O_DIRECT", "READ"),
]


@dataclass(frozen=True)
class View:
    """Where one run's loops work: a directory the file system serves."""
    root: str
    existing: list[str]  # names in root, never looked up in this view
    tag: str  # makes this run's new names new


# opcode -> (count, total ns, median ns)
Counters = dict[str, tuple[int, int, int]]


@dataclass
class Result:
    trip_us: float
    per_op: dict[str, float]  # requests per operation, by opcode
    own_median_us: float
    own_mean_us: float


def _timed_loop(n: int, body: Callable[[int], object]) -> float:
    """µs per call of body(i), i in range(n)."""
    start = time.perf_counter()
    for i in range(n):
        body(i)
    return (time.perf_counter() - start) / n * 1e6


def _stat_missing(path: str) -> None:
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    raise RuntimeError(f"{path} exists")


def run_rows(view: View, rows: list[Row], n: int, counters: Callable[[], Counters],
             around: Callable[[Row], contextlib.AbstractContextManager[None]]
             ) -> dict[str, Result]:
    """Each row's loop of n operations in `view`, with the counters read after each."""
    labels = {r.label for r in rows}
    newdir = os.path.join(view.root, f"new-{view.tag}")
    fds = {}
    if "LOOKUP missing, new dir" in labels:
        os.mkdir(newdir)
    if "WRITE 4 KiB" in labels:
        fds["w"] = os.open(os.path.join(view.root, f"w-{view.tag}"),
                           os.O_CREAT | os.O_WRONLY, 0o644)
        for off in range(0, DATA_SIZE, 1 << 17):  # the loop overwrites what is there
            os.pwrite(fds["w"], b"w" * (1 << 17), off)
    data = os.path.join(view.root, "data").encode()
    if "READ 4 KiB O_DIRECT" in labels:
        fds["r"] = os.open(data, os.O_RDONLY | os.O_DIRECT)
    if "GETATTR" in labels:
        os.stat(data)
    block = b"w" * BLOCK
    blocks = DATA_SIZE // BLOCK

    def create(path: str) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))

    def read(i: int) -> None:
        if len(os.pread(fds["r"], BLOCK, i % blocks * BLOCK)) != BLOCK:
            raise RuntimeError("short read")

    loops: dict[str, Callable[[], float]] = {
        "LOOKUP missing, new dir": lambda: _paths_loop(
            [os.path.join(newdir, f"missing-{i}") for i in range(n)], _stat_missing),
        "LOOKUP missing, lower dir": lambda: _paths_loop(
            [os.path.join(view.root, f"missing-{view.tag}-{i}") for i in range(n)],
            _stat_missing),
        "LOOKUP existing": lambda: _paths_loop(
            [os.path.join(view.root, name) for name in view.existing[:n]], os.stat),
        "GETATTR": lambda: _timed_loop(n, lambda i: statx_sync(data)),
        "CREATE+close": lambda: _paths_loop(
            [os.path.join(view.root, f"c-{view.tag}-{i}") for i in range(n)], create),
        "WRITE 4 KiB": lambda: _timed_loop(
            n, lambda i: os.pwrite(fds["w"], block, i % blocks * BLOCK)),
        "READ 4 KiB O_DIRECT": lambda: _timed_loop(n, read),
    }
    out = {}
    try:
        counters()  # counting starts here
        for row in rows:
            with around(row):
                trip = loops[row.label]()
            ops = counters()
            count, total, median = ops.get(row.opcode, (0, 0, 0))
            out[row.label] = Result(
                trip, {op: c / n for op, (c, _, _) in ops.items()},
                median / 1e3, total / count / 1e3 if count else float("nan"))
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _paths_loop(paths: list[str], fn: Callable[[str], object]) -> float:
    """µs per fn(path); the paths are built before the clock starts."""
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return (time.perf_counter() - start) / len(paths) * 1e6


@contextlib.contextmanager
def _nothing(row: Row) -> Iterator[None]:
    yield


# ----------------------------------------------------------------- the two file systems


def ping_pong(n: int, server_cpu: int | None, client_cpu: int | None, poll: bool) -> float:
    """µs per round trip of one byte between two processes over pipes."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})
        if poll:
            os.set_blocking(r1, False)
        for _ in range(n):
            while True:
                try:
                    os.read(r1, 1)
                    break
                except BlockingIOError:
                    pass
            os.write(w2, b"x")
        os._exit(0)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    start = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return elapsed / n * 1e6


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SOURCE)}


def _wait_mounted(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while not os.path.ismount(path):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{path} was not mounted")
        time.sleep(0.01)


def _readline(proc: subprocess.Popen[str], timeout: float = 10) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError("the minimal file system did not answer")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the minimal file system exited")
    return line


def minimal(workdir: Path, rows: list[Row], n: int, reps: int, poll_ns: int
            ) -> list[dict[str, Result]]:
    """Each run's results on the minimal file system."""
    mnt = workdir / f"minimal-{poll_ns}"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", MINIMAL, str(mnt), str(poll_ns), str(reps),
                             str(n), str(DATA_SIZE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=SOURCE, env=_env())
    assert proc.stdin is not None

    def counters() -> Counters:
        assert proc.stdin is not None
        proc.stdin.write("report\n")
        proc.stdin.flush()
        return {op: (c, t, m) for op, (c, t, m) in json.loads(_readline(proc)).items()}

    try:
        if _readline(proc).strip() != "serving":
            raise RuntimeError("the minimal file system did not start")
        _wait_mounted(mnt, proc)
        os.close(os.open(mnt / "warm-up", os.O_CREAT | os.O_WRONLY))  # the one FLUSH
        return [run_rows(View(str(mnt), [f"e-{r}-{i}" for i in range(n)], str(r)),
                         rows, n, counters, _nothing) for r in range(reps)]
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.stdin.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


class Fusesnap:
    """A fusesnap daemon of our own, and its CLI."""

    def __init__(self, workdir: Path, poll_us: int) -> None:
        self.name = f"fusesnap-{poll_us}"
        self.sock = workdir / f"{self.name}.sock"
        self.logpath = workdir / f"{self.name}.log"
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusesnap", "serve", "--root", str(workdir / self.name),
             "--socket", str(self.sock), "--role", "proxy", "--fuse-busy-poll", str(poll_us)],
            stdout=self.log, stderr=self.log, cwd=SOURCE, env=_env())
        deadline = time.monotonic() + 30
        while not self.logpath.read_bytes().rstrip().endswith(b"serving"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                tail = self.logpath.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"fusesnap did not start:\n{tail}")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(self.sock),
                               *args], check=True, capture_output=True, text=True,
                              cwd=SOURCE, env=_env(), timeout=60).stdout

    def counters(self) -> Counters:
        out = json.loads(self.cli("debug", "fuse-stats", "--reset", "--json"))
        return {o["opcode"]: (o["count"], o["total_ns"], o["median_ns"])
                for o in out["opcodes"]}

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            self.log.close()


def fusesnap(workdir: Path, rows: list[Row], n: int, reps: int, poll_us: int,
             profile: Path | None) -> list[dict[str, Result]]:
    """Each run's results on fusesnap: a new active snapshot each, on a committed
    parent holding n files and DATA_SIZE bytes in "data"."""
    daemon = Fusesnap(workdir, poll_us)
    try:
        base = Path(daemon.cli("snapshots", "prepare", "base").strip())
        if any(row.label != "LOOKUP missing, new dir" for row in rows):
            for i in range(n):
                os.close(os.open(base / f"e-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
            with open(base / "data", "wb") as f:
                f.write(b"x" * DATA_SIZE)
        os.close(os.open(base / "warm-up", os.O_CREAT | os.O_WRONLY))  # the one FLUSH
        daemon.cli("snapshots", "commit", "base-c", "base")
        out = []
        for r in range(reps):
            view = Path(daemon.cli("snapshots", "prepare", f"run-{r}", "base-c").strip())
            os.stat(view)
            out.append(run_rows(View(str(view), [f"e-{i}" for i in range(n)], str(r)),
                                rows, n, daemon.counters,
                                _profiler(daemon.proc.pid, profile, r)))
        return out
    finally:
        daemon.close()


PROFILED = ("LOOKUP existing", "CREATE+close")


def _profiler(pid: int, profile: Path | None, rep: int
              ) -> Callable[[Row], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def around(row: Row) -> Iterator[None]:
        if profile is None or row.label not in PROFILED:
            yield
            return
        spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
        out = profile / f"{row.opcode.lower()}-{rep}.txt"
        proc = subprocess.Popen([spy, "record", "-p", str(pid), "--native", "-r", "500",
                                 "-f", "raw", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    return around


HANDLER = "FuseStats.timed.<locals>.counted"  # the frame that times a handler


def _frame(frame: str) -> str:
    """A py-spy frame without its line number; an unnamed native one as its library."""
    if frame.startswith("0x"):
        return "[" + frame.partition(" (")[2].rstrip(")") + "]"
    return re.sub(r":\d+\)$", ")", frame)


def top_functions(raw: Path, k: int = 14) -> tuple[int, int, list[tuple[str, float, float]]]:
    """From a py-spy raw (collapsed) profile: samples of the FUSE thread (the one
    running trio), how many of them in a handler, and the functions in most of
    the handler samples: (function, % of them with it on the stack, % on top)."""
    thread = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "trio/_core/_run.py" not in stack:
            continue  # another thread (gRPC's, the workers')
        samples = int(count)
        thread += samples
        frames = stack.split(";")
        if HANDLER not in stack:
            continue
        inner = [_frame(f) for f in frames[next(i for i, f in enumerate(frames)
                                                if HANDLER in f) + 1:]]
        for frame in set(inner):
            inclusive[frame] += samples
        own[inner[-1] if inner else HANDLER] += samples
    handler = sum(own.values())
    return thread, handler, [(f, 100 * c / handler, 100 * own[f] / handler)
                             for f, c in inclusive.most_common(k)]


# ----------------------------------------------------------------- the report


def _median(results: list[dict[str, Result]], label: str) -> Result:
    runs = [r[label] for r in results]
    opcodes = sorted({op for r in runs for op in r.per_op})
    return Result(statistics.median(r.trip_us for r in runs),
                  {op: statistics.median(r.per_op.get(op, 0.0) for r in runs)
                   for op in opcodes},
                  statistics.median(r.own_median_us for r in runs),
                  statistics.median(r.own_mean_us for r in runs))


def _per_op(r: Result) -> str:
    shown = [f"{op} {c:.2f}" for op, c in sorted(r.per_op.items(), key=lambda x: -x[1])
             if c >= 0.005]
    return ", ".join(shown) or "none"


def plain_create(workdir: Path, n: int, reps: int) -> float:
    """µs per open(O_CREAT)+close of a new file in a new directory of
    `workdir`, no FUSE: the median of `reps` runs."""
    runs = []
    for r in range(reps):
        d = workdir / f"plain-{r}"
        d.mkdir()
        t = time.perf_counter()
        for i in range(n):
            os.close(os.open(d / str(i), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
        runs.append((time.perf_counter() - t) / n * 1e6)
        shutil.rmtree(d)
    return sorted(runs)[len(runs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per loop")
    parser.add_argument("--reps", type=int, default=3, help="runs of each loop")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--source", type=Path, default=REPO, metavar="DIR",
                        help="the fusesnap tree to run the daemon and import FuseStats from "
                             "(default: this checkout; e.g. a `git archive` of a commit)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy raw profiles of fusesnap's LOOKUP existing and "
                             "CREATE+close loops, into DIR")
    args = parser.parse_args()
    global SOURCE
    SOURCE = args.source.resolve()
    n, reps = args.n, args.reps
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fuse-floor-", dir=args.workdir))
    started = time.monotonic()
    try:
        cpus = os.cpu_count() or 1
        print(f"FUSE floor on {cpus} CPUs: {n} operations per loop, median of {reps} runs; "
              f"fusesnap from {SOURCE}")
        print(f"pipe ping-pong, any CPUs             {ping_pong(n, None, None, False):8.1f} µs")
        if cpus > 1:
            print(f"pipe ping-pong, two CPUs             {ping_pong(n, 1, 0, False):8.1f} µs")
        print(f"pipe ping-pong, one CPU              {ping_pong(n, 0, 0, False):8.1f} µs")
        print(f"pipe ping-pong, server polling       {ping_pong(n, None, None, True):8.1f} µs")
        print(f"plain create+close in the workdir    {plain_create(workdir, n, reps):8.1f} µs"
              "   (what making a backing file costs, and native's create)")

        poll0 = [ROWS[0]]
        mini0 = _median(minimal(workdir, poll0, n, reps, 0), poll0[0].label)
        snap0 = _median(fusesnap(workdir, poll0, n, reps, 0, None), poll0[0].label)
        for name, r in (("minimal", mini0), ("fusesnap", snap0)):
            print(f"{name + ' LOOKUP missing, poll 0 µs':<37}{r.trip_us:8.1f} µs round trip, "
                  f"own {r.own_median_us:.1f} µs median ({r.own_mean_us:.1f} mean)")

        mini = minimal(workdir, ROWS, n, reps, 50_000)
        snap = fusesnap(workdir, ROWS, n, reps, 50, args.profile)
        print()
        print("busy poll 50 µs           | round trip, µs/op  | own µs/request, median (mean) "
              "| own median")
        print("request                   |  minimal  fusesnap |  minimal         fusesnap     "
              "| fusesnap/minimal")
        print("-" * 26 + "+" + "-" * 20 + "+" + "-" * 31 + "+" + "-" * 17)
        per_op = []
        for row in ROWS:
            m, s = _median(mini, row.label), _median(snap, row.label)
            ratio = s.own_median_us / m.own_median_us if m.own_median_us else float("nan")
            print(f"{row.label:<26}| {m.trip_us:8.1f}  {s.trip_us:8.1f} | "
                  f"{m.own_median_us:6.1f} ({m.own_mean_us:5.1f})  "
                  f"{s.own_median_us:6.1f} ({s.own_mean_us:6.1f}) | {ratio:6.2f}")
            per_op.append(f"{row.label:<26} minimal: {_per_op(m)}; fusesnap: {_per_op(s)}")
        print("\nrequests per op (the handlers' counters):")
        for line in per_op:
            print(f"  {line}")
        print("\nown µs/request, median in each run: minimal | fusesnap")
        for row in ROWS:
            runs = [" ".join(f"{r[row.label].own_median_us:6.1f}" for r in side)
                    for side in (mini, snap)]
            print(f"  {row.label:<26}{runs[0]} | {runs[1]}")
        if args.profile is not None:
            for raw in sorted(args.profile.glob("*.txt")):
                thread, handler, top = top_functions(raw)
                print(f"\nfusesnap, {raw.name}: {thread} samples of the FUSE thread, "
                      f"{handler} in a handler; % of those with the function on the "
                      "stack / on top")
                for fn, incl, own in top:
                    print(f"  {incl:5.1f} {own:5.1f}  {fn}")
        print(f"\n({time.monotonic() - started:.0f} s)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
