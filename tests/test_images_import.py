"""`fusesnap images import|prepare|mount` (issue 5, part 2, first step): the
real command against a real daemon (direct role), the trees compared file by
file with `umoci unpack` of the same archive (tests/oci.py builds them).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusesnap.client.archive import ArchiveDescriptor, ArchiveError, Platform, resolve, walk
from fusesnap.layertar import LayerError
from tests import oci
from tests.conftest import Daemon, module_daemon
from tests.layer_applier import apply_layer
from tests.trees import assert_same_tree, host_tree, xattrs

COMMAND = [sys.executable, "-m", "fusesnap"]
GC_ROOT = "containerd.io/gc.root"
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.fusesnap"

AS_ROOT = os.geteuid() == 0
UMOCI_AS_ROOT = ("the reference tree is `umoci unpack` as root (owners, devices); "
                 "tests/test_rootless_images.py covers an ordinary user's daemon")

pytestmark = pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("zstd")),
                                reason="needs Debian's umoci and zstd (make setup)")


def layered_image(name: str = "fusesnap.test/layered:1") -> oci.Image:
    """oci.rich_image without its 100 MB layer, its layers compressed in turn
    with zstd, gzip and not at all."""
    layers = [layer for layer in oci.rich_image().layers
              if not any(getattr(e, "path", "") == "data/big" for e in layer.entries)]
    return oci.Image(name, [dataclasses.replace(layer, zstd=i % 3 == 1, gzip=i % 3 == 2)
                            for i, layer in enumerate(layers)])


def small_image(name: str = "fusesnap.test/small:1") -> oci.Image:
    return oci.Image(name, [
        oci.Layer([oci.Dir("s"), oci.File("s/a", b"first layer\n")]),
        oci.Layer([oci.File("s/b", b"second layer\n", 0o600)], zstd=True),
    ])


class Cli:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, "--socket", str(self.daemon.socket), *args],
                              capture_output=True, text=True, timeout=300)

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # not a terminal: no progress bars
        return proc.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args))

    def fails(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        return proc.stderr

    def snapshots(self) -> dict[str, dict[str, object]]:
        return {s["name"]: s for s in self.json("snapshots", "ls", "--json")}  # type: ignore[index, union-attr]

    def blobs(self) -> dict[str, dict[str, object]]:
        return {b["digest"]: b for b in self.json("content", "ls", "--json")}  # type: ignore[index, union-attr]

    def leases(self) -> list[object]:
        return self.json("leases", "ls", "--json")  # type: ignore[return-value]

    def import_(self, built: oci.Built) -> list[dict[str, object]]:
        return self.json("images", "import", str(built.path), "--json")  # type: ignore[return-value]


@dataclass
class Imported:
    built: oci.Built
    expected: Path | None  # umoci's root filesystem (unpacked as root; None when not root)
    result: dict[str, object]  # `images import --json` of it


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "images-import")


@pytest.fixture(scope="module")
def cli(daemon: Daemon) -> Cli:
    return Cli(daemon)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archives")


def _import(cli: Cli, work: Path, image: oci.Image, label: str) -> Imported:
    built = oci.write_archive(image, work / f"{label}.tar")
    [result] = cli.import_(built)
    # Debian's umoci (0.4.7) reads no zstd layers: it unpacks the same image
    # with those layers gzipped (the same tars, so the same tree).
    gzipped = oci.Image(image.name, [dataclasses.replace(layer, zstd=False, gzip=True)
                                     if layer.zstd else layer for layer in image.layers])
    for_umoci = oci.write_archive(gzipped, work / f"{label}-gzip.tar")
    assert for_umoci.diff_ids == built.diff_ids
    expected = oci.umoci_unpack(for_umoci.path, work / f"umoci-{label}") if AS_ROOT else None
    return Imported(built, expected, result)


@pytest.fixture(scope="module")
def busybox(cli: Cli, work: Path) -> Imported:
    return _import(cli, work, oci.busybox_image(), "busybox")


@pytest.fixture(scope="module")
def layered(cli: Cli, work: Path, busybox: Imported) -> Imported:
    return _import(cli, work, layered_image(), "layered")


@pytest.fixture(scope="module", params=["busybox", "layered"])
def imported(request: pytest.FixtureRequest) -> Imported:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def mounted(cli: Cli, imported: Imported) -> Path:
    return Path(cli.ok("images", "mount", imported.built.name).strip())


# --------------------------------------------------------------------------- import


def test_import_reports_name_digest_and_applied_layers(imported: Imported) -> None:
    built = imported.built
    assert imported.result["name"] == built.name
    assert imported.result["digest"] == built.manifest
    assert imported.result["chain_ids"] == built.chain_ids
    # The layered image shares its busybox layer with the busybox image.
    first_new = 1 if built.name.endswith("layered:1") else 0
    assert imported.result["applied"] == built.chain_ids[first_new:]


def test_layered_image_has_every_compression(layered: Imported) -> None:
    manifest = json.loads(tarfile.open(layered.built.path).extractfile(
        f"blobs/sha256/{layered.built.manifest.removeprefix('sha256:')}").read())  # type: ignore[union-attr]
    assert {layer["mediaType"] for layer in manifest["layers"]} == \
        {oci.MEDIA_LAYER, oci.MEDIA_LAYER_GZIP, oci.MEDIA_LAYER_ZSTD}


@pytest.mark.skipif(not AS_ROOT, reason=UMOCI_AS_ROOT)
def test_mount_is_the_tree_umoci_unpacks(mounted: Path, imported: Imported) -> None:
    assert imported.expected is not None
    assert_same_tree(host_tree(mounted), host_tree(imported.expected))


@pytest.mark.skipif(not AS_ROOT, reason=UMOCI_AS_ROOT)
def test_mount_has_the_xattrs_umoci_unpacks(mounted: Path, imported: Imported) -> None:
    assert imported.expected is not None
    assert xattrs(mounted) == xattrs(imported.expected)


def test_mount_is_read_only(mounted: Path) -> None:
    with pytest.raises(OSError):
        (mounted / "new").write_text("x")


def test_content_store_has_every_blob_with_gc_labels(cli: Cli, imported: Imported) -> None:
    built = imported.built
    blobs = cli.blobs()
    assert set(built.blobs) <= set(blobs)
    for digest in built.blobs:
        assert blobs[digest]["size"] == built.sizes[digest]
    manifest_labels = blobs[built.manifest]["labels"]
    assert manifest_labels == {
        "containerd.io/gc.ref.content.config": built.config,
        **{f"containerd.io/gc.ref.content.l.{i}": d for i, d in enumerate(built.layers)}}
    assert blobs[built.config]["labels"] == {REF_SNAPSHOT: built.chain_ids[-1]}


def test_layers_are_a_snapshot_chain_named_by_chain_ids(cli: Cli, imported: Imported) -> None:
    snapshots = cli.snapshots()
    chain = imported.built.chain_ids
    assert [snapshots[c]["parent"] for c in chain] == ["", *chain[:-1]]
    assert {snapshots[c]["kind"] for c in chain} == {"committed"}
    assert not [name for name in snapshots if "-extract-" in name]


def test_import_deletes_its_lease(cli: Cli, imported: Imported) -> None:
    assert cli.leases() == []


def test_second_import_applies_nothing(cli: Cli, imported: Imported) -> None:
    # Nothing applied, by the command's account and by the stores': every
    # snapshot and blob is the same record (same times) as before.
    snapshots, blobs = cli.snapshots(), cli.blobs()
    [again] = cli.import_(imported.built)
    assert again["applied"] == []
    assert again["digest"] == imported.built.manifest
    assert cli.snapshots() == snapshots
    assert cli.blobs() == blobs
    assert cli.leases() == []


def test_images_ls_lists_the_imported_image(cli: Cli, imported: Imported) -> None:
    image = cli.json("images", "get", imported.built.name, "--json")
    assert image["target"]["digest"] == imported.built.manifest  # type: ignore[index]
    assert image["target"]["media_type"] == oci.MEDIA_MANIFEST  # type: ignore[index]


def test_prepare_makes_a_writable_snapshot_on_the_top_layer(cli: Cli, busybox: Imported) -> None:
    path = Path(cli.ok("images", "prepare", busybox.built.name, "work-1").strip())
    (path / "new").write_text("written\n")  # the root directory is the daemon user's
    assert (path / "new").read_text() == "written\n"
    assert (path / "bin/busybox").read_bytes() == oci.BUSYBOX.read_bytes()
    info = cli.json("snapshots", "info", "work-1")
    assert info["kind"] == "active"  # type: ignore[index]
    assert info["parent"] == busybox.built.chain_ids[-1]  # type: ignore[index]
    assert GC_ROOT in info["labels"]  # type: ignore[index]
    cli.ok("snapshots", "rm", "work-1")


def test_mount_with_key_names_the_view(cli: Cli, busybox: Imported) -> None:
    cli.ok("images", "mount", busybox.built.name, "--key", "my-view")
    info = cli.json("snapshots", "info", "my-view")
    assert (info["kind"], info["parent"]) == ("view", busybox.built.chain_ids[-1])  # type: ignore[index]
    cli.ok("snapshots", "rm", "my-view")


def test_prepare_under_a_lease_joins_it_without_a_root_label(cli: Cli,
                                                            busybox: Imported) -> None:
    cli.ok("leases", "create", "--id", "work-lease")
    cli.ok("--lease", "work-lease", "images", "prepare", busybox.built.name, "leased")
    info = cli.json("snapshots", "info", "leased")
    assert GC_ROOT not in info["labels"]  # type: ignore[index]
    assert "leased" in cli.ok("leases", "resources", "work-lease")
    cli.ok("snapshots", "rm", "leased")
    cli.ok("leases", "rm", "work-lease")


def test_prepare_of_unknown_image_is_not_found(cli: Cli) -> None:
    assert "not found" in cli.fails("images", "prepare", "no/such:image", "k")


# --------------------------------------------------------------------------- garbage collection


@pytest.fixture
def fresh(new_daemon: type[Daemon], tmp_path: Path) -> Cli:
    """A CLI on a daemon of its own (a store the test may empty)."""
    return Cli(new_daemon().start())


def test_gc_after_import_keeps_the_image_and_rm_then_gc_removes_it(fresh: Cli,
                                                                    tmp_path: Path) -> None:
    built = oci.write_archive(small_image(), tmp_path / "small.tar")
    fresh.import_(built)
    fresh.ok("gc")
    assert set(fresh.blobs()) == set(built.blobs)
    assert set(fresh.snapshots()) == set(built.chain_ids)
    view = Path(fresh.ok("images", "mount", built.name, "--key", "v").strip())
    assert (view / "s/a").read_text() == "first layer\n"  # s/b is root's, 0600
    fresh.ok("snapshots", "rm", "v")

    fresh.ok("images", "rm", "--sync", built.name)
    fresh.ok("gc")
    assert fresh.blobs() == {}
    assert fresh.snapshots() == {}


# --------------------------------------------------------------------------- bad input


def assert_nothing_left(cli: Cli) -> None:
    """No lease, no image, no active snapshot; after a collection, nothing."""
    assert cli.leases() == []
    assert cli.json("images", "ls", "--json") == []
    assert not [s for s in cli.snapshots().values() if s["kind"] != "committed"]
    cli.ok("gc")
    assert cli.snapshots() == {}
    assert cli.blobs() == {}
    assert cli.json("content", "active", "--json") == []


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.75])
def test_truncated_archive_is_refused(fresh: Cli, tmp_path: Path, fraction: float) -> None:
    # The small archive is 10240 bytes: cut at a header (0.3), in a blob's
    # bytes (0.6), just before the end-of-archive blocks (0.75).
    built = oci.write_archive(small_image(), tmp_path / "small.tar")
    data = built.path.read_bytes()
    built.path.write_bytes(data[:int(len(data) * fraction)])
    err = fresh.fails("images", "import", str(built.path))
    assert f"{built.path} is truncated" in err
    assert_nothing_left(fresh)


def test_layer_whose_diff_id_does_not_match_is_refused(fresh: Cli, tmp_path: Path) -> None:
    real = oci.write_archive(small_image(), tmp_path / "real.tar")
    lying = [real.diff_ids[0], oci.digest(b"not the layer")]
    built = oci.write_archive(small_image(), tmp_path / "lying.tar", config_diff_ids=lying)
    err = fresh.fails("images", "import", str(built.path))
    assert "diff_id mismatch" in err and real.diff_ids[1] in err
    assert_nothing_left(fresh)


def test_entry_with_dotdot_is_refused(fresh: Cli, tmp_path: Path) -> None:
    image = oci.Image("fusesnap.test/evil:1", [
        oci.Layer([oci.Dir("a"), oci.File("a/ok", b"fine\n")]),
        oci.Layer([oci.File("a/../../escape", b"out\n")]),
    ])
    built = oci.write_archive(image, tmp_path / "evil.tar")
    err = fresh.fails("images", "import", str(built.path))
    assert "escapes" in err
    assert not (fresh.daemon.mountpoint / "escape").exists()
    assert not (fresh.daemon.root / "escape").exists()
    assert_nothing_left(fresh)


# --------------------------------------------------------------------------- the applier alone


def _apply(tmp_path: Path, *layers: list[oci.Member]) -> Path:
    target = tmp_path / "root"
    target.mkdir()
    for entries in layers:
        raw = oci.layer_tar(entries)
        with open(tmp_path / "layer.tar", "wb") as f:
            f.write(raw)
        with open(tmp_path / "layer.tar", "rb") as f:
            applied = apply_layer(f, target, expected_diff_id=oci.digest(raw))
        assert applied.diff_id == oci.digest(raw)
    return target


def test_applier_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(LayerError, match="symlink"):
        _apply(tmp_path, [oci.Symlink("evil", str(outside)), oci.File("evil/x", b"out\n")])
    assert list(outside.iterdir()) == []


def test_applier_refuses_a_hard_link_through_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    entries: list[oci.Member] = [oci.Symlink("up", str(tmp_path)), oci.File("f", b"")]
    raw = oci.layer_tar(entries)
    # A hard link whose target goes through the symlink.
    buf = tmp_path / "l.tar"
    with tarfile.open(buf, "w", format=tarfile.PAX_FORMAT) as tar:
        with tarfile.open(fileobj=io.BytesIO(raw)) as src:
            for m in src:
                tar.addfile(m, src.extractfile(m) if m.isreg() else None)
        link = tarfile.TarInfo("stolen")
        link.type, link.linkname = tarfile.LNKTYPE, "up/secret"
        tar.addfile(link)
    target = tmp_path / "root"
    target.mkdir()
    with open(buf, "rb") as f, pytest.raises(LayerError, match="symlink"):
        apply_layer(f, target)
    assert not (target / "stolen").exists()
    assert os.stat(secret).st_nlink == 1


def test_applier_refuses_absolute_names(tmp_path: Path) -> None:
    info = tarfile.TarInfo("/abs")
    buf = tmp_path / "abs.tar"
    with tarfile.open(buf, "w") as tar:
        tar.addfile(info, io.BytesIO(b""))
    target = tmp_path / "root"
    target.mkdir()
    with open(buf, "rb") as f, pytest.raises(LayerError, match="absolute"):
        apply_layer(f, target)


# --------------------------------------------------------------------------- documents


class Blobs:
    """A BlobSource over a dict."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def add(self, media_type: str, doc: object, **extra: object) -> dict[str, object]:
        data = json.dumps(doc).encode()
        self.blobs[oci.digest(data)] = data
        return {"mediaType": media_type, "digest": oci.digest(data), "size": len(data), **extra}

    def read_blob(self, desc: ArchiveDescriptor) -> bytes:
        return self.blobs[desc.digest]

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs


