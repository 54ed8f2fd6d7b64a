"""Service mode and `fusesnap` on PATH (issue 19, items 3 and 6).

The systemd units `make install-service` writes (systemd/install-service.sh)
pass `systemd-analyze verify`; the daemon tells $NOTIFY_SOCKET READY=1 only once
its mount and its gRPC socket answer, and STOPPING=1 at SIGTERM (the sd_notify
protocol of the units' Type=notify); under a real systemd the unit starts,
restarts after a crash and stops cleanly. `vagrant/provision.sh --link-only`
(the last step of `make run`) links `fusesnap` into ~/.local/bin once and never
over a file of someone else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.pb import snapshots_pb2 as spb
from fusesnap.pb import snapshots_pb2_grpc
from tests.conftest import Daemon, fuse_usable

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install-service.sh"
PROVISION = REPO / "vagrant" / "provision.sh"
VENV = Path(sys.prefix)
"""The virtual environment this suite runs from, whose fusesnap the units start."""


def _need_venv() -> None:
    if not (VENV / "bin" / "fusesnap").exists():
        pytest.skip(f"{VENV}/bin/fusesnap is missing: the suite does not run from a set-up venv")


def _install(tmp_path: Path, kind: str, venv: Path = VENV) -> tuple[Path, str]:
    """systemd/install-service.sh writing the `kind` unit into a directory of tmp_path:
    the unit's path and what the script printed."""
    unit_dir = tmp_path / f"units-{kind}"
    run = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "FUSESNAP_VENV": str(venv), "FUSESNAP_UNIT": kind,
                              "UNIT_DIR": str(unit_dir)})
    assert run.returncode == 0, run.stdout + run.stderr
    return unit_dir / "fusesnap.service", run.stdout


def _verify(unit: Path, kind: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian's systemd; `make test` installs it)")
    env = dict(os.environ)
    args = [analyze, "verify", str(unit)]
    if kind == "user":
        # A user manager needs a runtime directory, even only to verify.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.insert(1, "--user")
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("kind", ["system", "user"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, kind: str) -> None:
    _need_venv()
    unit, _ = _install(tmp_path, kind)
    text = unit.read_text()
    assert f'ExecStart="{VENV}/bin/fusesnap" serve\n' in text
    for line in ("Type=notify", "Restart=on-failure", "NotifyAccess=main"):
        assert f"\n{line}\n" in text
    assert "@FUSESNAP@" not in text
    check = _verify(unit, kind, tmp_path)
    # Warnings (an unknown key, a bad value) leave the status 0: none may be printed.
    assert check.returncode == 0 and not check.stdout + check.stderr, \
        check.stdout + check.stderr


def test_a_venv_path_with_a_space_and_a_percent_sign_is_quoted(tmp_path: Path) -> None:
    venv = tmp_path / "my 100% venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "fusesnap").symlink_to(shutil.which("true") or "/bin/true")
    unit, _ = _install(tmp_path, "system", venv)
    escaped = str(venv).replace("%", "%%")
    assert f'ExecStart="{escaped}/bin/fusesnap" serve\n' in unit.read_text()
    check = _verify(unit, "system", tmp_path)
    assert check.returncode == 0 and not check.stdout + check.stderr, \
        check.stdout + check.stderr


@pytest.mark.parametrize(("kind", "line"), [
    ("system", "systemctl daemon-reload && systemctl enable --now fusesnap"),
    ("user", "systemctl --user daemon-reload && systemctl --user enable --now fusesnap"),
])
def test_install_says_how_to_enable_and_a_second_run_changes_nothing(
        tmp_path: Path, kind: str, line: str) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "fusesnap").symlink_to(shutil.which("true") or "/bin/true")
    unit, first = _install(tmp_path, kind, venv)
    assert f"wrote {unit}" in first and first.rstrip().endswith(line), first
    before = unit.stat()
    _, second = _install(tmp_path, kind, venv)
    assert f"{unit} (ExecStart: {venv}/bin/fusesnap serve): nothing to do" in second, second
    assert unit.stat().st_mtime_ns == before.st_mtime_ns and unit.stat().st_ino == before.st_ino


def test_install_refuses_a_venv_without_fusesnap(tmp_path: Path) -> None:
    run = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "FUSESNAP_VENV": str(tmp_path / "none"),
                              "UNIT_DIR": str(tmp_path / "units")})
    assert run.returncode == 1
    assert "fusesnap is missing: run make setup (or make run) first" in run.stderr
    assert not (tmp_path / "units").exists()


