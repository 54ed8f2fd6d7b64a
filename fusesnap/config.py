"""Where things live: one source, flags with environment defaults (printed at start-up)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


@dataclass(frozen=True)
class Config:
    root: Path
    socket: Path
    mountpoint: Path

    @classmethod
    def make(cls, root: str | None = None, socket: str | None = None,
             mountpoint: str | None = None) -> Config:
        r = Path(root).absolute() if root else default_root().absolute()
        s = Path(socket).absolute() if socket else default_socket(r).absolute()
        m = Path(mountpoint).absolute() if mountpoint else Path(
            os.environ.get("FUSESNAP_MOUNTPOINT") or r / "mnt").absolute()
        return cls(root=r, socket=s, mountpoint=m)
