"""Directory trees as comparable manifests: what the image tests check a
snapshot's tree against (``umoci unpack`` of the same archive).

A :data:`Tree` maps ``./a/b`` paths to a :class:`Node`: type and mode bits,
owner, link count, size (not a directory's), symlink target, SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Node:
    """What the comparison holds of one path. A directory's size is its file
    system's own (ext4: the blocks of its entries), so it is left out."""
    mode: int            # file type and permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    nlink: int
    size: int | None     # None for directories
    target: str | None = None  # symlinks
    sha256: str | None = None  # regular files


Tree = dict[str, Node]


def node(mode: int, uid: int, gid: int, nlink: int, size: int) -> Node:
    return Node(mode, uid, gid, nlink, None if stat.S_ISDIR(mode) else size)


def host_tree(root: Path) -> Tree:
    """The manifest of the tree under `root`, read on the host; paths as `./a/b`."""
    tree: Tree = {}
    for path in paths(root):
        st = os.lstat(path)
        n = node(st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size)
        if stat.S_ISLNK(st.st_mode):
            n = replace(n, target=os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            n = replace(n, sha256=file_sha256(path))
        rel = os.path.relpath(path, root)
        tree["." if rel == "." else f"./{rel}"] = n
    return tree


def paths(root: Path) -> list[str]:
    """`root` and every path under it, symlinks not followed."""
    found = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in (*dirnames, *filenames)]
    return found


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_same_tree(actual: Tree, expected: Tree) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(p for p in set(actual) & set(expected) if actual[p] != expected[p])
    problems = [f"missing {p}: {expected[p]}" for p in missing]
    problems += [f"unexpected {p}: {actual[p]}" for p in extra]
    problems += [f"{p}: got {actual[p]}, umoci {expected[p]}" for p in differ]
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:40])


def xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    """Every extended attribute under `root`, by path, read without following symlinks."""
    found: dict[str, dict[str, bytes]] = {}
    for path in paths(root):
        attrs = {a: os.getxattr(path, a, follow_symlinks=False)
                 for a in os.listxattr(path, follow_symlinks=False)}
        if attrs:
            found[os.path.relpath(path, root)] = attrs
    return found
