"""The floor under every FUSE request on this machine (issue 16): what a
round trip costs before fusesnap does anything.

Prints, from one run:

1. a pipe ping-pong between two processes (one byte each way): the cost of
   waking a process that sleeps, with both free to run on any CPU, both
   pinned to one CPU, and with the server polling instead of sleeping;
2. a minimal pyfuse3 file system (a root and nothing else, every answer
   built in Python, nothing cached): the round trip of a LOOKUP that finds
   nothing, with pyfuse3's busy polling off and on (patches/pyfuse3/0002);
3. fusesnap, for the same request (a LOOKUP of a name that is not there, in
   an active snapshot; each name once, so the kernel's negative entries do
   not answer it), with its own time per request from its counters.

Run as root or as a user who may mount FUSE:

    python bench/fuse_floor.py [--n 3000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MINIMAL = r'''
import errno, stat, sys
import pyfuse3, trio

class Minimal(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = stat.S_IFDIR | 0o755
        return e

    async def lookup(self, parent, name, ctx=None):
        raise pyfuse3.FUSEError(errno.ENOENT)

pyfuse3.init(Minimal(), sys.argv[1], {"fsname=minimal"})
pyfuse3.set_busy_poll(int(sys.argv[2]))
print("serving", flush=True)
try:
    trio.run(pyfuse3.main, 1, 1)
finally:
    pyfuse3.close()
'''


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


def missing_lookups(directory: Path, n: int) -> float:
    """µs per stat of a name never asked before (one LOOKUP each)."""
    start = time.perf_counter()
    for i in range(n):
        try:
            os.stat(directory / f"missing-{i}")
        except FileNotFoundError:
            pass
    return (time.perf_counter() - start) / n * 1e6


def minimal(workdir: Path, n: int, poll_ns: int) -> float:
    mnt = workdir / f"minimal-{poll_ns}"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", MINIMAL, str(mnt), str(poll_ns)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.01)
        return missing_lookups(mnt, n)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def fusesnap(workdir: Path, n: int, poll_us: int) -> tuple[float, float]:
    """µs per missing-name LOOKUP round trip, and the daemon's own µs per LOOKUP."""
    root, sock = workdir / f"fusesnap-{poll_us}", workdir / f"fusesnap-{poll_us}.sock"
    log = open(workdir / f"fusesnap-{poll_us}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fusesnap", "serve", "--root", str(root),
                             "--socket", str(sock), "--role", "proxy",
                             "--fuse-busy-poll", str(poll_us)], stdout=log, stderr=log)
    cli = [sys.executable, "-m", "fusesnap", "--socket", str(sock)]
    try:
        deadline = time.monotonic() + 30
        while not (workdir / f"fusesnap-{poll_us}.log").read_bytes().rstrip().endswith(
                b"serving"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("fusesnap did not start")
            time.sleep(0.05)
        snap = Path(subprocess.run([*cli, "snapshots", "prepare", "floor"], check=True,
                                   capture_output=True, text=True).stdout.strip())
        os.stat(snap)
        subprocess.run([*cli, "debug", "fuse-stats", "--reset"], check=True,
                       capture_output=True)
        trip = missing_lookups(snap, n)
        out = subprocess.run([*cli, "debug", "fuse-stats", "--json"], check=True,
                             capture_output=True, text=True).stdout
        import json
        ops = {o["opcode"]: o for o in json.loads(out)["opcodes"]}
        own = ops["LOOKUP"]["total_ns"] / ops["LOOKUP"]["count"] / 1e3
        return trip, own
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="round trips per figure")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fuse-floor-", dir=args.workdir))
    try:
        cpus = os.cpu_count() or 1
        print(f"FUSE floor on {cpus} CPUs, {args.n} round trips each (µs per round trip)")
        print(f"pipe ping-pong, any CPUs             {ping_pong(args.n, None, None, False):8.1f}")
        if cpus > 1:
            print(f"pipe ping-pong, two CPUs             {ping_pong(args.n, 1, 0, False):8.1f}")
        print(f"pipe ping-pong, one CPU              {ping_pong(args.n, 0, 0, False):8.1f}")
        print(f"pipe ping-pong, server polling       {ping_pong(args.n, None, None, True):8.1f}")
        for poll_ns in (0, 50_000):
            label = f"minimal pyfuse3 LOOKUP, poll {poll_ns // 1000} us"
            print(f"{label:<37}{minimal(workdir, args.n, poll_ns):8.1f}")
        for poll_us in (0, 50):
            trip, own = fusesnap(workdir, args.n, poll_us)
            label = f"fusesnap LOOKUP (missing), poll {poll_us} us"
            print(f"{label:<37}{trip:8.1f}   daemon's own time {own:.1f} µs")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