# --- readiness: READY=1 and STOPPING=1 on $NOTIFY_SOCKET -------------------------------


def _answers(d: Daemon) -> None:
    """The mount is there and answers, and so does the gRPC socket (a Stat of a key
    that does not exist: NOT_FOUND is an answer)."""
    assert os.path.ismount(d.mountpoint)
    os.statvfs(d.mountpoint)
    with grpc.insecure_channel(f"unix:{d.socket}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Stat(spb.StatSnapshotRequest(snapshotter="fusesnap", key="none"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def _receive(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


@pytest.fixture
def notify_daemon(tmp_path: Path) -> Iterator[Daemon]:
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    d = Daemon(tmp_path / "root")
    yield d
    d.cleanup()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_once_the_mount_and_grpc_answer_and_stopping_at_sigterm(
        tmp_path: Path, notify_daemon: Daemon, abstract: bool) -> None:
    d = notify_daemon
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"fusesnap-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            sock.bind(address)
        with open(d.log, "ab") as log:
            d.proc = subprocess.Popen(d.command(), stdout=log, stderr=log,
                                      env={**os.environ, "NOTIFY_SOCKET": address})
        try:
            ready = _receive(sock, 30)
        except TimeoutError:
            pytest.fail(f"no notification in 30 s:\n{d.logs()}")
        # At the moment READY=1 arrives, both already answer.
        _answers(d)
        assert ready.splitlines() == ["READY=1", f"STATUS=serving on {d.socket}"], ready
        d.proc.send_signal(signal.SIGTERM)
        stopping = _receive(sock, 10)
        assert stopping.splitlines()[0] == "STOPPING=1", stopping
        assert d.proc.wait(timeout=30) == 0, d.logs()
        assert not os.path.ismount(d.mountpoint)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # nothing else


def test_without_notify_socket_nothing_is_sent_and_a_bad_one_is_only_logged(
        tmp_path: Path, notify_daemon: Daemon) -> None:
    d = notify_daemon
    d.start(env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    _answers(d)
    assert d.stop() == 0
    assert "cannot notify systemd (READY=1)" in d.logs()


# --- under a real systemd ---------------------------------------------------------------


def _real_systemd() -> str | None:
    """None if this machine runs systemd as PID 1 and this test may use it, else why not."""
    if not os.path.isdir("/run/systemd/system"):
        return "this machine does not run systemd (no /run/systemd/system: a container?)"
    if os.geteuid() != 0:
        return "the system unit is started as root"
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True,
                           text=True).stdout.strip()
    if state not in ("running", "degraded"):
        return f"systemd is {state or 'not answering'}"
    return None


def _show(name: str, prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-P", prop, name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_system_unit_starts_restarts_after_a_crash_and_stops_under_systemd(
        tmp_path: Path) -> None:
    why = _real_systemd()
    if why:
        pytest.skip(why)
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    _need_venv()
    unit, _ = _install(tmp_path, "system")
    root, sock = tmp_path / "root", tmp_path / "fusesnap.sock"
    text = unit.read_text().replace("FUSESNAP_ROOT=/var/lib/fusesnap", f"FUSESNAP_ROOT={root}")
    text = text.replace("FUSESNAP_SOCKET=/run/fusesnap/fusesnap.sock", f"FUSESNAP_SOCKET={sock}")
    name = f"fusesnap-test-{uuid.uuid4().hex[:8]}.service"
    runtime_unit = Path("/run/systemd/system") / name
    runtime_unit.write_text(text)
    d = Daemon(root, sock)
    try:
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
        # Type=notify: `start` returns once READY=1 came.
        subprocess.run(["systemctl", "start", name], check=True, timeout=120)
        assert _show(name, "ActiveState") == "active"
        _answers(d)
        first = int(_show(name, "MainPID"))
        os.kill(first, signal.SIGKILL)  # a crash: Restart=on-failure
        deadline = time.monotonic() + 60
        while True:
            pid = int(_show(name, "MainPID") or 0)
            if pid not in (0, first) and _show(name, "ActiveState") == "active":
                break
            assert time.monotonic() < deadline, "not restarted within 60 s"
            time.sleep(0.2)
        _answers(d)  # the stale mount of the killed daemon was cleared
        subprocess.run(["systemctl", "stop", name], check=True, timeout=60)
        assert _show(name, "ActiveState") == "inactive"  # not "failed": it exited 0
        assert not os.path.ismount(d.mountpoint)
    finally:
        subprocess.run(["systemctl", "stop", name], capture_output=True, timeout=60)
        runtime_unit.unlink()
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=60)
        subprocess.run(["systemctl", "reset-failed", name], capture_output=True, timeout=60)
        d.cleanup()


