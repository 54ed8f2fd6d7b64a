"""Grouped filesystem changes in the metadata database (store/db.py): each
change atomic on its own, a group committed whole, API transactions committed
at once and after the group."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fusesnap.store.db import Database


@pytest.fixture
def db(tmp_path: Path):
    d = Database(tmp_path / "metadata.db")
    d.execute("CREATE TABLE t (v INTEGER)")
    yield d
    d.close()


def committed(db: Database) -> list[int]:
    """What another connection (a restarted daemon) would see."""
    other = sqlite3.connect(db.path)
    try:
        return [v for (v,) in other.execute("SELECT v FROM t ORDER BY v")]
    finally:
        other.close()


def test_a_group_is_seen_at_once_by_the_daemon_and_committed_only_when_asked(db):
    opened = []
    db.on_group_opened = lambda: opened.append(True)
    with db.group():
        db.execute("INSERT INTO t VALUES (1)")
    with db.group():
        db.execute("INSERT INTO t VALUES (2)")
    assert opened == [True]  # one group, announced once
    assert [v for (v,) in db.all("SELECT v FROM t ORDER BY v")] == [1, 2]
    assert committed(db) == []
    db.commit_group()
    assert committed(db) == [1, 2]


def test_a_failed_change_is_undone_alone(db):
    with db.group():
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(OSError), db.group():
        db.execute("INSERT INTO t VALUES (2)")
        raise OSError("the change fails half way")
    db.commit_group()
    assert committed(db) == [1]


def test_a_failed_first_change_leaves_no_group_open(db):
    opened = []
    db.on_group_opened = lambda: opened.append(True)
    with pytest.raises(OSError), db.group():
        db.execute("INSERT INTO t VALUES (1)")
        raise OSError("fails")
    assert opened == []
    with db.transaction():  # would fail inside an open transaction
        db.execute("INSERT INTO t VALUES (2)")
    assert committed(db) == [2]


def test_a_transaction_commits_the_group_first_and_itself_at_once(db):
    with db.group():
        db.execute("INSERT INTO t VALUES (1)")
    with db.transaction():
        db.execute("INSERT INTO t VALUES (2)")
    assert committed(db) == [1, 2]


def test_a_failed_transaction_keeps_the_group_it_committed(db):
    with db.group():
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), db.transaction():
        db.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("API call fails")
    assert committed(db) == [1]


def test_actions_after_commit_wait_for_the_group_and_go_with_a_failed_change(db):
    ran: list[str] = []
    with db.group():
        db.execute("INSERT INTO t VALUES (1)")
        db.after_commit(lambda: ran.append("kept"))
    with pytest.raises(OSError), db.group():
        db.after_commit(lambda: ran.append("undone"))
        raise OSError("fails")
    db.after_commit(lambda: ran.append("after the block"))
    assert ran == []
    db.commit_group()
    assert ran == ["kept", "after the block"]
    db.after_commit(lambda: ran.append("at once"))
    assert ran[-1] == "at once"


def test_closing_commits_the_open_group(tmp_path):
    db = Database(tmp_path / "metadata.db")
    db.execute("CREATE TABLE t (v INTEGER)")
    with db.group():
        db.execute("INSERT INTO t VALUES (7)")
    db.close()
    assert committed(db) == [7]


def test_the_daemons_database_is_its_own_while_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "metadata.db", exclusive=True)
    with db.transaction():
        db.execute("CREATE TABLE t (v INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
    assert db.all("SELECT v FROM t") == [(1,)]
    other = sqlite3.connect(db.path, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("SELECT v FROM t").fetchall()
        db.close()
        assert other.execute("SELECT v FROM t").fetchall() == [(1,)]  # kept, and free again
    finally:
        other.close()
