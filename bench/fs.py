"""Filesystem benchmark (issue 6): fusesnap beside a plain directory, kernel
overlayfs and fuse-overlayfs, over the same layers, in the same run.

One layered fixture is built once (bench/fs_fixture.py): plain layer
directories for overlay and fuse-overlayfs, their merged tree for native, and
the same layers committed as a fusesnap snapshot chain (one per deep-chain
depth) through the daemon's Applier service. Every workload
(bench/fs_workloads.py) then runs in a fresh view per repetition — a new
active snapshot, fresh upper and work directories, or for native a fresh copy
of what it writes — with the caches dropped (`echo 3 >
/proc/sys/vm/drop_caches`) between making the view and the clock starting;
cold reads also get a fresh mount (fusesnap: a restarted daemon), and warm
figures are the same reads again. Repetitions are
interleaved across backends (the order rotates), each result is verified
(bytes and where they came from, entry counts), and the table gives each
backend's median (min–max) and its ratio to native, with fusesnap's target
beside it. Snapshot ops (fusesnap's gRPC API alone) get their own table.

For fusesnap a second table gives what the daemon did while each row's
clock ran: its FUSE request counters (its Debug service, reset just before
the clock starts and read just after it stops) as requests per operation of
the workload (file created, entry walked, 4 KiB read, ...), the daemon's
mean µs per request (its handlers' own time, pyfuse3's dispatch excluded),
the share of the wall time those handlers account for, and the commonest
requests per operation with their mean µs.

Workloads run with the view as their working directory (relative paths), as a
process in a container rooted in the view would; `--paths absolute` makes
every path cross the backend's mountpoint instead (the kernel caches
fusesnap's mount root like any other directory, so it should cost the same).
`--profile DIR` records py-spy profiles of the fusesnap daemon.

    python bench/fs.py [--scale 1.0] [--reps 3] [--json results/fs.json]
                       [--only seq-read,rand-read,meta-walk,small-create,copy-up,
                               deep-chain,untar,rm-rf,snapshot-ops]
                       [--backends native,overlay,fuse-overlayfs,fusesnap]
                       [--depths 100,500,1000] [--ops-depths 2,500] [--paths relative]
                       [--workdir DIR]
                       [--profile DIR [--profile-native]]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fs_backends import (
    Backend,
    FuseOverlayfs,
    Fusesnap,
    KernelOverlay,
    Native,
    drop_caches,
)
from fs_fixture import Fixture, Sizes, build
from fs_profile import recording, summary
from fs_workloads import OPS, WORKLOADS, Timer, Workload, snapshot_ops, timed

from fusesnap.malloc import reuse_megabyte_buffers

BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "native": Native, "overlay": KernelOverlay, "fuse-overlayfs": FuseOverlayfs,
    "fusesnap": Fusesnap,
}
ALL_WORKLOADS = [w.name for w in WORKLOADS] + ["snapshot-ops"]

TARGETS = {
    "seq-read cold": 1.2, "seq-read warm": 1.05,
    "rand-read cold": 1.6, "rand-read warm": 1.1,
    "meta-walk cold": 3.0, "meta-walk warm": 1.3,
    "small-create": 1.7,
    "copy-up append": 10.0,
    "deep-500 cold": 5.0,
    "untar": 5.0,
    "rm-rf": 1.0,
}
"""fusesnap's time over native's (issue 6)."""
DEPTH_NOISE = 1.10
"""'1,000 layers no slower than 100': met within this noise allowance."""
OPS_TARGET = 1000.0
"""Prepare+Commit pairs per second."""
OPS_SPREAD = 1.25
"""'Cost independent of snapshot size and chain depth': the slowest
configuration's pair rate within this factor of the fastest's."""


@dataclasses.dataclass
class Cell:
    seconds: list[float] = dataclasses.field(default_factory=list)
    skipped: str = ""
    error: str = ""


Results = dict[str, dict[str, Cell]]
"""row → backend → cell."""


@dataclasses.dataclass
class Requests:
    """The FUSE requests fusesnap's daemon served during a result row's timed
    repetitions (its counters reset before each clock starts, read after it
    stops)."""

    op: str
    """What one operation of the row is ("file created", ...)."""
    ops: int
    """Operations per repetition."""
    reps: int = 0
    seconds: float = 0.0
    """The repetitions' wall time, in all."""
    count: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    ns: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """By opcode: requests and the handlers' nanoseconds, in all."""

    def add(self, other: Requests) -> None:
        self.reps += other.reps
        self.seconds += other.seconds
        self.count.update(other.count)
        self.ns.update(other.ns)

    def doc(self) -> dict[str, Any]:
        total, ns, ops = sum(self.count.values()), sum(self.ns.values()), self.ops * self.reps
        return {
            "op": self.op, "ops_per_rep": self.ops, "reps": self.reps,
            "wall_s": self.seconds, "requests": total,
            "requests_per_rep": total / self.reps if self.reps else None,
            "requests_per_op": total / ops if ops else None,
            "us_per_request": ns / total / 1e3 if total else None,
            "daemon_ms_per_rep": ns / self.reps / 1e6 if self.reps else None,
            "daemon_share_of_wall": ns / 1e9 / self.seconds if self.seconds else None,
            "opcodes": {name: {"count": n, "per_op": n / ops if ops else None,
                               "total_ns": self.ns[name], "us_mean": self.ns[name] / n / 1e3}
                        for name, n in self.count.most_common()},
        }


