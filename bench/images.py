"""Image import benchmark (issue 5): from an OCI archive to an unpacked image.

For each test image of tests/oci.py (busybox; rich, ten layers, one of them a
100 MB file; many, 62 layers), written once as an OCI archive without zstd
layers (Debian's umoci 0.4.7 reads none) and given to every backend:

- ``ctr images import --snapshotter S ARCHIVE`` (containerd 1.6; it unpacks by
  default) with S = native and overlayfs on a plain containerd (built-in
  content store), and S = fusesnap on a containerd whose snapshotter and
  content store are a ``fusesnap serve --role proxy`` daemon run as root.
  Every sample gets a fresh containerd (and fusesnap daemon) on an empty root,
  so each one ingests and unpacks every layer; starting and stopping them is
  not timed.
- ``umoci unpack`` as root — the anchor of the fusesnap row — and
  ``umoci unpack --rootless`` as an ordinary user, of the archive's layout,
  extracted once per image and not timed (umoci cannot read the archive; the
  other backends read it).
- ``fusesnap images import ARCHIVE``, the CLI process included, against a
  fresh direct-role daemon, both run as an ordinary user (``fusesnap-rootless``,
  created when missing; yourself when not root).

The fusesnap daemons and CLI run Debian's /usr/bin/python3 with this
environment's packages on PYTHONPATH, as tests/rootless_env.py runs them.
Repetitions interleave the backends (rep 1 of each, then rep 2 …), each
sample after an ``os.sync()``. Every sample is verified, untimed: the image's
root filesystem must be, path by path, the tree ``umoci unpack`` as root made
of the archive before the runs (type, mode, owner — not for --rootless —, link
count, size, symlink target, SHA-256). It is read from a ``fusesnap images
mount`` view, umoci's bundle, or a ``ctr snapshots view`` of the top layer
(its bind source read in place; an overlay mounted here, link counts not
compared: overlayfs gives merged directories one link, and a lower file the
count of its layer), after checking that containerd holds the image and
every layer as a committed snapshot named by its chain ID. (Not ``ctr images
mount``: containerd 1.6's ignores ``--snapshotter`` and unpacks into
overlayfs.) A sample that fails posts no figure. Targets (issue 5), on
medians: ctr import with fusesnap ≤ 1× native; ``fusesnap images import`` ≤
1.5× ``umoci unpack`` as root (--rootless when not root).

``--profile [IMAGE]`` then imports IMAGE (default rich) three more times into
fresh rootless daemons: once with each RPC of the import timed by the client
(the phases: content ingest, layer apply, snapshot prepare and commit,
records), then twice with py-spy attached to the daemon:
results/images-profile-IMAGE.folded (collapsed stacks, summarised in
…-IMAGE.txt) and …-IMAGE.svg (a flame graph).

    python bench/images.py [--reps 3] [--images busybox,rich,many]
                           [--json results/images.json] [--profile [IMAGE]]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/images.py` puts bench/ first, not the repository
    sys.path.insert(0, str(REPO))

from fusesnap.cli import common as client  # noqa: E402
from fusesnap.client.importer import import_archive  # noqa: E402
from tests import oci  # noqa: E402
from tests.conftest import Daemon  # noqa: E402
from tests.containerd_env import Containerd  # noqa: E402
from tests.containerd_env import unavailable as containerd_unavailable  # noqa: E402
from tests.rootless_env import SYSTEM_PYTHON, USER, as_user  # noqa: E402
from tests.trees import Node, Tree, host_tree  # noqa: E402

NAMESPACE = "bench"
UMOCI_TAG = "bench"
RESULTS = REPO / "results"
PROFILE_IMAGE = "rich"
TIMEOUT = 1200
IMAGES: dict[str, Callable[[], oci.Image]] = {
    "busybox": oci.busybox_image, "rich": oci.rich_image, "many": oci.many_layers_image}


def one_line(failure: str | None) -> str:
    """A failed sample's reason as one line of at most 160 characters."""
    text = " ".join((failure or "no figure").split())
    return text if len(text) < 160 else text[:157] + "…"