def _platform_index(blobs: Blobs) -> ArchiveDescriptor:
    """An index of two platforms' manifests (one layer each), and a third not there."""
    children = []
    for arch in ("s390x", "amd64"):
        config = blobs.add(oci.MEDIA_CONFIG, {"rootfs": {"diff_ids": [f"sha256:{arch}"]}})
        manifest = blobs.add(oci.MEDIA_MANIFEST, {
            "config": config, "layers": [{"mediaType": oci.MEDIA_LAYER,
                                          "digest": f"sha256:{arch}", "size": 1}]},
            platform={"os": "linux", "architecture": arch})
        children.append(manifest)
    children.append({"mediaType": oci.MEDIA_MANIFEST, "digest": "sha256:" + "0" * 64,
                     "size": 10, "platform": {"os": "linux", "architecture": "riscv64"}})
    index = blobs.add(oci.MEDIA_INDEX, {"manifests": children})
    return ArchiveDescriptor.parse(index, "test")


def test_resolve_picks_the_manifest_of_the_platform_from_an_index() -> None:
    blobs = Blobs()
    target = _platform_index(blobs)
    resolved = resolve(blobs, target, Platform("linux", "amd64"))
    assert resolved.diff_ids == ["sha256:amd64"]
    assert resolved.chain_ids == ["sha256:amd64"]
    with pytest.raises(ArchiveError, match="no manifest for linux/arm64"):
        resolve(blobs, target, Platform("linux", "arm64", "v8"))


def test_walk_labels_only_the_children_the_source_has() -> None:
    blobs = Blobs()
    target = _platform_index(blobs)
    resolved = resolve(blobs, target, Platform("linux", "amd64"))
    labels = {desc.digest: lbls for desc, lbls in walk(blobs, resolved)}
    assert set(labels[target.digest]) == {"containerd.io/gc.ref.content.m.0",
                                   "containerd.io/gc.ref.content.m.1"}
    assert labels[resolved.manifest.digest] == {
        "containerd.io/gc.ref.content.config": resolved.config.digest,
        "containerd.io/gc.ref.content.l.0": "sha256:amd64"}
