"""`fusesnap leases …` and `fusesnap gc`: the real commands, run as subprocesses
against a real daemon.

The lease tests share one daemon that waits an hour before a background
collection, each in a namespace of its own; the tests that collect start
their own daemon.
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.cli.leases import duration_arg
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from tests.conftest import Daemon, module_daemon
from tests.content_client import STAT, WriteStream, ingest, sha

FUSESNAP = shutil.which("fusesnap", path=str(Path(sys.executable).parent))
COMMAND = [FUSESNAP] if FUSESNAP else [sys.executable, "-m", "fusesnap"]
RFC3339_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
EXPIRE = "containerd.io/gc.expire"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "cli-leases", args=("--gc-delay", "3600"))


_serial = itertools.count(1)


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"cli-{next(_serial)}"


def run(daemon: Daemon, *args: str, ns: str = "default") -> subprocess.CompletedProcess[bytes]:
    """`fusesnap --socket SOCKET -n NS ARGS…`, captured."""
    return subprocess.run([*COMMAND, "--socket", str(daemon.socket), "-n", ns, *args],
                          capture_output=True, timeout=60)


def ok(daemon: Daemon, *args: str, ns: str = "default") -> str:
    proc = run(daemon, *args, ns=ns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    return proc.stdout.decode()


def fails(daemon: Daemon, *args: str, ns: str = "default", code: int = 1) -> str:
    proc = run(daemon, *args, ns=ns)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stdout == b""
    return proc.stderr.decode()


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


def leases(daemon: Daemon, ns: str) -> dict[str, dict[str, str]]:
    """id -> labels of the namespace's leases, through the API."""
    resp = LeasesStub(daemon.channel).List(lpb.ListRequest(),
                                           metadata=[("containerd-namespace", ns)])
    return {lease.id: dict(lease.labels) for lease in resp.leases}


def create(daemon: Daemon, ns: str, lease: str, **labels: str) -> None:
    """Set-up through the API (a subprocess costs a second)."""
    LeasesStub(daemon.channel).Create(lpb.CreateRequest(id=lease, labels=labels),
                                      metadata=[("containerd-namespace", ns)])


def add(daemon: Daemon, ns: str, lease: str, rtype: str, rid: str) -> None:
    LeasesStub(daemon.channel).AddResource(
        lpb.AddResourceRequest(id=lease, resource=lpb.Resource(type=rtype, id=rid)),
        metadata=[("containerd-namespace", ns)])


def resources(daemon: Daemon, ns: str, lease: str) -> list[tuple[str, str]]:
    resp = LeasesStub(daemon.channel).ListResources(
        lpb.ListResourcesRequest(id=lease), metadata=[("containerd-namespace", ns)])
    return [(r.type, r.id) for r in resp.resources]


def exists(daemon: Daemon, digest: str) -> bool:
    try:
        ContentStub(daemon.channel).Info(cpb.InfoRequest(digest=digest))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


# ---------------------------------------------------------------------- create


def test_create_with_an_id_prints_it_and_stores_the_labels(daemon, ns):
    out = ok(daemon, "leases", "create", "--id", "build-1", "--label", "a=1",
             "--label", "b=2", ns=ns)
    assert out == "build-1\n"
    assert leases(daemon, ns) == {"build-1": {"a": "1", "b": "2"}}


def test_create_without_an_id_prints_the_generated_one(daemon, ns):
    first = ok(daemon, "leases", "create", ns=ns).strip()
    second = ok(daemon, "lease", "create", ns=ns).strip()
    assert first and second and first != second
    assert sorted(leases(daemon, ns)) == sorted([first, second])


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("30m", 1800), ("90s", 90),
                                          ("1h30m", 5400), ("1.5h", 5400), ("0s", 0)])
def test_durations_are_hours_minutes_and_seconds_as_in_go(text, seconds):
    assert duration_arg(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "5x", "h", "-1h", "1h 30m", "1d", "1h30"])