class Failed(Exception):
    """A sample's result is wrong (or its backend did not run): no figure."""


# ---------------------------------------------------------------------- who runs what


@dataclass
class Identity:
    """The ordinary user of the rootless rows (yourself when not root), the
    interpreter of the fusesnap daemons and CLI, and Popen arguments."""

    uid: int
    gid: int
    name: str
    python: str
    popen: dict[str, Any]
    """Popen arguments that run a command as the ordinary user."""
    env: dict[str, str]
    """The environment of a fusesnap process run as root."""

    @property
    def root(self) -> bool:
        return os.geteuid() == 0

    def own(self, path: Path) -> Path:
        """Make `path` (a directory) and give it to the ordinary user."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        os.chown(path, self.uid, self.gid)
        return path


def identity() -> Identity:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.getuid())
        path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        return Identity(me.pw_uid, me.pw_gid, me.pw_name, sys.executable, {"env": env}, env)
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        user = pwd.getpwnam(USER)
    popen = as_user(user)
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
    return Identity(user.pw_uid, user.pw_gid, user.pw_name, python, popen, popen["env"])


def python_version(ident: Identity) -> str:
    out = subprocess.run([ident.python, "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True)
    return f"{ident.python} (Python {out.stdout.strip()})"


# ---------------------------------------------------------------------- images


@dataclass
class Prepared:
    """One image's archive, its umoci layout and the tree every backend must make."""

    key: str
    built: oci.Built
    layout: Path
    expected: Tree
    owners: bool
    """Whether the expected owners are real (umoci ran as root)."""
    size: int
    """Bytes of the archive."""

    @property
    def name(self) -> str:
        return self.built.name


def prepare(key: str, work: Path, ident: Identity) -> Prepared:
    """Write the archive, extract its layout for umoci, and unpack the reference
    with umoci (as root; --rootless, owners not compared, when not root)."""
    image = IMAGES[key]()
    if any(layer.zstd for layer in image.layers):
        raise SystemExit(f"{key}: Debian's umoci cannot read zstd layers")
    d = work / key
    d.mkdir()
    d.chmod(0o755)
    built = oci.write_archive(image, d / f"{key}.tar")
    built.path.chmod(0o644)
    layout = d / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(built.path), "-C", str(layout)], check=True)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"][oci.REF_NAME] = UMOCI_TAG  # umoci tags hold no '/'
    (layout / "index.json").write_text(json.dumps(index))
    bundle = d / "reference"
    umoci_unpack(layout, bundle, rootless=not ident.root)
    expected = host_tree(bundle / "rootfs")
    shutil.rmtree(bundle)
    return Prepared(key, built, layout, expected, ident.root, built.path.stat().st_size)


def umoci_unpack(layout: Path, bundle: Path, rootless: bool,
                 popen: dict[str, Any] | None = None) -> None:
    subprocess.run(["umoci", "--log", "error", "unpack", *(["--rootless"] if rootless else []),
                    "--image", f"{layout}:{UMOCI_TAG}", str(bundle)],
                   check=True, capture_output=True, timeout=TIMEOUT, **(popen or {}))


def verify_tree(root: Path, image: Prepared, owners: bool = True, nlink: bool = True) -> None:
    """Failed unless the tree under `root` is the expected one (owners and link
    counts compared if asked); the root directory itself (a snapshotter's, or
    the daemon user's) is not."""
    actual = host_tree(root)
    actual.pop(".", None)
    expected = {p: n for p, n in image.expected.items() if p != "."}
    if not (owners and image.owners and nlink):
        def loose(n: Node) -> Node:
            if not (owners and image.owners):
                n = replace(n, uid=0, gid=0)
            return n if nlink else replace(n, nlink=0)
        actual = {p: loose(n) for p, n in actual.items()}
        expected = {p: loose(n) for p, n in expected.items()}
    problems = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {p}" for p in sorted(set(actual) - set(expected))]
    problems += [f"{p}: {actual[p]}, expected {expected[p]}"
                 for p in sorted(set(actual) & set(expected)) if actual[p] != expected[p]]
    if problems:
        raise Failed(f"{len(problems)} differences from umoci's tree: " + "; ".join(problems[:5]))


