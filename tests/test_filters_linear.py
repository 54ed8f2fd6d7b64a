"""``~=`` filters cost time linear in the value, whatever the pattern (issue 15).

``^(a+)+$`` against a run of ``a`` followed by a non-``a`` is the classic
pattern on which a backtracking engine (Python's ``re``) takes time
exponential in the run's length; RE2, the engine behind containerd's Go
regexp, answers at once. The daemon serves gRPC and FUSE from one thread, so
a slow match would stall both.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fusesnap.filters import object_adaptor, parse
from fusesnap.pb import snapshots_pb2 as spb
from tests.conftest import PROXY, Daemon

BACKTRACKER = "name~=^(a+)+$"
# 2**40 backtracking steps: far beyond any bound below for Python's re.
RUN = "a" * 40
NON_MATCHING = RUN + "!"

MATCH_BOUND = 5.0
LIST_BOUND = 10.0
STAT_BOUND = 10.0


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the body outlasts `seconds`.

    A signal rather than a watchdog thread: a backtracking ``re`` search holds
    the GIL until it ends, so no thread could time it out, but it does stop
    for signal handlers.
    """
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_backtracking_pattern_matches_in_bounded_time() -> None:
    flt = parse([BACKTRACKER])
    with deadline(MATCH_BOUND):
        assert not flt.match(object_adaptor({"name": NON_MATCHING}))
        assert flt.match(object_adaptor({"name": RUN}))


def test_backtracking_list_filter_leaves_list_and_fuse_responsive(
        new_daemon: type[Daemon]) -> None:
    d = new_daemon(args=PROXY).start()
    d.prepare(NON_MATCHING)
    d.prepare(RUN)
    probe_dir = d.prepare("probe")
    assert probe_dir.is_relative_to(d.mountpoint)

    listed = threading.Event()
    latencies: list[float] = []

    def stat_until_listed() -> None:
        # A name never looked up before: the kernel caches the attributes of
        # names that exist (for an hour), but not a miss, so every stat is
        # a lookup the daemon must answer.
        n = 0
        while not listed.is_set() or n < 20:
            n += 1
            start = time.monotonic()
            try:
                os.stat(probe_dir / f"absent-{n}")
            except FileNotFoundError:
                pass
            latencies.append(time.monotonic() - start)

    # A daemon thread: were the daemon to hang, this thread would stay
    # blocked in stat until the fixture kills the daemon.
    statter = threading.Thread(target=stat_until_listed, daemon=True)
    statter.start()
    while not latencies:  # the stats are under way before the List starts
        time.sleep(0.001)
    start = time.monotonic()
    names = [info.name
             for response in d.snapshots.List(spb.ListSnapshotsRequest(filters=[BACKTRACKER]),
                                              timeout=LIST_BOUND)
             for info in response.info]
    elapsed = time.monotonic() - start
    listed.set()
    statter.join(STAT_BOUND)

    assert names == [RUN]
    assert elapsed < LIST_BOUND
    assert not statter.is_alive(), "a stat on the FUSE mount did not return"
    assert max(latencies) < STAT_BOUND

