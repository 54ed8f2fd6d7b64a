"""A private containerd that uses fusesnap as its snapshotter and content store.

:class:`Containerd` runs Debian's ``/usr/bin/containerd`` (1.6) on a root, state
directory and socket of its own, with a version 2 config that declares one
fusesnap socket both as a ``snapshot`` proxy plugin (``fusesnap``) and as a
``content`` proxy plugin (``fusesnap-content``) and disables the built-in
content store, as spec §9.1 says; every plugin that needs a network or a special
filesystem is disabled, and CRI too unless a :class:`Cri` is given (then
containerd's CRI plugin serves on the same socket, with fusesnap as its
snapshotter). :meth:`Containerd.ctr` runs ``ctr`` against
it. Without a fusesnap socket it is a plain containerd instead: its built-in
content store and ``native`` snapshotter, no proxy plugins (where the tests
import what fusesnap exports). :meth:`Containerd.stop` leaves nothing behind: tasks, shims, runc
containers, shim sockets and mounts under its directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONTAINERD = "/usr/bin/containerd"
TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "umoci")
NAMESPACE = "test"
SNAPSHOTTER = "fusesnap"
NATIVE = "native"
CONTENT_PLUGIN = "fusesnap-content"
START_TIMEOUT = 30.0
SHIM_SOCKETS = Path("/run/containerd/s")  # fixed in containerd 1.6 (runtime/v2/shim)

BUILTIN_CONTENT = "io.containerd.content.v1.content"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_NAMESPACE = "k8s.io"  # where containerd's CRI plugin keeps its images and containers
DISABLED = [
    BUILTIN_CONTENT,  # spec §9.1: our proxy must be the only content store
    CRI_PLUGIN,
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]


def unavailable() -> str | None:
    """None if a private containerd can run here, else why not."""
    if os.geteuid() != 0:
        return "containerd tests need root (containerd, runc and bind mounts)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (./vagrant/provision.sh installs them)"
    return None


@dataclass(frozen=True)
class Cri:
    """containerd's CRI plugin, enabled, with these settings."""

    sandbox_image: str
    """The image of every pod's sandbox ("pause") container: it must keep
    running (its command never ends)."""
    plain_http: tuple[str, ...] = ()
    """Registry hosts (HOST:PORT) that CRI reaches over plain HTTP."""
    snapshot_annotations: bool = True
    """Whether CRI's pulls pass each layer's annotations to the snapshotter's
    Prepare as labels (`disable_snapshot_annotations = false`): what makes a
    remote snapshotter's lazy layers possible."""


class CtrError(AssertionError):
    """A failed `ctr`, with containerd's last error and warning lines."""

    def __init__(self, proc: subprocess.CompletedProcess[str], log: str) -> None:
        problems = [line for line in log.splitlines()
                    if "level=error" in line or "level=warning" in line][-10:]
        super().__init__(f"{' '.join(proc.args)} exited with {proc.returncode}\n"
                         f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                         "containerd log:\n" + "\n".join(problems))
        self.proc = proc