# ---------------------------------------------------------------------- backends


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def ctr_import(snapshotter: str) -> Callable[[Identity, Prepared, Path], float]:
    """`ctr images import --snapshotter S` into a fresh containerd (and, for
    fusesnap, a fresh proxy daemon)."""
    def sample(ident: Identity, image: Prepared, work: Path) -> float:
        daemon: Daemon | None = None
        containerd: Containerd | None = None
        try:
            if snapshotter == "fusesnap":
                daemon = Daemon(work / "fusesnap", args=("--role", "proxy"))
                daemon.start([ident.python, *daemon.command()[1:]], env=ident.env)
            containerd = Containerd(work / "containerd", daemon.socket if daemon else None,
                                    namespace=NAMESPACE, log_level="info").start()
            seconds = timed(containerd.ctr, "images", "import", "--snapshotter", snapshotter,
                            str(image.built.path), timeout=TIMEOUT)
            verify_containerd(containerd, snapshotter, image, work / "rootfs")
            return seconds
        finally:
            if containerd is not None:
                containerd.stop()
            if daemon is not None:
                daemon.cleanup()
    return sample


def verify_containerd(containerd: Containerd, snapshotter: str, image: Prepared,
                      target: Path) -> None:
    """The image record, every layer a committed snapshot, and a view of the top
    one: the tree (overlayfs shows merged directories with one link, and a
    lower file with the link count of its layer: link counts not compared)."""
    if image.name not in containerd.ctr("images", "ls", "-q").stdout.split():
        raise Failed(f"containerd has no image {image.name}")
    listed = containerd.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout
    kinds = {f[0]: f[-1] for f in (line.split() for line in listed.splitlines()[1:]) if f}
    missing = [c for c in image.built.chain_ids if kinds.get(c) != "Committed"]
    if missing:
        raise Failed(f"{len(missing)} layers are not committed {snapshotter} snapshots, "
                     f"e.g. {missing[0]}")
    mounts = ctr_view(containerd, snapshotter, image.built.chain_ids[-1])
    if len(mounts) == 1 and mounts[0]["Type"] == "bind":
        verify_tree(Path(mounts[0]["Source"]), image)  # read the directory in place
        return
    if len(mounts) != 1 or mounts[0]["Type"] != "overlay":
        raise Failed(f"unexpected view mounts {mounts}")
    target.mkdir()
    mount_overlay(mounts[0]["Options"], target)
    try:
        verify_tree(target, image, nlink=False)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def ctr_view(containerd: Containerd, snapshotter: str, parent: str) -> list[dict[str, Any]]:
    """The mounts of a new view of `parent`, labelled so that containerd's
    collector keeps it. Nothing holds a view between its creation and its label
    (and the import's lease deletion just scheduled a collection): retry."""
    for attempt in range(5):
        key = f"bench-view-{attempt}"
        out = containerd.ctr("snapshots", "--snapshotter", snapshotter, "view", "--mounts",
                             key, parent).stdout
        if containerd.ctr("snapshots", "--snapshotter", snapshotter, "label", key,
                          "containerd.io/gc.root=bench", check=False).returncode == 0:
            mounts: list[dict[str, Any]] = json.loads(out)
            return mounts
    raise Failed(f"the view of {parent} was collected five times")


