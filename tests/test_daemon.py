"""The daemon's life cycle: start, serve, stop cleanly, survive kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import Daemon


def test_sigterm_unmounts_and_exits_zero(daemon: Daemon) -> None:
    assert os.path.ismount(daemon.mountpoint)
    assert daemon.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(daemon.mountpoint)
    assert not daemon.socket.exists()


def test_sigint_unmounts_and_exits_zero(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert not os.path.ismount(daemon.mountpoint)


def test_restart_after_kill_clears_stale_mount_and_keeps_snapshots(
    new_daemon: type[Daemon],
) -> None:
    d = new_daemon().start()
    base = d.prepare("base-key")
    (base / "dir").mkdir()
    (base / "dir" / "file").write_bytes(b"committed bytes")
    d.commit("base", "base-key")
    active = d.prepare("work", "base")
    with open(active / "written-before-kill", "wb") as f:
        f.write(b"x" * 100_000)
    (active / "dir" / "file").write_bytes(b"changed in the active layer")
    d.kill()
    try:
        os.stat(d.mountpoint)
        stale = False
    except OSError as e:
        stale = e.errno == 107
    assert stale, "a killed daemon leaves its mount behind"

    d2 = new_daemon(d.root, d.socket).start()
    assert "clearing stale mount" in d2.logs()
    assert (base / "dir" / "file").read_bytes() == b"committed bytes"
    assert (active / "dir" / "file").read_bytes() == b"changed in the active layer"
    assert (active / "written-before-kill").stat().st_size == 100_000
    assert (active / "written-before-kill").read_bytes() == b"x" * 100_000


def test_second_daemon_on_same_root_is_refused(daemon: Daemon, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusesnap", "serve", "--root", str(daemon.root),
         "--socket", str(tmp_path / "other.sock")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert f"another fusesnap is serving {daemon.root}" in proc.stderr
    assert os.path.ismount(daemon.mountpoint)
