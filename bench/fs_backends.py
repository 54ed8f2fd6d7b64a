"""The four backends of the filesystem benchmark (bench/fs.py): how each one
gives a fresh writable view of a stack of layers, and takes it down.

* native: the merged tree itself (workloads that write get a fresh copy of
  the paths they write, made before the clock starts);
* overlay: kernel overlayfs over the layer directories, fresh upper and work
  directories per view (mount(2) from this process, lowerdirs relative to the
  stack's directory as containerd passes them);
* fuse-overlayfs: Debian's fuse-overlayfs over the same directories, a fresh
  process, upper and work directory per view;
* fusesnap: a daemon of this checkout (`python -m fusesnap serve --role proxy`)
  holding the layers as a chain of committed snapshots (applied by its Applier
  service); a view is a new active snapshot (Prepare) on the top one.

`View.open_seconds` is the time to make the view available: the mount (or
Prepare) and a stat of its root.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from fs_fixture import Stack, copy_paths, layer_tar, ops_tar

from fusesnap.client.archive import ArchiveDescriptor
from fusesnap.client.importer import Client, apply_into
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import debug_pb2
from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.debug_pb2_grpc import DebugStub
from fusesnap.pb.snapshots_pb2_grpc import SnapshotsStub

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
OVL_MAX_STACK = 500
"""Kernel overlayfs refuses more lower layers (fs/overlayfs/params.h)."""
PAGE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 60.0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def drop_caches() -> str | None:
    """Write back and drop the page, dentry and inode caches; None if done,
    else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        return f"cannot drop caches ({e.strerror}; needs root)"
    return None


@dataclass
class View:
    root: Path
    open_seconds: float | None
    """Time to make the view available; None for native (nothing to make)."""
    handle: str = ""
    """The backend's own name for it (scratch directory, mountpoint, snapshot key)."""


class Backend:
    name = ""

    def skip(self, stack: Stack) -> str | None:
        """Why this backend cannot give a view of `stack`, or None."""
        return None

    def open(self, stack: Stack, writes: tuple[str, ...]) -> View:
        """A fresh writable view of `stack`; `writes` are the paths the workload
        will change (native copies them first)."""
        raise NotImplementedError

    def close(self, view: View) -> None:
        raise NotImplementedError

    def make_cold(self) -> None:
        """Forget what the backend caches itself (beyond the kernel's caches)."""

    def stop(self) -> None:
        """Release everything the backend holds (end of the run)."""


class Native(Backend):
    name = "native"

    def __init__(self, work: Path) -> None:
        self.scratch = work / "native-rw"
        self.n = 0

    def open(self, stack: Stack, writes: tuple[str, ...]) -> View:
        if not writes:
            return View(stack.native, None)
        self.n += 1
        dest = self.scratch / str(self.n)
        dest.mkdir(parents=True)
        copy_paths(stack.native, dest, writes)
        return View(dest, None, str(dest))

    def close(self, view: View) -> None:
        if view.handle:
            shutil.rmtree(view.handle)


def _lowerdir(stack: Stack) -> str:
    """Top layer first, names relative to the stack's directory."""
    return ":".join(layer.name for layer in reversed(stack.layers))


class _Mounted(Backend):
    """Shared by the two overlay backends: a run directory per view."""

    def __init__(self, work: Path) -> None:
        self.runs = work / f"{self.name}-runs"
        self.n = 0

    def _dirs(self) -> tuple[Path, Path, Path, Path]:
        self.n += 1
        run = self.runs / str(self.n)
        upper, workdir, mnt = run / "upper", run / "work", run / "mnt"
        for d in (upper, workdir, mnt):
            d.mkdir(parents=True)
        return run, upper, workdir, mnt


class KernelOverlay(_Mounted):
    name = "overlay"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.unusable = self._probe(work / "overlay-probe")

    def _probe(self, d: Path) -> str | None:
        if os.geteuid() != 0:
            return "mounting overlayfs needs root here"
        for sub in ("l", "u", "w", "m"):
            (d / sub).mkdir(parents=True)
        try:
            self._mount(d, "l", d / "u", d / "w", d / "m")
        except OSError as e:
            return f"overlay mount failed: {e}"
        finally:
            _libc.umount2(str(d / "m").encode(), 0)
            shutil.rmtree(d, ignore_errors=True)
        return None

    @staticmethod
    def _mount(base: Path, lower: str, upper: Path, workdir: Path, mnt: Path) -> None:
        data = f"lowerdir={lower},upperdir={upper},workdir={workdir}".encode()
        if len(data) >= PAGE:
            raise OSError(f"mount data of {len(data)} bytes exceeds a page ({PAGE})")
        cwd = os.getcwd()
        os.chdir(base)
        try:
            if _libc.mount(b"overlay", str(mnt).encode(), b"overlay", 0, data) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.chdir(cwd)

    def skip(self, stack: Stack) -> str | None:
        if self.unusable:
            return self.unusable
        if len(stack.layers) > OVL_MAX_STACK:
            return f"kernel overlayfs stacks at most {OVL_MAX_STACK} lower layers"
        size = len(f"lowerdir={_lowerdir(stack)},upperdir={self.runs}/99999/upper,"
                   f"workdir={self.runs}/99999/work")
        if size >= PAGE:
            return f"mount data of {size} bytes exceeds a page"
        return None

    def open(self, stack: Stack, writes: tuple[str, ...]) -> View:
        run, upper, workdir, mnt = self._dirs()
        start = time.perf_counter()
        self._mount(stack.base, _lowerdir(stack), upper, workdir, mnt)
        os.stat(mnt)
        return View(mnt, time.perf_counter() - start, str(run))

    def close(self, view: View) -> None:
        if _libc.umount2(str(view.root).encode(), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"umount {view.root}: {os.strerror(err)}")
        shutil.rmtree(view.handle)


