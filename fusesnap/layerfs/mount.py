"""The mount's life, over pyfuse3: mount, serve requests, stop, unmount.

The daemon (daemon.py) wires these in; nothing outside this package touches
pyfuse3.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyfuse3

log = logging.getLogger(__name__)


def mount(fs: pyfuse3.Operations, mountpoint: Path, options: set[str],
          busy_poll_us: int) -> None:
    """Mount `fs` at `mountpoint`; requests are served by :func:`serve`."""
    pyfuse3.init(fs, str(mountpoint), options)
    _busy_poll(busy_poll_us)


def _busy_poll(microseconds: int) -> None:
    """Have the FUSE loop poll before it sleeps (patches/pyfuse3/0002)."""
    set_busy_poll = getattr(pyfuse3, "set_busy_poll", None)
    if set_busy_poll is None:
        if microseconds:
            log.warning("this pyfuse3 cannot poll for requests (not fusesnap's build: "
                        "run make setup); every request waits for a wake-up")
        return
    set_busy_poll(microseconds * 1000)


async def serve() -> None:
    """Serve requests until :func:`stop`. One worker: every handler runs to
    completion without awaiting, so more workers only add lock and
    scheduling work to each request (pyfuse3 defaults to 99)."""
    await pyfuse3.main(min_tasks=1, max_tasks=1)


def stop() -> None:
    """End :func:`serve` (from the trio thread)."""
    pyfuse3.terminate()


def unmount() -> None:
    pyfuse3.close(unmount=True)