def _rotate(items: list[Backend], k: int) -> list[Backend]:
    k %= len(items)
    return items[k:] + items[:k]


def run_once(backend: Backend, w: Workload, fx: Fixture, stack_index: int,
             absolute: bool, profile: Path | None, profile_native: bool,
             requests: dict[str, Requests]) -> dict[str, float]:
    """One repetition of `w` on `backend`: a fresh view, caches dropped, the
    workload run from inside the view (relative paths, as a container whose
    root is the view resolves them) or, with `absolute`, through its full path.
    For fusesnap, the daemon's requests during each timed row go into `requests`."""
    stack = w.stacks(fx)[stack_index]
    if w.restart:
        backend.make_cold()
    drop_caches()  # the view is made cold too (deep-chain times it)
    view = backend.open(stack, w.writes)
    cwd = os.getcwd()
    try:
        drop_caches()  # and whatever making it cached (native's copy) goes
        if w.prepare is not None:
            w.prepare(fx)
        timer: Timer = timed
        if isinstance(backend, Fusesnap):
            if profile is not None:
                timer = _profiling(backend, profile, profile_native)
            timer = _counting(backend, w, fx, requests, timer)
        if absolute:
            rows = w.run(view.root, fx, stack, timer)
        else:
            os.chdir(view.root)
            rows = w.run(Path("."), fx, stack, timer)
        if w.times_open and view.open_seconds is not None:
            rows[f"{stack.name} view"] = view.open_seconds
    finally:
        os.chdir(cwd)
        backend.close(view)
    return rows


def _counting(daemon: Fusesnap, w: Workload, fx: Fixture, into: dict[str, Requests],
              inner: Timer) -> Timer:
    """`inner`, with the daemon's FUSE counters reset before it and read after
    it: both round trips are outside the clock (and outside a profile)."""
    def timer(row: str, fn: Callable[[], object]) -> float:
        daemon.fuse_stats(reset=True)
        seconds = inner(row, fn)
        stats = daemon.fuse_stats()
        got = into.setdefault(row, Requests(w.op, w.ops(fx)))
        got.reps += 1
        got.seconds += seconds
        for o in stats.opcodes:
            got.count[o.opcode] += o.count
            got.ns[o.opcode] += o.total_ns
        return seconds
    return timer


def _profiling(daemon: Fusesnap, where: Path, native: bool) -> Timer:
    def timer(row: str, fn: Callable[[], object]) -> float:
        out = where / f"{row.replace(' ', '-')}.txt"
        with recording(daemon.pid, out, native):
            seconds = timed(row, fn)
        print(f"py-spy of the fusesnap daemon, {row} ({_t(seconds)}, profiled; {out}):\n"
              f"{summary(out)}", flush=True)
        return seconds
    return timer