class FuseOverlayfs(_Mounted):
    name = "fuse-overlayfs"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.binary = shutil.which("fuse-overlayfs")

    def skip(self, stack: Stack) -> str | None:
        if self.binary is None:
            return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "/dev/fuse is not usable"
        return None

    def open(self, stack: Stack, writes: tuple[str, ...]) -> View:
        assert self.binary is not None
        run, upper, workdir, mnt = self._dirs()
        opts = f"lowerdir={_lowerdir(stack)},upperdir={upper},workdir={workdir}"
        start = time.perf_counter()
        # It forks into the background once the mount is up.
        proc = subprocess.run([self.binary, "-o", opts, str(mnt)], cwd=stack.base,
                              capture_output=True, text=True)
        os.stat(mnt)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not os.path.ismount(mnt):
            raise RuntimeError(f"fuse-overlayfs did not mount: {proc.stderr.strip()}")
        return View(mnt, seconds, str(run))

    def close(self, view: View) -> None:
        subprocess.run(["fusermount3", "-u", str(view.root)], check=True, capture_output=True)
        shutil.rmtree(view.handle)


class Fusesnap(Backend):
    """One daemon for the whole run; `make_cold` restarts it."""

    name = "fusesnap"

    def __init__(self, work: Path) -> None:
        self.dir = work / "fusesnap"
        self.root = self.dir / "root"
        self.socket = self.dir / "fusesnap.sock"
        self.mountpoint = self.root / "mnt"
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.n = 0
        self.dir.mkdir(parents=True)
        self.start()

    # ------------------------------------------------------------- the daemon

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fusesnap", "--log-level", "WARNING", "serve",
                 "--root", str(self.root), "--socket", str(self.socket), "--role", "proxy"],
                stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.socket.exists() and os.path.ismount(self.mountpoint)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fusesnap did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT)
        self.snapshots = SnapshotsStub(self.channel)
        self.content = ContentStub(self.channel)
        self.debug = DebugStub(self.channel)
        self.client = Client(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                           capture_output=True)

    def make_cold(self) -> None:
        self.stop()
        self.start()

    def fuse_stats(self, reset: bool = False) -> debug_pb2.FuseStatsResponse:
        """The FUSE requests the daemon served since it started or the last
        reset (by opcode: count, total ns); with `reset`, it counts afresh."""
        return self.debug.FuseStats(debug_pb2.FuseStatsRequest(reset=reset))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # ------------------------------------------------------------- fixtures

    def apply_layer(self, tar: Path, name: str, parent: str) -> None:
        """Committed snapshot `name` on `parent` holding layer tar `tar`
        (through the content store and the Applier; the blob is deleted after)."""
        h = hashlib.sha256()
        with open(tar, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        desc = ArchiveDescriptor(LAYER_MEDIA_TYPE, "sha256:" + h.hexdigest(), tar.stat().st_size)
        self.client.put_blob(desc, lambda: open(tar, "rb"), {})
        apply_into(self.client, name, parent, desc, "")
        self.content.Delete(cpb.DeleteContentRequest(digest=desc.digest))

    def import_stack(self, stack: Stack, prefix: str, tmp: Path) -> list[str]:
        """Commit the layers of `stack` as chain `<prefix>-0` … (bottom first)."""
        names: list[str] = []
        tar = tmp / "layer.tar"
        for i, layer in enumerate(stack.layers):
            layer_tar(layer, tar)
            names.append(f"{prefix}-{i}")
            self.apply_layer(tar, names[-1], names[-2] if i else "")
            tar.unlink()
        return names

    def ops_chain(self, files: int, depths: tuple[int, ...], tmp: Path) -> dict[int, str]:
        """A chain whose bottom holds `files` files and whose other layers are
        empty; for each depth D, the snapshot that has D-1 parents (a snapshot
        prepared on it has D)."""
        tar = tmp / "ops.tar"
        ops_tar(tar, files)
        prefix = f"ops{files}"
        self.apply_layer(tar, f"{prefix}-0", "")
        tar.unlink()
        for i in range(1, max(depths)):
            key = f"{prefix}-{i}-work"
            self.snapshots.Prepare(spb.PrepareSnapshotRequest(key=key, parent=f"{prefix}-{i - 1}"))
            self.snapshots.Commit(spb.CommitSnapshotRequest(name=f"{prefix}-{i}", key=key))
        return {d: f"{prefix}-{d - 1}" for d in depths}

    # ------------------------------------------------------------- views

    def open(self, stack: Stack, writes: tuple[str, ...]) -> View:
        self.n += 1
        key = f"run-{self.n}"
        start = time.perf_counter()
        resp = self.snapshots.Prepare(spb.PrepareSnapshotRequest(key=key, parent=stack.parent))
        root = Path(resp.mounts[0].source)
        os.stat(root)
        return View(root, time.perf_counter() - start, key)

    def close(self, view: View) -> None:
        self.snapshots.Remove(spb.RemoveSnapshotRequest(key=view.handle))
