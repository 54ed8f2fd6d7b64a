"""Hostile input to the Content API: malformed digests and odd refs (spec §1.4, §3.2).

A digest is either valid or InvalidArgument before it touches the disk; a ref
is an opaque string that never becomes a path. After every test nothing has
appeared outside ROOT/content, and inside it only blobs/<alg>/<hex> and
ingest/<64 hex>/data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests.conftest import PROXY, Daemon, module_daemon
from tests.content_client import (
    COMMIT,
    STAT,
    WRITE,
    WriteStream,
    code,
    ingest,
    read,
    sha,
    status,
    statuses,
)

C = grpc.StatusCode
HEX64 = "a" * 64

FORMAT = "invalid checksum digest format"
LENGTH = "invalid checksum digest length"
UNSUPPORTED = "unsupported digest algorithm"

MALFORMED = [
    ("sha256:../../x", LENGTH),
    ("sha256:../../" + "a" * 58, FORMAT),
    ("sha256:" + "A" * 64, FORMAT),
    ("sha256:" + "a" * 63, LENGTH),
    ("sha256:" + "a" * 65, LENGTH),
    ("sha384:" + "a" * 64, LENGTH),
    ("sha512:" + "g" * 128, FORMAT),
    ("SHA256:" + HEX64, FORMAT),
    ("md5:d41d8cd98f00b204e9800998ecf8427e", UNSUPPORTED),
    ("sha1:" + "a" * 40, UNSUPPORTED),
    ("blake3:" + HEX64, UNSUPPORTED),
    ("../../x:abc", FORMAT),
    ("md5:../etc", FORMAT),
    ("", FORMAT),
    ("sha256", FORMAT),
    ("sha256:", FORMAT),
    (":" + HEX64, FORMAT),
    (HEX64, FORMAT),
    ("sha256:" + HEX64 + "\n", LENGTH),
    (" sha256:" + HEX64, FORMAT),
    ("sha256:" + "a" * 62 + "/x", FORMAT),
    ("sha256:" + "é" * 32, FORMAT),
    ("sha256:" + "é" * 64, LENGTH),
]
IDS = [repr(digest)[:40] for digest, _ in MALFORMED]

ODD_REFS = [
    "a/b/c",
    "../../../escape",
    "..",
    ".",
    "/absolute/path",
    "with spaces and\ttab",
    "ünïcødé-引用-😀",
    "semi;colon|pipe&amp$dollar`tick'quote\"dq",
    "back\\slash",
    "default/1/layer-sha256:" + HEX64,
    "x" * 4000,
    "new\nline",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "badinput", args=PROXY)


def tree(d: Daemon) -> set[Path]:
    """Every path around the daemon's store, except the store's own database,
    content and mount (and the daemon's socket and log beside the root)."""
    skip = {d.root / "content", d.mountpoint}
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(d.root.parent):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n not in skip]
        found.update(here / n for n in dirnames + filenames
                     if not n.startswith("metadata.db"))
    return found


def content_paths_are_well_formed(d: Daemon) -> bool:
    content = d.root / "content"
    for path in content.rglob("*"):
        rel = path.relative_to(content).parts
        ok = (rel in (("blobs",), ("ingest",))
              or (rel[0] == "blobs" and len(rel) == 2 and rel[1] in ("sha256",))
              or (rel[0] == "blobs" and len(rel) == 3 and re.fullmatch("[0-9a-f]{64}", rel[2]))
              or (rel[0] == "ingest" and len(rel) == 2 and re.fullmatch("[0-9a-f]{64}", rel[1]))
              or (rel[0] == "ingest" and len(rel) == 3 and rel[2] == "data"))
        if not ok:
            return False
    return True


@pytest.fixture
def cs(shared: Daemon) -> Iterator[ContentStub]:
    before = tree(shared)
    yield ContentStub(shared.channel)
    assert tree(shared) == before, "something appeared outside ROOT/content"
    assert content_paths_are_well_formed(shared)


def details(fn, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args)
    return err.value.code(), err.value.details()


# --------------------------------------------------------------------------- digests


@pytest.mark.parametrize("digest,reason", MALFORMED, ids=IDS)
def test_info_of_a_malformed_digest_is_invalid_argument(cs, digest, reason):
    got = details(cs.Info, cpb.InfoRequest(digest=digest))
    assert got[0] == C.INVALID_ARGUMENT
    assert reason in got[1]


@pytest.mark.parametrize("digest,reason", MALFORMED, ids=IDS)
def test_read_of_a_malformed_digest_is_invalid_argument(cs, digest, reason):
    assert code(read, cs, digest) == C.INVALID_ARGUMENT


@pytest.mark.parametrize("digest,reason", MALFORMED, ids=IDS)
def test_delete_of_a_malformed_digest_is_invalid_argument(cs, digest, reason):
    assert code(cs.Delete, cpb.DeleteContentRequest(digest=digest)) == C.INVALID_ARGUMENT


@pytest.mark.parametrize("digest,reason", MALFORMED, ids=IDS)
def test_update_of_a_malformed_digest_is_invalid_argument(cs, digest, reason):
    req = cpb.UpdateRequest(info=cpb.Info(digest=digest, labels={"a": "b"}),
                            update_mask=FieldMask(paths=["labels.a"]))
    assert code(cs.Update, req) == C.INVALID_ARGUMENT


