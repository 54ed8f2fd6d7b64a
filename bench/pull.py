"""Registry pull benchmark (issue 20): an image from a loopback registry to an
unpacked tree.

One Debian ``docker-registry`` (distribution 2.8; tests/registry_env.py) runs
on 127.0.0.1, anonymous, plain HTTP, its storage in a temporary directory.
Each test image asked for (rich by default: tests/oci.py's ten layers, one of
them a 100 MB file, uncompressed; busybox; random: busybox and a gzip layer
of a 100 MB file that does not compress, :func:`random_image`) is written once as an OCI archive
without zstd layers, unpacked by ``umoci unpack`` as root into the reference
tree (bench/images.py's ``prepare``), and pushed once to
``127.0.0.1:PORT/fusesnap/IMAGE:1`` with ``skopeo copy --preserve-digests``
(so byte for byte: the same uncompressed 100 MB layer bench/images.py
imports) — none of it timed.
Then, per sample, each backend pulls that reference into a fresh, empty root:

- ``ctr images pull --plain-http --snapshotter native REF`` against a private
  containerd 1.6 (its built-in content store, no proxy plugin; started on a
  fresh root before the sample and stopped after it, untimed): the ``ctr``
  process from start to exit, which fetches every blob and unpacks every layer
  (ctr's pull unpacks by default). This is the anchor.
- ``skopeo copy --quiet --src-tls-verify=false docker://REF oci:DIR:bench``
  then ``umoci unpack --image DIR:bench BUNDLE``, both as root, timed together
  (the row) and each on its own (the two lines under it).
- ``fusesnap images pull REF --plain-http``, the CLI process included, against
  a fresh direct-role ``fusesnap serve`` daemon run as root (started and
  stopped untimed); the FUSE requests the daemon served from its start to the
  end of the pull (``fusesnap status``) are shown next to it.

The fusesnap daemons and CLI run Debian's /usr/bin/python3 with this
environment's packages on PYTHONPATH, as bench/images.py runs them.
Repetitions interleave the backends (rep 1 of each, then rep 2 …), each sample
after an ``os.sync()``. Every sample is verified, untimed: the unpacked tree
must be, path by path, the reference tree (type, mode, owner, link count,
size, symlink target, SHA-256 of regular files) — read from the bind source
of a ``ctr snapshots view`` of the top layer (after checking that containerd
holds the image and every layer as a committed native snapshot named by its
chain ID), from umoci's bundle, or from a ``fusesnap images mount`` view. A
sample that fails posts no figure and its row says why. Target (issue 20), on
medians: ``fusesnap images pull`` ≤ 1.0× ``ctr images pull`` (native).

``--lazy`` adds two rows, run in the same interleaving (see
:func:`lazy_sample`): the image converted once to eStargz (``fusesnap images
convert --estargz``) and pushed to ``…/fusesnap/IMAGE:estargz`` (``fusesnap
images push``), untimed; then on a fresh daemon (``serve --insecure-registry
127.0.0.1:PORT`` where serve has it: a lazy pull's daemon fetches from the
registry itself) the time from the start of
``fusesnap images pull --lazy REF --plain-http`` to the first successful read
of one file of the image (/bin/busybox, whole, its SHA-256 checked) through a
``fusesnap images mount`` directory, against the same with a full ``fusesnap
images pull`` of the same eStargz image. Where ``images pull`` has no
``--lazy`` yet, ``--lazy`` stops the benchmark before anything runs.

``--cri`` adds four rows, in the same interleaving (see
:func:`cri_first_output`), on the eStargz copy (converted and pushed as for
``--lazy``) and a sandbox image (busybox running ``/bin/busybox sleep 3600``,
tests/oci.pause_image, pushed plain with skopeo), untimed: a
fresh containerd 1.6 with its CRI plugin (tests/containerd_env.Cri:
host-network pods, the registry a plain-HTTP mirror of itself) driven as the
kubelet does (tests/cri.py). Per sample a pod is run first, untimed (its
sandbox pulled and started), then the time from the start of CRI's
PullImage of the eStargz reference to the first full line in the log file of
a container of it, created and started in the pod, that runs
``/bin/busybox sha256sum /bin/busybox`` (the log polled every 10 ms); the
PullImage and the CreateContainer + StartContainer that follow it are
parts. Untimed after it: the container exits 0 having printed the SHA-256
of the reference's /bin/busybox, the pod is removed. The rows: containerd
alone (its built-in content store, the native snapshotter: the anchor of the
other two); on a fresh proxy-role fusesnap daemon (``serve --role proxy
--insecure-registry HOST:PORT``) as its snapshotter and content store,
without snapshot annotations (CRI's default: containerd downloads and
applies every layer, the daemon's log must show no layer made from its
TOC), and with them (``disable_snapshot_annotations = false``: each layer a
remote snapshot made from its TOC, the log must say so, its files fetched
when the container reads them); their FUSE requests shown as above. The
fourth row is the floor of any lazy pull through CRI: containerd alone with
the image pulled already, untimed, before the timed PullImage (which then
resolves the reference and finds every layer unpacked): what containerd's
own bookkeeping, runc and the container take, with no layer to fetch.

``--link MBIT/RTT_MS`` (e.g. ``100/20``) puts a modelled network link
between every pull and the registry: images are pushed direct, as above,
but every backend (ctr, skopeo, the fusesnap CLI and daemons, CRI) pulls
from ``127.0.0.1:PROXY/…`` instead, a tests/registry_env.Proxy in the
benchmark's process (``rate``, ``rtt``) that streams the registry's
response bodies in pieces of at most 64 KiB through one token bucket of
MBIT Mbit/s shared by all connections, sends each response's first byte
RTT_MS ms after its request at the earliest, and waits RTT_MS ms more
before a new connection's first request (its TCP handshake; a client that
keeps its connections pays it once); the daemons get
``--insecure-registry`` for the proxy's host. The report's header says the
link.

    python bench/pull.py [--reps 3] [--images rich[,busybox,random]] [--json PATH] [--lazy]
                         [--cri] [--link MBIT/RTT_MS]

Root only (containerd, umoci's owners, the daemons); nothing is contacted but
127.0.0.1, and every wait has a timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/pull.py` puts bench/ first, not the repository
    sys.path.insert(0, str(REPO))

from images import (  # noqa: E402  (bench/images.py)
    IMAGES,
    TIMEOUT,
    UMOCI_TAG,
    Failed,
    Identity,
    Prepared,
    describe,
    identity,
    one_line,
    prepare,
    python_version,
    timed,
    tool_versions,
    umoci_unpack,
    verify_containerd,
    verify_tree,
)
from images import NAMESPACE as CTR_NAMESPACE  # noqa: E402

from tests import oci, registry_env  # noqa: E402
from tests.conftest import Daemon  # noqa: E402
from tests.containerd_env import Containerd, Cri  # noqa: E402
from tests.containerd_env import unavailable as containerd_unavailable  # noqa: E402
from tests.cri import TIMEOUT as CRI_TIMEOUT  # noqa: E402
from tests.cri import CriClient, Pod  # noqa: E402
from tests.registry_env import Proxy, Registry  # noqa: E402
from tests.trees import file_sha256, node  # noqa: E402

REPOSITORY = "fusesnap"
"""Images go to 127.0.0.1:PORT/fusesnap/IMAGE:1 (and …:estargz with --lazy or
--cri; the CRI pods' sandbox image to …/fusesnap/sandbox:1)."""
TAG, ESTARGZ_TAG = "1", "estargz"


def random_image(name: str = "fusesnap.test/random:1") -> oci.Image:
    """busybox and a 100 MB file that does not compress (deterministic
    pseudo-random bytes), gzip layers: the image whose download a lazy pull
    saves (rich's 100 MB file is a repeated pattern that gzip makes tiny)."""
    data = random.Random(20).randbytes(oci.BIG_SIZE)
    return oci.Image(name, [oci.busybox_layer(),
                            oci.Layer([oci.Dir("data"), oci.File("data/random.bin", data)])])


IMAGES["random"] = random_image  # bench/images.py's prepare() builds images by key

PROBE = "./bin/busybox"
"""The file whose first successful read ends a --lazy sample (in every image)."""
SKOPEO_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
NO_LAZY = "fusesnap images pull --lazy is not available yet"


# ---------------------------------------------------------------------- the images


@dataclass
class Pushed:
    """A prepared image (archive, layout, reference tree) and where it is in
    the registry."""

    image: Prepared
    ref: str
    estargz_ref: str | None = None
    """The eStargz copy's reference (with --lazy or --cri)."""
    sandbox_ref: str | None = None
    """The CRI pods' sandbox image (with --cri; the same for every image)."""

    @property
    def key(self) -> str:
        return self.image.key

    def named(self, name: str) -> Prepared:
        """The image as recorded under `name` (what a pull of REF names it)."""
        return replace(self.image, built=replace(self.image.built, name=name))


def push(registry: Registry, image: Prepared) -> Pushed:
    """The image's archive into the registry, untimed, with skopeo
    --preserve-digests (by default skopeo gzips uncompressed layers for a
    registry: the 100 MB layer of a repeated pattern would travel as a few
    hundred KiB), so the registry holds the test image byte for byte."""
    ref = f"{registry.host}/{REPOSITORY}/{image.key}:{TAG}"
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests",
                    "--dest-tls-verify=false", f"oci-archive:{image.built.path}",
                    f"docker://{ref}"], check=True, capture_output=True, timeout=TIMEOUT,
                   env={**SKOPEO_ENV, "HOME": str(registry.directory)})
    return Pushed(image, ref)


