"""`fusesnap content …`: the real command, run as a subprocess against a real daemon."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fusesnap.cli.common import GC_ROOT
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from tests.conftest import PROXY, Daemon, module_daemon
from tests.content_client import (
    STAT,
    WRITE,
    MiB,
    WriteStream,
    code,
    info,
    ingest,
    sha,
    statuses,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
FUSESNAP = shutil.which("fusesnap", path=str(Path(sys.executable).parent))
COMMAND = [FUSESNAP] if FUSESNAP else [sys.executable, "-m", "fusesnap"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "cli-content", args=PROXY)


@pytest.fixture
def cs(daemon: Daemon) -> ContentStub:
    return ContentStub(daemon.channel)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> bytes:
    """Bytes no other test writes."""
    return f"content of {request.node.name}\n".encode()


def run(daemon: Daemon, *args: str, input: bytes | None = None, stdin: object = None,
        socket: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """`fusesnap --socket SOCKET content ARGS…`, captured."""
    return subprocess.run(
        [*COMMAND, "--socket", str(socket or daemon.socket), "content", *args],
        input=input, stdin=stdin, capture_output=True, timeout=60)  # type: ignore[call-overload]


def ok(daemon: Daemon, *args: str, input: bytes | None = None, stdin: object = None) -> str:
    proc = run(daemon, *args, input=input, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    return proc.stdout.decode()


def fails(daemon: Daemon, *args: str, input: bytes | None = None) -> str:
    proc = run(daemon, *args, input=input)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == b""
    return proc.stderr.decode()


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


# ---------------------------------------------------------------------- ingest


def test_ingest_stores_standard_input_and_prints_its_digest(daemon, cs, unique):
    out = ok(daemon, "ingest", "ref-a", input=unique)
    assert out == f"{sha(unique)}\n"
    assert info(cs, sha(unique)).size == len(unique)
    assert statuses(cs, 'ref=="ref-a"') == []


def test_ingest_of_more_than_one_chunk_from_a_pipe_is_byte_exact(daemon, cs):
    data = os.urandom(3 * MiB + 5)
    assert ok(daemon, "ingest", "ref-pipe", input=data) == f"{sha(data)}\n"
    assert b"".join(r.data for r in cs.Read(cpb.ReadContentRequest(digest=sha(data)))) == data


def test_ingest_sets_the_labels_of_label_options(daemon, cs, unique):
    ok(daemon, "ingest", "ref-l", "--label", "a=1", "--label", "b=2", input=unique)
    labels = dict(info(cs, sha(unique)).labels)
    assert labels.pop(GC_ROOT)  # issue 19: work made with the CLI stays
    assert labels == {"a": "1", "b": "2"}


def test_ingest_with_no_gc_root_sets_only_the_labels_asked_for(daemon, cs, unique):
    ok(daemon, "ingest", "ref-n", "--label", "a=1", "--no-gc-root", input=unique)
    assert dict(info(cs, sha(unique)).labels) == {"a": "1"}


def test_ingest_with_the_right_expected_digest_and_size_succeeds(daemon, unique):
    out = ok(daemon, "ingest", "ref-e", "--expected-digest", sha(unique),
             "--expected-size", str(len(unique)), input=unique)
    assert out == f"{sha(unique)}\n"


def test_ingest_with_a_wrong_expected_digest_fails_and_leaves_the_ingest(daemon, cs, unique):
    err = fails(daemon, "ingest", "ref-wd", "--expected-digest", sha(b"other"), input=unique)
    assert err.startswith("fusesnap: failed precondition: unexpected commit digest")
    assert [s.offset for s in statuses(cs, 'ref=="ref-wd"')] == [len(unique)]
    assert code(cs.Info, cpb.InfoRequest(digest=sha(unique))) == grpc.StatusCode.NOT_FOUND
    cs.Abort(cpb.AbortRequest(ref="ref-wd"))


def test_ingest_with_a_wrong_expected_size_fails_and_leaves_the_ingest(daemon, cs, unique):
    err = fails(daemon, "ingest", "ref-ws", "--expected-size", "1", input=unique)
    assert err == (f"fusesnap: failed precondition: unexpected commit size {len(unique)}, "
                   "expected 1\n")
    assert [s.offset for s in statuses(cs, 'ref=="ref-ws"')] == [len(unique)]
    cs.Abort(cpb.AbortRequest(ref="ref-ws"))


def test_ingest_of_content_already_present_prints_its_digest(daemon, cs, unique):
    ingest(cs, "first", unique)
    assert ok(daemon, "ingest", "second", input=unique) == f"{sha(unique)}\n"
    assert statuses(cs, 'ref=="second"') == []


def test_ingest_with_an_expected_digest_already_present_sends_nothing(daemon, cs, unique):
    ingest(cs, "first-x", unique)
    out = ok(daemon, "ingest", "second-x", "--expected-digest", sha(unique),
             input=b"different bytes")
    assert out == f"{sha(unique)}\n"
    assert statuses(cs, 'ref=="second-x"') == []


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_ingest_resumes_an_unfinished_ingest_of_the_same_ref(daemon, cs, tmp_path, source):
    data = os.urandom(2 * MiB + 1)
    ref = f"resume-{source}"
    s = WriteStream(cs)
    s.send(action=STAT, ref=ref)
    s.send(action=WRITE, offset=0, data=data[:MiB + 7])
    s.finish()
    path = tmp_path / "data"
    path.write_bytes(data)
    if source == "file":
        with open(path, "rb") as f:
            proc = run(daemon, "ingest", ref, stdin=f)
    else:
        proc = run(daemon, "ingest", ref, input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{sha(data)}\n"
    assert proc.stderr.decode() == f"fusesnap: resuming ingest {ref} at {MiB + 7} bytes\n"


def test_ingest_shows_a_progress_bar_with_bytes_per_second_on_a_terminal(daemon, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(3 * MiB))
    master, slave = pty.openpty()
    with open(path, "rb") as f:
        proc = subprocess.Popen(
            [*COMMAND, "--socket", str(daemon.socket), "content", "ingest", "tty-ref"],
            stdin=f, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    stdout = proc.stdout.read() if proc.stdout else b""
    assert proc.wait(timeout=60) == 0
    assert stdout.decode() == f"{sha(path.read_bytes())}\n"
    text = shown.decode()
    assert "tty-ref [" in text and "3.0 MiB/3.0 MiB" in text
    assert re.search(r"[\d.]+ (B|KiB|MiB|GiB)/s", text)


def test_ingest_with_an_empty_ref_is_invalid_argument(daemon, unique):
    assert fails(daemon, "ingest", "", input=unique) == \
        "fusesnap: invalid argument: first message must have a reference\n"


def test_ingest_with_a_negative_expected_size_is_a_usage_error(daemon, unique):
    proc = run(daemon, "ingest", "r", "--expected-size", "-1", input=unique)
    assert proc.returncode == 2


# ---------------------------------------------------------------------- get


def test_get_writes_the_blob_to_standard_output(daemon, cs):
    data = os.urandom(MiB + 3)
    digest = ingest(cs, "get-me", data)
    proc = run(daemon, "get", digest)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, data, b"")


def test_get_of_an_absent_digest_is_not_found(daemon):
    assert fails(daemon, "get", sha(b"absent")) == \
        f"fusesnap: not found: content {sha(b'absent')}\n"


def test_get_of_a_malformed_digest_is_invalid_argument(daemon):
    assert fails(daemon, "get", "sha256:../../x").startswith("fusesnap: invalid argument:")


# ---------------------------------------------------------------------- ls / info


def test_ls_prints_digest_size_age_and_labels(daemon, cs, unique):
    digest = ingest(cs, "ls-a", unique, labels={"b": "2", "a": "1"})
    rows = table(ok(daemon, "ls", f"digest=={digest}"))
    assert rows == [["DIGEST", "SIZE", "AGE", "LABELS"],
                    [digest, f"{len(unique)} B", "Less than a second", "a=1,b=2"]]


def test_ls_shows_a_dash_for_no_labels_and_filters_by_label(daemon, cs, unique):
    plain = ingest(cs, "ls-p", unique)
    marked = ingest(cs, "ls-m", unique + b"!", labels={"lsmark": "x"})
    assert table(ok(daemon, "ls", f"digest=={plain}"))[1][3] == "-"
    assert [r[0] for r in table(ok(daemon, "ls", "labels.lsmark==x"))[1:]] == [marked]


def test_ls_quiet_prints_only_digests(daemon, cs, unique):
    digest = ingest(cs, "ls-q", unique)
    assert ok(daemon, "ls", "-q", f"digest=={digest}") == f"{digest}\n"


def test_ls_json_is_a_list_of_infos(daemon, cs, unique):
    digest = ingest(cs, "ls-j", unique, labels={"k": "v"})
    doc = json.loads(ok(daemon, "ls", "--json", f"digest=={digest}"))
    assert len(doc) == 1
    assert set(doc[0]) == {"digest", "size", "labels", "created_at", "updated_at"}
    assert (doc[0]["digest"], doc[0]["size"], doc[0]["labels"]) == (digest, len(unique),
                                                                     {"k": "v"})
    assert RFC3339_UTC.match(doc[0]["created_at"])


def test_ls_with_a_bad_filter_is_invalid_argument(daemon):
    assert fails(daemon, "ls", "digest==").startswith("fusesnap: invalid argument: filters:")


def test_info_prints_the_blob_as_json(daemon, cs, unique):
    digest = ingest(cs, "info", unique, labels={"k": "v"})
    doc = json.loads(ok(daemon, "info", digest))
    assert (doc["digest"], doc["size"], doc["labels"]) == (digest, len(unique), {"k": "v"})
    assert RFC3339_UTC.match(doc["updated_at"])


# ---------------------------------------------------------------------- rm / label


def test_rm_deletes_every_digest_given(daemon, cs, unique):
    a = ingest(cs, "rm-a", unique)
    b = ingest(cs, "rm-b", unique + b"b")
    assert ok(daemon, "rm", a, b) == ""
    assert [i.digest for x in cs.List(cpb.ListContentRequest(filters=[f"digest=={a}",
                                                                      f"digest=={b}"]))
            for i in x.info] == []


def test_rm_stops_at_the_first_failure_and_names_its_digest(daemon, cs, unique):
    digest = ingest(cs, "rm-c", unique)
    absent = sha(b"absent")
    assert fails(daemon, "rm", absent, digest) == \
        f"fusesnap: rm {absent}: not found: content {absent}\n"
    assert info(cs, digest).size == len(unique)


def test_label_sets_and_removes_labels_and_prints_the_result(daemon, cs, unique):
    digest = ingest(cs, "label", unique, labels={"old": "x", "keep": "y"})
    assert ok(daemon, "label", digest, "new=1", "old=") == "keep=y\nnew=1\n"
    assert dict(info(cs, digest).labels) == {"keep": "y", "new": "1"}


# ---------------------------------------------------------------------- active / abort


def test_active_lists_ingests_in_progress_with_size_and_total(daemon, cs):
    s = WriteStream(cs)
    s.send(action=STAT, ref="active-1", total=4096)
    s.send(action=WRITE, offset=0, data=b"x" * 100)
    s.finish()
    rows = table(ok(daemon, "active", 'ref=="active-1"'))
    assert rows[0] == ["REF", "SIZE", "TOTAL", "STARTED", "UPDATED"]
    assert rows[1][:3] == ["active-1", "100 B", "4.0 KiB"]
    doc = json.loads(ok(daemon, "active", "--json", 'ref=="active-1"'))
    assert [(x["ref"], x["offset"], x["total"]) for x in doc] == [("active-1", 100, 4096)]
    assert RFC3339_UTC.match(doc[0]["started_at"]) and RFC3339_UTC.match(doc[0]["updated_at"])
    cs.Abort(cpb.AbortRequest(ref="active-1"))


def test_abort_removes_an_ingest(daemon, cs):
    s = WriteStream(cs)
    s.send(action=STAT, ref="abort-me")
    s.finish()
    assert ok(daemon, "abort", "abort-me") == ""
    assert statuses(cs, 'ref=="abort-me"') == []


def test_content_commands_report_a_daemon_that_is_not_running(daemon, tmp_path):
    proc = run(daemon, "ls", socket=tmp_path / "nobody.sock")
    assert proc.returncode == 1
    assert proc.stderr.decode() == \
        f"fusesnap: cannot reach fusesnap at {tmp_path / 'nobody.sock'}: is the daemon running?\n"


# ---------------------------------------------------------------------- terminal, Ctrl-C, prune


def test_ingest_with_a_terminal_on_stdin_is_refused_at_once(daemon, cs):
    master, slave = pty.openpty()
    try:
        proc = run(daemon, "ingest", "from-tty", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        "fusesnap: reading the blob from standard input, which is a terminal: redirect a "
        f"file (fusesnap --socket {daemon.socket} content ingest from-tty < FILE)\n")
    assert statuses(cs, 'ref=="from-tty"') == []


def _wait_for_offset(cs, ref: str, offset: int) -> None:
    deadline = time.monotonic() + 30
    while [s.offset for s in statuses(cs, f'ref=="{ref}"')] != [offset]:
        assert time.monotonic() < deadline, statuses(cs, f'ref=="{ref}"')
        time.sleep(0.02)


def test_interrupted_ingest_says_how_to_resume_or_abort_and_resumes(daemon, cs, tmp_path):
    data = os.urandom(5 * MiB + 3)
    ref = "interrupted"
    proc = subprocess.Popen([*COMMAND, "--socket", str(daemon.socket), "content", "ingest",
                             ref, "--expected-size", str(len(data))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(data[:3 * MiB])  # three whole chunks; the fourth never comes
    proc.stdin.flush()
    _wait_for_offset(cs, ref, 3 * MiB)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # its standard input still open: the signal alone stops it
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stdout == b""
    resume = f"fusesnap --socket {daemon.socket} content ingest {ref} --expected-size {len(data)}"
    assert stderr.decode() == (
        f"fusesnap: interrupted: ingest {ref} is kept at {3 * MiB} bytes; resume it with "
        f"`{resume} < FILE` (it skips the first {3 * MiB} bytes of FILE), or abort it with "
        f"`fusesnap --socket {daemon.socket} content abort {ref}`\n")
    [kept] = statuses(cs, f'ref=="{ref}"')
    assert (kept.offset, kept.total) == (3 * MiB, len(data))
    # The command it printed resumes it (the stream was let go: no lock).
    path = tmp_path / "data"
    path.write_bytes(data)
    with open(path, "rb") as f:
        proc2 = run(daemon, "ingest", ref, "--expected-size", str(len(data)), stdin=f)
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout.decode() == f"{sha(data)}\n"
    assert proc2.stderr.decode() == f"fusesnap: resuming ingest {ref} at {3 * MiB} bytes\n"
    assert statuses(cs, f'ref=="{ref}"') == []


@pytest.fixture
def own(new_daemon):
    """A daemon of its own: prune sees every ingest of the store."""
    return new_daemon().start()


def test_prune_aborts_stale_ingests_and_keeps_fresh_and_locked_ones(own):
    cs = ContentStub(own.channel)
    for ref in ("stale-a", "stale-b", "busy"):
        s = WriteStream(cs)
        s.send(action=STAT, ref=ref)
        s.send(action=WRITE, offset=0, data=b"x" * 10)
        if ref != "busy":
            s.finish()
    busy = s  # holds the lock of "busy"

    def refs():
        return sorted(x.ref for x in statuses(cs))

    assert ok(own, "prune") == ""  # default: older than 24h
    assert ok(own, "prune", "--older-than", "1h") == ""
    time.sleep(0.05)
    assert ok(own, "prune", "--older-than", "0s", "--dry-run") == "stale-a\nstale-b\n"
    assert refs() == ["busy", "stale-a", "stale-b"]
    assert [x.offset for x in statuses(cs)] == [10, 10, 10]
    assert ok(own, "prune", "--older-than", "0s") == "stale-a\nstale-b\n"
    assert refs() == ["busy"]
    busy.finish()
    assert ok(own, "prune", "--older-than", "0s") == "busy\n"
    assert refs() == []


def test_prune_with_a_bad_duration_is_a_usage_error(daemon):
    proc = run(daemon, "prune", "--older-than", "soon")
    assert proc.returncode == 2
    assert b"expected a duration" in proc.stderr


def test_active_quiet_prints_only_the_refs(daemon, unique):
    fails(daemon, "ingest", "quiet-ref", "--expected-size", str(len(unique) + 1),
          input=unique)  # short: the ingest stays
    listed = ok(daemon, "active", "-q").splitlines()
    assert "quiet-ref" in listed and all(" " not in line for line in listed)


def test_ingest_json_names_the_ref_and_digest(daemon, unique):
    doc = json.loads(ok(daemon, "ingest", "json-ref", "--json", input=unique))
    assert doc == {"ref": "json-ref", "digest": sha(unique)}
