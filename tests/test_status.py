"""What the daemon says about itself, to fusesnap's own client and to the gRPC
ecosystem's: `fusesnap status` (the Info service), grpc.health.v1.Health
through grpcio-health-checking's stub, server reflection through
grpcio-reflection's client, and a proxy-role daemon's FailedPrecondition for
the APIs only the direct role serves. Real daemons, real channels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from fusesnap import __version__
from fusesnap.pb import gc_pb2, info_pb2
from fusesnap.pb import images_pb2 as ipb
from fusesnap.pb import leases_pb2 as lpb
from fusesnap.pb.content_pb2_grpc import ContentStub
from fusesnap.pb.gc_pb2_grpc import GCStub
from fusesnap.pb.images_pb2_grpc import ImagesStub
from fusesnap.pb.info_pb2_grpc import InfoStub
from fusesnap.pb.leases_pb2_grpc import LeasesStub
from tests.conftest import PROXY, Daemon, module_daemon
from tests.content_client import STAT, WRITE, WriteStream, ingest

SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
CONTENT = "containerd.services.content.v1.Content"
LEASES = "containerd.services.leases.v1.Leases"
IMAGES = "containerd.services.images.v1.Images"
GC = "fusesnap.services.gc.v1.GC"
INFO = "fusesnap.services.info.v1.Info"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
BOTH_ROLES = {SNAPSHOTS, CONTENT, "containerd.services.namespaces.v1.Namespaces",
              "fusesnap.services.apply.v1.Applier", "fusesnap.services.diff.v1.Differ",
              "fusesnap.services.debug.v1.Debug", INFO, HEALTH, REFLECTION}
ROOT = {"containerd.io/gc.root": "2024-01-01T00:00:00Z"}
NS = [("containerd-namespace", "default")]


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "status-direct")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "status-proxy", args=PROXY)


def channel(d: Daemon) -> grpc.Channel:
    assert d.channel is not None
    return d.channel


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(d.socket),
                           "status", *args], capture_output=True, text=True, timeout=60)


def status_json(d: Daemon) -> dict:
    proc = cli(d, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------- health


def check(d: Daemon, service: str = "") -> health_pb2.HealthCheckResponse:
    stub = health_pb2_grpc.HealthStub(channel(d))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)


@pytest.mark.parametrize("service", ["", SNAPSHOTS, CONTENT, INFO, HEALTH, LEASES, IMAGES, GC])
def test_health_says_serving_overall_and_for_each_service_of_the_direct_role(direct, service):
    assert check(direct, service).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["", SNAPSHOTS, CONTENT, INFO])
def test_health_says_serving_for_the_services_of_the_proxy_role(proxy, service):
    assert check(proxy, service).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", [LEASES, IMAGES, GC])
def test_health_says_not_serving_for_what_a_proxy_refuses(proxy, service):
    assert check(proxy, service).status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["no.such.Service", "containerd.services.tasks.v1.Tasks"])
def test_health_of_an_unknown_service_is_not_found(direct, service):
    with pytest.raises(grpc.RpcError) as err:
        check(direct, service)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_status(direct):
    stub = health_pb2_grpc.HealthStub(channel(direct))
    call = stub.Watch(health_pb2.HealthCheckRequest(service=SNAPSHOTS), timeout=10)
    try:
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        call.cancel()


def test_open_health_watches_hold_no_worker_thread(direct):
    # The daemon has 16 threads for calls (api/server.py); a Watch that held
    # one for its life would leave none for the call below.
    stub = health_pb2_grpc.HealthStub(channel(direct))
    calls = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(24)]
    try:
        for call in calls:
            assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        assert InfoStub(channel(direct)).Status(info_pb2.StatusRequest(), timeout=10).pid
    finally:
        for call in calls:
            call.cancel()


def test_watches_opened_while_others_close_never_freeze_the_server(direct):
    # grpcio-health-checking's servicer sent a watch's first status holding
    # the lock that a closing watch's callback takes on grpcio's polling
    # thread: the server froze (CI run of 36e7c5d). 60 rounds froze it in
    # under a minute here; each round checks that a plain call still answers.
    stub = health_pb2_grpc.HealthStub(channel(direct))
    info = InfoStub(channel(direct))
    for round in range(60):
        first = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(6)]
        for call in first[:3]:
            call.cancel()
        second = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(6)]
        for call in first[3:] + second:
            call.cancel()
        assert info.Status(info_pb2.StatusRequest(), timeout=10).pid, f"round {round}"


# ---------------------------------------------------------------------- reflection


def reflected(d: Daemon) -> tuple[ProtoReflectionDescriptorDatabase, DescriptorPool]:
    database = ProtoReflectionDescriptorDatabase(channel(d))
    return database, DescriptorPool(database)


def test_reflection_lists_the_services_of_the_direct_role(direct):
    database, _ = reflected(direct)
    assert set(database.get_services()) == BOTH_ROLES | {LEASES, IMAGES, GC}


def test_reflection_lists_what_a_proxy_answers(proxy):
    # The refused services are listed: a reflection client that calls one
    # gets the FailedPrecondition that says why, not "unknown service".
    database, _ = reflected(proxy)
    assert set(database.get_services()) == BOTH_ROLES | {LEASES, IMAGES, GC}


def test_a_reflection_client_resolves_methods_and_messages(direct):
    _, pool = reflected(direct)
    snapshots = pool.FindServiceByName(SNAPSHOTS)
    prepare = snapshots.FindMethodByName("Prepare")
    assert prepare.input_type.full_name == \
        "containerd.services.snapshots.v1.PrepareSnapshotRequest"
    assert [f.name for f in prepare.input_type.fields][:3] == ["snapshotter", "key", "parent"]
    mounts = prepare.output_type.fields_by_name["mounts"].message_type
    assert mounts.full_name == "containerd.types.Mount"
    write = pool.FindServiceByName(CONTENT).FindMethodByName("Write")
    assert write.client_streaming and write.server_streaming
    status = pool.FindServiceByName(INFO).FindMethodByName("Status")
    assert "fuse_requests" in status.output_type.fields_by_name
    info = pool.FindMessageTypeByName("containerd.services.content.v1.Info")
    assert info.fields_by_name["created_at"].message_type.full_name == \
        "google.protobuf.Timestamp"


def test_reflection_of_an_unknown_symbol_is_an_error(direct):
    _, pool = reflected(direct)
    with pytest.raises(KeyError):
        pool.FindServiceByName("containerd.services.tasks.v1.Tasks")


# ---------------------------------------------------------------------- fusesnap status


def test_status_text_names_the_daemon_and_its_places(direct):
    proc = cli(direct)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys == ["version", "role", "root", "mountpoint", "socket", "pid", "started",
                    "uptime", "snapshots", "blobs", "ingests", "leases", "images",
                    "fuse requests"]
    # Aligned: every value starts in the same column.
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1
    fields = {k: line.split(":", 1)[1].strip() for k, line in zip(keys, lines, strict=True)}
    assert fields["version"] == __version__
    assert fields["role"] == "direct"
    assert fields["root"] == str(direct.root)
    assert fields["mountpoint"] == str(direct.mountpoint)
    assert fields["socket"] == str(direct.socket)
    assert direct.proc is not None and fields["pid"] == str(direct.proc.pid)
    assert fields["uptime"].endswith("s")
    assert " committed, " in fields["snapshots"] and fields["snapshots"].endswith(" view)")


def test_status_json_has_every_field(direct):
    doc = status_json(direct)
    assert set(doc) == {"version", "role", "root", "mountpoint", "socket", "pid",
                        "started_at", "uptime_s", "snapshots", "blobs", "blob_bytes",
                        "ingests", "leases", "images", "fuse_requests",
                        "fuse_requests_by_opcode"}
    assert (doc["version"], doc["role"], doc["root"], doc["mountpoint"], doc["socket"]) == \
        (__version__, "direct", str(direct.root), str(direct.mountpoint), str(direct.socket))
    assert direct.proc is not None and doc["pid"] == direct.proc.pid
    assert set(doc["snapshots"]) == {"active", "committed", "view"}
    assert doc["uptime_s"] > 0
    assert doc["started_at"].endswith("Z")
    assert doc["fuse_requests"] == sum(doc["fuse_requests_by_opcode"].values())


def test_status_counts_follow_what_the_daemon_holds(direct):
    before = status_json(direct)
    time.sleep(0.01)
    base = direct.prepare("status-base", labels=ROOT)
    (base / "f").write_bytes(b"x" * 100)
    direct.commit("status-base-c", "status-base", labels=ROOT)
    direct.prepare("status-active", "status-base-c", labels=ROOT)
    direct.view("status-view", "status-base-c")
    content = ContentStub(channel(direct))
    ingest(content, "status-blob", b"y" * 4096, labels=ROOT)
    stream = WriteStream(content)
    stream.send(action=STAT, ref="status-ingest", total=10)
    stream.send(action=WRITE, offset=0, data=b"abc")
    LeasesStub(channel(direct)).Create(lpb.CreateRequest(id="status-lease"), metadata=NS)
    try:
        after = status_json(direct)
    finally:
        stream.release()
    assert after["snapshots"] == {
        "active": before["snapshots"]["active"] + 1,
        "committed": before["snapshots"]["committed"] + 1,
        "view": before["snapshots"]["view"] + 1}
    assert after["blobs"] == before["blobs"] + 1
    assert after["blob_bytes"] == before["blob_bytes"] + 4096
    assert after["ingests"] == before["ingests"] + 1
    assert after["leases"] == before["leases"] + 1
    assert after["images"] == before["images"]
    assert after["fuse_requests"] > before["fuse_requests"]  # the write through the mount
    assert after["uptime_s"] > before["uptime_s"]
    assert after["pid"] == before["pid"]
    assert after["started_at"] == before["started_at"]


def test_a_fuse_stats_reset_does_not_reset_the_status_count(direct):
    os.listdir(direct.mountpoint)
    before = InfoStub(channel(direct)).Status(info_pb2.StatusRequest()).fuse_requests
    assert before > 0
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(direct.socket),
                           "debug", "fuse-stats", "--reset"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    after = InfoStub(channel(direct)).Status(info_pb2.StatusRequest()).fuse_requests
    assert after >= before


def test_status_in_the_proxy_role_says_proxy(proxy):
    assert status_json(proxy)["role"] == "proxy"
    proc = cli(proxy)
    assert proc.returncode == 0
    assert "role:" in proc.stdout
    role = [line for line in proc.stdout.splitlines() if line.startswith("role:")]
    assert role[0].split(":", 1)[1].strip() == "proxy"


def test_status_without_a_daemon_is_one_line(tmp_path: Path):
    socket = tmp_path / "none.sock"
    for args in ((), ("--json",)):
        proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(socket),
                               "status", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr == f"fusesnap: cannot reach fusesnap at {socket}: " \
                              "is the daemon running?\n"


# ---------------------------------------------------------------------- the proxy role


def refused(fn, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        fn(request, metadata=NS, timeout=10)
    return err.value


@pytest.mark.parametrize(("stub", "method", "request_", "what"), [
    (LeasesStub, "Create", lpb.CreateRequest(id="x"), "leases; the Leases API"),
    (LeasesStub, "List", lpb.ListRequest(), "leases; the Leases API"),
    (LeasesStub, "Delete", lpb.DeleteRequest(id="x", sync=True), "leases; the Leases API"),
    (ImagesStub, "List", ipb.ListImagesRequest(), "images; the Images API"),
    (ImagesStub, "Get", ipb.GetImageRequest(name="x"), "images; the Images API"),
    (GCStub, "Collect", gc_pb2.CollectRequest(), "collects garbage; the GC API"),
    (GCStub, "Collect", gc_pb2.CollectRequest(dry_run=True), "collects garbage; the GC API"),
])
def test_a_proxy_answers_direct_role_calls_with_failed_precondition(proxy, stub, method,
                                                                     request_, what):
    err = refused(getattr(stub(channel(proxy)), method), request_)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("fusesnap serves role proxy: containerd ")
    assert what in err.details()
    assert "serve --role direct" in err.details()


def test_a_proxy_refuses_a_malformed_request_as_invalid(proxy):
    call = channel(proxy).unary_unary(f"/{LEASES}/Create")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff", metadata=NS, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_images_command_against_a_proxy_says_why_in_one_line(proxy):
    proc = subprocess.run([sys.executable, "-m", "fusesnap", "--socket", str(proxy.socket),
                           "images", "ls"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("fusesnap: failed precondition: fusesnap serves role proxy")
    assert proc.stderr.count("\n") == 1


def test_a_health_watch_sees_not_serving_when_the_daemon_stops(new_daemon):
    d = new_daemon().start()
    stub = health_pb2_grpc.HealthStub(channel(d))
    call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    try:
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert next(call).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        call.cancel()
    assert d.proc.wait(timeout=30) == 0
    assert d.logs().rstrip().endswith("stopped")


def test_malformed_health_and_reflection_requests_are_invalid(direct):
    # As every other service's (api/badrequests.py): one InvalidArgument, and
    # a reflection stream ends though the client keeps its side open.
    check = channel(direct).unary_unary(f"/{HEALTH}/Check")
    with pytest.raises(grpc.RpcError) as err:
        check(b"\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = channel(direct).stream_stream(f"/{REFLECTION}/ServerReflectionInfo")
    blocked = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"\xff\xff\xff"
        blocked.wait(30)

    call = info(requests(), timeout=20)
    try:
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        blocked.set()
