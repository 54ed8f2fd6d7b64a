"""The layered fixture of the filesystem benchmark (bench/fs.py), built once per run.

Two stacks of plain layer directories (`<workdir>/layers/<stack>/<i>`, bottom
layer 0; short numeric names so that 500 of them fit in overlay's one-page
mount data, as containerd's overlay snapshotter does it):

* `main`, 5 layers: `big/` (the 1 GiB sequential/random-read file and the two
  256 MiB copy-up files, bottom layer), `tree/` (the meta-walk tree, ~20,000
  files in ~1,000 directories, every directory holding files in every layer),
  `create/` (directories that exist only in lower layers, for small-create),
  `rmtree/` (the 5,000-entry tree rm-rf deletes, spread over the layers) and
  `untar/` (an empty lower directory the tarball is extracted into);
* `deep`, as many layers as the deepest chain: the bottom layer holds the
  files deep-chain stats, every layer holds the same directories and one
  file of its own.

Plus the tarball untar extracts and, for native, the merged trees (hard links
to the layer files: native only reads them; workloads that write get copies).
Every regular file of the big files starts each 4 KiB block with the block's
index (little-endian u64), so any read can be checked where it landed.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4 * KiB
LAYERS = 5
"""Layers of the main stack."""
DEEP_DIRS = 10
"""Directories every layer of the deep stack holds."""


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, round(n * scale))


@dataclass(frozen=True)
class Sizes:
    """The issue's sizes times `scale` (each with a floor that keeps it meaningful)."""

    scale: float
    seq_bytes: int
    copy_bytes: int
    rand_reads: int
    walk_files: int
    walk_dirs: int
    create_files: int
    rm_entries: int
    deep_files: int
    depths: tuple[int, ...]
    untar_bytes: int
    ops_files: tuple[int, ...]
    ops_depths: tuple[int, ...]
    ops_iterations: int

    @classmethod
    def make(cls, scale: float, depths: tuple[int, ...], ops_depths: tuple[int, ...]) -> Sizes:
        def mib(n: int) -> int:
            return _scaled(n, scale, 1) * MiB
        return cls(
            scale=scale,
            seq_bytes=mib(1024),
            copy_bytes=mib(256),
            rand_reads=_scaled(8192, scale, 256),
            walk_files=_scaled(20_000, scale, 100),
            walk_dirs=_scaled(1_000, scale, 10),
            create_files=_scaled(10_000, scale, 100),
            rm_entries=_scaled(5_000, scale, 100),
            deep_files=_scaled(1_000, scale, 100),
            depths=depths,
            untar_bytes=_scaled(200_000_000, scale, 2_000_000),
            ops_files=(10, _scaled(100_000, scale, 1_000)),
            ops_depths=ops_depths,
            ops_iterations=_scaled(1_000, scale, 100),
        )


@dataclass
class Stack:
    """A chain of layers as each backend sees it."""

    name: str
    layers: list[Path]
    """Layer directories, bottom first."""
    native: Path
    """The merged tree as one plain directory (hard links to the layer files)."""
    parent: str = ""
    """The committed fusesnap snapshot at the top of the chain (set by the import)."""

    @property
    def base(self) -> Path:
        """The directory the layer directories are in (relative lowerdirs start here)."""
        return self.layers[0].parent


@dataclass
class Expected:
    """What the workloads verify against."""

    seq_path: str = "big/seq.bin"
    append_path: str = "big/append.bin"
    overwrite_path: str = "big/overwrite.bin"
    walk_entries: int = 0
    """Entries under tree/, tree/ itself included (what `find tree` prints)."""
    walk_bytes: int = 0
    create_dirs: list[str] = field(default_factory=list)
    create_lower_files: int = 0
    rm_entries: int = 0
    """Entries under rmtree/, rmtree/ itself excluded."""
    deep_paths: list[str] = field(default_factory=list)
    deep_sizes: list[int] = field(default_factory=list)
    tarball: Path = Path()
    untar_files: int = 0
    untar_dirs: int = 0
    untar_bytes: int = 0


@dataclass
class Fixture:
    sizes: Sizes
    main: Stack
    deep: dict[int, Stack]
    expected: Expected


