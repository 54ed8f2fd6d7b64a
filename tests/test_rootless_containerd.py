"""Issue 18, part 3: rootless containerd with fusesnap as its proxy snapshotter
and content store, started by scripts/rootless-containerd as the suite's
ordinary user with real subordinate ranges: Debian's rootlesskit, containerd
1.6, runc and a real fusesnap daemon (`serve --role proxy`) inside it.

Through `ctr` (run in rootlesskit's namespaces by the script's `nsenter`) an
image is imported into fusesnap; a container shows a file of uid 1000 as uid
1000 (not 65534) and reads it as that user, writes as root and as uid 33, and
the host store holds only plain files of the user; `ctr images rm --sync`
after the container's removal leaves fusesnap with no snapshot and no blob.
SIGTERM, and SIGINT to the script's process group (a terminal's Ctrl-C), stop
a running container's task, containerd and fusesnap in that order, and leave
no process in the namespaces. Each bad input is one line and makes nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import oci
from tests.containerd_env import CtrError
from tests.rootless_env import (  # fixtures user, ranged, workdir
    REPO,
    SYSTEM_PYTHON,
    as_user,
    assert_only_users_plain_files,
    fusesnap_cli,
    rangeless_user,
)

pytestmark = pytest.mark.rootless

SCRIPT = REPO / "scripts" / "rootless-containerd"
TOOLS = {"rootlesskit": "rootlesskit", "containerd": "containerd", "ctr": "containerd",
         "containerd-shim-runc-v2": "containerd", "runc": "runc", "nsenter": "util-linux"}
NAME = "fusesnap.test/rootless-containerd:1"
# Where cgroups are not delegated to the user (here: cgroup v1), runc may make
# no cgroup: ctr must ask for none and set no CPU shares (its default, 1024,
# needs one). The script says so when it starts.
NO_CGROUP = ("--cgroup", "", "--cpu-shares", "0")


def image() -> oci.Image:
    """busybox, and a layer with users 33 and 1000, a file only uid 1000 may
    read and a directory of uid 33."""
    return oci.Image(NAME, [oci.busybox_layer(), oci.Layer([
        oci.Dir("etc"),
        oci.File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                               b"www-data:x:33:33:www-data:/www:/bin/sh\n"
                               b"user:x:1000:1000:user:/home/user:/bin/sh\n"),
        oci.Dir("data"),
        oci.File("data/owned", b"of uid 1000\n", 0o600, 1000, 1000),
        oci.Dir("www", 0o755, 33, 33),
    ])])


@dataclass
class Stack:
    """The script's run: its process, its --dir, the user, and its namespaces
    (inode links of rootlesskit's child) to look for leftovers by."""
    proc: subprocess.Popen[bytes]
    dir: Path
    user: pwd.struct_passwd
    log: Path
    namespaces: dict[str, str]

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`ctr ARGS…` in the script's namespaces, as the user."""
        proc = subprocess.run([str(SCRIPT), "--dir", str(self.dir), "nsenter", "ctr", *args],
                              capture_output=True, text=True, timeout=timeout,
                              **as_user(self.user))
        if check and proc.returncode != 0:
            raise CtrError(proc, (self.dir / "containerd.log").read_text(errors="replace"))
        return proc

    def fusesnap(self, *args: str) -> str:
        """`fusesnap ARGS…` from outside, on the daemon's socket."""
        return fusesnap_cli(self.user, self.dir / "fusesnap.sock", *args).stdout

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> None:
        """Send `sig` to the script, or with `group` to its process group, as a
        terminal's Ctrl-C does."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def leftovers(self) -> list[str]:
        """Processes still in the script's user or mount namespace."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if any(os.readlink(entry / "ns" / kind) == link
                       for kind, link in self.namespaces.items()):
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return found


def _unavailable() -> str | None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"missing Debian packages {', '.join(missing)} (make setup installs them)"
    return None