@pytest.mark.parametrize("digest,reason", MALFORMED[:8], ids=IDS[:8])
def test_a_malformed_expected_digest_on_the_first_message_is_invalid_argument(
        cs, digest, reason):
    s = WriteStream(cs)
    assert s.fails(action=STAT, ref="malformed-expected", expected=digest) == \
        C.INVALID_ARGUMENT
    assert code(cs.Status, cpb.StatusRequest(ref="malformed-expected")) == C.NOT_FOUND


@pytest.mark.parametrize("digest,reason", MALFORMED[:8], ids=IDS[:8])
def test_a_malformed_expected_digest_at_commit_is_invalid_argument_and_keeps_the_ingest(
        cs, digest, reason):
    s = WriteStream(cs)
    s.send(action=STAT, ref="malformed-commit")
    s.send(action=WRITE, offset=0, data=b"abc")
    assert s.fails(action=COMMIT, offset=3, expected=digest) == C.INVALID_ARGUMENT
    assert status(cs, "malformed-commit").offset == 3
    cs.Abort(cpb.AbortRequest(ref="malformed-commit"))


def test_an_upper_case_hex_digest_of_existing_content_is_still_invalid(cs):
    digest = ingest(cs, "upper", b"upper-case check")
    assert code(cs.Info, cpb.InfoRequest(digest=digest.upper())) == C.INVALID_ARGUMENT
    assert code(cs.Info, cpb.InfoRequest(
        digest="sha256:" + digest[7:].upper())) == C.INVALID_ARGUMENT


def test_a_digest_filter_with_path_characters_only_filters(cs):
    assert [i for b in cs.List(cpb.ListContentRequest(filters=['digest=="../../x"']))
            for i in b.info] == []


# --------------------------------------------------------------------------- refs


@pytest.mark.parametrize("ref", ODD_REFS, ids=[repr(r)[:30] for r in ODD_REFS])
def test_an_odd_ref_is_an_opaque_name_through_the_whole_ingest_life(cs, ref):
    data = b"content of " + ref.encode()
    s = WriteStream(cs)
    s.send(action=STAT, ref=ref, total=len(data))
    s.send(action=WRITE, offset=0, data=data[:5])
    assert s.finish() == C.OK
    st = status(cs, ref)
    assert (st.ref, st.offset) == (ref, 5)
    assert ref in [x.ref for x in statuses(cs)]
    again = WriteStream(cs)
    assert again.send(action=STAT, ref=ref).offset == 5
    again.send(action=WRITE, offset=5, data=data[5:])
    assert again.send(action=COMMIT, offset=len(data)).digest == sha(data)
    assert read(cs, sha(data)) == data
    cs.Delete(cpb.DeleteContentRequest(digest=sha(data)))


@pytest.mark.parametrize("ref", ODD_REFS, ids=[repr(r)[:30] for r in ODD_REFS])
def test_abort_of_an_odd_ref_removes_only_that_ingest(cs, ref):
    s = WriteStream(cs)
    s.send(action=STAT, ref="bystander")
    s.send(action=WRITE, offset=0, data=b"keep me")
    assert s.finish() == C.OK
    s = WriteStream(cs)
    s.send(action=STAT, ref=ref)
    assert s.finish() == C.OK
    cs.Abort(cpb.AbortRequest(ref=ref))
    assert code(cs.Status, cpb.StatusRequest(ref=ref)) == C.NOT_FOUND
    assert status(cs, "bystander").offset == len(b"keep me")
    cs.Abort(cpb.AbortRequest(ref="bystander"))


@pytest.mark.parametrize("ref", ["..", "../../../escape", "/absolute/path"])
def test_status_and_abort_of_an_unknown_path_like_ref_touch_nothing(cs, ref):
    assert code(cs.Status, cpb.StatusRequest(ref=ref)) == C.NOT_FOUND
    cs.Abort(cpb.AbortRequest(ref=ref))


def test_refs_differing_only_in_case_or_slashes_are_different_ingests(cs):
    refs = ["Ref", "ref", "ref/", "/ref", "re/f"]
    for i, ref in enumerate(refs):
        s = WriteStream(cs)
        s.send(action=STAT, ref=ref)
        s.send(action=WRITE, offset=0, data=b"x" * (i + 1))
        assert s.finish() == C.OK
    assert [status(cs, ref).offset for ref in refs] == [1, 2, 3, 4, 5]
    for ref in refs:
        cs.Abort(cpb.AbortRequest(ref=ref))


@pytest.mark.parametrize("rpc", ["Status", "Abort"])
def test_an_empty_ref_is_invalid_argument(cs, rpc):
    request = cpb.StatusRequest(ref="") if rpc == "Status" else cpb.AbortRequest(ref="")
    assert code(getattr(cs, rpc), request) == C.INVALID_ARGUMENT


def test_an_unparsable_ref_filter_is_invalid_argument(cs):
    assert code(statuses, cs, "ref~=(") == C.INVALID_ARGUMENT