def mount_overlay(options: list[str], target: Path) -> None:
    """Mount an overlay read-only, its directories relative to their common
    parent (as containerd does: 62 absolute lowerdirs exceed a page)."""
    lower = next(o for o in options if o.startswith("lowerdir="))
    dirs = lower.removeprefix("lowerdir=").split(":")
    common = os.path.commonpath(dirs)
    relative = "lowerdir=" + ":".join(os.path.relpath(d, common) for d in dirs)
    opts = ",".join(relative if o == lower else o for o in options)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,{opts}", str(target)],
                   cwd=common, check=True, capture_output=True)


def umoci(rootless: bool) -> Callable[[Identity, Prepared, Path], float]:
    def sample(ident: Identity, image: Prepared, work: Path) -> float:
        bundle = (ident.own(work) if rootless else work) / "bundle"
        popen = ident.popen if rootless else None
        seconds = timed(umoci_unpack, image.layout, bundle, rootless, popen)
        verify_tree(bundle / "rootfs", image, owners=not rootless)
        return seconds
    return sample


@contextmanager
def rootless_daemon(ident: Identity, work: Path) -> Iterator[Daemon]:
    """A fresh direct-role daemon run as the ordinary user on `work`."""
    ident.own(work)
    daemon = Daemon(work / "root", socket=work / "sock")
    command = [ident.python, "-m", "fusesnap", "serve", "--root", str(daemon.root),
               "--socket", str(daemon.socket)]
    try:
        yield daemon.start(command, **ident.popen)
    finally:
        daemon.cleanup()


def fusesnap_cli(ident: Identity, daemon: Daemon, *args: str) -> str:
    proc = subprocess.run([ident.python, "-m", "fusesnap", "--socket", str(daemon.socket),
                           "images", *args], capture_output=True, text=True, timeout=TIMEOUT,
                          **ident.popen)
    if proc.returncode != 0:
        raise Failed(f"fusesnap images {args[0]}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def verify_mount(ident: Identity, daemon: Daemon, image: Prepared) -> None:
    """The tree of a `fusesnap images mount` view of the image."""
    verify_tree(Path(fusesnap_cli(ident, daemon, "mount", image.name).strip()), image)


def fusesnap_import(ident: Identity, image: Prepared, work: Path) -> float:
    with rootless_daemon(ident, work) as daemon:
        out: list[str] = []
        seconds = timed(lambda: out.append(
            fusesnap_cli(ident, daemon, "import", str(image.built.path))))
        if out[0].split() != [image.name, image.built.manifest]:
            raise Failed(f"import printed {out[0]!r}")
        verify_mount(ident, daemon, image)
        return seconds


@dataclass(frozen=True)
class Backend:
    key: str
    label: str
    sample: Callable[[Identity, Prepared, Path], float]
    needs_root: bool = False
    anchors: tuple[str, ...] = ()
    """Keys of the rows this one's ratio is to, the first measured one; none:
    an anchor itself."""
    target: float | None = None
    """The largest ratio to the anchor issue 5 accepts."""


BACKENDS = [
    Backend("ctr-native", "ctr import, native", ctr_import("native"), needs_root=True),
    Backend("ctr-overlayfs", "ctr import, overlayfs", ctr_import("overlayfs"),
            needs_root=True, anchors=("ctr-native",)),
    Backend("ctr-fusesnap", "ctr import, fusesnap", ctr_import("fusesnap"),
            needs_root=True, anchors=("ctr-native",), target=1.0),
    Backend("umoci", "umoci unpack (root)", umoci(rootless=False), needs_root=True),
    Backend("umoci-rootless", "umoci unpack --rootless (user)", umoci(rootless=True),
            anchors=("umoci",)),
    # Without root, umoci --rootless is the only umoci there is.
    Backend("fusesnap-import", "fusesnap images import (user)", fusesnap_import,
            anchors=("umoci", "umoci-rootless"), target=1.5),
]


def unavailable(backend: Backend, ident: Identity) -> str | None:
    if backend.key.startswith("ctr-"):
        return containerd_unavailable()
    if backend.needs_root and not ident.root:
        return "needs root"
    if backend.key.startswith("umoci") and not shutil.which("umoci"):
        return "umoci is not installed (make setup)"
    return None


# ---------------------------------------------------------------------- the runs


@dataclass
class Row:
    backend: Backend
    seconds: list[float] = field(default_factory=list)
    failure: str | None = None

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and not self.failure else None


def run(images: list[Prepared], reps: int, ident: Identity, work: Path) -> dict[str, list[Row]]:
    """Every backend `reps` times per image, interleaved; failures recorded."""
    table: dict[str, list[Row]] = {}
    for image in images:
        rows = [Row(b) for b in BACKENDS]
        for row in rows:
            row.failure = unavailable(row.backend, ident)
            if row.failure:
                row.failure = f"not run: {row.failure}"
        for rep in range(reps):
            for row in rows:
                if row.failure:
                    continue
                d = work / f"{image.key}-{row.backend.key}-{rep}"
                d.mkdir()
                os.sync()  # no sample pays for the writeback of the one before
                try:
                    seconds = row.backend.sample(ident, image, d)
                except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired,
                        RuntimeError, AssertionError) as err:
                    row.failure = f"FAILED: {describe(err)}"
                    print(f"  {image.key} {row.backend.key} rep {rep + 1}: {row.failure}",
                          file=sys.stderr)
                else:
                    row.seconds.append(seconds)
                    print(f"  {image.key} {row.backend.key} rep {rep + 1}: {seconds:.2f} s",
                          file=sys.stderr)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
        table[image.key] = rows
    return table


