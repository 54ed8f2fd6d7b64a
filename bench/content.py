"""Content benchmark: ingest and read back one blob through gRPC.

Prints MiB/s for fusesnap's Content service beside, from the same run,
`sha256sum` of the same file (the hashing limit) and containerd's own content
service (`ctr content ingest` / `ctr content get` against a private containerd
from Debian's `containerd` package, started here on its own socket and root
and stopped after). Every figure is verified: the digest read back must be the
digest of the file. A read lands the whole blob in the reader's memory (see
Landing) and is hashed after the clock stops.

Each run also times small reads: the blob's first 2,000 × 32 KiB, one Read RPC
each, as containerd's applier reads a proxy content store (one Read per 32 KiB
ReadAt), with the same Python client against both stores; the bytes are
compared with the file after the clock stops.

    python bench/content.py [--size-mib 1024] [--reps 3] [--json results/content.json]
                            [--no-containerd]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fusesnap.cli.common import open_channel
from fusesnap.cli.content import ContentClient
from fusesnap.malloc import reuse_megabyte_buffers
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import content_pb2_grpc

CHUNK = 1 << 20
SMALL_READ = 32 << 10
SMALL_READS = 2000
T = TypeVar("T")


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    time.sleep(0.2)


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def sha256sum(path: Path) -> tuple[float, str]:
    seconds, out = _timed(subprocess.run, ["sha256sum", str(path)], capture_output=True,
                          text=True, check=True)
    return seconds, "sha256:" + out.stdout.split()[0]


def fusesnap_ingest(stub: content_pb2_grpc.ContentStub, path: Path, ref: str) -> str:
    def requests():  # type: ignore[no-untyped-def]
        yield cpb.WriteContentRequest(action=cpb.STAT, ref=ref, total=path.stat().st_size)
        offset = 0
        with open(path, "rb", buffering=0) as f:
            while data := f.read(CHUNK):
                yield cpb.WriteContentRequest(action=cpb.WRITE, offset=offset, data=data)
                offset += len(data)
        # A root, so that the daemon's collector (run after each Delete) keeps
        # it while the run reads it, as ctr's lease keeps containerd's.
        yield cpb.WriteContentRequest(action=cpb.COMMIT, offset=offset, total=offset,
                                      labels={"containerd.io/gc.root": "bench"})

    digest = ""
    for resp in stub.Write(requests()):
        digest = resp.digest
    return digest


class Landing:
    """Where a timed Read puts the blob: one buffer of the blob's size, its
    pages touched before the first run, cleared before each. The digest of
    what landed is taken after the clock stops, so the figure is the rate at
    which the whole blob reaches the reader's memory, verified (the clients of
    both stores land it the same way)."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.received = 0

    def clear(self) -> None:
        self.view[:] = bytes(len(self.buffer))
        self.received = 0

    def put(self, offset: int, data: memoryview | bytes) -> None:
        if offset != self.received:
            raise RuntimeError(f"chunk at {offset}, expected {self.received}")
        self.view[offset:offset + len(data)] = data
        self.received += len(data)

    def digest(self) -> str:
        if self.received != len(self.buffer):
            raise RuntimeError(f"received {self.received} bytes of {len(self.buffer)}")
        return "sha256:" + hashlib.sha256(self.view).hexdigest()


def fusesnap_read(client: ContentClient, digest: str, landing: Landing) -> None:
    for offset, data in client.read(cpb.ReadContentRequest(digest=digest)):
        landing.put(offset, data)


def small_reads(client: ContentClient, digest: str, path: Path,
                metadata: tuple[tuple[str, str], ...] = ()) -> list[float]:
    """Seconds per call of SMALL_READS successive Reads of SMALL_READ bytes from
    the start of the blob; what they returned must be the file's bytes."""
    got = bytearray()
    seconds = []
    for i in range(SMALL_READS):
        request = cpb.ReadContentRequest(digest=digest, offset=i * SMALL_READ, size=SMALL_READ)
        start = time.perf_counter()
        chunks = [bytes(data) for _, data in client.read(request, metadata=metadata)]
        seconds.append(time.perf_counter() - start)
        got += b"".join(chunks)
    with open(path, "rb") as f:
        if got != f.read(SMALL_READS * SMALL_READ):
            raise RuntimeError("small reads returned other bytes than the blob's")
    return seconds


def _timed_read(read: Callable[[str, Landing], None], digest: str, landing: Landing,
                who: str) -> float:
    landing.clear()
    seconds, _ = _timed(read, digest, landing)
    if (back := landing.digest()) != digest:
        raise RuntimeError(f"{who} read back {back}, expected {digest}")
    return seconds