def block_pattern(path: Path, size: int) -> None:
    """A file of `size` bytes of random data whose every 4 KiB block starts with its index."""
    with open(path, "wb") as f:
        block = 0
        for _ in range(size // MiB):
            buf = bytearray(os.urandom(MiB))
            for off in range(0, MiB, BLOCK):
                struct.pack_into("<Q", buf, off, block)
                block += 1
            f.write(buf)


def _write(path: Path, size: int, filler: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(filler[:size])


def _main_layers(base: Path, sizes: Sizes, exp: Expected) -> list[Path]:
    layers = [base / str(i) for i in range(LAYERS)]
    for d in layers:
        d.mkdir(parents=True)
    filler = os.urandom(64 * KiB)
    big = layers[0] / "big"
    big.mkdir()
    block_pattern(big / "seq.bin", sizes.seq_bytes)
    block_pattern(big / "append.bin", sizes.copy_bytes)
    block_pattern(big / "overwrite.bin", sizes.copy_bytes)

    # meta-walk: tree/pAA/dBB leaves, every leaf's files spread over all layers.
    top = math.ceil(math.sqrt(sizes.walk_dirs))
    leaves = [f"tree/p{i // top:03}/d{i % top:03}" for i in range(sizes.walk_dirs)]
    parents = {leaf.rsplit("/", 1)[0] for leaf in leaves}
    for layer in layers:
        for leaf in leaves:
            (layer / leaf).mkdir(parents=True)
    total = 0
    for k in range(sizes.walk_files):
        leaf = leaves[k % len(leaves)]
        size = (k * 131) % 4096
        _write(layers[k % LAYERS] / leaf / f"f{k:06}", size, filler)
        total += size
    exp.walk_entries = 1 + len(parents) + len(leaves) + sizes.walk_files
    exp.walk_bytes = total

    # small-create: directories only lower layers hold, two files in each.
    n_dirs = math.ceil(sizes.create_files / 100)
    for i in range(n_dirs):
        name = f"create/c{i:03}"
        for j in range(2):
            _write(layers[1 + i % (LAYERS - 1)] / name / f"lower-{j}", 100, filler)
        exp.create_dirs.append(name)
    exp.create_lower_files = 2 * n_dirs

    # rm-rf: directories of 49 files, each directory's files split over two layers.
    n_rm = max(1, sizes.rm_entries // 50)
    for i in range(n_rm):
        for j in range(49):
            _write(layers[(i + j % 2) % LAYERS] / f"rmtree/r{i:03}/f{j:02}", 64, filler)
    exp.rm_entries = n_rm * 50

    (layers[2] / "untar").mkdir()
    return layers


def _deep_layers(base: Path, sizes: Sizes, exp: Expected) -> list[Path]:
    depth = max(sizes.depths)
    layers = [base / str(i) for i in range(depth)]
    dirs = [f"d/s{k}" for k in range(DEEP_DIRS)]
    for i, layer in enumerate(layers):
        for d in dirs:
            (layer / d).mkdir(parents=True)
        if i:
            _write(layer / dirs[i % DEEP_DIRS] / f"l{i:04}", 1, b"l")
    for j in range(sizes.deep_files):
        path = f"{dirs[j % DEEP_DIRS]}/f{j:04}"
        size = j % 64 + 1
        _write(layers[0] / path, size, b"f" * 64)
        exp.deep_paths.append(path)
        exp.deep_sizes.append(size)
    return layers


def merge(layers: list[Path], dest: Path) -> None:
    """The union of `layers` (bottom first, no whiteouts) in `dest`, files hard-linked."""
    dest.mkdir(parents=True)
    for layer in layers:
        for dirpath, dirnames, filenames in os.walk(layer):
            rel = os.path.relpath(dirpath, layer)
            target = dest / rel
            for d in dirnames:
                (target / d).mkdir(exist_ok=True)
            for f in filenames:
                dst = target / f
                if dst.exists():
                    dst.unlink()
                os.link(os.path.join(dirpath, f), dst)


def _tarball(path: Path, sizes: Sizes, exp: Expected) -> None:
    """Many small files (16 KiB on average, 0–32 KiB) in directories of 25."""
    rng = random.Random(6)
    data = os.urandom(64 * KiB)
    n_files = max(25, sizes.untar_bytes // (16 * KiB))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n_files):
            if i % 25 == 0:
                d = tarfile.TarInfo(f"src/m{i // 25:04}")
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tar.addfile(d)
                exp.untar_dirs += 1
            size = rng.randrange(0, 32 * KiB)
            info = tarfile.TarInfo(f"src/m{i // 25:04}/f{i % 25:02}.dat")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            off = rng.randrange(0, 32 * KiB)
            tar.addfile(info, _Bytes(data[off:off + size]))
            exp.untar_files += 1
            exp.untar_bytes += size
    exp.tarball = path


class _Bytes:
    """The readable file tarfile.addfile wants, over bytes (no BytesIO copy)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else self.pos + n
        out = bytes(self.view[self.pos:end])
        self.pos += len(out)
        return out


def build(work: Path, sizes: Sizes, main: bool = True, deep: bool = True,
          tarball: bool = True) -> Fixture:
    """The layer directories, native merged trees and the tarball the chosen
    workloads need (fusesnap's import is the backend's: fs_backends.Fusesnap)."""
    exp = Expected()
    main_stack = Stack("main", [], work / "native" / "main")
    if main:
        main_stack.layers = _main_layers(work / "layers" / "main", sizes, exp)
        merge(main_stack.layers, main_stack.native)
    deep_stacks = {}
    if deep:
        deep_layers = _deep_layers(work / "layers" / "deep", sizes, exp)
        for n in sizes.depths:
            native = work / "native" / f"deep-{n}"
            merge(deep_layers[:n], native)
            deep_stacks[n] = Stack(f"deep-{n}", deep_layers[:n], native)
    if tarball:
        _tarball(work / "untar.tar", sizes, exp)
    return Fixture(sizes, main_stack, deep_stacks, exp)


def layer_tar(layer: Path, out: Path) -> None:
    """An uncompressed OCI layer tar of directory `layer` (names relative, no `./`)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(layer)):
            tar.add(layer / name, arcname=name)


def ops_tar(out: Path, files: int) -> None:
    """A layer of `files` empty files in directories of 100 (the snapshot-ops base)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            if i % 100 == 0:
                d = tarfile.TarInfo(f"o/p{i // 100:04}")
                d.type, d.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(d)
            tar.addfile(tarfile.TarInfo(f"o/p{i // 100:04}/f{i % 100:02}"))


def copy_paths(src: Path, dest: Path, paths: tuple[str, ...]) -> None:
    """Real copies (not links) of `paths` of tree `src` into `dest`, parents made."""
    for rel in paths:
        s, d = src / rel, dest / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, symlinks=True)
        else:
            shutil.copy2(s, d)


def walk_files(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every regular file under `root` (for verification, never timed)."""
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry
