"""Rootless: an ordinary user runs the daemon and a client for real.

The test creates the user (so it needs root to set up), runs `fusesnap serve`
and a gRPC client as that user, and proves the client needs no mount: it only
calls Prepare/Commit/View and uses plain file system calls on the returned
directories. Debian's /usr/bin/python3 runs the code (the project's
interpreter may live under a directory the user cannot enter) with this
environment's site-packages on PYTHONPATH; it is the same Python 3.11 ABI.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.rootless_env import (  # fixtures user, workdir, rootless_daemon
    SYSTEM_PYTHON,
    as_user,
    assert_only_users_plain_files,
)

pytestmark = pytest.mark.rootless


CLIENT = textwrap.dedent("""
    import grpc, json, os, stat, sys
    from fusesnap.pb import snapshots_pb2 as pb, snapshots_pb2_grpc as g
    stub = g.SnapshotsStub(grpc.insecure_channel("unix:" + sys.argv[1]))
    step = sys.argv[2]
    if step == "fill":
        d = stub.Prepare(pb.PrepareSnapshotRequest(key="build")).mounts[0].source
        os.makedirs(d + "/usr/bin")
        with open(d + "/usr/bin/tool", "wb") as f:
            f.write(b"#!/bin/sh\\necho tool\\n")
        os.chmod(d + "/usr/bin/tool", 0o4755)
        os.symlink("tool", d + "/usr/bin/alias")
        print(json.dumps({"dir": d}))
    elif step == "commit":
        stub.Commit(pb.CommitSnapshotRequest(name="layer", key="build"))
        v = stub.View(pb.ViewSnapshotRequest(key="look", parent="layer")).mounts[0].source
        out = {}
        for name in ("usr/bin/tool", "usr/bin/alias", "etc/owned-by-root", "dev/null"):
            st = os.lstat(os.path.join(v, name))
            out[name] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                         "rdev": st.st_rdev}
        out["tool"] = open(v + "/usr/bin/tool", "rb").read().decode()
        out["alias"] = os.readlink(v + "/usr/bin/alias")
        try:
            open(v + "/new", "w")
        except OSError as e:
            out["view_write_errno"] = e.errno
        print(json.dumps(out))
    elif step == "userns":
        d = stub.Prepare(pb.PrepareSnapshotRequest(key="ns")).mounts[0].source
        os.mkdir(d + "/root-dir")
        with open(d + "/root-dir/file", "w") as f:
            f.write("owned by root in the namespace")
        os.chown(d + "/root-dir", 0, 0)
        os.chown(d + "/root-dir/file", 0, 0)
        stub.Commit(pb.CommitSnapshotRequest(name="ns-layer", key="ns"))
        v = stub.View(pb.ViewSnapshotRequest(key="ns-look", parent="ns-layer")).mounts[0].source
        st = os.stat(v + "/root-dir/file")
        print(json.dumps({"me": os.getuid(), "uid": st.st_uid, "gid": st.st_gid,
                          "text": open(v + "/root-dir/file").read()}))
""")


def _client(user: pwd.struct_passwd, workdir: Path, step: str) -> dict:
    import json

    script = workdir / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.run(
        [SYSTEM_PYTHON, str(script), str(workdir / "sock"), step],
        capture_output=True, text=True, timeout=60, **as_user(user))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ordinary_user_prepares_fills_commits_and_views_without_mounting(
        user: pwd.struct_passwd, rootless_daemon: Path) -> None:
    workdir = rootless_daemon
    mounts = (workdir / "root" / "mnt")
    info = _client(user, workdir, "fill")
    active = Path(info["dir"])
    assert active.parent == mounts

    # What a rootless engine's user-namespace root does (here: real root through
    # allow_other): owners and device nodes the daemon's user could never create
    # on the host. The daemon records them.
    (active / "etc").mkdir()
    (active / "etc" / "owned-by-root").write_text("secret\n")
    os.chown(active / "etc" / "owned-by-root", 0, 0)
    (active / "dev").mkdir()
    os.mknod(active / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

    seen = _client(user, workdir, "commit")
    tool = seen["usr/bin/tool"]
    assert stat.S_IMODE(tool["mode"]) == 0o4755
    assert (tool["uid"], tool["gid"]) == (user.pw_uid, user.pw_gid)
    assert seen["tool"] == "#!/bin/sh\necho tool\n"
    assert seen["alias"] == "tool"
    owned = seen["etc/owned-by-root"]
    assert (owned["uid"], owned["gid"]) == (0, 0)
    dev = seen["dev/null"]
    assert stat.S_ISCHR(dev["mode"]) and dev["rdev"] == os.makedev(1, 3)
    assert seen["view_write_errno"] == 30  # EROFS

    # The host holds only plain files of the ordinary user: no device node, no root file.
    assert_only_users_plain_files(workdir / "root", user)


def test_chown_to_root_inside_a_user_namespace_is_recorded(
        user: pwd.struct_passwd, workdir: Path) -> None:
    """How rootless engines run it: the daemon in a user namespace where the
    ordinary user is root; a client in that namespace chowns files to root."""
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("unshare and nsenter (util-linux) are needed")
    log_path = workdir / "userns.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", SYSTEM_PYTHON, "-m",
             "fusesnap", "serve", "--root", str(workdir / "root"),
             "--socket", str(workdir / "sock")],
            stdout=log, stderr=log, **as_user(user))
    try:
        deadline = time.monotonic() + 30
        while not log_path.read_bytes().rstrip().endswith(b"serving"):
            if proc.poll() is not None:
                if b"unshare:" in log_path.read_bytes():
                    pytest.skip("unprivileged user namespaces are not available: "
                                + log_path.read_text().strip())
                pytest.fail("daemon in a user namespace did not start:\n" + log_path.read_text())
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        script = workdir / "client.py"
        script.write_text(CLIENT)
        client = subprocess.run(
            ["nsenter", "--user", "--mount", "--preserve-credentials", "-t", str(proc.pid),
             SYSTEM_PYTHON, str(script), str(workdir / "sock"), "userns"],
            capture_output=True, text=True, timeout=60, **as_user(user))
        assert client.returncode == 0, client.stderr
        import json

        seen = json.loads(client.stdout)
        assert seen == {"me": 0, "uid": 0, "gid": 0, "text": "owned by root in the namespace"}
        for path in (workdir / "root" / "layers").rglob("*"):
            assert path.lstat().st_uid == user.pw_uid, path
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0, log_path.read_text()


def test_rootless_mount_is_nosuid_nodev_and_owned_by_the_user(
        user: pwd.struct_passwd, rootless_daemon: Path) -> None:
    mnt = str(rootless_daemon / "root" / "mnt")
    with open("/proc/self/mountinfo") as f:
        line = next(line for line in f if line.split()[4] == mnt)
    opts = line.split()[5].split(",")
    assert "nosuid" in opts and "nodev" in opts
    assert f"user_id={user.pw_uid}" in line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