def describe(err: BaseException) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) \
            else (err.stderr or "")
        return f"{' '.join(map(str, err.cmd))}: exit {err.returncode}: {stderr.strip()[-500:]}"
    return str(err).strip()[-1500:]


def anchor_of(row: Row, rows: list[Row]) -> Row | None:
    """The row `row` is compared with: its first anchor that was measured."""
    candidates = [r for key in row.backend.anchors for r in rows if r.backend.key == key]
    return next((r for r in candidates if r.median() is not None),
                candidates[0] if candidates else None)


def ratio(row: Row, rows: list[Row]) -> float | None:
    anchor = anchor_of(row, rows)
    m = row.median()
    a = anchor.median() if anchor else None
    return m / a if m is not None and a else None


def verdict(row: Row, rows: list[Row]) -> str:
    b = row.backend
    anchor = anchor_of(row, rows)
    if anchor is None:
        return "anchor"
    r = ratio(row, rows)
    if b.target is None:
        return f"vs {anchor.backend.label}"
    goal = f"≤ {b.target:g}× {anchor.backend.label}"
    if r is None:
        return f"{goal}: not measured"
    return f"{goal}: {'met' if r <= b.target else 'missed'}"


def report(table: dict[str, list[Row]], images: dict[str, Prepared], reps: int,
           ident: Identity, pyver: str) -> None:
    print(f"images benchmark: {reps} run{'s' * (reps != 1)} per backend, interleaved; "
          "seconds, median (min–max)")
    print("every sample on fresh daemons (containerd, fusesnap) and verified against the tree "
          f"of umoci unpack{'' if ident.root else ' --rootless'}")
    print(f"fusesnap daemons and CLI: {pyver}; rootless rows as {ident.name}; "
          f"{tool_versions()}", flush=True)
    for key, rows in table.items():
        image = images[key]
        size = image.size / 2**20
        layers = len(image.built.layers)
        print(f"\n{key}: {layers} layer{'s' * (layers != 1)}, {size:.1f} MiB archive, "
              f"{len(image.expected) - 1} paths")
        print(f"  {'':34}{'seconds':>22}{'ratio':>8}  target")
        for row in rows:
            m = row.median()
            if m is None:
                failure = one_line(row.failure)
                print(f"  {row.backend.label:34}{'':>22}{'':>8}  {failure}")
                continue
            figure = f"{m:6.2f} ({min(row.seconds):.2f}–{max(row.seconds):.2f})"
            r = ratio(row, rows)
            shown = f"{r:.2f}" if r is not None else ("1.00" if not row.backend.anchors
                                                     else "")
            print(f"  {row.backend.label:34}{figure:>22}{shown:>8}  {verdict(row, rows)}")