def measure(workloads: list[Workload], backends: list[Backend], fx: Fixture, reps: int,
            absolute: bool, profile: Path | None,
            profile_native: bool) -> tuple[Results, dict[str, Requests]]:
    """The timings by row and backend, and fusesnap's requests by row."""
    results: Results = {}
    requests: dict[str, Requests] = {}
    for w in workloads:
        for si, stack in enumerate(w.stacks(fx)):
            failed: dict[str, str] = {}
            for rep in range(reps):
                for b in _rotate(backends, rep):
                    reason = b.skip(stack)
                    if reason or b.name in failed:
                        failed.setdefault(b.name, reason or "")
                        continue
                    started = time.monotonic()
                    counted: dict[str, Requests] = {}
                    try:
                        rows = run_once(b, w, fx, si, absolute, profile if rep == 0 else None,
                                        profile_native, counted)
                    except Exception as e:  # the backend posts an error, the run goes on
                        failed[b.name] = f"error: {type(e).__name__}: {e}"
                        traceback.print_exc()
                        continue
                    for row, seconds in rows.items():
                        results.setdefault(row, {}).setdefault(b.name, Cell()).seconds.append(
                            seconds)
                    for row, got in counted.items():
                        requests.setdefault(row, Requests(got.op, got.ops)).add(got)
                    per_op = "".join(
                        f" {r}={sum(c.count.values()) / c.ops:.2f}req/op"
                        for r, c in counted.items() if c.ops)
                    print(f"  {w.name:12} {stack.name:8} rep {rep + 1} {b.name:15} "
                          + " ".join(f"{r}={s:.4f}s" for r, s in rows.items())
                          + per_op + f"  [{time.monotonic() - started:.1f}s]", flush=True)
            for name, why in failed.items():
                rows_of_w = [r for r in results if _belongs(r, w, stack.name)] or [
                    f"{w.name} ({stack.name})"]
                for row in rows_of_w:
                    cell = results.setdefault(row, {}).setdefault(name, Cell())
                    if why.startswith("error: "):
                        cell.error = why[len("error: "):]
                    else:
                        cell.skipped = why
    return results, requests


def _belongs(row: str, w: Workload, stack: str) -> bool:
    return row.startswith(f"{stack} ") if w.name == "deep-chain" else row.startswith(w.name)


def import_fixture(snap: Fusesnap, fx: Fixture, workloads: list[Workload], ops: bool,
                   tmp: Path) -> dict[tuple[int, int], str]:
    """Commit the stacks the workloads use as fusesnap chains (setting each
    stack's parent) and, with `ops`, the snapshot-ops chains; returns the
    snapshot-ops parents by (files, parents)."""
    tmp.mkdir()
    if any(w.name != "deep-chain" for w in workloads):
        fx.main.parent = snap.import_stack(fx.main, "main", tmp)[-1]
    if any(w.name == "deep-chain" for w in workloads):
        # A chain per depth: a lookup must not meet the rows of layers above the
        # view's top (another depth's) in a shared chain.
        for n, stack in fx.deep.items():
            stack.parent = snap.import_stack(stack, f"deep{n}", tmp)[-1]
    parents: dict[tuple[int, int], str] = {}
    if ops:
        for files in fx.sizes.ops_files:
            for d, p in snap.ops_chain(files, fx.sizes.ops_depths, tmp).items():
                parents[(files, d)] = p
    return parents


def measure_ops(snap: Fusesnap, parents: dict[tuple[int, int], str], iterations: int,
                reps: int) -> dict[str, dict[str, Any]]:
    """Snapshot ops on each parent, repetitions interleaved across configurations:
    Prepare+Commit pairs/s per repetition, latency quantiles of every call."""
    ops: dict[str, dict[str, Any]] = {}
    lat: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        for (files, d), p in parents.items():
            cfg = f"{files} files, {d} parents"
            r = snapshot_ops(snap, p, iterations, f"ops-{files}-{d}-{rep}")
            entry = ops.setdefault(cfg, {"pairs_per_s": []})
            entry["pairs_per_s"].append(iterations / (sum(r["Prepare"]) + sum(r["Commit"])))
            for op, xs in r.items():
                lat.setdefault(cfg, {}).setdefault(op, []).extend(xs)
            print(f"  snapshot-ops {cfg} rep {rep + 1}: "
                  f"{entry['pairs_per_s'][-1]:.0f} pairs/s", flush=True)
    for cfg, by_op in lat.items():
        ops[cfg]["latency"] = {op: {"p50": _quantile(xs, 0.5), "p99": _quantile(xs, 0.99),
                                    "n": len(xs)} for op, xs in by_op.items()}
    return ops


# --------------------------------------------------------------------------- output


def _t(s: float) -> str:
    if s >= 1:
        return f"{s:.2f}s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f}ms"
    return f"{s * 1e6:.0f}µs"


def _median(cell: Cell | None) -> float | None:
    return statistics.median(cell.seconds) if cell is not None and cell.seconds else None


def table(results: Results, names: list[str]) -> tuple[str, dict[str, Any]]:
    """The printed table and its JSON form."""
    header = ["workload", *names, "fusesnap target", "met?"]
    lines: list[list[str]] = []
    notes: list[str] = []
    doc: dict[str, Any] = {}
    for row, cells in results.items():
        native = _median(cells.get("native"))
        line = [row]
        entry: dict[str, Any] = {}
        for name in names:
            cell = cells.get(name)
            if cell is None:
                line.append("—")
                continue
            if cell.error or cell.skipped:
                note = f"{name}: {cell.error or cell.skipped}"
                if note not in notes:
                    notes.append(note)
                mark = f"[{notes.index(note) + 1}]"
                line.append(f"error {mark}" if cell.error else f"skipped {mark}")
                entry[name] = {"error": cell.error} if cell.error else {"skipped": cell.skipped}
                continue
            med = statistics.median(cell.seconds)
            ratio = med / native if native else None
            text = f"{_t(med)} ({_t(min(cell.seconds))}–{_t(max(cell.seconds))})"
            if ratio is not None and name != "native":
                text += f" ×{ratio:.2f}"
            line.append(text)
            entry[name] = {"seconds": cell.seconds, "median": med, "min": min(cell.seconds),
                           "max": max(cell.seconds), "ratio": ratio}
        target = TARGETS.get(row)
        ratio = entry.get("fusesnap", {}).get("ratio")
        met = None if target is None or ratio is None else ratio <= target
        line += [f"≤{target:g}" if target is not None else "",
                 "" if met is None else ("yes" if met else "NO")]
        entry["target"], entry["met"] = target, met
        lines.append(line)
        doc[row] = entry
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out), doc


