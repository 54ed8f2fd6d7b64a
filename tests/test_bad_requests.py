"""Requests whose bytes do not parse (issue 15, items 5 and 6).

Each ends its call with InvalidArgument and costs the log at most one line,
rate-limited, never a traceback; and however many there were, and however many
of their streams are still open, SIGTERM stops the daemon within a bound.
Real daemons, real gRPC on the unix socket: the raw channel below sends bytes
exactly as given.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

import fusesnap.pb
from fusesnap.api.badrequests import RateLimitedLog
from fusesnap.pb import content_pb2
from tests.conftest import Daemon

WRITE = "/containerd.services.content.v1.Content/Write"

GARBAGE = [
    b"\xff\xff\xff",  # a tag whose varint never ends
    b"\x07",  # wire type 7 does not exist
    b"\x0a\x05ab",  # field 1 promises 5 bytes, 2 follow
    b"\x0a\x80\x80\x04" + b"x" * 1000,  # promises 64 KiB, 1,000 bytes follow
]


CLIENT_ONLY = "runtime.v1"
"""Kubernetes' CRI (cri.proto): fusesnap's tests call containerd's, no daemon
of ours serves it."""


def _unary_methods() -> list[tuple[str, bool]]:
    """Every method taking one request, of every service in fusesnap.pb but
    CRI's (the direct role serves them all): (path, whether it streams
    responses)."""
    methods = []
    for found in pkgutil.iter_modules(fusesnap.pb.__path__):
        if not found.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"fusesnap.pb.{found.name}")
        if module.DESCRIPTOR.package == CLIENT_ONLY:
            continue
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming:
                    methods.append((f"/{service.full_name}/{method.name}",
                                    method.server_streaming))
    return methods


def _raw(b: bytes) -> bytes:
    return b


def _call(channel: grpc.Channel, path: str, streaming: bool, body: bytes) -> grpc.RpcError:
    """Send `body` as the request to `path`; the error it must end with."""
    try:
        if streaming:
            list(channel.unary_stream(path, _raw, _raw)(body, timeout=10))
        else:
            channel.unary_unary(path, _raw, _raw)(body, timeout=10)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{path} accepted {body[:10]!r}")


class RawWrite:
    """A Write stream of raw messages, open until `close`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.call = channel.stream_stream(WRITE, _raw, _raw)(iter(self._queue.get, None),
                                                             timeout=60)
        self._responses: Iterator[bytes] = self.call

    def send(self, body: bytes) -> None:
        self._queue.put(body)

    def recv(self) -> bytes:
        return next(self._responses)

    def error(self) -> grpc.StatusCode:
        """Read responses until the stream fails; its code."""
        with pytest.raises(grpc.RpcError) as err:
            for _ in self._responses:
                pass
        return err.value.code()

    def close(self) -> None:
        self._queue.put(None)


def _stat(ref: str) -> bytes:
    return content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref).SerializeToString()


def _log_size(d: Daemon) -> int:
    return d.log.stat().st_size


def test_a_thousand_malformed_requests_cost_a_few_log_lines_and_no_traceback(
    new_daemon: type[Daemon],
) -> None:
    d = new_daemon().start()
    before = _log_size(d)
    methods = _unary_methods()
    channel = grpc.insecure_channel(f"unix:{d.socket}")
    streams = []
    try:
        for i in range(1000):
            path, streaming = methods[i % len(methods)]
            err = _call(channel, path, streaming, GARBAGE[i % len(GARBAGE)])
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err)
            assert "malformed request to " + path in str(err.details())
        for i in range(20):
            s = RawWrite(channel)
            streams.append(s)
            if i % 2:
                s.send(_stat(f"ref-{i}"))
            s.send(GARBAGE[i % len(GARBAGE)])
            assert s.error() == grpc.StatusCode.INVALID_ARGUMENT
        d.prepare("still-serving")  # well-formed requests are still served
    finally:
        for s in streams:
            s.close()
        channel.close()
    added = d.log.read_bytes()[before:].decode(errors="replace")
    assert "Traceback" not in added
    assert len(added.splitlines()) < 50, added[-3000:]
    assert "malformed request to /containerd.services" in added


def test_a_malformed_message_mid_stream_ends_the_write_and_unlocks_its_ref(
    new_daemon: type[Daemon],
) -> None:
    d = new_daemon().start()
    channel = grpc.insecure_channel(f"unix:{d.socket}")
    try:
        s = RawWrite(channel)
        s.send(_stat("mid-stream"))
        s.send(b"\xff\xff\xff")
        assert s.error() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request to " + WRITE in str(s.call.details())
        s.close()
        again = RawWrite(channel)
        again.send(_stat("mid-stream"))
        response = content_pb2.WriteContentResponse.FromString(again.recv())
        assert response.action == content_pb2.STAT
        again.close()
        assert list(again._responses) == []
        assert again.call.code() == grpc.StatusCode.OK
    finally:
        channel.close()


def test_sigterm_with_malformed_write_streams_still_open_exits_zero_within_15_s(
    new_daemon: type[Daemon],
) -> None:
    d = new_daemon().start()
    channel = grpc.insecure_channel(f"unix:{d.socket}")
    streams = []
    try:
        methods = _unary_methods()
        for i in range(200):
            path, streaming = methods[i % len(methods)]
            _call(channel, path, streaming, GARBAGE[i % len(GARBAGE)])
        # The client neither half-closes these nor reads their status: so
        # grpcio, given a deserializer that raises, leaves each call unfinished
        # and its server.stop() never completes.
        for i in range(8):
            s = RawWrite(channel)
            streams.append(s)
            if i % 2:
                s.send(_stat(f"open-{i}"))
            s.send(b"\xff\xff\xff")
        idle = RawWrite(channel)  # well-formed, in flight at SIGTERM
        streams.append(idle)
        idle.send(_stat("idle"))
        idle.recv()
        assert d.proc is not None
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 15 s after SIGTERM:\n{d.logs()[-3000:]}")
        assert code == 0, d.logs()[-3000:]
        assert time.monotonic() - start < 15
    finally:
        for s in streams:
            s.close()
        channel.close()
    assert not os.path.ismount(d.mountpoint)
    assert not d.socket.exists()
    assert d.logs().rstrip().endswith("stopped")
    assert "Traceback" not in d.logs()


def test_the_malformed_request_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(lines=3, window=0.5)
    with caplog.at_level(logging.WARNING, logger="fusesnap.api.badrequests"):
        for i in range(100):
            limited.warning("bad %d", i)
        assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1", "bad 2"]
        time.sleep(0.6)
        limited.warning("bad %d", 100)
    assert [r.getMessage() for r in caplog.records[3:]] == [
        "suppressed 97 more malformed requests after the first 3 in 0.5 s", "bad 100"]


STUCK = """
import threading
from fusesnap.api.server import _Workers
workers = _Workers(2)
started = threading.Event()
workers.submit(lambda: (started.set(), threading.Event().wait()))
started.wait()
print("submitted", flush=True)
"""


def test_a_stuck_grpc_worker_does_not_hold_up_the_exit() -> None:
    """A call gRPC's stop abandoned (see fusesnap/daemon.py) may never return;
    the process exits anyway."""
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, timeout=15)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"submitted\n"