def test_other_durations_are_rejected(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration_arg(text)


def test_create_expire_sets_the_expiry_label_to_now_plus_the_duration(daemon, ns):
    before = time.time()
    lease = ok(daemon, "leases", "create", "--expire", "1h30m", ns=ns).strip()
    after = time.time()
    value = leases(daemon, ns)[lease][EXPIRE]
    assert RFC3339_SECOND.match(value), value
    when = calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
    assert before + 5400 <= when <= after + 5400 + 1


def test_create_with_a_bad_duration_is_a_usage_error(daemon, ns):
    err = fails(daemon, "leases", "create", "--expire=-1h", ns=ns, code=2)
    assert "expected a duration such as 24h" in err
    assert leases(daemon, ns) == {}


def test_create_of_an_existing_id_fails_in_one_line(daemon, ns):
    create(daemon, ns, "dup")
    err = fails(daemon, "leases", "create", "--id", "dup", ns=ns)
    assert err == 'fusesnap: already exists: lease "dup"\n'


def test_create_json_prints_the_lease(daemon, ns):
    doc = json.loads(ok(daemon, "leases", "create", "--id", "j", "--label", "k=v",
                        "--json", ns=ns))
    assert set(doc) == {"id", "created_at", "labels"}
    assert (doc["id"], doc["labels"]) == ("j", {"k": "v"})
    assert RFC3339_UTC.match(doc["created_at"])


def test_a_malformed_namespace_fails_in_one_line(daemon):
    err = fails(daemon, "leases", "create", ns="bad/ns")
    assert err.startswith("fusesnap: invalid argument: identifier")
    assert err.count("\n") == 1


# ---------------------------------------------------------------------- ls


def test_ls_prints_a_table_of_the_namespace_leases(daemon, ns):
    create(daemon, ns, "b", team="infra", x="1")
    create(daemon, ns, "a")
    create(daemon, ns + "-other", "elsewhere")
    rows = table(ok(daemon, "leases", "ls", ns=ns))
    assert rows[0] == ["ID", "CREATED", "LABELS"]
    assert [(r[0], r[2]) for r in rows[1:]] == [("a", "-"), ("b", "team=infra,x=1")]
    assert all(RFC3339_SECOND.match(r[1]) for r in rows[1:])


def test_ls_filters_are_or_ed(daemon, ns):
    for lease, value in (("a", "1"), ("b", "2"), ("c", "3")):
        create(daemon, ns, lease, k=value)
    assert ok(daemon, "leases", "ls", "-q", "labels.k==1", "id==c", ns=ns) == "a\nc\n"


def test_ls_json_prints_every_lease(daemon, ns):
    create(daemon, ns, "a", k="v")
    doc = json.loads(ok(daemon, "leases", "list", "--json", ns=ns))
    assert [(x["id"], x["labels"]) for x in doc] == [("a", {"k": "v"})]
    assert RFC3339_UTC.match(doc[0]["created_at"])


def test_ls_of_an_empty_namespace_prints_the_header_only(daemon, ns):
    assert ok(daemon, "leases", "ls", ns=ns) == "ID  CREATED  LABELS\n"


def test_ls_with_an_invalid_filter_fails_in_one_line(daemon, ns):
    err = fails(daemon, "leases", "ls", "id==", ns=ns)
    assert err.startswith("fusesnap: invalid argument: ")
    assert err.count("\n") == 1


# ---------------------------------------------------------------------- rm


def test_rm_deletes_the_leases(daemon, ns):
    for lease in ("a", "b", "c"):
        create(daemon, ns, lease)
    assert ok(daemon, "leases", "rm", "a", "c", ns=ns) == ""
    assert sorted(leases(daemon, ns)) == ["b"]


def test_rm_stops_at_the_first_missing_lease(daemon, ns):
    create(daemon, ns, "a")
    create(daemon, ns, "c")
    err = fails(daemon, "leases", "rm", "a", "missing", "c", ns=ns)
    assert err == 'fusesnap: rm missing: not found: lease "missing": lease does not exist\n'
    assert sorted(leases(daemon, ns)) == ["c"]


def test_rm_sync_returns_after_what_the_lease_held_is_collected(new_daemon):
    d = new_daemon(args=("--gc-delay", "3600")).start()
    create(d, "default", "l")
    proc = subprocess.run([*COMMAND, "--socket", str(d.socket), "--lease", "l",
                           "content", "ingest", "r"], input=b"held by l",
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert resources(d, "default", "l") == [("content", sha(b"held by l"))]
    ok(d, "leases", "rm", "--sync", "l")
    assert not exists(d, sha(b"held by l"))


# ---------------------------------------------------------------------- resources


def test_add_then_resources_lists_them_as_a_table(daemon, ns):
    create(daemon, ns, "l")
    assert ok(daemon, "leases", "add", "l", "snapshots/fusesnap", "key one", ns=ns) == ""
    ok(daemon, "leases", "add", "l", "content", D1, ns=ns)
    ok(daemon, "leases", "add", "l", "ingests", "ref-1", ns=ns)
    assert table(ok(daemon, "leases", "resources", "l", ns=ns)) == [
        ["TYPE", "ID"], ["content", D1], ["ingests", "ref-1"],
        ["snapshots/fusesnap", "key one"]]


def test_resources_json(daemon, ns):
    create(daemon, ns, "l")
    add(daemon, ns, "l", "content", D2)
    doc = json.loads(ok(daemon, "leases", "resources", "--json", "l", ns=ns))
    assert doc == [{"type": "content", "id": D2}]


def test_remove_drops_one_resource(daemon, ns):
    create(daemon, ns, "l")
    add(daemon, ns, "l", "content", D1)
    add(daemon, ns, "l", "content", D2)
    assert ok(daemon, "leases", "remove", "l", "content", D1, ns=ns) == ""
    assert resources(daemon, ns, "l") == [("content", D2)]


def test_add_of_a_malformed_type_fails_in_one_line(daemon, ns):
    create(daemon, ns, "l")
    err = fails(daemon, "leases", "add", "l", "content/x", D1, ns=ns)
    assert err == 'fusesnap: invalid argument: invalid resource type "content/x"\n'


def test_add_of_an_unknown_type_fails_in_one_line(daemon, ns):
    create(daemon, ns, "l")
    err = fails(daemon, "leases", "add", "l", "containers", "c1", ns=ns)
    assert err == 'fusesnap: unimplemented: resource type "containers" not supported yet\n'


def test_add_of_content_that_is_not_a_digest_fails(daemon, ns):
    create(daemon, ns, "l")
    err = fails(daemon, "leases", "add", "l", "content", "nope", ns=ns)
    assert err.startswith('fusesnap: invalid argument: invalid content resource id "nope"')


def test_resources_of_a_missing_lease_fails_in_one_line(daemon, ns):
    err = fails(daemon, "leases", "resources", "missing", ns=ns)
    assert err == 'fusesnap: not found: lease "missing": lease does not exist\n'


def test_the_global_lease_option_makes_created_snapshots_join_it(daemon, ns):
    create(daemon, ns, "l")
    ok(daemon, "--lease", "l", "snapshots", "prepare", f"{ns}/a", ns=ns)
    assert resources(daemon, ns, "l") == [("snapshots/fusesnap", f"{ns}/a")]


def test_the_global_lease_option_with_an_unknown_lease_fails(daemon, ns):
    err = fails(daemon, "--lease", "never", "snapshots", "prepare", f"{ns}/a", ns=ns)
    assert err == 'fusesnap: not found: lease "never": lease does not exist\n'


# ---------------------------------------------------------------------- gc


@pytest.fixture
def collectable(new_daemon: type[Daemon]) -> tuple[Daemon, str]:
    """A daemon holding one unreferenced blob, one snapshot chain of two, one
    expired lease in namespace `ns1` and one leased blob; the unreferenced
    blob's digest."""
    d = new_daemon(args=("--gc-delay", "3600")).start()
    cs = ContentStub(d.channel)
    loose = ingest(cs, "r1", b"nobody holds this")
    create(d, "default", "keep")
    create(d, "ns1", "old", **{EXPIRE: "2000-01-01T00:00:00Z"})
    add(d, "default", "keep", "content", ingest(cs, "r2", b"kept"))
    d.prepare("base")
    d.commit("base-c", "base")
    d.prepare("child", "base-c")
    return d, loose


def test_gc_prints_each_removed_object_and_a_summary(collectable):
    d, loose = collectable
    lines = ok(d, "gc").splitlines()
    assert lines[:-1] == [f"content {loose}", "snapshot child", "snapshot base-c",
                          "lease ns1/old (expired)"]
    assert re.fullmatch(r"removed 1 blob, 0 ingests, 2 snapshots, 1 expired lease "
                        r"in \d+\.\d{3}s", lines[-1]), lines[-1]
    assert not exists(d, loose)
    assert exists(d, sha(b"kept"))
    assert leases(d, "ns1") == {}


def test_gc_dry_run_says_would_remove_and_removes_nothing(collectable):
    d, loose = collectable
    lines = ok(d, "gc", "--dry-run").splitlines()
    assert lines[:-1] == [f"content {loose}", "snapshot child", "snapshot base-c",
                          "lease ns1/old (expired)"]
    assert lines[-1].startswith("would remove 1 blob, 0 ingests, 2 snapshots, "
                                "1 expired lease in ")
    assert exists(d, loose)
    assert sorted(leases(d, "ns1")) == ["old"]


def test_gc_json_prints_the_report(collectable):
    d, loose = collectable
    doc = json.loads(ok(d, "gc", "--json"))
    assert set(doc) == {"dry_run", "content", "ingests", "snapshots", "leases", "seconds"}
    assert (doc["dry_run"], doc["content"], doc["ingests"], doc["snapshots"], doc["leases"]) \
        == (False, [loose], [], ["child", "base-c"], [{"namespace": "ns1", "id": "old"}])
    assert 0 <= doc["seconds"] < 60


def test_gc_with_nothing_to_remove_prints_only_the_summary(collectable):
    d, _ = collectable
    ok(d, "gc")
    out = ok(d, "gc")
    assert re.fullmatch(r"removed 0 blobs, 0 ingests, 0 snapshots, 0 expired leases "
                        r"in \d+\.\d{3}s\n", out), out


def test_gc_counts_ingests_in_the_singular_and_plural(new_daemon):
    d = new_daemon(args=("--gc-delay", "3600", "--ingest-grace", "0")).start()
    cs = ContentStub(d.channel)
    for ref in ("i1", "i2"):
        s = WriteStream(cs)
        s.send(action=STAT, ref=ref)
        assert s.finish() == grpc.StatusCode.OK
    lines = ok(d, "gc").splitlines()
    assert lines[:-1] == ["ingest i1", "ingest i2"]
    assert lines[-1].startswith("removed 0 blobs, 2 ingests, 0 snapshots, 0 expired leases")


# ---------------------------------------------------------------------- the proxy role


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "cli-leases-proxy", args=("--role", "proxy"))


@pytest.mark.parametrize("args", [("leases", "ls"), ("leases", "create"),
                                  ("leases", "rm", "x"), ("leases", "resources", "x"),
                                  ("gc",), ("gc", "--dry-run")])
def test_against_a_proxy_daemon_the_commands_say_why_they_fail(proxy, args):
    err = fails(proxy, *args)
    assert err.startswith("fusesnap: the daemon does not serve ")
    assert "proxy role" in err
    assert err.count("\n") == 1


def test_resources_quiet_prints_type_and_id_a_line(daemon, ns):
    create(daemon, ns, "l")
    add(daemon, ns, "l", "content", D2)
    assert ok(daemon, "leases", "resources", "-q", "l", ns=ns) == f"content {D2}\n"