def _per(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def requests_table(requests: dict[str, Requests], top: int = 6) -> str:
    """What fusesnap's daemon did while each row's clock ran (its FUSE request
    counters, summed over the repetitions)."""
    header = ["workload (fusesnap)", "ops/rep (one op)", "requests/rep", "requests/op",
              "µs/request", "daemon ms/rep", "of wall", f"top {top} requests per op × µs each"]
    lines: list[list[str]] = []
    for row, r in requests.items():
        d = r.doc()
        if not d["requests"]:
            lines.append([row, f"{r.ops} ({r.op})", "0", "0", "", "0", "0%", ""])
            continue
        tops = ", ".join(f"{name} {_per(o['per_op'])} × {o['us_mean']:.0f}µs"
                         for name, o in list(d["opcodes"].items())[:top])
        lines.append([row, f"{r.ops} ({r.op})", f"{d['requests_per_rep']:.0f}",
                      _per(d["requests_per_op"]), f"{d['us_per_request']:.0f}",
                      f"{d['daemon_ms_per_rep']:.1f}",
                      f"{100 * d['daemon_share_of_wall']:.0f}%", tops])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    return "\n".join(out)


def depth_check(results: Results, depths: tuple[int, ...]) -> tuple[str, dict[str, Any]] | None:
    lo, hi = min(depths), max(depths)
    cells = results.get(f"deep-{lo} cold", {}), results.get(f"deep-{hi} cold", {})
    a, b = _median(cells[0].get("fusesnap")), _median(cells[1].get("fusesnap"))
    if lo == hi or a is None or b is None:
        return None
    ratio = b / a
    met = ratio <= DEPTH_NOISE
    text = (f"fusesnap deep chain: {hi} layers cold stat / {lo} layers = {ratio:.2f} "
            f"(target: no slower, ≤{DEPTH_NOISE:g} allowing for noise) "
            f"{'met' if met else 'NOT met'}")
    return text, {"ratio": ratio, "target": DEPTH_NOISE, "met": met}


def ops_table(ops: dict[str, dict[str, Any]]) -> str:
    head = (f"{'snapshot ops (fusesnap)':28}{'Prepare+Commit pairs/s':>28}"
            + "".join(f"{op + ' p50/p99':>22}" for op in OPS) + "   target")
    out = [head]
    for cfg, r in ops.items():
        rates = r["pairs_per_s"]
        line = (f"{cfg:28}"
                f"{f'{statistics.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f})':>28}")
        for op in OPS:
            lat = r["latency"][op]
            line += f"{_t(lat['p50']) + ' / ' + _t(lat['p99']):>22}"
        met = statistics.median(rates) >= OPS_TARGET
        out.append(line + f"   ≥{OPS_TARGET:.0f}/s {'yes' if met else 'NO'}")
    medians = [statistics.median(r["pairs_per_s"]) for r in ops.values()]
    if len(medians) > 1:
        spread = max(medians) / min(medians)
        out.append(f"cost independent of size and depth: fastest/slowest configuration "
                   f"{spread:.2f} (target ≤{OPS_SPREAD:g}) "
                   f"{'met' if spread <= OPS_SPREAD else 'NOT met'}")
    return "\n".join(out)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# --------------------------------------------------------------------------- main


def source_state() -> tuple[str, str]:
    """(the commit of this checkout, with a digest of uncommitted changes under
    fusesnap/; the identity of fusesnap/'s code): every daemon start loads the
    code anew, so a change under fusesnap/ during the run would mix versions."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              text=True).stdout.strip()
    diff = git("diff", "HEAD", "--", "fusesnap")
    dirty = f"+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else ""
    return git("rev-parse", "--short", "HEAD") + dirty, git("rev-parse", "HEAD:fusesnap") + dirty


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items
    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError("expected numbers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected numbers >= 1")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="sizes times this (1.0: the issue's; 0.02 for development)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", type=_csv(ALL_WORKLOADS), default=ALL_WORKLOADS,
                        help="workloads, comma-separated (default all)")
    parser.add_argument("--backends", type=_csv(list(BACKENDS)), default=list(BACKENDS))
    parser.add_argument("--depths", type=_ints, default=(100, 500, 1000),
                        help="deep-chain layer counts (not scaled)")
    parser.add_argument("--ops-depths", type=_ints, default=(2, 500),
                        help="parents of the snapshot-ops snapshots (not scaled)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where layers and views live (default: a temporary "
                             "directory in $TMPDIR or /tmp, removed at the end)")
    parser.add_argument("--paths", choices=["relative", "absolute"], default="relative",
                        help="relative: workloads run with the view as working directory, "
                             "as a container rooted in it would (default); absolute: every "
                             "path starts at / and crosses the backend's mountpoint")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the fusesnap daemon during each result row's first "
                             "repetition: collapsed stacks and a flame graph per row in DIR, "
                             "a summary printed (the figures are then slightly slowed)")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: C frames too (libfuse, SQLite, syscalls); "
                             "slows the daemon several times over")
    args = parser.parse_args()
    if args.scale <= 0 or args.reps < 1:
        parser.error("--scale must be > 0 and --reps >= 1")
    reuse_megabyte_buffers()
    started = time.monotonic()
    source, code = source_state()
    sizes = Sizes.make(args.scale, args.depths, args.ops_depths)
    workloads = [w for w in WORKLOADS if w.name in args.only]
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fusesnap-fs-bench-", dir=parent))
    if args.profile is not None:  # absolute: workloads run inside the views
        args.profile = args.profile.absolute()
        args.profile.mkdir(parents=True, exist_ok=True)
    cold_note = drop_caches()
    notes = [
        "cold: fresh mount (fusesnap: daemon restarted, then a new active snapshot) and "
        + (cold_note or "caches dropped"),
        "writes start from dropped caches too; copy-up ops are open, write, fsync, close; "
        "small-create and untar end with one sync()",
        f"paths: {args.paths}" + (" (the view is the working directory)"
                                  if args.paths == "relative" else ""),
    ]
    print(f"fs benchmark: scale {args.scale}, {args.reps} reps, fusesnap {source}, "
          f"workdir {work}")
    for note in notes:
        print(f"  {note}")
    backends: list[Backend] = []
    durations: dict[str, float] = {}
    try:
        t = time.monotonic()
        fx = build(work, sizes, main=any(w.name != "deep-chain" for w in workloads),
                   deep=any(w.name == "deep-chain" for w in workloads),
                   tarball=any(w.name == "untar" for w in workloads))
        durations["fixture_s"] = time.monotonic() - t
        print(f"fixture: {durations['fixture_s']:.1f}s", flush=True)
        for name in args.backends:
            backends.append(BACKENDS[name](work))
        snap = next((b for b in backends if isinstance(b, Fusesnap)), None)
        ops_parents: dict[tuple[int, int], str] = {}
        if snap is not None:
            t = time.monotonic()
            ops_parents = import_fixture(snap, fx, workloads, "snapshot-ops" in args.only,
                                         work / "tmp")
            durations["fusesnap_import_s"] = time.monotonic() - t
            print(f"fusesnap import: {durations['fusesnap_import_s']:.1f}s", flush=True)
        t = time.monotonic()
        results, requests = measure(workloads, backends, fx, args.reps,
                                    args.paths == "absolute", args.profile, args.profile_native)
        ops = measure_ops(snap, ops_parents, sizes.ops_iterations, args.reps) if snap else {}
        durations["measure_s"] = time.monotonic() - t
    finally:
        for b in backends:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)
    durations["total_s"] = time.monotonic() - started
    after, code_after = source_state()
    if code_after != code:
        print(f"WARNING: fusesnap/ changed during the run ({source} -> {after}): "
              "the figures may mix versions")
        source = f"{source} -> {after}"

    names = [b.name for b in backends]
    text, doc = table(results, names)
    print(f"\nfs benchmark: fusesnap {source}, scale {args.scale}, {args.reps} reps, seconds "
          f"median (min–max) and ×ratio to native; total {durations['total_s']:.0f}s")
    print(text)
    depth = depth_check(results, sizes.depths)
    if depth is not None:
        print(depth[0])
    if requests:
        print(f"\nfusesnap's FUSE requests while the clock ran, over {args.reps} reps "
              "(the daemon's counters; µs: its handlers' own time, pyfuse3's dispatch "
              "excluded; of wall: the handlers' share of the timed wall time)")
        print(requests_table(requests))
    if ops:
        print()
        print(ops_table(ops))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {"fusesnap": source, "scale": args.scale, "reps": args.reps,
                       "backends": names,
                       "workloads": args.only, "sizes": dataclasses.asdict(sizes),
                       "kernel": platform.release(), "python": sys.version.split()[0],
                       "cpus": os.cpu_count(), "notes": notes},
            "durations": durations, "rows": doc,
            "deep_depth_check": depth[1] if depth else None,
            "fusesnap_requests": {row: r.doc() for row, r in requests.items()},
            "snapshot_ops": ops,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
