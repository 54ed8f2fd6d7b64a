"""`fusesnap snapshots …`: the real command, run as a subprocess against a real daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusesnap.cli.common import GC_ROOT, human_size
from fusesnap.pb import snapshots_pb2 as spb
from tests.conftest import Daemon

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
INFO_FIELDS = {"name", "parent", "kind", "labels", "created_at", "updated_at"}


def fusesnap(socket: Path | None, *args: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`fusesnap [--socket SOCKET] snapshots ARGS…`, captured."""
    command = [sys.executable, "-m", "fusesnap"]
    if socket is not None:
        command += ["--socket", str(socket)]
    return subprocess.run(command + ["snapshots", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def ok(daemon: Daemon, *args: str) -> str:
    """stdout of a command that must succeed silently on stderr."""
    proc = fusesnap(daemon.socket, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def fails(daemon: Daemon, *args: str, code: int = 1) -> str:
    """stderr of a command that must fail with `code` and print nothing."""
    proc = fusesnap(daemon.socket, *args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    return proc.stderr


def stat(daemon: Daemon, key: str) -> spb.Info:
    return daemon.snapshots.Stat(spb.StatSnapshotRequest(snapshotter="fusesnap", key=key)).info


def table_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def committed(daemon: Daemon, name: str, files: dict[str, bytes] | None = None,
              parent: str = "") -> None:
    """A committed snapshot `name` holding `files`."""
    path = daemon.prepare(f"{name}-key", parent)
    for rel, data in (files or {}).items():
        (path / rel).write_bytes(data)
    daemon.commit(name, f"{name}-key")


# ---------------------------------------------------------------------- prepare / view


def test_prepare_prints_the_directory_of_a_new_active_snapshot(daemon: Daemon) -> None:
    out = ok(daemon, "prepare", "work")
    path = Path(out.strip())
    assert out == f"{path}\n"
    assert path.is_dir()
    assert path.parent == daemon.mountpoint
    assert stat(daemon, "work").kind == spb.ACTIVE


def test_prepare_with_a_parent_shows_the_parents_files(daemon: Daemon) -> None:
    committed(daemon, "base", {"hello": b"from base"})
    path = Path(ok(daemon, "prepare", "work", "base").strip())
    assert (path / "hello").read_bytes() == b"from base"
    assert stat(daemon, "work").parent == "base"


def kept(labels: object) -> dict[str, str]:
    """`labels` less the containerd.io/gc.root label every CLI-made snapshot
    gets (issue 19: work made with the CLI stays), which must be there."""
    found = dict(labels)  # type: ignore[call-overload]
    assert RFC3339_UTC.match(found.pop(GC_ROOT, "")), found
    return found


def test_prepare_sets_the_labels_of_label_options(daemon: Daemon) -> None:
    ok(daemon, "prepare", "work", "--label", "a=1", "--label", "b=two=2")
    assert kept(stat(daemon, "work").labels) == {"a": "1", "b": "two=2"}


def test_what_the_cli_makes_stays_through_collections_unless_asked(daemon: Daemon) -> None:
    """The README's first snapshots survive an unrelated deletion's collection;
    --no-gc-root leaves them to it, as containerd's clients do."""
    ok(daemon, "prepare", "base-work")
    ok(daemon, "commit", "base", "base-work")
    ok(daemon, "view", "look", "base")
    ok(daemon, "prepare", "loose", "--no-gc-root")
    ok(daemon, "prepare", "other")
    ok(daemon, "rm", "other")  # a deletion: a collection follows
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
                           "gc"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = {i["name"] for i in json.loads(ok(daemon, "ls", "--json"))}
    assert names == {"base", "look"}
    assert GC_ROOT in stat(daemon, "look").labels
    removed = [line for line in daemon.logs().splitlines() if "garbage collection" in line]
    assert any("removed snapshots loose" in line for line in removed), removed


def test_prepare_json_gives_key_path_and_mounts(daemon: Daemon) -> None:
    doc = json.loads(ok(daemon, "prepare", "work", "--json"))
    assert set(doc) == {"key", "path", "mounts"}
    assert doc["key"] == "work"
    assert Path(doc["path"]).is_dir()
    assert doc["mounts"] == [{"type": "bind", "source": doc["path"], "target": "",
                              "options": ["rbind", "rw"]}]


def test_view_prints_a_read_only_directory_of_the_parent(daemon: Daemon) -> None:
    committed(daemon, "base", {"hello": b"from base"})
    path = Path(ok(daemon, "view", "look", "base").strip())
    assert (path / "hello").read_bytes() == b"from base"
    with pytest.raises(OSError):
        (path / "new").write_bytes(b"x")
    assert stat(daemon, "look").kind == spb.VIEW


def test_view_json_gives_key_path_and_read_only_mounts(daemon: Daemon) -> None:
    committed(daemon, "base")
    doc = json.loads(ok(daemon, "view", "look", "base", "--json"))
    assert doc["key"] == "look"
    assert doc["mounts"] == [{"type": "bind", "source": doc["path"], "target": "",
                              "options": ["rbind", "ro"]}]


# ---------------------------------------------------------------------- mounts / commit / rm


def test_mounts_prints_type_source_and_options(daemon: Daemon) -> None:
    path = daemon.prepare("work")
    assert ok(daemon, "mounts", "work") == f"bind {path} rbind,rw\n"


def test_mounts_json_is_a_list_of_mounts(daemon: Daemon) -> None:
    path = daemon.prepare("work")
    assert json.loads(ok(daemon, "mounts", "work", "--json")) == [
        {"type": "bind", "source": str(path), "target": "", "options": ["rbind", "rw"]}]


def test_mounts_of_a_committed_snapshot_is_a_failed_precondition(daemon: Daemon) -> None:
    committed(daemon, "base")
    err = fails(daemon, "mounts", "base")
    assert err == "fusesnap: failed precondition: snapshot base is not active or view\n"


def test_commit_creates_a_committed_snapshot_with_its_labels_and_prints_nothing(
        daemon: Daemon) -> None:
    daemon.prepare("work")
    assert ok(daemon, "commit", "done", "work", "--label", "k=v") == ""
    info = stat(daemon, "done")
    assert info.kind == spb.COMMITTED
    assert kept(info.labels) == {"k": "v"}


def test_rm_removes_every_key_given(daemon: Daemon) -> None:
    daemon.prepare("a")
    daemon.prepare("b")
    assert ok(daemon, "rm", "a", "b") == ""
    assert ok(daemon, "ls") == "KEY  PARENT  KIND\n"


def test_rm_stops_at_the_first_failure_and_names_its_key(daemon: Daemon) -> None:
    daemon.prepare("a")
    daemon.prepare("c")
    err = fails(daemon, "rm", "a", "missing", "c")
    assert err == "fusesnap: rm missing: not found: snapshot missing does not exist\n"
    assert [i.name for i in _list(daemon)] == ["c"]


def test_rm_of_a_parent_names_the_key_and_the_failed_precondition(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("child", "base")
    err = fails(daemon, "rm", "base")
    assert err.startswith("fusesnap: rm base: failed precondition: ")


def _list(daemon: Daemon) -> list[spb.Info]:
    return [i for batch in daemon.snapshots.List(spb.ListSnapshotsRequest(snapshotter="fusesnap"))
            for i in batch.info]


# ---------------------------------------------------------------------- ls / info


def test_ls_prints_a_key_parent_kind_table(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base")
    daemon.view("look", "base")
    assert ok(daemon, "ls") == (
        "KEY   PARENT  KIND\n"
        "base          Committed\n"
        "look  base    View\n"
        "work  base    Active\n"
    )


def test_ls_quiet_prints_only_the_keys(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base")
    assert ok(daemon, "ls", "-q") == "base\nwork\n"


def test_ls_of_no_snapshots_prints_only_the_header(daemon: Daemon) -> None:
    assert ok(daemon, "ls") == "KEY  PARENT  KIND\n"


def test_ls_passes_its_filters_to_list(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base", labels={"team": "a"})
    daemon.prepare("other", "base")
    out = ok(daemon, "ls", "kind==committed", "labels.team==a")
    assert [row[0] for row in table_rows(out)[1:]] == ["base", "work"]


def test_ls_json_is_a_list_of_infos(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base", labels={"k": "v"})
    docs = json.loads(ok(daemon, "ls", "--json"))
    assert [d["name"] for d in docs] == ["base", "work"]
    for d in docs:
        assert set(d) == INFO_FIELDS
        assert RFC3339_UTC.match(d["created_at"]) and RFC3339_UTC.match(d["updated_at"])
    assert (docs[1]["kind"], docs[1]["parent"], docs[1]["labels"]) == ("active", "base",
                                                                       {"k": "v"})
    assert docs[0]["kind"] == "committed"


def test_ls_with_an_invalid_filter_is_an_invalid_argument(daemon: Daemon) -> None:
    err = fails(daemon, "ls", "kind==")
    assert err.startswith("fusesnap: invalid argument: ")
    assert err.count("\n") == 1


def test_info_prints_the_info_as_json(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base", labels={"k": "v"})
    doc = json.loads(ok(daemon, "info", "work"))
    info = stat(daemon, "work")
    assert doc == {"name": "work", "parent": "base", "kind": "active", "labels": {"k": "v"},
                   "created_at": info.created_at.ToJsonString(),
                   "updated_at": info.updated_at.ToJsonString()}
    assert RFC3339_UTC.match(doc["created_at"])


# ---------------------------------------------------------------------- usage


def test_usage_of_a_key_prints_a_key_size_inodes_table_with_human_sizes(
        daemon: Daemon) -> None:
    path = daemon.prepare("work")
    (path / "four-k").write_bytes(b"x" * 4096)
    usage = daemon.snapshots.Usage(spb.UsageRequest(snapshotter="fusesnap", key="work"))
    assert usage.size == 4096
    assert table_rows(ok(daemon, "usage", "work")) == [
        ["KEY", "SIZE", "INODES"], ["work", "4.0", "KiB", str(usage.inodes)]]


def test_usage_without_a_key_lists_every_snapshot(daemon: Daemon) -> None:
    committed(daemon, "base", {"f": b"x" * 10})
    daemon.prepare("work", "base")
    rows = table_rows(ok(daemon, "usage"))
    assert rows[0] == ["KEY", "SIZE", "INODES"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("base", "10", "B"), ("work", "0", "B")]


def test_usage_json_gives_raw_byte_counts(daemon: Daemon) -> None:
    path = daemon.prepare("work")
    (path / "f").write_bytes(b"x" * 5000)
    one = json.loads(ok(daemon, "usage", "work", "--json"))
    assert set(one) == {"key", "size", "inodes"}
    assert (one["key"], one["size"]) == ("work", 5000)
    assert json.loads(ok(daemon, "usage", "--json")) == [one]


def test_usage_of_a_missing_key_is_not_found(daemon: Daemon) -> None:
    assert fails(daemon, "usage", "nope") == \
        "fusesnap: not found: snapshot nope does not exist\n"


# ---------------------------------------------------------------------- label


def test_label_sets_labels_and_prints_the_resulting_labels(daemon: Daemon) -> None:
    daemon.prepare("work", labels={"keep": "1"})
    assert ok(daemon, "label", "work", "b=2", "a=1") == "a=1\nb=2\nkeep=1\n"
    assert dict(stat(daemon, "work").labels) == {"a": "1", "b": "2", "keep": "1"}


def test_label_with_an_empty_value_removes_that_label(daemon: Daemon) -> None:
    daemon.prepare("work", labels={"gone": "1", "keep": "2"})
    assert ok(daemon, "label", "work", "gone=") == "keep=2\n"
    assert dict(stat(daemon, "work").labels) == {"keep": "2"}


def test_label_keys_may_contain_dots_and_slashes(daemon: Daemon) -> None:
    daemon.prepare("work")
    ok(daemon, "label", "work", "containerd.io/gc.root=yes")
    assert dict(stat(daemon, "work").labels) == {"containerd.io/gc.root": "yes"}


def test_label_json_is_the_resulting_label_map(daemon: Daemon) -> None:
    daemon.prepare("work", labels={"x": "1"})
    assert json.loads(ok(daemon, "label", "work", "y=2", "--json")) == {"x": "1", "y": "2"}


def test_label_argument_without_equals_is_a_usage_error(daemon: Daemon) -> None:
    daemon.prepare("work")
    err = fails(daemon, "label", "work", "novalue", code=2)
    assert "usage:" in err and "novalue" in err
    assert dict(stat(daemon, "work").labels) == {}


def test_label_option_without_equals_is_a_usage_error(daemon: Daemon) -> None:
    err = fails(daemon, "prepare", "work", "--label", "novalue", code=2)
    assert "usage:" in err
    assert _list(daemon) == []


# ---------------------------------------------------------------------- tree


def test_tree_prints_roots_first_with_children_indented_and_sorted(daemon: Daemon) -> None:
    committed(daemon, "base")
    committed(daemon, "mid", parent="base")
    daemon.prepare("zeta", "base")
    daemon.prepare("leaf", "mid")
    daemon.prepare("alone")
    assert ok(daemon, "tree") == (
        "alone\n"
        "base\n"
        "  mid\n"
        "    leaf\n"
        "  zeta\n"
    )


def test_tree_json_nests_children_under_their_parent(daemon: Daemon) -> None:
    committed(daemon, "base")
    daemon.prepare("work", "base")
    assert json.loads(ok(daemon, "tree", "--json")) == [
        {"name": "base", "kind": "committed",
         "children": [{"name": "work", "kind": "active", "children": []}]}]


# ---------------------------------------------------------------------- errors and options


def test_a_missing_key_fails_with_one_not_found_line_and_exit_1(daemon: Daemon) -> None:
    err = fails(daemon, "info", "nope")
    assert err == "fusesnap: not found: snapshot nope does not exist\n"


def test_an_existing_key_fails_with_already_exists(daemon: Daemon) -> None:
    daemon.prepare("work")
    assert fails(daemon, "prepare", "work") == \
        "fusesnap: already exists: snapshot work already exists\n"


def test_no_daemon_on_the_socket_gives_the_friendly_message(tmp_path: Path) -> None:
    socket = tmp_path / "absent.sock"
    proc = fusesnap(socket, "ls")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"fusesnap: cannot reach fusesnap at {socket}: is the daemon running?\n"


def test_a_stale_socket_file_gives_the_friendly_message(tmp_path: Path) -> None:
    import socket as so
    path = tmp_path / "stale.sock"
    s = so.socket(so.AF_UNIX)
    s.bind(str(path))
    s.close()
    proc = fusesnap(path, "prepare", "work")
    assert (proc.returncode, proc.stderr) == (
        1, f"fusesnap: cannot reach fusesnap at {path}: is the daemon running?\n")


def test_socket_option_is_accepted_after_the_subcommand(daemon: Daemon) -> None:
    daemon.prepare("work")
    proc = fusesnap(None, "ls", "--socket", str(daemon.socket))
    assert proc.returncode == 0, proc.stderr
    assert table_rows(proc.stdout)[1][0] == "work"
    proc = fusesnap(None, "--socket", str(daemon.socket), "ls")
    assert proc.returncode == 0, proc.stderr


def test_socket_defaults_to_the_FUSESNAP_SOCKET_environment(daemon: Daemon) -> None:
    daemon.prepare("work")
    proc = fusesnap(None, "ls", env={**os.environ, "FUSESNAP_SOCKET": str(daemon.socket)})
    assert proc.returncode == 0, proc.stderr
    assert table_rows(proc.stdout)[1][0] == "work"


def test_snapshot_is_an_alias_of_snapshots(daemon: Daemon) -> None:
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(daemon.socket),
                           "snapshot", "ls"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "KEY  PARENT  KIND\n")


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (4096, "4.0 KiB"),
    (1536 * 1024, "1.5 MiB"), (5 * 2**30, "5.0 GiB"),
])
def test_sizes_in_tables_are_binary_human_units(size: int, text: str) -> None:
    assert human_size(size) == text


# ---------------------------------------------------------------------- a shell session


def test_shell_flow_prepare_write_commit_view_reads_the_file_back(daemon: Daemon) -> None:
    work = Path(ok(daemon, "prepare", "build").strip())
    (work / "app").mkdir()
    (work / "app" / "main.txt").write_text("built in the shell\n")
    assert ok(daemon, "commit", "image", "build") == ""
    look = Path(ok(daemon, "view", "check", "image").strip())
    assert (look / "app" / "main.txt").read_text() == "built in the shell\n"
    assert table_rows(ok(daemon, "ls")) == [
        ["KEY", "PARENT", "KIND"], ["check", "image", "View"], ["image", "Committed"]]


def test_path_prints_the_directory_of_a_snapshot_of_any_kind(daemon: Daemon) -> None:
    committed(daemon, "base", {"greeting": b"hello\n"})
    work = daemon.prepare("work", "base")
    base = Path(ok(daemon, "path", "base").strip())
    assert (base / "greeting").read_bytes() == b"hello\n"
    assert Path(ok(daemon, "path", "work").strip()) == Path(work)
    with pytest.raises(OSError):
        (base / "new").write_text("read-only")
    doc = json.loads(ok(daemon, "path", "base", "--json"))
    assert doc == {"key": "base", "path": str(base), "kind": "committed"}
    assert fails(daemon, "path", "absent") == \
        "fusesnap: not found: snapshot absent does not exist\n"


def test_commit_and_info_take_json(daemon: Daemon) -> None:
    daemon.prepare("work")
    doc = json.loads(ok(daemon, "commit", "done", "work", "--json"))
    assert doc["name"] == "done" and doc["kind"] == "committed"
    assert json.loads(ok(daemon, "info", "done", "--json")) == json.loads(ok(daemon, "info",
                                                                             "done"))
