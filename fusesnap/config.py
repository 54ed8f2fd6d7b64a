"""Where things live: one source, flags with environment defaults (printed at start-up)."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Role(enum.Enum):
    """Who the daemon serves (README, "Two roles")."""

    DIRECT = "direct"
    """Clients talk to fusesnap directly (the CLI, rootless engines and builders):
    fusesnap keeps leases and images and collects garbage itself."""
    PROXY = "proxy"
    """containerd uses fusesnap as a proxy plugin and owns leases, images and
    collection: the lease header is ignored, Leases/Images/GC calls end with
    FailedPrecondition naming the role, and nothing is ever collected by
    fusesnap."""


def default_root() -> Path:
    env = os.environ.get("FUSESNAP_ROOT")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "fusesnap"


def default_socket(root: Path | None = None) -> Path:
    env = os.environ.get("FUSESNAP_SOCKET")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "fusesnap" / "fusesnap.sock"
    return (root or default_root()) / "fusesnap.sock"


def default_role() -> Role:
    return Role(os.environ.get("FUSESNAP_ROLE") or Role.DIRECT.value)


@dataclass(frozen=True)
class Config:
    root: Path
    socket: Path
    mountpoint: Path
    role: Role = Role.DIRECT
    ingest_grace: float = 24 * 3600.0
    """Seconds an ingest on no lease is safe from collection after it started."""
    gc_delay: float = 1.0
    """Seconds between a deletion and the background collection it triggers."""
    fuse_busy_poll_us: int = 50
    """Microseconds the FUSE loop polls for the next request before it
    sleeps (patches/pyfuse3/0002); 0: never."""
    insecure_registries: frozenset[str] = frozenset()
    """HOST[:PORT]s of registries the daemon reaches over plain HTTP (lazy layers)."""
    registry_ca: str | None = None
    """A CA file the daemon trusts for registries besides the system's."""
    socket_group: str | None = None
    """The group that may connect to the socket besides the daemon's user (name
    or number); None: root's for a root daemon, none for an ordinary user's."""

    @classmethod
    def make(cls, root: str | None = None, socket: str | None = None,
             mountpoint: str | None = None, role: str | None = None,
             ingest_grace: float | None = None, gc_delay: float | None = None,
             socket_group: str | None = None,
             fuse_busy_poll_us: int | None = None,
             insecure_registries: Iterable[str] = (),
             registry_ca: str | None = None) -> Config:
        r = Path(root).absolute() if root else default_root().absolute()
        s = Path(socket).absolute() if socket else default_socket(r).absolute()
        m = Path(mountpoint).absolute() if mountpoint else Path(
            os.environ.get("FUSESNAP_MOUNTPOINT") or r / "mnt").absolute()
        return cls(root=r, socket=s, mountpoint=m,
                   role=Role(role) if role else default_role(),
                   ingest_grace=cls.ingest_grace if ingest_grace is None else ingest_grace,
                   gc_delay=cls.gc_delay if gc_delay is None else gc_delay,
                   socket_group=socket_group or os.environ.get("FUSESNAP_SOCKET_GROUP")
                   or None,
                   fuse_busy_poll_us=cls.fuse_busy_poll_us if fuse_busy_poll_us is None
                   else fuse_busy_poll_us,
                   insecure_registries=frozenset(insecure_registries),
                   registry_ca=str(Path(registry_ca).absolute()) if registry_ca else None)