class Containerd:
    """One containerd process on `base` (its root, state, socket, config, log)."""

    def __init__(self, base: Path, fusesnap_socket: Path | None,
                 namespace: str = NAMESPACE, log_level: str = "debug",
                 cri: Cri | None = None) -> None:
        self.base = base
        self.log_level = log_level  # debug for the tests' failure reports; a benchmark logs less
        self.fusesnap_socket = fusesnap_socket
        self.snapshotter = SNAPSHOTTER if fusesnap_socket is not None else NATIVE
        self.cri = cri
        self.namespace = CRI_NAMESPACE if cri is not None else namespace
        self.root = base / "root"
        self.state = base / "state"
        self.runc_root = base / "runc"
        self.socket = base / "containerd.sock"
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        plugins = [p for p in DISABLED
                   if (self.fusesnap_socket is not None or p != BUILTIN_CONTENT)
                   and (self.cri is None or p != CRI_PLUGIN)]
        disabled = ", ".join(f'"{p}"' for p in plugins)
        return f"""\
version = 2
root = "{self.root}"
state = "{self.state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""
  level = "{self.log_level}"

[metrics]
  address = ""

# The default (0.02) schedules a collection 49 collection-times after the last
# one, seconds after a deletion; 0.5 makes it follow deletions sooner, and
# deletion_threshold = 1 schedules one after every deletion, however long the
# last one took on a loaded machine.
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.5
  deletion_threshold = 1
{self._proxy_plugins()}{self._cri_plugin()}"""

    def _proxy_plugins(self) -> str:
        if self.fusesnap_socket is None:
            return ""
        return f"""
[proxy_plugins]
  [proxy_plugins.{SNAPSHOTTER}]
    type = "snapshot"
    address = "{self.fusesnap_socket}"
  [proxy_plugins.{CONTENT_PLUGIN}]
    type = "content"
    address = "{self.fusesnap_socket}"
"""

    def _cri_plugin(self) -> str:
        """CRI's section: host-network pods only (no CNI plugins are installed:
        the CNI directories are empty), runc's state under `runc_root` as
        for `ctr run`, and the `plain_http` registries as mirrors of
        themselves over http://."""
        if self.cri is None:
            return ""
        cri = f'plugins."{CRI_PLUGIN}"'
        mirrors = "".join(f"""
[{cri}.registry.mirrors."{host}"]
  endpoint = ["http://{host}"]
""" for host in self.cri.plain_http)
        return f"""
[{cri}]
  sandbox_image = "{self.cri.sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  # A sandbox asks for oom_score_adj -998, which lowering needs CAP_SYS_RESOURCE;
  # where containerd lacks it (a container, as CI's machines may be), runc
  # fails. Restricted, no process gets a lower one than containerd's own.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "{self.snapshotter}"
  disable_snapshot_annotations = {str(not self.cri.snapshot_annotations).lower()}
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{self.runc_root}"

[{cri}.cni]
  bin_dir = "{self.base / 'cni' / 'bin'}"
  conf_dir = "{self.base / 'cni' / 'conf'}"
{mirrors}"""

    def start(self) -> Containerd:
        dirs = [self.root, self.state, self.runc_root]
        if self.cri is not None:
            dirs += [self.base / "cni" / "bin", self.base / "cni" / "conf"]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config)],
                                         stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n"
                                   f"{self.logs()[-4000:]}")
            if self.socket.exists() and self.ctr("version", check=False, timeout=5).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.logs()[-4000:]}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`ctr --address SOCKET -n NAMESPACE ARGS…`; raises CtrError on failure if `check`."""
        proc = subprocess.run(["ctr", "--address", str(self.socket), "-n", self.namespace, *args],
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise CtrError(proc, self.logs())
        return proc

    def run(self, image: str, cid: str, *command: str, options: tuple[str, ...] = (),
            rm: bool = True, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr run [OPTIONS] IMAGE CID COMMAND…` on its snapshotter, runc's state under `base`;
        with `rm`, the container and its snapshot are removed when it exits."""
        return self.ctr("run", *(["--rm"] if rm else []), "--snapshotter", self.snapshotter,
                        "--runc-root", str(self.runc_root), *options, image, cid, *command,
                        timeout=timeout, check=check)

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop containerd and remove everything its containers left behind;
        safe to call on a half-started or already stopped instance."""
        if self.proc is not None and self.proc.poll() is None:
            self._remove_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._shims():
            _kill(pid)
        self._remove_runc_containers()
        for cid in self._task_ids():
            sock = hashlib.sha256(f"{self.socket}/{self.namespace}/{cid}".encode()).hexdigest()
            (SHIM_SOCKETS / sock).unlink(missing_ok=True)
        self._unmount_all()

    def _remove_containers(self) -> None:
        try:
            for tid in self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split():
                self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", tid, check=False, timeout=10)
                self.ctr("tasks", "rm", "-f", tid, check=False, timeout=20)
            for cid in self.ctr("containers", "ls", "-q", check=False, timeout=10).stdout.split():
                self.ctr("containers", "rm", cid, check=False, timeout=20)
        except subprocess.TimeoutExpired:
            pass  # what is left is killed below

    def _shims(self) -> list[int]:
        """Pids of the shims this containerd started (they outlive it by design)."""
        pids = []
        needle = f"-address\0{self.socket}\0".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                pids.append(int(entry.name))
        return pids

    def _remove_runc_containers(self) -> None:
        if not self.runc_root.exists():
            return
        for ns_root in self.runc_root.iterdir():
            runc = ["runc", "--root", str(ns_root)]
            listed = subprocess.run([*runc, "list", "-q"], capture_output=True, text=True,
                                    timeout=10)
            for cid in listed.stdout.split():
                subprocess.run([*runc, "kill", cid, "KILL"], capture_output=True, timeout=10)
                subprocess.run([*runc, "delete", "-f", cid], capture_output=True, timeout=20)

    def _task_ids(self) -> list[str]:
        tasks = self.state / "io.containerd.runtime.v2.task" / self.namespace
        return [p.name for p in tasks.iterdir()] if tasks.is_dir() else []

    def _unmount_all(self) -> None:
        """Lazily unmount every mount at or under `base`, deepest first."""
        for target in sorted(_mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=10)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base.resolve())
    targets = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                targets.append(target)
    return targets
