"""systemd's readiness protocol (sd_notify(3)), without a dependency.

Under a unit of `Type=notify` (systemd/), systemd names a unix datagram socket
in $NOTIFY_SOCKET (abstract if it starts with '@'); the daemon writes
`READY=1` to it once it serves and `STOPPING=1` when it begins to stop.
Without $NOTIFY_SOCKET (started by hand, by `make run`, by the tests) this
does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fusesnap")


class Notifier:
    """The $NOTIFY_SOCKET of this process's start, taken out of the environment
    so that no child (fusermount3, newuidmap) inherits it."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        elif address:  # vsock:…, which systemd gives only to virtual machines
            log.warning("NOTIFY_SOCKET=%s: not a unix socket, not notified", address)

    def notify(self, *fields: str) -> None:
        """Send `fields` ("READY=1", "STATUS=…") as one datagram; a failure is
        logged, never raised (the daemon serves whether systemd hears or not)."""
        if self.address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError as e:
                log.warning("cannot notify systemd (%s): %s", fields[0], e)