def run_fusesnap(work: Path, path: Path, reps: int, landing: Landing) -> dict[str, Any]:
    root, sock = work / "fusesnap", work / "fusesnap.sock"
    proc = subprocess.Popen([sys.executable, "-m", "fusesnap", "--log-level", "WARNING",
                             "serve", "--root", str(root), "--socket", str(sock)])
    try:
        _wait_for(sock, proc, "fusesnap")
        channel = open_channel(str(sock))  # the CLI's
        stub = ContentClient(channel)
        ingest, read, small = [], [], []
        for i in range(reps):
            seconds, digest = _timed(fusesnap_ingest, stub, path, f"bench-{i}")
            ingest.append(seconds)
            read.append(_timed_read(functools.partial(fusesnap_read, stub), digest, landing,
                                    "fusesnap"))
            small += small_reads(stub, digest, path)
            stub.Delete(cpb.DeleteContentRequest(digest=str(digest)))
        channel.close()
        return {"ingest": ingest, "read": read, "small_read": small, "digest": [digest]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def run_containerd(work: Path, path: Path, reps: int, landing: Landing) -> dict[str, Any] | str:
    if not shutil.which("containerd") or not shutil.which("ctr"):
        return "containerd and ctr are not installed (Debian package containerd)"
    if os.getuid() != 0:
        return "a private containerd needs root"
    root, state, sock = work / "cd-root", work / "cd-state", work / "containerd.sock"
    config = work / "containerd.toml"
    config.write_text(f'version = 2\nroot = "{root}"\nstate = "{state}"\n'
                      f'[grpc]\n  address = "{sock}"\n'
                      '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n')
    log = open(work / "containerd.log", "wb")
    proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    ctr = ["ctr", "--address", str(sock), "--namespace", "bench"]
    try:
        _wait_for(sock, proc, "containerd")
        channel = open_channel(str(sock))
        stub = ContentClient(channel)
        ingest, read, small = [], [], []
        for i in range(reps):
            with open(path, "rb") as f:
                seconds, _ = _timed(subprocess.run, [*ctr, "content", "ingest", f"bench-{i}"],
                                    stdin=f, check=True)
            ingest.append(seconds)
            digest = subprocess.run([*ctr, "content", "ls", "-q"], capture_output=True,
                                    text=True, check=True).stdout.split()[0]

            def get(digest: str, landing: Landing) -> None:
                with subprocess.Popen([*ctr, "content", "get", digest],
                                      stdout=subprocess.PIPE) as p:
                    assert p.stdout is not None
                    while n := os.readv(p.stdout.fileno(), [landing.view[landing.received:]]):
                        landing.received += n

            read.append(_timed_read(get, digest, landing, "containerd"))
            small += small_reads(stub, digest, path, (("containerd-namespace", "bench"),))
            subprocess.run([*ctr, "content", "rm", digest], check=True, capture_output=True)
        channel.close()
        return {"ingest": ingest, "read": read, "small_read": small}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _latency(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (f"{ordered[len(ordered) // 2] * 1e3:.2f} / "
            f"{ordered[len(ordered) * 9 // 10] * 1e3:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-containerd", action="store_true",
                        help="skip the containerd anchor (for quick iterations)")
    args = parser.parse_args()
    reuse_megabyte_buffers()  # the client's chunks too, as the daemon does
    mib = args.size_mib
    with tempfile.TemporaryDirectory(prefix="fusesnap-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        path = work / "blob"
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(CHUNK))
        sums = [sha256sum(path) for _ in range(args.reps)]
        landing = Landing(mib * CHUNK)
        expected = sums[0][1]
        fs = run_fusesnap(work, path, args.reps, landing)
        if fs["digest"][0] != expected:
            raise RuntimeError("fusesnap committed a different digest than sha256sum computed")
        cd = ("not run (--no-containerd)" if args.no_containerd
              else run_containerd(work, path, args.reps, landing))

    def rate(seconds: list[float]) -> str:
        rates = [mib / s for s in seconds]
        return f"{statistics.median(rates):8.0f} ({min(rates):.0f}–{max(rates):.0f})"

    rows = [("sha256sum (hashing limit)", rate([s for s, _ in sums]), "")]
    rows.append(("fusesnap Content", rate(fs["ingest"]), rate(fs["read"])))
    if isinstance(cd, str):
        rows.append(("containerd 1.6 content (ctr)", f"skipped: {cd}", ""))
    else:
        rows.append(("containerd 1.6 content (ctr)", rate(cd["ingest"]), rate(cd["read"])))
    print(f"content benchmark: {mib} MiB blob, {args.reps} runs, MiB/s median (min–max)")
    print(f"{'':30}{'ingest':>22}{'read':>22}")
    for name, ingest, read in rows:
        print(f"{name:30}{ingest:>22}{read:>22}")
    print(f"\n{SMALL_READS} reads of {SMALL_READ >> 10} KiB per run, one Read RPC each (as"
          " containerd's applier reads a proxy store),\nthe same Python client for both;"
          " milliseconds per read, p50 / p90 over all runs")
    print(f"{'fusesnap Content':30}{_latency(fs['small_read']):>22}")
    if not isinstance(cd, str):
        print(f"{'containerd 1.6 content':30}{_latency(cd['small_read']):>22}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "size_mib": mib, "sha256sum": [s for s, _ in sums], "fusesnap": fs,
            "containerd": cd}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
