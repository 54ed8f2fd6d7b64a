"""The daemon's life cycle: start, serve, stop cleanly, survive kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fusesnap.store.db import GROUP_WINDOW
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
        os.fsync(f.fileno())
    with open(active / "dir" / "file", "r+b") as f:  # a copy-up
        f.write(b"changed in the active layer")
        os.fsync(f.fileno())
    d.kill()
    try:
        os.statvfs(d.mountpoint)  # reaches the daemon; a stat may come from the cache
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


def _restarted_after_kill(d: Daemon, new_daemon: type[Daemon]) -> Daemon:
    d.kill()
    return new_daemon(d.root, d.socket).start()


def test_changes_without_fsync_survive_a_kill_once_the_group_window_has_passed(
    new_daemon: type[Daemon],
) -> None:
    d = new_daemon().start()
    active = d.prepare("work")
    (active / "dir").mkdir()
    (active / "dir" / "file").write_bytes(b"not fsynced")
    os.symlink("file", active / "dir" / "link")
    time.sleep(GROUP_WINDOW * 5)
    d = _restarted_after_kill(d, new_daemon)
    assert (active / "dir" / "file").read_bytes() == b"not fsynced"
    assert os.readlink(active / "dir" / "link") == "file"


def test_a_kill_inside_the_group_window_loses_whole_changes_and_never_bytes_still_named(
    new_daemon: type[Daemon],
) -> None:
    # Committed first: files whose bytes live in the active layer itself.
    d = new_daemon().start()
    active = d.prepare("work")
    names = [f"f{i}" for i in range(50)]
    for name in names:
        (active / name).write_bytes(name.encode() * 1000)
    fd = os.open(active, os.O_RDONLY)
    os.fsync(fd)  # fsync of the directory commits the group
    os.close(fd)
    # Then, with no fsync, change names quickly and kill at once: whatever
    # the restarted daemon shows of each change must be whole.
    for name in names[::2]:
        os.unlink(active / name)
    for name in names[1::4]:
        os.rename(active / name, active / f"{name}.moved")
    (active / "new").write_bytes(b"new bytes")
    d = _restarted_after_kill(d, new_daemon)
    seen = sorted(os.listdir(active))
    for name in names:
        here = [n for n in (name, f"{name}.moved") if n in seen]
        assert len(here) <= 1, seen
        if here:  # a lost unlink keeps the bytes as well as the name
            assert (active / here[0]).read_bytes() == name.encode() * 1000
    if "new" in seen:
        assert (active / "new").read_bytes() in (b"", b"new bytes")


def test_second_daemon_on_same_root_is_refused(daemon: Daemon, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusesnap", "serve", "--root", str(daemon.root),
         "--socket", str(tmp_path / "other.sock")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert f"another fusesnap is serving {daemon.root}" in proc.stderr
    assert os.path.ismount(daemon.mountpoint)


# --------------------------------------------------------------------------- bad start-up


def _refused(tmp_path, *args: str, user: object = None) -> str:
    """`serve ARGS` exits 1 with one line (no traceback) and creates nothing."""
    root = tmp_path / "root"
    run: dict[str, object] = {}
    if user is not None:
        from tests.rootless_env import as_user
        run = as_user(user)  # type: ignore[arg-type]
        command = ["/usr/bin/python3"]
    else:
        command = [sys.executable]
    proc = subprocess.run([*command, "-m", "fusesnap", "serve", "--root", str(root),
                           "--socket", str(tmp_path / "s.sock"), *args],
                          capture_output=True, text=True, timeout=60, **run)  # type: ignore[call-overload]
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not root.exists() and not (tmp_path / "s.sock").exists()
    return lines[0]


def test_a_mountpoint_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("keep")
    line = _refused(tmp_path, "--mountpoint", str(tmp_path / "file"))
    assert f"mountpoint {tmp_path}/file is not a directory" in line
    assert (tmp_path / "file").read_text() == "keep"


def test_a_mountpoint_that_is_not_empty_is_refused(tmp_path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    line = _refused(tmp_path, "--mountpoint", str(tmp_path / "full"))
    assert f"mountpoint {tmp_path}/full is not empty" in line
    assert not os.path.ismount(tmp_path / "full")


def test_a_socket_path_too_long_for_a_unix_socket_is_refused(tmp_path) -> None:
    long = tmp_path / ("s" * 120) / "x.sock"
    line = _refused(tmp_path, "--socket", str(long))
    assert "a unix socket's path holds at most 107: choose a shorter --socket" in line
    assert not long.parent.exists()


def test_a_root_the_user_cannot_create_is_one_line(user) -> None:
    # root's directory, which the user may look into but not write
    # (pytest's own temporary directories are root's 0700)
    where = Path(tempfile.mkdtemp(prefix="fusesnap-noroot-"))
    try:
        where.chmod(0o755)
        line = _refused(where, user=user)
        assert f"cannot use {where}/root as the store: Permission denied" in line
    finally:
        shutil.rmtree(where)