def behind(pushed: Pushed, proxy: Proxy) -> Pushed:
    """`pushed` as reached through `proxy` (--link): every reference's host
    the proxy's, the same repositories, tags and digests."""
    def through(ref: str | None) -> str | None:
        return None if ref is None else f"{proxy.host}/{ref.partition('/')[2]}"
    return replace(pushed, ref=f"{proxy.host}/{pushed.ref.partition('/')[2]}",
                   estargz_ref=through(pushed.estargz_ref),
                   sandbox_ref=through(pushed.sandbox_ref))


# ---------------------------------------------------------------------- fusesnap


@contextmanager
def fusesnap_daemon(ident: Identity, work: Path, *args: str) -> Iterator[Daemon]:
    """A fresh direct-role daemon run as root on `work` (`args`: more options
    of `fusesnap serve`)."""
    work.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(work / "fusesnap", args=args)
    try:
        yield daemon.start([ident.python, *daemon.command()[1:]], env=ident.env)
    finally:
        daemon.cleanup()


def fusesnap(ident: Identity, daemon: Daemon, *args: str) -> str:
    """`fusesnap --socket SOCKET ARGS…` as root; its standard output."""
    proc = subprocess.run([ident.python, "-m", "fusesnap", "--socket", str(daemon.socket),
                           *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env=ident.env)
    if proc.returncode != 0:
        raise Failed(f"fusesnap {' '.join(args[:2])}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def fuse_requests(ident: Identity, daemon: Daemon) -> int:
    return int(json.loads(fusesnap(ident, daemon, "status", "--json"))["fuse_requests"])


def mounted(ident: Identity, daemon: Daemon, name: str) -> Path:
    """The directory of a new `fusesnap images mount` view of image `name`."""
    return Path(fusesnap(ident, daemon, "images", "mount", name).strip())


def check_pulled(out: str, ref: str, digest: str | None) -> None:
    """`images pull` prints `NAME DIGEST`; the digest is the pushed manifest's."""
    fields = out.split()
    if len(fields) != 2 or fields[0] != ref or (digest and fields[1] != digest):
        raise Failed(f"images pull printed {out.strip()!r}, expected {ref} {digest or '…'}")


# ---------------------------------------------------------------------- backends


@dataclass
class Sample:
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    fuse_requests: int | None = None


def ctr_pull(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """`ctr images pull --plain-http --snapshotter native REF` into a fresh
    plain containerd."""
    containerd = Containerd(work / "containerd", None, namespace=CTR_NAMESPACE,
                            log_level="info")
    try:
        containerd.start()
        seconds = timed(containerd.ctr, "images", "pull", "--plain-http", "--snapshotter",
                        "native", pushed.ref, timeout=TIMEOUT)
        verify_containerd(containerd, "native", pushed.named(pushed.ref), work / "rootfs")
        return Sample(seconds)
    finally:
        containerd.stop()


def skopeo_umoci(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """`skopeo copy docker://REF oci:DIR:bench`, then `umoci unpack` as root."""
    layout, bundle = work / "layout", work / "bundle"
    copy = timed(subprocess.run, [
        "skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{pushed.ref}",
        f"oci:{layout}:{UMOCI_TAG}"], check=True, capture_output=True, timeout=TIMEOUT,
        env={**SKOPEO_ENV, "HOME": str(work)})
    unpack = timed(umoci_unpack, layout, bundle, False)
    verify_tree(bundle / "rootfs", pushed.image)
    return Sample(copy + unpack, {"skopeo copy": copy, "umoci unpack": unpack})


def fusesnap_pull(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """`fusesnap images pull REF --plain-http` into a fresh daemon."""
    with fusesnap_daemon(ident, work) as daemon:
        out: list[str] = []
        seconds = timed(lambda: out.append(
            fusesnap(ident, daemon, "images", "pull", pushed.ref, "--plain-http")))
        requests = fuse_requests(ident, daemon)
        check_pulled(out[0], pushed.ref, pushed.image.built.manifest)
        verify_tree(mounted(ident, daemon, pushed.ref), pushed.image)
        return Sample(seconds, fuse_requests=requests)


# ---------------------------------------------------------------------- lazy pull (hook)


def lazy_available(ident: Identity) -> bool:
    """Whether `fusesnap images pull --help` mentions --lazy."""
    proc = subprocess.run([ident.python, "-m", "fusesnap", "images", "pull", "--help"],
                          capture_output=True, text=True, timeout=60, env=ident.env)
    return "--lazy" in proc.stdout


_SERVE_HELP: dict[str, str] = {}


def serve_help(ident: Identity) -> str:
    if ident.python not in _SERVE_HELP:
        _SERVE_HELP[ident.python] = subprocess.run(
            [ident.python, "-m", "fusesnap", "serve", "--help"], capture_output=True,
            text=True, timeout=60, env=ident.env).stdout
    return _SERVE_HELP[ident.python]


def registry_options(ident: Identity, ref: str) -> tuple[str, ...]:
    """`serve --insecure-registry HOST:PORT`, where the daemon has it: a lazy
    pull's daemon fetches from the plain-HTTP registry itself."""
    if "--insecure-registry" not in serve_help(ident):
        return ()
    return ("--insecure-registry", ref.partition("/")[0])


def require_lazy(ident: Identity) -> None:
    if not lazy_available(ident):
        raise SystemExit(NO_LAZY)


def push_estargz(ident: Identity, registry: Registry, pushed: Pushed, work: Path) -> None:
    """Once per image, untimed: import the archive into a scratch daemon,
    `images convert --estargz` it, `images push` the copy to …:estargz."""
    ref = f"{registry.host}/{REPOSITORY}/{pushed.key}:{ESTARGZ_TAG}"
    with fusesnap_daemon(ident, work) as daemon:
        name = pushed.image.name
        fusesnap(ident, daemon, "images", "import", str(pushed.image.built.path))
        fusesnap(ident, daemon, "images", "convert", "--estargz", name, ref)
        fusesnap(ident, daemon, "images", "push", ref, ref, "--plain-http")
    shutil.rmtree(work, ignore_errors=True)
    pushed.estargz_ref = ref


def first_read(ident: Identity, pushed: Pushed, work: Path, lazy: bool) -> Sample:
    """On a fresh daemon: from the start of `fusesnap images pull [--lazy]` of
    the eStargz image to the end of the first successful read of PROBE (whole,
    its SHA-256 the reference's) through an `images mount` directory; the
    pull's own time a part. Then, untimed, the whole tree is verified (which,
    after a lazy pull, reads every file through it), the eStargz TOC and
    landmark files at its top allowed."""
    ref = pushed.estargz_ref
    if ref is None:
        raise Failed("the eStargz image was not pushed")
    expected = pushed.image.expected.get(PROBE)
    if expected is None or expected.sha256 is None:
        raise Failed(f"{pushed.key} has no regular file {PROBE}")
    with fusesnap_daemon(ident, work, *registry_options(ident, ref)) as daemon:
        start = time.perf_counter()
        out = fusesnap(ident, daemon, "images", "pull", *(["--lazy"] if lazy else []), ref,
                       "--plain-http")
        pulled = time.perf_counter() - start
        directory = mounted(ident, daemon, ref)
        digest = hashlib.sha256((directory / PROBE).read_bytes()).hexdigest()
        seconds = time.perf_counter() - start
        requests = fuse_requests(ident, daemon)
        check_pulled(out, ref, None)  # a new manifest: the converted layers
        if digest != expected.sha256:
            raise Failed(f"{PROBE} read as sha256:{digest}, expected sha256:{expected.sha256}")
        verify_estargz_tree(directory, pushed.image)
        return Sample(seconds, {"pull": pulled}, requests)


ESTARGZ_FILES = ("stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark")
"""The TOC and landmarks of eStargz: regular files at the top of every layer's
tar, which a plain unpack extracts (as `tar -x`, containerd and umoci do)."""


def verify_estargz_tree(root: Path, image: Prepared) -> None:
    """verify_tree, the eStargz files (regular files only) at the top allowed."""
    extra = {}
    for name in ESTARGZ_FILES:
        st = os.lstat(root / name) if os.path.lexists(root / name) else None
        if st is not None and stat.S_ISREG(st.st_mode):
            n = node(st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size)
            extra[f"./{name}"] = replace(n, sha256=file_sha256(str(root / name)))
    verify_tree(root, replace(image, expected={**image.expected, **extra}))


def lazy_sample(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """HOOK (--lazy): time to first read after `fusesnap images pull --lazy`.
    Everything but the flag exists already; until `images pull --help`
    mentions --lazy this raises SystemExit(NO_LAZY)."""
    require_lazy(ident)
    return first_read(ident, pushed, work, lazy=True)


def full_first_read(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """What lazy_sample is compared with: a full pull of the same eStargz image."""
    return first_read(ident, pushed, work, lazy=False)


# ---------------------------------------------------------------------- CRI (--cri)


CRI_CONTAINER = "probe"
CRI_COMMAND = ("/bin/busybox", "sha256sum", "/bin/busybox")
"""What the timed container runs: its one line of output is PROBE's SHA-256."""
CRI_POLL = 0.01
"""Seconds between two looks at the container's log file."""
SANDBOX = "sandbox"


def push_sandbox(registry: Registry, work: Path) -> str:
    """Once, untimed: the CRI pods' sandbox image, busybox whose command
    (`/bin/busybox sleep 3600`) keeps running (tests/oci.pause_image),
    pushed as it is (gzip, not eStargz) with skopeo; its reference."""
    image = oci.pause_image(f"fusesnap.test/{SANDBOX}:1")
    work.mkdir(parents=True, exist_ok=True)
    built = oci.write_archive(image, work / f"{SANDBOX}.tar")
    ref = f"{registry.host}/{REPOSITORY}/{SANDBOX}:{TAG}"
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests",
                    "--dest-tls-verify=false", f"oci-archive:{built.path}", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=TIMEOUT,
                   env={**SKOPEO_ENV, "HOME": str(registry.directory)})
    shutil.rmtree(work, ignore_errors=True)
    return ref


def await_first_line(log: Path, deadline: float) -> None:
    """Until CRI's log file `log` holds a full line (``TIMESTAMP STREAM F
    TEXT``, either stream), looking every CRI_POLL seconds; Failed at
    `deadline` (time.monotonic())."""
    while True:
        try:
            lines = log.read_bytes().split(b"\n")[:-1]  # written whole: ends with a newline
        except FileNotFoundError:
            lines = []
        if any(line.split(b" ", 3)[2:3] == [b"F"] for line in lines):
            return
        if time.monotonic() > deadline:
            raise Failed(f"no full line in the container's log after {CRI_TIMEOUT:g} s")
        time.sleep(CRI_POLL)


def cri_first_output(ident: Identity, pushed: Pushed, work: Path, daemon: Daemon | None,
                     annotations: bool, warm: bool = False) -> Sample:
    """On a fresh containerd with its CRI plugin (on `daemon`, a fresh
    proxy-role fusesnap, as its snapshotter and content store, or alone:
    its built-in content store and the native snapshotter), driven as the
    kubelet does (tests/cri.py): a host-network pod is run first, untimed
    (CRI pulls the sandbox image and starts it); then from the start of
    CRI's PullImage of the eStargz image to the first full line in the log
    file of a container of it running CRI_COMMAND, created and started in
    the pod (CreateContainer, StartContainer), its log polled every
    CRI_POLL s. Parts: the PullImage alone, and CreateContainer plus
    StartContainer. Then, untimed: the container must exit 0, having printed
    PROBE's SHA-256 and nothing else; with `annotations` the daemon's log must
    show that its layers were made from their TOCs (lazy), without, that none
    was. With `warm`, the image is pulled once before, untimed."""
    ref, sandbox = pushed.estargz_ref, pushed.sandbox_ref
    if ref is None or sandbox is None:
        raise Failed("the eStargz image or the sandbox image was not pushed")
    expected = pushed.image.expected.get(PROBE)
    if expected is None or expected.sha256 is None:
        raise Failed(f"{pushed.key} has no regular file {PROBE}")
    containerd = Containerd(work / "containerd", daemon.socket if daemon else None,
                            log_level="info", cri=Cri(
                                sandbox_image=sandbox, plain_http=(ref.partition("/")[0],),
                                snapshot_annotations=annotations))
    client: CriClient | None = None
    pod: Pod | None = None
    try:
        containerd.start()
        client = CriClient(containerd.socket, work / "pods")
        pod = client.run_pod("bench")
        log = client.log_path(pod, CRI_CONTAINER)
        if warm:
            client.pull(ref)
        start = time.perf_counter()
        client.pull(ref)
        pulled = time.perf_counter() - start
        cid = client.start(pod, CRI_CONTAINER, ref, *CRI_COMMAND)
        started = time.perf_counter() - start
        await_first_line(log, time.monotonic() + CRI_TIMEOUT)
        seconds = time.perf_counter() - start
        requests = fuse_requests(ident, daemon) if daemon else None
        done = client.wait(cid, pod, CRI_CONTAINER)
        want = f"{expected.sha256}  {CRI_COMMAND[-1]}\n"
        if (done.exit_code, done.stdout, done.stderr) != (0, want, ""):
            raise Failed(f"the container exited with {done.exit_code} ({done.reason}), "
                         f"stdout {done.stdout!r}, stderr {done.stderr!r}; expected {want!r}")
        client.remove_pod(pod)
        pod = None
    except grpc.RpcError as err:
        raise Failed(f"CRI: {err.code().name}: {err.details()}; containerd's last errors: "
                     + " | ".join(line for line in containerd.logs().splitlines()
                                  if "level=error" in line)[-1500:]) from err
    finally:
        if client is not None:
            if pod is not None:
                try:
                    client.remove_pod(pod)
                except grpc.RpcError:
                    pass  # containerd.stop() removes what is left
            client.close()
        containerd.stop()
    if daemon is not None:
        lazy = daemon.logs().count("made from its TOC")
        if annotations and not lazy:
            raise Failed("CRI pulled with snapshot annotations but no layer was made from "
                         f"its TOC (not lazy); daemon log: {daemon.logs()[-1500:]}")
        if lazy and not annotations:
            raise Failed(f"{lazy} layers were made from their TOCs without snapshot annotations")
    return Sample(seconds, {"pull": pulled, "create + start": started - pulled}, requests)


def cri_native(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """CRI on containerd alone: its content store, the native snapshotter."""
    return cri_first_output(ident, pushed, work, None, annotations=False)


def cri_floor(ident: Identity, pushed: Pushed, work: Path) -> Sample:
    """CRI on containerd alone with the image there already: the floor."""
    return cri_first_output(ident, pushed, work, None, annotations=False, warm=True)


def cri_fusesnap(annotations: bool) -> Callable[[Identity, Pushed, Path], Sample]:
    """CRI on a fresh proxy-role fusesnap daemon (`serve --role proxy
    --insecure-registry HOST`): with `annotations` containerd's pulls pass
    each layer's annotations to the Prepare (lazy layers), without it
    downloads and applies every layer."""
    def sample(ident: Identity, pushed: Pushed, work: Path) -> Sample:
        ref = pushed.estargz_ref or pushed.ref
        with fusesnap_daemon(ident, work, "--role", "proxy",
                             *registry_options(ident, ref)) as daemon:
            return cri_first_output(ident, pushed, work, daemon, annotations)
    return sample


# ---------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Backend:
    key: str
    label: str
    sample: Callable[[Identity, Pushed, Path], Sample]
    anchor: str | None = None
    """The key of the row this one's ratio is to; None: an anchor itself."""
    target: float | None = None
    """The largest ratio to the anchor issue 20 accepts."""
    goal: str = ""
    """The target as the issue words it."""


BACKENDS = [
    Backend("ctr-native", "ctr images pull, native", ctr_pull),
    Backend("skopeo-umoci", "skopeo copy + umoci unpack", skopeo_umoci, anchor="ctr-native"),
    Backend("fusesnap-pull", "fusesnap images pull", fusesnap_pull, anchor="ctr-native",
            target=1.0, goal="fusesnap ≤ 1.0× ctr pull (native)"),
]
LAZY_BACKENDS = [
    Backend("fusesnap-estargz-full", "fusesnap pull eStargz, to 1st read", full_first_read),
    Backend("fusesnap-estargz-lazy", "fusesnap pull --lazy, to 1st read", lazy_sample,
            anchor="fusesnap-estargz-full", target=0.2,
            goal="pull --lazy to 1st read ≤ 0.2× the full pull"),
]
CRI_BACKENDS = [
    Backend("cri-native", "CRI containerd alone (native)", cri_native),
    Backend("cri-fusesnap-full", "CRI on fusesnap, full", cri_fusesnap(False),
            anchor="cri-native"),
    Backend("cri-fusesnap-lazy", "CRI on fusesnap, lazy", cri_fusesnap(True),
            anchor="cri-native", target=0.2,
            goal="CRI lazy to 1st output ≤ 0.2× containerd's full pull"),
    Backend("cri-floor", "CRI containerd alone, image there", cri_floor,
            anchor="cri-native"),
]


@dataclass
class Row:
    backend: Backend
    samples: list[Sample] = field(default_factory=list)
    failure: str | None = None

    @property
    def seconds(self) -> list[float]:
        return [s.seconds for s in self.samples]

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.samples and not self.failure else None

    def part(self, name: str) -> list[float]:
        return [s.parts[name] for s in self.samples if name in s.parts]

    def parts(self) -> list[str]:
        return list(dict.fromkeys(p for s in self.samples for p in s.parts))

    def fuse_requests(self) -> list[int]:
        return [s.fuse_requests for s in self.samples if s.fuse_requests is not None]


def run(images: list[Pushed], backends: list[Backend], reps: int, ident: Identity,
        work: Path) -> dict[str, list[Row]]:
    """Every backend `reps` times per image, interleaved; failures recorded
    (a failed backend is not run again)."""
    table: dict[str, list[Row]] = {}
    for pushed in images:
        rows = [Row(b) for b in backends]
        for rep in range(reps):
            for row in rows:
                if row.failure:
                    continue
                d = work / f"{pushed.key}-{row.backend.key}-{rep}"
                d.mkdir()
                os.sync()  # no sample pays for the writeback of the one before
                try:
                    sample = row.backend.sample(ident, pushed, d)
                except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired,
                        RuntimeError, AssertionError, OSError) as err:
                    row.failure = f"FAILED: {describe(err)}"
                    print(f"  {pushed.key} {row.backend.key} rep {rep + 1}: {row.failure}",
                          file=sys.stderr)
                else:
                    row.samples.append(sample)
                    print(f"  {pushed.key} {row.backend.key} rep {rep + 1}: "
                          f"{sample.seconds:.2f} s", file=sys.stderr)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
        table[pushed.key] = rows
    return table


def anchor_of(row: Row, rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.backend.key == row.backend.anchor), None)


def ratio(value: float | None, row: Row, rows: list[Row]) -> float | None:
    anchor = anchor_of(row, rows) if row.backend.anchor else row
    a = anchor.median() if anchor else None
    return value / a if value is not None and a else None


def verdict(row: Row, rows: list[Row]) -> str:
    anchor = anchor_of(row, rows)
    if anchor is None:
        return "anchor"
    if row.backend.target is None:
        return f"vs {anchor.backend.label}"
    r = ratio(row.median(), row, rows)
    goal = f"≤ {row.backend.target:g}× {anchor.backend.label}"
    if r is None:
        return f"{goal}: not measured"
    return f"{goal}: {'met' if r <= row.backend.target else 'missed'}"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}–{max(values):.2f})"


def report(table: dict[str, list[Row]], images: dict[str, Pushed], reps: int, pyver: str,
           registry: Registry, proxy: Proxy | None = None) -> None:
    print(f"pull benchmark: {reps} run{'s' * (reps != 1)} per backend, interleaved; "
          "seconds, median (min–max)")
    print(f"docker-registry on {registry.host}, plain HTTP; every sample on a fresh root "
          "(containerd, fusesnap daemon) and verified against the tree of umoci unpack (root)")
    if proxy is not None:
        print(f"registry behind a modelled link: {link_text(proxy)} (a shaping proxy on "
              f"{proxy.host}: one token bucket for every response body, each response's "
              "first byte that late; pushes direct)")
    print(f"fusesnap daemon and CLI: {pyver}, as root; {tool_versions()}; "
          f"{first_line(['skopeo', '--version'])}", flush=True)
    for key, rows in table.items():
        image = images[key].image
        blobs = sum(image.built.sizes.values()) / 2**20
        layers = len(image.built.layers)
        print(f"\n{key}: {images[key].ref}, {layers} layer{'s' * (layers != 1)}, "
              f"{blobs:.1f} MiB of blobs, {len(image.expected) - 1} paths")
        print(f"  {'':36}{'seconds':>22}{'ratio':>7}{'FUSE req.':>11}  target")
        for row in rows:
            m = row.median()
            if m is None:
                failure = one_line(row.failure)
                print(f"  {row.backend.label:36}{'':>22}{'':>7}{'':>11}  {failure}")
                continue
            r = ratio(m, row, rows)
            fuse = row.fuse_requests()
            requests = f"{statistics.median(fuse):.0f}" if fuse else ""
            print(f"  {row.backend.label:36}{spread(row.seconds):>22}"
                  f"{f'{r:.2f}' if r is not None else '':>7}{requests:>11}  "
                  f"{verdict(row, rows)}")
            for part in row.parts():
                values = row.part(part)
                r = ratio(statistics.median(values), row, rows)
                print(f"    {part:34}{spread(values):>22}"
                      f"{f'{r:.2f}' if r is not None else '':>7}")
        for row in rows:
            if row.backend.target is not None:
                r = ratio(row.median(), row, rows)
                state = "not measured" if r is None else \
                    f"{r:.2f}×, {'met' if r <= row.backend.target else 'NOT met'}"
                print(f"  target {row.backend.goal}: {state}")


def link_text(proxy: Proxy) -> str:
    """The modelled link as the report says it: `100 Mbit/s, 20 ms per request
    and per new connection`."""
    rate = f"{proxy.rate * 8 / 1e6:g} Mbit/s" if proxy.rate is not None else "no rate limit"
    return f"{rate}, {proxy.rtt * 1000:g} ms per request and per new connection"


def first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=60).stdout.split("\n")[0]
    except FileNotFoundError:
        return f"{cmd[0]}: missing"


def as_json(table: dict[str, list[Row]], images: dict[str, Pushed]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rows in table.items():
        pushed = images[key]
        image = pushed.image
        out[key] = {
            "ref": pushed.ref, "estargz_ref": pushed.estargz_ref,
            "sandbox_ref": pushed.sandbox_ref,
            "manifest": image.built.manifest, "layers": len(image.built.layers),
            "blob_bytes": sum(image.built.sizes.values()), "paths": len(image.expected) - 1,
            "backends": {r.backend.key: {
                "label": r.backend.label, "seconds": r.seconds, "median": r.median(),
                "min": min(r.seconds) if r.seconds else None,
                "max": max(r.seconds) if r.seconds else None,
                "parts": {p: r.part(p) for p in r.parts()},
                "fuse_requests": r.fuse_requests(),
                "anchor": r.backend.anchor, "ratio": ratio(r.median(), r, rows),
                "target": r.backend.target, "verdict": verdict(r, rows),
                "failure": r.failure} for r in rows},
        }
    return out


# ---------------------------------------------------------------------- main


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "bench/pull.py runs as root (containerd, umoci unpack as root, the daemons)"
    why = containerd_unavailable()
    if why:
        return why
    missing = [t for t in (registry_env.REGISTRY, "skopeo", "umoci") if not shutil.which(t)]
    return f"missing {', '.join(missing)} (make setup)" if missing else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", default="rich",
                        help="comma-separated, of: " + ",".join(IMAGES) + " (default rich)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--lazy", action="store_true",
                        help="also time to first read after `fusesnap images pull --lazy` "
                             "of an eStargz copy, against a full pull of it")
    parser.add_argument("--cri", action="store_true",
                        help="also time CRI's PullImage of the eStargz copy to a container's "
                             "first output line: containerd alone, on fusesnap without and "
                             "with snapshot annotations (lazy)")
    parser.add_argument("--link", metavar="MBIT/RTT_MS", default=None,
                        help="every pull reaches the registry through a proxy that models a "
                             "link of MBIT Mbit/s (shared) and RTT_MS ms per request, "
                             "e.g. 100/20")
    args = parser.parse_args()
    keys = list(dict.fromkeys(k for k in args.images.split(",") if k))
    unknown = [k for k in keys if k not in IMAGES]
    if unknown or not keys or args.reps < 1:
        parser.error(f"unknown images {unknown}" if unknown else
                     "no images" if not keys else "--reps must be ≥ 1")
    shaping: tuple[float, float] | None = None
    if args.link is not None:
        try:
            shaping = registry_env.link(args.link)
        except ValueError as err:
            parser.error(f"--link: {err}")
    why = unavailable()
    if why:
        raise SystemExit(why)
    ident = identity()
    if args.lazy:
        require_lazy(ident)  # before minutes of work, not in the first lazy sample
    pyver = python_version(ident)
    backends = BACKENDS + (LAZY_BACKENDS if args.lazy else []) + \
        (CRI_BACKENDS if args.cri else [])
    with tempfile.TemporaryDirectory(prefix="fusesnap-bench-pull-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        registry = registry_env.start_registry(work / "registry")
        proxy: Proxy | None = None
        try:
            sandbox = push_sandbox(registry, work / SANDBOX) if args.cri else None
            images: dict[str, Pushed] = {}
            for key in keys:
                images[key] = push(registry, prepare(key, work, ident))
                images[key].sandbox_ref = sandbox
                if args.lazy or args.cri:
                    push_estargz(ident, registry, images[key], work / f"{key}-estargz")
            if shaping is not None:  # pushed direct, pulled through the link
                proxy = Proxy(registry.host, rate=shaping[0], rtt=shaping[1])
                images = {key: behind(pushed, proxy) for key, pushed in images.items()}
            table = run(list(images.values()), backends, args.reps, ident, work)
            report(table, images, args.reps, pyver, registry, proxy)
        finally:
            if proxy is not None:
                proxy.stop()
            registry.stop()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "reps": args.reps, "python": pyver,
            "link": None if shaping is None else {
                "mbit_s": shaping[0] * 8 / 1e6, "rtt_ms": shaping[1] * 1000},
            "tools": f"{tool_versions()}; {first_line(['skopeo', '--version'])}",
            "images": as_json(table, images)}, indent=2))
    failed = any(r.failure for rows in table.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
