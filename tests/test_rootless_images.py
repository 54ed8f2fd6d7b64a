"""Issue 5, part 2, as an ordinary user: the daemon and every `fusesnap images`
command run as that user, and the image keeps what the user could never make
on the host (root's files, setuid bits, device nodes, `security.capability`).

import → the view is, file by file, what `umoci unpack` (as root) makes of the
archive; prepare → changes (made the way a rootless engine's namespace root
makes them: here real root through allow_other) → commit → export → `umoci
unpack` of the exported archive is the changed tree. The store on the host
holds only the user's plain files.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from tests import oci
from tests.rootless_env import (  # fixtures user, workdir, rootless_daemon
    SYSTEM_PYTHON,
    as_user,
    assert_only_users_plain_files,
    rootless_image,
)
from tests.trees import Tree, assert_same_tree, host_tree, xattrs

pytestmark = [
    pytest.mark.rootless,
    pytest.mark.skipif(not os.path.exists("/usr/bin/umoci"),
                       reason="needs Debian's umoci (make setup)"),
]

NAME = "fusesnap.test/rootless:1"
CHANGED = "fusesnap.test/rootless:changed"


def fusesnap(user: pwd.struct_passwd, workdir: Path, *args: str) -> str:
    """`fusesnap images ARGS…` run as `user` against the rootless daemon."""
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "fusesnap", "--socket", str(workdir / "sock"),
                           "images", *args], capture_output=True, text=True, timeout=300,
                          **as_user(user))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def unpacked(archive: Path, work: Path) -> tuple[Tree, dict[str, dict[str, bytes]]]:
    rootfs = oci.umoci_unpack(archive, work)
    return host_tree(rootfs), xattrs(rootfs)


def users_root(tree: Tree, user: pwd.struct_passwd) -> Tree:
    """`tree` (umoci's, unpacked as root) with its root directory, which no
    layer names, owned by `user`: a snapshot's root directory is the daemon's
    user's, as a snapshotter's new directory is its process's."""
    return {**tree, ".": dataclasses.replace(tree["."], uid=user.pw_uid, gid=user.pw_gid)}


def change(root: Path) -> None:
    """What a rootless engine's build step does in the prepared snapshot."""
    (root / "hello.txt").write_text("written by the namespace's root\n")
    os.chown(root / "hello.txt", 0, 0)
    os.mknod(root / "dev/zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (root / "data/over").unlink()
    os.chown(root / "data/chmod", 1234, 5678)
    os.chmod(root / "data/chmod", 0o4750)
    os.setxattr(root / "hello.txt", "user.note", b"added")
    (root / "root/secret").write_bytes(b"changed\n")


def test_an_ordinary_user_imports_commits_and_exports_images_keeping_root_owned_things(
        user: pwd.struct_passwd, rootless_daemon: Path) -> None:
    workdir = rootless_daemon
    built = oci.write_archive(rootless_image(NAME), workdir / "image.tar")
    expected, expected_xattrs = unpacked(built.path, workdir / "umoci-in")

    fusesnap(user, workdir, "import", str(built.path))
    view = Path(fusesnap(user, workdir, "mount", NAME).strip())
    assert_same_tree(host_tree(view), users_root(expected, user))
    assert xattrs(view) == expected_xattrs
    assert expected["./dev/loop0"].uid == 0 and stat.S_ISBLK(expected["./dev/loop0"].mode)
    assert stat.S_IMODE(expected["./usr/local/bin/suid"].mode) == 0o4755

    work = Path(fusesnap(user, workdir, "prepare", NAME, "build").strip())
    change(work)
    changed, changed_xattrs = host_tree(work), xattrs(work)
    assert changed["./hello.txt"].uid == 0 and "./data/over" not in changed

    name, digest = fusesnap(user, workdir, "commit", CHANGED, "build").split()
    assert (name, digest[:7]) == (CHANGED, "sha256:")
    exported = workdir / "changed.tar"
    fusesnap(user, workdir, "export", CHANGED, str(exported))
    assert exported.stat().st_uid == user.pw_uid
    out, out_xattrs = unpacked(exported, workdir / "umoci-out")
    assert_same_tree(users_root(out, user), changed)
    assert out_xattrs == changed_xattrs

    # The host holds only plain files of the ordinary user: no device node, no root file.
    assert_only_users_plain_files(workdir / "root", user)
