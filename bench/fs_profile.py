"""py-spy profiles of the fusesnap daemon while a workload runs (bench/fs.py --profile).

`py-spy record --format raw` writes collapsed stacks (`frame;frame;… count`,
each frame `function (file:line)`); :func:`summary` ranks functions by the
samples in which they are on top of the stack (self) and anywhere in it
(total, counted once per stack). Profiling slows the daemon: figures of a
profiled run are not for comparison.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
IDLE = ("EpollIOManager.get_events (trio/", "_worker (concurrent/futures/thread.py",
        "_work (fusesnap/api/server.py", "_serve (grpc/_server.py", "epoll_wait (")
"""Leaf frames of threads waiting for work (trio's loop in epoll_wait, gRPC's
pool — the daemon's own, _Workers, waiting on its queue — and poller), which
py-spy does not always see as idle."""


def py_spy() -> str | None:
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return str(venv) if venv.exists() else shutil.which("py-spy")


@contextmanager
def recording(pid: int, out: Path, native: bool = False) -> Iterator[None]:
    """Sample process `pid` (all threads, idle ones excluded) while the body
    runs, into `out` (raw) and `out` with suffix .svg (a flame graph); both
    samplers read without pausing the daemon, since only one could. `native`
    adds C frames (libfuse's replies, SQLite), raw only, pausing the daemon
    for each sample: it then runs several times slower."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    base = [binary, "record", "-p", str(pid), "--rate", "500"]
    outputs = [(out, "raw")] if native else [(out, "raw"), (out.with_suffix(".svg"), "flamegraph")]
    procs = [subprocess.Popen([*base, "-o", str(path), "--format", fmt,
                               *(["--native"] if native else ["--nonblocking"])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for path, fmt in outputs]
    time.sleep(1.0)  # attached and sampling
    for proc in procs:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"py-spy failed: {err}")
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=120)


def _short(frame: str) -> tuple[str, str]:
    """(function with file:line, function with file) of one frame."""
    m = _FRAME.match(frame)
    if m is None:
        return frame, frame
    path = m["file"]
    for marker in ("/site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{m['line']}" if m["line"] else ""
    return f"{m['func']} ({path}{line})", f"{m['func']} ({path})"


def summary(raw: Path, top: int = 12) -> str:
    """The hottest functions of a raw py-spy profile, self and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or frames[-1].startswith(IDLE):
            idle += n
            continue
        own[_short(frames[-1])[0]] += n
        for name in {_short(f)[1] for f in frames}:
            total[name] += n
    busy = samples - idle
    if not busy:
        return "  (no busy samples)"
    out = [f"  {busy} busy samples of {samples} (the rest: threads waiting); "
           "% of busy, self:"]
    out += [f"    {100 * n / busy:5.1f}%  {name}" for name, n in own.most_common(top)]
    out.append("  total (on the stack):")
    out += [f"    {100 * n / busy:5.1f}%  {name}" for name, n in total.most_common(top)
            if n < busy]
    return "\n".join(out)
