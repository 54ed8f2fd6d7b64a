"""The FUSE request counters (fusesnap/layerfs/stats.py) and `fusesnap debug
fuse-stats`, against a real daemon and mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fusesnap.layerfs.stats import FuseStats
from tests.conftest import PROXY, Daemon


def test_quantiles_are_within_a_bucket() -> None:
    stats = FuseStats()
    for ns in range(1000, 101000, 1000):  # 1 µs .. 100 µs, evenly
        stats.record("LOOKUP", ns)
    _, [op] = stats.report()
    assert (op.opcode, op.count, op.total_ns) == ("LOOKUP", 100, sum(range(1000, 101000, 1000)))
    assert 0.81 * 50_000 <= op.median_ns <= 1.19 * 50_000
    assert 0.81 * 90_000 <= op.p90_ns <= 1.19 * 90_000


def test_reset_starts_counting_afresh() -> None:
    stats = FuseStats()
    stats.record("READ", 5000)
    assert [o.count for o in stats.report(reset=True)[1]] == [1]
    assert stats.report()[1] == []


def fuse_stats(d: Daemon, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(d.socket), "debug",
                          "fuse-stats", "--json", *args], capture_output=True, text=True,
                         check=True)
    return {o["opcode"]: o for o in json.loads(out.stdout)["opcodes"]}


def test_daemon_counts_each_request_by_opcode(new_daemon: type[Daemon]) -> None:
    d = new_daemon(args=PROXY).start()
    work = d.prepare("work")
    fuse_stats(d, "--reset")
    for i in range(10):
        (work / f"f{i}").write_bytes(b"x" * 100)
    os.listdir(work)
    ops = fuse_stats(d, "--reset")
    assert ops["CREATE"]["count"] == 10
    assert ops["WRITE"]["count"] == 10
    assert ops["RELEASE"]["count"] == 10
    assert ops["READDIRPLUS"]["count"] >= 1
    for o in ops.values():
        assert o["total_ns"] > 0 and 0 < o["median_ns"] <= o["p90_ns"]
    assert "CREATE" not in fuse_stats(d)  # the reset above


def test_table_lists_busiest_opcode_first_and_a_total(new_daemon: type[Daemon]) -> None:
    d = new_daemon(args=PROXY).start()
    work = d.prepare("work")
    (work / "f").write_bytes(b"x")
    out = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(d.socket), "debug",
                          "fuse-stats"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["OPCODE", "COUNT", "TOTAL_MS", "MEAN_US", "MEDIAN_US", "P90_US"]
    assert lines[-1].split()[0] == "ALL"
    totals = [float(line.split()[2]) for line in lines[1:-1]]
    assert totals == sorted(totals, reverse=True)
    assert int(lines[-1].split()[1]) == sum(int(line.split()[1]) for line in lines[1:-1])


def test_help_names_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "fusesnap", "debug", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "fuse-stats" in out