def tool_versions() -> str:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n")[0]
        except FileNotFoundError:
            return f"{cmd[0]}: missing"
    ctr = first(["ctr", "--version"]).replace("ctr github.com/containerd/containerd ", "")
    return f"containerd {ctr}; {first(['umoci', '--version'])}"


def as_json(table: dict[str, list[Row]], images: dict[str, Prepared]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rows in table.items():
        image = images[key]
        out[key] = {
            "archive": {"bytes": image.size,
                        "layers": len(image.built.layers), "manifest": image.built.manifest,
                        "paths": len(image.expected) - 1},
            "backends": {r.backend.key: {
                "label": r.backend.label, "seconds": r.seconds, "median": r.median(),
                "anchor": a.backend.key if (a := anchor_of(r, rows)) else None,
                "ratio": ratio(r, rows), "target": r.backend.target,
                "verdict": verdict(r, rows), "failure": r.failure} for r in rows},
        }
    return out


# ---------------------------------------------------------------------- phases and profile


class RpcClock(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sums the wall time of each RPC method from the call to its end (the
    import makes one call at a time, so the sums add up)."""

    def __init__(self) -> None:
        self.rpcs: dict[str, list[float]] = {}  # method -> [calls, seconds]
        self.lock = threading.Lock()

    def _timed(self, method: str, start: float, call: Any) -> Any:
        def done(_: object) -> None:
            with self.lock:
                entry = self.rpcs.setdefault(method, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - start
        call.add_done_callback(done)  # at once for a finished unary call
        return call

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._timed(details.method, time.perf_counter(), continuation(details, request))

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._timed(details.method, time.perf_counter(), continuation(details, request))

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._timed(details.method, time.perf_counter(), continuation(details, requests))

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._timed(details.method, time.perf_counter(), continuation(details, requests))


def phases_client(archive: str, socket: str) -> int:
    """The hidden ``--phases-client ARCHIVE SOCKET`` mode, run as the daemon's
    user: what `fusesnap images import` does, in-process, each RPC timed; JSON out."""
    clock = RpcClock()
    out: dict[str, Any] = {}

    def body(channel: grpc.Channel) -> None:
        start = time.perf_counter()
        done = import_archive(grpc.intercept_channel(channel, clock), archive)
        out["total"] = time.perf_counter() - start
        out["imported"] = [[i.name, i.target.digest] for i in done]

    code = client.run(argparse.Namespace(socket=socket, namespace="default", lease=None), body)
    if code == 0:
        print(json.dumps({**out, "rpcs": clock.rpcs}))
    return code


def timed_phases(ident: Identity, daemon: Daemon, image: Prepared) -> dict[str, Any]:
    proc = subprocess.run([ident.python, str(Path(__file__).resolve()), "--phases-client",
                           str(image.built.path), str(daemon.socket)],
                          capture_output=True, text=True, timeout=TIMEOUT, **ident.popen)
    if proc.returncode != 0:
        raise Failed(f"phases client: {proc.stderr.strip()[-2000:]}")
    phases: dict[str, Any] = json.loads(proc.stdout)
    if phases["imported"] != [[image.name, image.built.manifest]]:
        raise Failed(f"phases client imported {phases['imported']}")
    return phases


def py_spy() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("py-spy", path=path)
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


@contextmanager
def spying(pid: int, output: Path, fmt: str, log: Path) -> Iterator[None]:
    """py-spy recording process `pid` in `fmt` to `output` until the block ends."""
    with open(log, "wb") as f:
        spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", "200",
                                "--threads", "--format", fmt, "--output", str(output)],
                               stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"Sampling process" not in log.read_bytes():
            if spy.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"py-spy did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        if spy.wait(timeout=120) != 0 or not output.exists():
            raise Failed(f"py-spy failed: {log.read_text(errors='replace')[-2000:]}")


def profile(ident: Identity, image: Prepared, work: Path, results: Path) -> dict[str, Any]:
    """Phases of one import, then two imports under py-spy (collapsed stacks,
    flame graph); every import verified."""
    results.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"cli_startup": cli_startup(ident)}
    with rootless_daemon(ident, work / "phases") as daemon:
        out["phases"] = timed_phases(ident, daemon, image)
        verify_mount(ident, daemon, image)
    files = {"folded": results / f"images-profile-{image.key}.folded",
             "svg": results / f"images-profile-{image.key}.svg"}
    for fmt, kind in (("raw", "folded"), ("flamegraph", "svg")):
        with rootless_daemon(ident, work / f"spy-{kind}") as daemon:
            assert daemon.proc is not None
            with spying(daemon.proc.pid, files[kind], fmt, work / f"py-spy-{kind}.log"):
                phases = timed_phases(ident, daemon, image)
            verify_mount(ident, daemon, image)
        out[f"profiled_total_{kind}"] = phases["total"]
    out["files"] = {k: str(v) for k, v in files.items()}
    out["summary"] = summarise(files["folded"].read_text())
    text = profile_text(out, image)
    (results / f"images-profile-{image.key}.txt").write_text(text)
    print(text)
    return out


def cli_startup(ident: Identity) -> float:
    """Median seconds of `fusesnap images import --help`: the CLI's fixed cost."""
    runs = [timed(subprocess.run, [ident.python, "-m", "fusesnap", "images", "import", "--help"],
                  check=True, capture_output=True, **ident.popen) for _ in range(5)]
    return statistics.median(runs)


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

BUCKETS = [  # the outermost frame that matches one names the phase: (function, file, phase)
    ("read_layer", "snapshots/apply.py", "apply 1: decompress, hash, write bytes (gRPC thread)"),
    ("LayerWriter.", "snapshots/apply.py", "apply 2: entries into the layer's rows (trio thread)"),
    ("ContentServicer.Write", "api/content.py", "content ingest: Write (gRPC thread)"),
    ("", "fusesnap/content/", "content store (trio thread)"),
    ("SnapshotsServicer.Commit", "api/snapshots.py", "snapshot commit"),
    ("SnapshotsServicer.Prepare", "api/snapshots.py", "snapshot prepare"),
    ("", "fusesnap/snapshots/", "snapshotter (trio thread)"),
    ("", "fusesnap/leases/", "leases and garbage collection"),
    ("", "fusesnap/images/", "images records"),
    ("", "layerfs/ops.py", "FUSE requests"),
]
LIBRARIES = [("grpc/", "gRPC library (server threads, no fusesnap frame)"),
             ("trio/", "trio run loop (no fusesnap frame)")]


def _phase(func: str, file: str) -> str | None:
    for prefix, where, phase in BUCKETS:
        if (func.startswith(prefix) and file.endswith(where)) if prefix else where in file:
            return phase
    return None


def phase_of(calls: list[tuple[str, str]]) -> str:
    """The phase of one stack (root first)."""
    for call in calls:
        found = _phase(*call)
        if found:
            return found
    leaf_file = calls[-1][1] if calls else ""
    return next((p for lib, p in LIBRARIES if lib in leaf_file), "other")


def _frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text)
    return (m["func"], m["file"]) if m else (text, "")


def summarise(folded: str, top: int = 15) -> dict[str, Any]:
    """Samples by thread, by phase (BUCKETS), by leaf function (self) and by
    fusesnap function (inclusive) from py-spy's collapsed stacks."""
    total = 0
    threads: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        # With --threads the first frame is `thread (TID): NAME`: name pools alike.
        thread = re.sub(r"_\d+$", "", frames[0].partition(": ")[2] or "(name not read)")
        calls = [_frame(f) for f in frames[1:]]
        total += n
        threads[thread] += n
        phases[phase_of(calls)] += n
        if calls:
            func, file = calls[-1]
            leaf[f"{func} ({file})"] += n
        for name in {f"{func} ({file})" for func, file in calls if "fusesnap/" in file}:
            inclusive[name] += n
    return {"samples": total, "threads": threads.most_common(),
            "phases": phases.most_common(), "self": leaf.most_common(top),
            "fusesnap_inclusive": inclusive.most_common(top)}


def profile_text(out: dict[str, Any], image: Prepared) -> str:
    phases = out["phases"]
    total = phases["total"]
    lines = [f"\nprofile: fusesnap images import of {image.key} into a fresh rootless daemon",
             f"CLI start-up (fusesnap images import --help): {out['cli_startup']:.2f} s",
             f"in-process import, each RPC timed by the client: {total:.2f} s"]
    rpc_sum = 0.0
    for method, (calls, seconds) in sorted(phases["rpcs"].items(), key=lambda kv: -kv[1][1]):
        rpc_sum += seconds
        lines.append(f"  {method:58} {int(calls):4} calls {seconds:7.2f} s "
                     f"{100 * seconds / total:5.1f} %")
    lines.append(f"  {'client, between RPCs (archive index, documents)':58} {'':10} "
                 f"{total - rpc_sum:7.2f} s {100 * (total - rpc_sum) / total:5.1f} %")
    s = out["summary"]
    n = s["samples"] or 1
    lines.append(f"\ndaemon under py-spy (200 Hz; threads it sees as active, which include some "
                 f"waiting in C: trio's epoll, gRPC's queues): {s['samples']} samples, the "
                 f"import taking {out['profiled_total_folded']:.2f} s while sampled")

    def block(title: str, items: list[tuple[str, int]]) -> None:
        lines.append(title)
        lines.extend(f"  {c / n * 100:5.1f} %  {name}" for name, c in items)

    block("by thread:", s["threads"])
    block("by phase (outermost fusesnap frame; else the library of the leaf):", s["phases"])
    block("hottest functions (self):", s["self"])
    block("fusesnap functions (inclusive):", s["fusesnap_inclusive"])
    lines.append(f"files: {', '.join(out['files'].values())}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", default="busybox,rich,many",
                        help="comma-separated, of: " + ",".join(IMAGES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", nargs="?", const=PROFILE_IMAGE, default=None,
                        choices=list(IMAGES), metavar="IMAGE",
                        help="time the phases of `fusesnap images import` of IMAGE (default "
                             f"{PROFILE_IMAGE}) and profile the daemon with py-spy "
                             "(results/images-profile-IMAGE.*)")
    parser.add_argument("--phases-client", nargs=2, metavar=("ARCHIVE", "SOCKET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases_client:
        return phases_client(*args.phases_client)
    keys = [k for k in args.images.split(",") if k]
    unknown = [k for k in keys if k not in IMAGES]
    if unknown or args.reps < 0:
        parser.error(f"unknown images {unknown}" if unknown else "--reps must be ≥ 0")
    if args.profile:
        py_spy()
    ident = identity()
    pyver = python_version(ident)
    with tempfile.TemporaryDirectory(prefix="fusesnap-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the ordinary user reads the archives and layouts
        wanted = list(dict.fromkeys(keys + ([args.profile] if args.profile else [])))
        images = {k: prepare(k, work, ident) for k in wanted}
        table = run([images[k] for k in keys], args.reps, ident, work) if args.reps else {}
        if table:
            report(table, images, args.reps, ident, pyver)
        profiled = (profile(ident, images[args.profile], work, RESULTS) if args.profile
                    else None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "reps": args.reps, "python": pyver, "tools": tool_versions(),
            "images": as_json(table, images), "profile": profiled}, indent=2))
    failed = any(r.failure and r.failure.startswith("FAILED") for rows in table.values()
                 for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
