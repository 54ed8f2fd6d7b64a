"""The mount's life, over pyfuse3: mount, serve requests, stop, unmount.

The daemon (daemon.py) wires these in; nothing outside this package touches
pyfuse3.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

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


READAHEAD_KB = 1024
"""The mount's readahead: a sequential read reaches the daemon in requests
this large (the kernel's largest FUSE request, 256 pages) instead of the
default 128 KiB, eight times fewer round trips."""


_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space as \040


def _device(mountpoint: Path) -> str | None:
    """The "major:minor" of the mount at `mountpoint`, from
    /proc/self/mountinfo (a stat would wait for the daemon, not serving yet)."""
    # Not realpath(mountpoint): that would stat the mount itself.
    absolute = Path(os.path.abspath(mountpoint))
    want = os.path.join(os.path.realpath(absolute.parent), absolute.name)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == want:
                found = fields[2]  # the last one: the mount on top
    return found


def _readahead(mountpoint: Path) -> None:
    """Raise the readahead of the mount's backing device info (sysfs; root
    only). Elsewhere reads keep the kernel's 128 KiB, said once."""
    try:
        device = _device(mountpoint)
        if device is None:
            raise OSError(f"{mountpoint} is not in /proc/self/mountinfo")
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(READAHEAD_KB))
    except OSError as e:
        log.info("reads reach the daemon in the kernel's default 128 KiB requests: "
                 "cannot set the mount's readahead (%s)", e.strerror or e)


async def serve(mountpoint: Path, ready: Callable[[], None]) -> None:
    """Serve requests until :func:`stop`; call `ready` once the mount has
    answered a request. One worker: every handler runs to completion
    without awaiting, so more workers only add lock and scheduling work to
    each request (pyfuse3 defaults to 99)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_readahead_once_up, mountpoint, ready)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()  # a statfs never answered: not waited for


async def _readahead_once_up(mountpoint: Path, ready: Callable[[], None]) -> None:
    """The kernel sets the readahead from the daemon's INIT reply, so it is
    raised once a request (a statfs, from a thread) has been answered."""
    await trio.to_thread.run_sync(os.statvfs, mountpoint, abandon_on_cancel=True)
    _readahead(mountpoint)
    ready()


def stop() -> None:
    """End :func:`serve` (from the trio thread)."""
    pyfuse3.terminate()


def unmount() -> None:
    pyfuse3.close(unmount=True)