# --- fusesnap on PATH: the link in ~/.local/bin ----------------------------------------


def _link(home: Path, venv: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROVISION), "--link-only"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "HOME": str(home),
                                           "FUSESNAP_VENV": str(venv), "PATH": path})


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in virtual environment: only its bin/fusesnap matters."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "fusesnap").write_text("#!/bin/sh\necho fusesnap from the venv\n")
    (venv / "bin" / "fusesnap").chmod(0o755)
    return venv


def test_link_is_made_once_and_says_how_to_put_it_on_path(tmp_path: Path, venv: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    link, target = home / ".local" / "bin" / "fusesnap", venv / "bin" / "fusesnap"
    first = _link(home, venv, os.environ["PATH"])
    assert first.returncode == 0, first.stderr
    assert os.readlink(link) == str(target)
    assert first.stdout == (f"provision: {link} -> {target}: linked; not on PATH: "
                            'export PATH="$HOME/.local/bin:$PATH" (and in ~/.profile)\n')
    made = link.lstat()
    # A new shell with ~/.local/bin on PATH finds it.
    path = f"{home}/.local/bin:{os.environ['PATH']}"
    second = _link(home, venv, path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"provision: {link} -> {target}: nothing to do\n"
    assert (link.lstat().st_ino, link.lstat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    found = subprocess.run(["sh", "-c", "fusesnap"], capture_output=True, text=True,
                           env={"HOME": str(home), "PATH": path})
    assert found.stdout == "fusesnap from the venv\n"


@pytest.mark.parametrize("foreign", ["file", "other link"])
def test_link_leaves_a_foreign_fusesnap_alone(tmp_path: Path, venv: Path, foreign: str) -> None:
    home = tmp_path / "home"
    bin_dir = home / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    theirs = bin_dir / "fusesnap"
    if foreign == "file":
        theirs.write_text("#!/bin/sh\necho another fusesnap\n")
    else:
        theirs.symlink_to(tmp_path / "elsewhere" / "fusesnap")
    before = (theirs.lstat().st_ino, theirs.lstat().st_mtime_ns)
    run = _link(home, venv, f"{bin_dir}:{os.environ['PATH']}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"provision: {theirs} exists and is not a link to "
                                 f"{venv}/bin/fusesnap: left alone"), run.stdout
    assert (theirs.lstat().st_ino, theirs.lstat().st_mtime_ns) == before


def test_the_venv_fusesnap_runs_from_a_new_shell() -> None:
    """The console script's shebang names the venv's own Python, so it runs with a
    PATH that holds no virtual environment (the system's Python lacks grpc)."""
    _need_venv()
    script = VENV / "bin" / "fusesnap"
    shebang = script.read_text().splitlines()[0]
    assert shebang.startswith(f"#!{VENV}/bin/python"), shebang
    run = subprocess.run(["env", "-i", "HOME=/nonexistent", "PATH=/usr/bin:/bin", "sh", "-c",
                          f"'{script}' --version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("fusesnap "), run.stdout + run.stderr
