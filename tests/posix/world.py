r"""The world every POSIX test runs in: a chain of three layers on one daemon.

    bottom   committed            populate("bottom") + BOTTOM_ONLY
    middle   committed, on bottom populate("middle") + MIDDLE_CHANGES (to bottom's objects)
    active   active, on middle    populate("own")            <- the tests work here
    view     a view of middle     read-only

The chain fixture's teardown checks that bottom, middle and the view never change.

Each layer L (the "origin": "bottom", "middle" or "own") holds the same ten
objects, named `L_<what>`; `chain.obj(origin, what)` is `active / f"{origin}_{what}"`:

    L_file    regular file, mode 0644, content(L, "file"), xattr user.layer=L
    L_exec    shell script, mode 0755, that prints L
    L_dir     directory, mode 0755, xattr user.layer=L, holding
                child      regular file, content(L, "child")
                sub/deep   regular file, content(L, "deep")
    L_empty   empty directory
    L_link    symlink to "L_file"
    L_hard1   regular file, content(L, "hard") ...
    L_hard2   ... and a second hard link to it
    L_fifo    named pipe, mode 0644
    L_null    character device 1:3 (/dev/null), mode 0666
    L_big     64 KiB regular file, big_content(L)

Besides these, the bottom layer holds the objects that the middle layer
modifies, adds to or deletes (the two tables BOTTOM_ONLY and MIDDLE_CHANGES
below, which the builder runs step by step). What the active snapshot sees:

    bottom holds              the middle layer                the active snapshot sees
    bottom_modified           rewrites it                     "middle version\n"
    bottom_gone               deletes it                      no such name
    bottom_gone_dir/child     deletes both                    no such name
    bottom_opaque/old_child   deletes both, makes             bottom_opaque/new_child only
                              bottom_opaque/new_child         (an opaque directory)
    bottom_dir2file/inner     deletes both, makes             a file "now a file\n";
                              bottom_dir2file a file          bottom_dir2file/inner: ENOTDIR
    bottom_file2dir           makes it a directory            a directory holding inner
                              holding inner
    bottom_chmod              chmods it 0600                  mode 0600
    bottom_shared             links it as                     two names of one inode
                              middle_to_bottom_shared
    bottom_moved/child        renames bottom_moved to         middle_dir/moved_from_bottom/child
                              middle_dir/moved_from_bottom
    (bottom_dir, standard)    adds bottom_dir/                bottom_dir holding
                              added_in_middle                 added_in_middle, child, sub

So `bottom_dir` lists three names, `middle_dir` three (child, sub,
moved_from_bottom) and `own_dir` two (dir_names, subdirs_of_dir).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Daemon

ORIGINS = ["own", "middle", "bottom"]
LOWER = ["middle", "bottom"]


def content(origin: str, what: str) -> bytes:
    return f"{origin} {what}\n".encode()


def big_content(origin: str) -> bytes:
    return bytes((i * 7 + len(origin)) % 251 for i in range(65536))


def populate(root: Path, layer: str) -> None:
    """The ten standard objects of layer `layer`, all named `<layer>_*` (the
    first table of the module's docstring)."""
    f = root / f"{layer}_file"
    f.write_bytes(content(layer, "file"))
    f.chmod(0o644)
    os.setxattr(f, "user.layer", layer.encode())
    e = root / f"{layer}_exec"
    e.write_bytes(b"#!/bin/sh\necho " + layer.encode() + b"\n")
    e.chmod(0o755)
    d = root / f"{layer}_dir"
    d.mkdir()
    d.chmod(0o755)
    (d / "child").write_bytes(content(layer, "child"))
    (d / "sub").mkdir()
    (d / "sub" / "deep").write_bytes(content(layer, "deep"))
    os.setxattr(d, "user.layer", layer.encode())
    (root / f"{layer}_empty").mkdir()
    os.symlink(f"{layer}_file", root / f"{layer}_link")
    (root / f"{layer}_hard1").write_bytes(content(layer, "hard"))
    os.link(root / f"{layer}_hard1", root / f"{layer}_hard2")
    os.mkfifo(root / f"{layer}_fifo", 0o644)
    os.mknod(root / f"{layer}_null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / f"{layer}_big").write_bytes(big_content(layer))


# A step: (operation, path in the layer, argument). "write" gives the bytes,
# "chmod" the mode, "link" and "rename" the new path; the others take None.
Step = tuple[str, str, Any]

BOTTOM_ONLY: tuple[Step, ...] = (
    ("write", "bottom_modified", b"bottom version\n"),
    ("write", "bottom_gone", b"deleted in middle\n"),
    ("mkdir", "bottom_gone_dir", None),
    ("write", "bottom_gone_dir/child", b"gone with its dir\n"),
    ("mkdir", "bottom_opaque", None),
    ("write", "bottom_opaque/old_child", b"hidden by the recreated dir\n"),
    ("mkdir", "bottom_dir2file", None),
    ("write", "bottom_dir2file/inner", b"hidden by the file\n"),
    ("write", "bottom_file2dir", b"replaced by a dir\n"),
    ("write", "bottom_chmod", b"mode changed in middle\n"),
    ("write", "bottom_shared", b"linked from middle\n"),
    ("mkdir", "bottom_moved", None),
    ("write", "bottom_moved/child", b"moved with its dir\n"),
)

MIDDLE_CHANGES: tuple[Step, ...] = (
    ("write", "bottom_modified", b"middle version\n"),  # modified
    ("unlink", "bottom_gone", None),  # deleted
    ("unlink", "bottom_gone_dir/child", None),  # deleted with its directory
    ("rmdir", "bottom_gone_dir", None),
    ("unlink", "bottom_opaque/old_child", None),  # deleted and recreated: opaque
    ("rmdir", "bottom_opaque", None),
    ("mkdir", "bottom_opaque", None),
    ("write", "bottom_opaque/new_child", b"in the recreated dir\n"),
    ("unlink", "bottom_dir2file/inner", None),  # a directory becomes a file
    ("rmdir", "bottom_dir2file", None),
    ("write", "bottom_dir2file", b"now a file\n"),
    ("unlink", "bottom_file2dir", None),  # a file becomes a directory
    ("mkdir", "bottom_file2dir", None),
    ("write", "bottom_file2dir/inner", b"in the dir that was a file\n"),
    ("chmod", "bottom_chmod", 0o600),  # mode changed
    ("write", "bottom_dir/added_in_middle", b"added in middle\n"),  # added to a lower dir
    ("link", "bottom_shared", "middle_to_bottom_shared"),  # hard link to a lower file
    ("rename", "bottom_moved", "middle_dir/moved_from_bottom"),  # lower dir moved
)


def apply_steps(root: Path, steps: tuple[Step, ...]) -> None:
    for op, rel, arg in steps:
        p = root / rel
        if op == "write":
            p.write_bytes(arg)
        elif op == "mkdir":
            p.mkdir()
        elif op == "unlink":
            p.unlink()
        elif op == "rmdir":
            p.rmdir()
        elif op == "chmod":
            p.chmod(arg)
        elif op == "link":
            os.link(p, root / arg)
        elif op == "rename":
            os.rename(p, root / arg)
        else:
            raise ValueError(f"unknown step {op!r}")


def dir_names(origin: str) -> list[str]:
    """The sorted names in `<origin>_dir` as the active snapshot sees it."""
    extra = {"bottom": ["added_in_middle"], "middle": ["moved_from_bottom"]}.get(origin, [])
    return sorted(["child", "sub"] + extra)


def subdirs_of_dir(origin: str) -> int:
    return 2 if origin == "middle" else 1  # sub (and moved_from_bottom)


@dataclass
class Chain:
    daemon: Daemon
    bottom: Path  # committed
    middle: Path  # committed, child of bottom
    active: Path  # active, child of middle
    view: Path  # a view of middle
    middle_key: str
    active_key: str

    def obj(self, origin: str, what: str) -> Path:
        return self.active / f"{origin}_{what}"

    def commit_and_child(self) -> Path:
        """Commit the active snapshot and prepare a child of it; returns the child."""
        name = f"{self.active_key}-c"
        self.daemon.commit(name, self.active_key)
        self.active_key = f"{name}-child"
        return self.daemon.prepare(self.active_key, name)


def build_chain(d: Daemon, n: int) -> Chain:
    """The chain of the module's docstring, with keys numbered `n`: committed
    b{n} and m{n}, active a{n}-key, view v{n}-key."""
    bottom = d.prepare(f"b{n}-key")
    populate(bottom, "bottom")
    apply_steps(bottom, BOTTOM_ONLY)
    d.commit(f"b{n}", f"b{n}-key")

    middle = d.prepare(f"m{n}-key", f"b{n}")
    populate(middle, "middle")
    apply_steps(middle, MIDDLE_CHANGES)
    d.commit(f"m{n}", f"m{n}-key")

    active = d.prepare(f"a{n}-key", f"m{n}")
    populate(active, "own")
    view = d.view(f"v{n}-key", f"m{n}")
    return Chain(d, bottom, middle, active, view, f"m{n}", f"a{n}-key")


def remove_all_snapshots(d: Daemon) -> None:
    """Remove every snapshot, children first (the next test starts from an empty store)."""
    from fusesnap.pb import snapshots_pb2 as spb

    while True:
        infos = [i for r in d.snapshots.List(spb.ListSnapshotsRequest()) for i in r.info]
        if not infos:
            return
        parents = {i.parent for i in infos}
        for i in infos:
            if i.name not in parents:
                d.snapshots.Remove(spb.RemoveSnapshotRequest(key=i.name))