def _env(user: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    """as_user's environment, with the fusesnap command the script runs."""
    return {**as_user(user)["env"], "FUSESNAP": f"{SYSTEM_PYTHON} -m fusesnap", **extra}


def _start(user: pwd.struct_passwd, dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([str(SCRIPT), "--dir", str(dir)], stdout=out, stderr=out,
                                start_new_session=True, **{**as_user(user), "env": _env(user)})


@pytest.fixture
def stack(ranged: pwd.struct_passwd, workdir: Path) -> Iterator[Stack]:
    why = _unavailable()
    if why:
        pytest.skip(why)
    log = workdir / "script.log"
    proc = _start(ranged, workdir / "rc", log)
    deadline = time.monotonic() + 90
    while b": ready: " not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                           for p in [log, *sorted((workdir / "rc").glob("*.log"))] if p.exists())
            pytest.fail(f"scripts/rootless-containerd did not start:{logs}")
        time.sleep(0.1)
    child = Path((workdir / "rc" / "rootlesskit" / "child_pid").read_text().strip())
    namespaces = {kind: os.readlink(Path("/proc") / child / "ns" / kind)
                  for kind in ("user", "mnt")}
    assert namespaces["user"] != os.readlink("/proc/self/ns/user")
    s = Stack(proc, workdir / "rc", ranged, log, namespaces)
    try:
        yield s
    finally:
        s.stop()


RUN = """
stat -c 'owned %u:%g %a' /data/owned
su -s /bin/sh user -c 'echo "read as $(id -u): $(cat /data/owned)"'
echo by root > /by-root && stat -c 'by-root %u:%g' /by-root
su -s /bin/sh www-data -c 'echo by 33 > /www/by-33' && stat -c 'by-33 %u:%g' /www/by-33
su -s /bin/sh www-data -c 'echo no > /by-33' 2>/dev/null || echo '33 may not write /'
"""


def test_rootless_containerd_imports_runs_as_several_users_and_collects_into_fusesnap(
        stack: Stack, workdir: Path) -> None:
    started = time.monotonic()
    out = stack.log.read_text()
    cgroup_hint = 'ctr run --cgroup "" --cpu-shares 0' in out
    built = oci.write_archive(image(), workdir / "image.tar")

    stack.ctr("images", "import", "--snapshotter", "fusesnap", str(built.path))
    # The blobs and the layers went to fusesnap: its own CLI lists them.
    content = stack.fusesnap("content", "ls")
    assert all(blob in content for blob in built.blobs), content
    snapshots = stack.fusesnap("snapshots", "ls")
    assert all(chain in snapshots for chain in built.chain_ids), snapshots

    ran = stack.ctr("run", *NO_CGROUP, "--snapshotter", "fusesnap", NAME, "c1",
                    "sh", "-c", RUN)
    assert ran.stdout.splitlines() == [
        "owned 1000:1000 600",
        "read as 1000: of uid 1000",
        "by-root 0:0",
        "by-33 33:33",
        "33 may not write /",
    ], ran.stdout + ran.stderr
    # What the container wrote is in the store as plain files of the user.
    assert_only_users_plain_files(stack.dir / "fusesnap", stack.user)

    stack.ctr("containers", "rm", "c1")
    stack.ctr("images", "rm", "--sync", NAME)
    assert stack.ctr("images", "ls", "-q").stdout.split() == []
    assert stack.fusesnap("snapshots", "ls").split() == ["KEY", "PARENT", "KIND"]
    assert stack.fusesnap("content", "ls").split() == ["DIGEST", "SIZE", "AGE", "LABELS"]

    # Ctrl-C reaches the script's whole process group (rootlesskit forwards
    # it; what runs inside is in a process group of its own): the script
    # stops the rest in order, a running container first.
    run_detached(stack, built)
    stack.stop(signal.SIGINT, group=True)
    assert_stopped_cleanly(stack)
    if not cgroup_hint:
        print("cgroups are delegated here: the script gave no --cgroup hint")
    print(f"rootless containerd round trip: {time.monotonic() - started:.1f} s")


def run_detached(stack: Stack, built: oci.Built) -> None:
    """A container `sleeper` running `sleep 600` from `built`, imported again."""
    stack.ctr("images", "import", "--snapshotter", "fusesnap", str(built.path))
    stack.ctr("run", "-d", *NO_CGROUP, "--snapshotter", "fusesnap", NAME, "sleeper",
              "sleep", "600")
    assert "RUNNING" in stack.ctr("tasks", "ls").stdout
    assert any("sleep 600" in p for p in stack.leftovers())


def assert_stopped_cleanly(stack: Stack) -> None:
    """Exit 0 and the last line, fusesnap stopped, the running task killed and
    deleted before containerd stopped, no process left in the namespaces."""
    assert stack.proc.returncode == 0, stack.log.read_text()
    assert stack.log.read_text().splitlines()[-1] == "rootless-containerd: stopped"
    assert (stack.dir / "fusesnap.log").read_text().splitlines()[-1].endswith(
        "INFO fusesnap: stopped")
    assert 'msg="shim disconnected" id=sleeper' in (stack.dir / "containerd.log").read_text()
    assert stack.leftovers() == []
    assert_only_users_plain_files(stack.dir / "fusesnap", stack.user)


def test_sigterm_stops_a_running_container_containerd_and_fusesnap(
        stack: Stack, workdir: Path) -> None:
    run_detached(stack, oci.write_archive(image(), workdir / "image.tar"))
    stack.stop(signal.SIGTERM)
    assert_stopped_cleanly(stack)


# --------------------------------------------------------------------------- bad input


def _refused(user: pwd.struct_passwd, dir: Path, *args: str,
             env: dict[str, str] | None = None,
             nsenter: bool = False) -> str:
    """The script fails with one line and makes nothing; the line."""
    command = [str(SCRIPT), "--dir", str(dir), *(["nsenter", "true"] if nsenter else args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          **{**as_user(user), "env": env or _env(user)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert lines[0].startswith("rootless-containerd: ")
    assert not dir.exists()
    return lines[0]


def test_root_is_told_it_is_for_an_ordinary_user(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("the refusal of root needs root")
    line = _refused(pwd.getpwuid(0), tmp_path / "rc")
    assert "this is for an ordinary user, not root" in line


def test_missing_rootlesskit_and_containerd_are_named_with_the_packages(
        ranged: pwd.struct_passwd, workdir: Path) -> None:
    # A PATH of everything in /usr/bin and /usr/sbin but the two.
    bin = workdir / "bin"
    bin.mkdir()
    for top in ("/usr/sbin", "/usr/bin"):
        for tool in Path(top).iterdir():
            if tool.name not in ("rootlesskit", "containerd", "ctr", "containerd-shim-runc-v2") \
                    and not (bin / tool.name).exists():
                (bin / tool.name).symlink_to(tool)
    line = _refused(ranged, workdir / "rc", env=_env(ranged, PATH=str(bin)))
    assert "rootlesskit, containerd, ctr, containerd-shim-runc-v2 not found" in line
    assert line.endswith("apt-get install rootlesskit containerd")


def test_a_user_without_subordinate_ranges_is_told_the_usermod_command(
        user: pwd.struct_passwd, workdir: Path) -> None:
    if _unavailable():
        pytest.skip(_unavailable())
    other = rangeless_user()
    os.chown(workdir, other.pw_uid, other.pw_gid)
    line = _refused(other, workdir / "rc")
    assert f"{other.pw_name} has no subordinate uids (65536 of them) in /etc/subuid" in line
    assert (f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {other.pw_name}"
            in line)


def test_nsenter_without_a_running_stack_says_to_start_it(
        ranged: pwd.struct_passwd, workdir: Path) -> None:
    line = _refused(ranged, workdir / "rc", nsenter=True)
    assert "nothing runs on" in line and "start" in line


def test_unknown_arguments_get_the_usage_line(ranged: pwd.struct_passwd, workdir: Path) -> None:
    assert "usage: " in _refused(ranged, workdir / "rc", "--bogus")
    assert "--net tun: use host or slirp4netns" in _refused(ranged, workdir / "rc", "--net", "tun")


def test_a_fusesnap_that_cannot_start_is_named_with_its_log(
        ranged: pwd.struct_passwd, workdir: Path) -> None:
    why = _unavailable()
    if why:
        pytest.skip(why)
    broken = workdir / "fusesnap"
    broken.write_text("#!/bin/sh\necho no daemon today >&2\nexit 1\n")
    broken.chmod(0o755)
    env = _env(ranged, FUSESNAP=str(broken))
    proc = subprocess.run([str(SCRIPT), "--dir", str(workdir / "rc")], capture_output=True,
                          text=True, timeout=60, **{**as_user(ranged), "env": env})
    assert proc.returncode == 1
    log = workdir / "rc" / "fusesnap.log"
    assert f"rootless-containerd: fusesnap exited while starting (its log: {log})" \
        in proc.stderr.splitlines()
    assert "no daemon today" in proc.stderr
    assert not (workdir / "rc" / "containerd.log").exists()
