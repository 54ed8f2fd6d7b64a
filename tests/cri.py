"""A client of containerd's CRI plugin, as the kubelet is one (Kubernetes'
CRI, runtime.v1, on containerd's own socket; fusesnap/pb/cri_pb2 describes
the part of it used here), for the tests and the benchmarks: pull an image,
run a host-network pod, run a container in it and read what it prints.

The pods use the host's network (no CNI plugin is installed), so a pod is a
sandbox ("pause") container and the containers started in it; a container's
output is the log file CRI writes, one line per write as
``TIMESTAMP STREAM TAG TEXT`` (TAG ``F`` for a full line, ``P`` a partial one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from fusesnap.pb import cri_pb2 as cri
from fusesnap.pb.cri_pb2_grpc import ImageServiceStub, RuntimeServiceStub

TIMEOUT = 120.0
"""Seconds for one CRI call or one container to end: a bound, not a speed figure."""


@dataclass(frozen=True)
class Pod:
    id: str
    config: cri.PodSandboxConfig


@dataclass(frozen=True)
class Exited:
    exit_code: int
    stdout: str
    stderr: str
    reason: str


class CriClient:
    """CRI calls over `socket` (a containerd's); logs go under `logs`."""

    def __init__(self, socket: Path, logs: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = RuntimeServiceStub(self.channel)
        self.images = ImageServiceStub(self.channel)
        self.logs = logs

    def close(self) -> None:
        self.channel.close()

    def pull(self, ref: str) -> str:
        """CRI's PullImage of `ref`: the image's ID (its config's digest)."""
        return self.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                                     timeout=TIMEOUT).image_ref

    def run_pod(self, name: str) -> Pod:
        """A running pod `name` in the host's network namespace."""
        log_dir = self.logs / name
        log_dir.mkdir(parents=True, exist_ok=True)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=name, namespace="fusesnap-tests"),
            log_directory=str(log_dir),  # no hostname: the host's UTS namespace
            linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.NODE))))
        reply = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config),
                                           timeout=TIMEOUT)
        return Pod(reply.pod_sandbox_id, config)

    def remove_pod(self, pod: Pod) -> None:
        """Stop and remove `pod` and its containers."""
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                    timeout=TIMEOUT)
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                      timeout=TIMEOUT)

    def start(self, pod: Pod, name: str, image: str, *command: str) -> str:
        """Create and start container `name` of `image` running `command` in
        `pod`; its ID."""
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name),
                                     image=cri.ImageSpec(image=image), command=list(command),
                                     log_path=f"{name}.log")
        cid = self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config),
            timeout=TIMEOUT).container_id
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=cid),
                                    timeout=TIMEOUT)
        return cid

    def log_path(self, pod: Pod, name: str) -> Path:
        return Path(pod.config.log_directory) / f"{name}.log"

    def wait(self, cid: str, pod: Pod, name: str) -> Exited:
        """Until container `cid` (named `name` in `pod`) has exited: its exit
        code, what it wrote to each stream, and CRI's reason."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            status = self.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid),
                                                  timeout=TIMEOUT).status
            if status.state == cri.CONTAINER_EXITED:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"container {name} still "
                                     f"{cri.ContainerState.Name(status.state)} after {TIMEOUT} s")
            time.sleep(0.02)
        streams = read_log(self.log_path(pod, name))
        return Exited(status.exit_code, streams["stdout"], streams["stderr"], status.reason)


def read_log(path: Path) -> dict[str, str]:
    """What a CRI log file holds, by stream."""
    out = {"stdout": "", "stderr": ""}
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        _, stream, tag, rest = (line.split(" ", 3) + [""])[:4]
        out[stream] = out.get(stream, "") + rest + ("\n" if tag == "F" else "")
    return out
