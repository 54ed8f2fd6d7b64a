"""The daemon's log (issue 19, item 9): `--log-format json` writes one JSON
object a line, and `--log-level DEBUG` one line per gRPC call (method,
namespace, the request's names, status, µs) that never holds a payload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import fuse_usable

SECRET_LABEL = "label-value-never-logged"
SECRET_DATA = b"payload-bytes-never-logged\n"


def fusesnap(sock: Path, *args: str,
             data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(sock), *args],
                          input=data, capture_output=True, timeout=60)


def serve_logging(tmp_path: Path, *global_args: str) -> list[str]:
    """Start a daemon with `global_args`, make a snapshot (with a label), fail a
    Remove, ingest a blob, stop it; the lines it logged."""
    missing = fuse_usable()
    if missing:
        pytest.skip(f"FUSE unavailable: {missing}")
    root, sock, log = tmp_path / "root", tmp_path / "sock", tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fusesnap", *global_args, "serve",
                                 "--root", str(root), "--socket", str(sock)],
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not (sock.exists() and os.path.ismount(root / "mnt")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.2)  # "serving" follows the mount
        assert fusesnap(sock, "snapshots", "prepare", "work", "--label",
                        f"team={SECRET_LABEL}").returncode == 0
        assert fusesnap(sock, "snapshots", "rm", "absent").returncode == 1
        assert fusesnap(sock, "content", "ingest", "blob-ref", data=SECRET_DATA).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    return log.read_text().splitlines()


def test_json_lines_and_a_debug_line_per_call_without_payloads(tmp_path: Path) -> None:
    lines = serve_logging(tmp_path, "--log-level", "DEBUG", "--log-format", "json")
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "pid"} <= set(d) for d in docs)
    assert any(d["message"] == "serving" and d["level"] == "INFO" for d in docs)
    calls = [d["message"] for d in docs if d["logger"] == "fusesnap.grpc"]
    prepare = [c for c in calls if c.startswith(
        "/containerd.services.snapshots.v1.Snapshots/Prepare namespace=default key=work ")]
    assert len(prepare) == 1 and " -> OK " in prepare[0] and prepare[0].endswith("us")
    assert any("Snapshots/Remove namespace=default key=absent" in c and "-> NOT_FOUND" in c
               for c in calls), calls
    assert any(c.startswith("/containerd.services.content.v1.Content/Write ") for c in calls)
    text = "\n".join(lines)
    assert SECRET_LABEL not in text and SECRET_DATA.decode().strip() not in text


def test_info_logs_no_calls_and_text_is_the_default(tmp_path: Path) -> None:
    lines = serve_logging(tmp_path)
    assert lines and not any(line.lstrip().startswith("{") for line in lines)
    assert not any("fusesnap.grpc" in line for line in lines)
    assert any(line.endswith(" INFO fusesnap: serving") for line in lines), lines
