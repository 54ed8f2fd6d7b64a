"""Fault injection for crash tests: kill the daemon at one named point.

``FUSESNAP_CRASH_AT=<point>`` in the daemon's environment makes
:func:`crash_at` with that point SIGKILL the process, as ``kill -9`` would, at
exactly that point in the code. The variable is read once, at import; unset
(always, outside tests), :func:`crash_at` is one comparison.

Points:

``content-commit-linked``
    In a content Commit, after the blob's file is in place under blobs/ and
    before the transaction that records it commits.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("FUSESNAP_CRASH_AT") or None


def crash_at(point: str) -> None:
    """SIGKILL this process if FUSESNAP_CRASH_AT named `point` at start-up."""
    if point == _POINT:
        os.kill(os.getpid(), signal.SIGKILL)
