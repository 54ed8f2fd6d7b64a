"""`fusesnap images convert --estargz NAME NEWNAME` (issue 20): eStargz
layers made from ordinary ones, checked three ways: the blobs against the
format (footer, TOC, gzip members at the TOC's offsets, chunk digests), the
mounted tree against the original image's, and `umoci unpack` of the
exported image against the mount.

What the mount shows: fusesnap's applier is containerd's plain OCI applier,
so an eStargz layer unpacks with its two extra tar entries as files at the
root, ``.no.prefetch.landmark`` (one byte 0x0f, mode 0) and
``stargz.index.json`` (the TOC), as ``ctr``/containerd without
stargz-snapshotter (and umoci) show them; stargz-snapshotter's own
filesystem hides them. The tests compare trees without those two names and
check that they are there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fusesnap import estargz
from tests import oci
from tests.conftest import module_daemon
from tests.test_images_import import Cli
from tests.trees import Tree, assert_same_tree, host_tree, xattrs

NAME = "fusesnap.test/plain:1"
NEW = "fusesnap.test/plain:1-esgz"
EXTRA = {f"./{estargz.NO_PREFETCH_LANDMARK}", f"./{estargz.TOC_NAME}"}
MIB = 1 << 20

BIG = oci.big_content(estargz.CHUNK_SIZE * 2 + 12345)  # three chunks, the last short
EXACT = oci.big_content(estargz.CHUNK_SIZE)[::-1]  # one chunk exactly
FILES = {"d/small": b"small\n", "d/big": BIG, "exact": EXACT, "d/empty": b""}


def source_image() -> oci.Image:
    return oci.Image(NAME, [
        oci.Layer([
            oci.Dir("d"), oci.File("d/small", FILES["d/small"]),
            oci.File("d/empty", b""), oci.File("d/big", BIG, 0o600, 1000, 1000),
            oci.File("d/gone", b"deleted by layer 2\n"),
            oci.Dir("d/opq"), oci.File("d/opq/old", b"hidden by layer 2\n"),
            oci.File("d/x", b"xattrs\n", xattrs={"user.a": b"1", "user.bin": b"\x00\xff"}),
            oci.Dir("d/xd", xattrs={"user.dir": b"on a dir"}),
            oci.Symlink("d/link", "small"), oci.Fifo("d/fifo", 0o640, 7, 7),
            oci.Device("d/null", 1, 3), oci.Device("d/blk", 7, 0, block=True),
        ]),
        oci.Layer([
            oci.Whiteout("d/gone"), oci.Dir("d/opq"), oci.Opaque("d/opq"),
            oci.File("d/opq/new", b"after opaque\n"),
            oci.Dir("d/l"), oci.File("d/l/orig", b"two names\n", 0o640, 1000, 1000),
            oci.HardLink("d/l/hl", "d/l/orig"),
        ], gzip=False),
        oci.Layer([oci.File("exact", EXACT, 0o755),
                   oci.File("d/small", b"rewritten\n", 0o600, 5, 5)], zstd=True),
    ])


@dataclass
class Converted:
    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: dict[str, bytes]
    archive: Path
    digest: str


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    for daemon in module_daemon(tmp_path_factory, "estargz"):
        yield Cli(daemon)


@pytest.fixture(scope="module")
def converted(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    work = tmp_path_factory.mktemp("estargz")
    cli.ok("images", "import", str(oci.write_archive(source_image(), work / "plain.tar").path))
    out = cli.ok("images", "convert", "--estargz", NAME, NEW)
    name, digest = out.split()
    assert name == NEW
    archive = work / "esgz.tar"
    cli.ok("images", "export", NEW, str(archive))
    with tarfile.open(archive) as tar:
        blobs = {"sha256:" + m.name.rsplit("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar if m.name.startswith("blobs/sha256/")}
    manifest = json.loads(blobs[digest])
    config = json.loads(blobs[manifest["config"]["digest"]])
    return Converted(manifest, config, blobs, archive, digest)


def layers(c: Converted) -> list[tuple[dict[str, Any], bytes, str]]:
    return [(d, c.blobs[d["digest"]], diff_id)
            for d, diff_id in zip(c.manifest["layers"], c.config["rootfs"]["diff_ids"],
                                  strict=True)]


# ---------------------------------------------------------------------- the blobs


def test_layers_are_gzip_whose_tar_is_the_config_diff_id(converted: Converted) -> None:
    assert len(converted.manifest["layers"]) == 3
    for desc, blob, diff_id in layers(converted):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        plain = gzip.decompress(blob)
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        ann = desc["annotations"]
        assert ann[estargz.UNCOMPRESSED_SIZE_ANNOTATION] == str(len(plain))
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            names = tar.getnames()
        assert names[0] == estargz.NO_PREFETCH_LANDMARK
        assert names[-1] == estargz.TOC_NAME


def test_footer_names_the_toc_and_the_toc_digest_is_annotated(converted: Converted) -> None:
    for desc, blob, _ in layers(converted):
        foot = blob[-estargz.FOOTER_SIZE:]
        assert len(foot) == 51 and foot[:2] == b"\x1f\x8b"
        assert gzip.decompress(foot) == b""
        offset = int(foot[16:32], 16)  # 10 header + 2 XLEN + "SG" + 2 LEN
        assert foot[12:14] == b"SG" and foot[32:38] == b"STARGZ"
        toc = estargz.read_toc(lambda o, n, b=blob: b[o:o + n], len(blob))
        assert toc.offset == offset
        # The TOC member: the tar entry stargz.index.json and the tar's end.
        member = zlib.decompressobj(31).decompress(blob[offset:-51])
        with tarfile.open(fileobj=io.BytesIO(member)) as tar:
            [info] = tar.getmembers()
            assert info.name == estargz.TOC_NAME
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
        assert data == toc.json
        assert desc["annotations"][estargz.TOC_DIGEST_ANNOTATION] == \
            "sha256:" + hashlib.sha256(data).hexdigest()
        doc = json.loads(data)
        assert doc["version"] == 1


def test_toc_entries_describe_the_tar(converted: Converted) -> None:
    for _, blob, _ in layers(converted):
        toc = estargz.read_toc(lambda o, n, b=blob: b[o:o + n], len(blob))
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            members = [m for m in tar.getmembers() if m.name != estargz.TOC_NAME]
        entries = [e for e in toc.entries if e["type"] != "chunk"]
        assert [e["name"] for e in entries] == [m.name for m in members]
        for e, m in zip(entries, members, strict=True):
            assert e.get("mode", 0) == m.mode and e.get("uid", 0) == m.uid
            if m.isreg():
                assert e["type"] == "reg" and e.get("size", 0) == m.size
            if m.issym() or m.islnk():
                assert e["linkName"] == m.linkname
            if m.ischr() or m.isblk():
                assert (e["devMajor"], e.get("devMinor", 0)) == (m.devmajor, m.devminor)
        kinds = {e["type"] for e in toc.entries}
        assert kinds <= {"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"}


def test_offsets_start_members_of_the_files_bytes(converted: Converted) -> None:
    seen: dict[str, int] = {}
    for _, blob, _ in layers(converted):
        toc = estargz.verify(lambda o, n, b=blob: b[o:o + n], len(blob))  # every digest
        for c in estargz.chunks(toc):
            member = zlib.decompressobj(31).decompress(blob[c.offset:c.end])
            content = FILES.get(c.name, estargz.LANDMARK_CONTENT
                                if c.name == estargz.NO_PREFETCH_LANDMARK else None)
            if content is not None and c.name != "d/small":
                assert member[:c.size] == content[c.chunk_offset:c.chunk_offset + c.size]
            assert c.digest == "sha256:" + hashlib.sha256(member[:c.size]).hexdigest()
            seen[c.name] = seen.get(c.name, 0) + 1
        for e in toc.entries:
            if e["type"] == "reg" and e["name"] in FILES:
                assert e["digest"] == "sha256:" + hashlib.sha256(FILES[e["name"]]).hexdigest() \
                    or e["name"] == "d/small"
    assert seen["d/big"] == 3 and seen["exact"] == 1  # 4 MiB chunks
    assert "d/empty" not in seen  # no content, no member


def test_a_corrupt_chunk_is_refused(converted: Converted) -> None:
    _, blob, _ = layers(converted)[0]
    toc = estargz.read_toc(lambda o, n: blob[o:o + n], len(blob))
    c = next(c for c in estargz.chunks(toc) if c.name == "d/big" and c.chunk_offset)
    plain = bytearray(zlib.decompressobj(31).decompress(blob[c.offset:c.end]))
    plain[100] ^= 1
    with pytest.raises(estargz.EstargzError, match="chunk digest"):
        estargz.read_chunk(oci.gzip_bytes(bytes(plain)), c)
    with pytest.raises(estargz.EstargzError):
        estargz.read_toc(lambda o, n: blob[o:o + n], len(blob) - 1)


def test_converting_an_estargz_layer_again_keeps_one_toc(tmp_path: Path) -> None:
    raw = oci.layer_tar([oci.Dir("a"), oci.File("a/f", b"x" * 100)])
    first, second = tmp_path / "1", tmp_path / "2"
    (tmp_path / "raw").write_bytes(raw)
    with first.open("wb") as out:
        estargz.write_estargz(str(tmp_path / "raw"), out, chunk_size=64)
    (tmp_path / "again").write_bytes(gzip.decompress(first.read_bytes()))
    with second.open("wb") as out:
        estargz.write_estargz(str(tmp_path / "again"), out, chunk_size=64)
    blob = second.read_bytes()
    toc = estargz.verify(lambda o, n: blob[o:o + n], len(blob))
    assert [(e["name"], e["type"]) for e in toc.entries] == [
        (".no.prefetch.landmark", "reg"), ("a", "dir"), ("a/f", "reg"), ("a/f", "chunk")]
    assert blob == first.read_bytes()


# ---------------------------------------------------------------------- the trees


def _tree(root: Path) -> Tree:
    return {p: n for p, n in host_tree(root).items() if p not in EXTRA}


def test_mount_shows_the_original_tree_plus_landmark_and_toc(cli: Cli,
                                                           converted: Converted) -> None:
    plain = Path(cli.ok("images", "mount", NAME).strip())
    new = Path(cli.ok("images", "mount", NEW).strip())
    assert_same_tree(_tree(new), host_tree(plain))
    assert xattrs(new) == xattrs(plain)
    assert (new / estargz.NO_PREFETCH_LANDMARK).read_bytes() == b"\x0f"
    toc = json.loads((new / estargz.TOC_NAME).read_bytes())  # the top layer's
    assert toc["entries"][-1]["name"] == "d/small"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"),
                    reason="umoci unpack as root (devices, owners)")
def test_umoci_unpacks_the_export_to_the_mounted_tree(cli: Cli, converted: Converted) -> None:
    new = Path(cli.ok("images", "mount", NEW).strip())
    with tempfile.TemporaryDirectory() as work:
        rootfs = oci.umoci_unpack(converted.archive, Path(work))
        assert_same_tree(host_tree(new), host_tree(rootfs))
        assert xattrs(new) == xattrs(rootfs)


# ---------------------------------------------------------------------- the command


def test_convert_is_deterministic_and_replaces_only_with_force(cli: Cli,
                                                               converted: Converted) -> None:
    assert "exists" in cli.fails("images", "convert", "--estargz", NAME, NEW)
    done = json.loads(cli.ok("images", "convert", "--estargz", "--force", "--json", NAME, NEW))
    assert done["name"] == NEW and done["digest"] == converted.digest
    assert done["diff_ids"] == converted.config["rootfs"]["diff_ids"]


def test_refusals_record_nothing(cli: Cli, converted: Converted) -> None:
    before = cli.ok("images", "ls", "-q")
    assert "--estargz" in cli.fails("images", "convert", NAME, "fusesnap.test/other:1")
    assert "differ" in cli.fails("images", "convert", "--estargz", NAME, NAME)
    assert "not found" in cli.fails("images", "convert", "--estargz", "fusesnap.test/nope:1",
                                    "fusesnap.test/other:1").lower()
    assert cli.ok("images", "ls", "-q") == before


def test_a_docker_image_keeps_docker_media_types(cli: Cli, tmp_path: Path) -> None:
    name, new = "fusesnap.test/docker:1", "fusesnap.test/docker:1-esgz"
    image = oci.Image(name, [oci.Layer([oci.Dir("k"), oci.File("k/f", b"docker\n")])])
    cli.ok("images", "import", str(oci.write_docker_archive(image, tmp_path / "d.tar").path))
    done = json.loads(cli.ok("images", "convert", "--estargz", "--json", name, new))
    cli.ok("images", "export", new, str(tmp_path / "out.tar"))
    with tarfile.open(tmp_path / "out.tar") as tar:
        manifest = json.loads(tar.extractfile(  # type: ignore[union-attr]
            "blobs/sha256/" + done["digest"].removeprefix("sha256:")).read())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert estargz.TOC_DIGEST_ANNOTATION in layer["annotations"]
    mounted = Path(cli.ok("images", "mount", new).strip())
    assert (mounted / "k/f").read_bytes() == b"docker\n"


def test_the_reader_takes_small_files_sharing_a_member() -> None:
    """Other writers (estargz's MinChunkSize) put several small files in one
    gzip member, each at an innerOffset in its bytes."""
    payload = oci.gzip_bytes(b"hello" + b"world")
    entries = [{"name": n, "type": "reg", "size": 5, "offset": 7, "innerOffset": i,
                "digest": oci.digest(c), "chunkDigest": oci.digest(c)}
               for n, i, c in (("a", 0, b"hello"), ("b", 5, b"world"))]
    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    head = bytes(7)  # a stand-in for what comes before: offsets are the blob's
    toc_tar = tarfile.TarInfo(estargz.TOC_NAME)
    toc_tar.size = len(toc_json)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        t.addfile(toc_tar, io.BytesIO(toc_json))
    blob = head + payload + oci.gzip_bytes(tar.getvalue())
    blob += estargz.footer(len(head) + len(payload))
    toc = estargz.verify(lambda o, n: blob[o:o + n], len(blob))
    assert [(c.name, c.inner_offset, c.end) for c in estargz.chunks(toc)] == [
        ("a", 0, 7 + len(payload)), ("b", 5, 7 + len(payload))]
