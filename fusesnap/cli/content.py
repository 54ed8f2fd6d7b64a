"""`fusesnap content …`: the Content API from the shell, in the style of
`ctr content` (spec §3).

    fusesnap content ingest REF [--expected-digest D] [--expected-size N] [--label k=v…] < FILE
                                              prints the digest of what was committed
    fusesnap content get DIGEST > FILE
    fusesnap content ls [FILTER…]             DIGEST SIZE AGE LABELS
    fusesnap content info DIGEST              always JSON
    fusesnap content rm DIGEST…
    fusesnap content label DIGEST k=v…        `k=` removes label k
    fusesnap content active [FILTER…]         ingests in progress
    fusesnap content abort REF
    fusesnap content prune [--older-than DURATION] [--dry-run]
                                              abort stale ingests, printing each ref

`ingest` reads the blob from standard input (refused when it is a
terminal), resumes an unfinished ingest of the same REF from where it stopped
(the input is skipped up to there, as `ctr content ingest` does) and shows a
progress bar with bytes/s on stderr when stderr is a terminal. Content that
is already there counts as success: its digest is printed. Interrupted
(Ctrl-C), it hands the daemon what it sent, keeps the ingest and prints the
commands that resume or abort it; exit status 130.

`prune` aborts every ingest that no Write stream holds and that was last
written to longer ago than ``--older-than`` (default 24h), printing its ref;
``--dry-run`` only prints them.

The blob `ingest` commits is labelled ``containerd.io/gc.root`` (the time),
kept until `rm`, unless the global ``--lease`` holds it or ``--no-gc-root``
is given.

JSON shapes (``--json``): an Info is ``{"digest", "size", "labels",
"created_at", "updated_at"}``; an ingest is ``{"ref", "offset", "total",
"expected", "started_at", "updated_at"}`` (sizes in bytes, RFC 3339 UTC times).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.cli import add_socket_option, common
from fusesnap.content import wire
from fusesnap.pb import content_pb2 as cpb
from fusesnap.pb.content_pb2_grpc import ContentStub

CHUNK = 1 << 20
"""Bytes per WRITE message (what containerd's clients send by default)."""

WINDOW = 4
"""WRITE messages in flight before the client waits for a response."""


# ---------------------------------------------------------------------- conversions


def info_json(info: cpb.Info) -> dict[str, Any]:
    return {
        "digest": info.digest,
        "size": info.size,
        "labels": dict(info.labels),
        "created_at": common.rfc3339(info.created_at),
        "updated_at": common.rfc3339(info.updated_at),
    }


def status_json(status: cpb.Status) -> dict[str, Any]:
    return {
        "ref": status.ref,
        "offset": status.offset,
        "total": status.total,
        "expected": status.expected,
        "started_at": common.rfc3339(status.started_at),
        "updated_at": common.rfc3339(status.updated_at),
    }


def human_duration(seconds: float) -> str:
    """How long ago, in the words of go-units' HumanDuration (what ctr prints)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def age(ts: Timestamp) -> str:
    return human_duration(time.time() - ts.ToNanoseconds() / 1e9)


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels)) or "-"


def is_code(err: grpc.RpcError, code: grpc.StatusCode) -> bool:
    return isinstance(err, grpc.Call) and err.code() == code


# ---------------------------------------------------------------------- ingest


class WriteStream:
    """A Write stream driven from this thread: requests go out as they are
    queued, responses come back in order, one per request."""

    def __init__(self, stub: ContentStub) -> None:
        self._queue: queue.Queue[cpb.WriteContentRequest | None] = queue.Queue()
        self._responses: Iterator[cpb.WriteContentResponse] = stub.Write(
            iter(self._queue.get, None))

    def put(self, request: cpb.WriteContentRequest) -> None:
        self._queue.put(request)

    def get(self) -> cpb.WriteContentResponse:
        try:
            return next(self._responses)
        except StopIteration:
            raise common.CommandError("the daemon ended the write stream early") from None

    def send(self, request: cpb.WriteContentRequest) -> cpb.WriteContentResponse:
        self.put(request)
        return self.get()

    def close(self) -> None:
        """Half-close and wait for the daemon to end the stream."""
        self._queue.put(None)
        for _ in self._responses:
            pass

    def cancel(self) -> None:
        """End the stream at once (the ingest stays as the daemon has it)."""
        self._queue.put(None)
        self._responses.cancel()  # type: ignore[attr-defined]


class ProgressBar:
    """``REF [=====>    ] 12.0 MiB/40.0 MiB  85.3 MiB/s`` redrawn in place on a
    terminal, at most ten times a second."""

    WIDTH = 30

    def __init__(self, out: IO[str], ref: str, start: int, total: int) -> None:
        self.out = out
        self.ref = ref
        self.start = start
        self.total = total
        self.began = time.monotonic()
        self.drawn = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.drawn < 0.1:
            return
        self.drawn = now
        rate = (done - self.start) / max(now - self.began, 1e-6)
        parts = [self.ref]
        if self.total > 0:
            filled = min(self.WIDTH, self.WIDTH * done // self.total)
            head = ">" if filled < self.WIDTH else ""
            parts.append("[" + "=" * filled + head + " " * (self.WIDTH - filled - len(head)) + "]")
            parts.append(f"{common.human_size(done)}/{common.human_size(self.total)}")
        else:
            parts.append(common.human_size(done))
        parts.append(f" {common.human_size(int(rate))}/s")
        self.out.write("\r\x1b[K" + " ".join(parts) + ("\n" if final else ""))
        self.out.flush()


def _skip(source: IO[bytes], offset: int, ref: str) -> None:
    """Position the input after the `offset` bytes the ingest already holds."""
    if source.seekable():
        if os.fstat(source.fileno()).st_size - source.tell() < offset:
            raise common.CommandError(
                f"ingest {ref} already holds {offset} bytes, more than the input; "
                f"abort it first (fusesnap content abort {ref})")
        source.seek(offset, os.SEEK_CUR)
        return
    left = offset
    while left:
        got = source.read(min(CHUNK, left))
        if not got:
            raise common.CommandError(
                f"ingest {ref} already holds {offset} bytes, more than the input; "
                f"abort it first (fusesnap content abort {ref})")
        left -= len(got)


def command_line(args: argparse.Namespace, *words: str) -> str:
    """``fusesnap [--socket S] [-n NS] [--lease L] WORDS…``, quoted for a shell:
    a command to run against the same daemon, namespace and lease."""
    parts = ["fusesnap"]
    if getattr(args, "socket", None):
        parts += ["--socket", str(args.socket)]
    if getattr(args, "namespace", "default") != "default":
        parts += ["-n", args.namespace]
    if getattr(args, "lease", None):
        parts += ["--lease", args.lease]
    return shlex.join([*parts, *words])


def _ingest(args: argparse.Namespace, stub: ContentStub) -> None:
    expected = args.expected_digest or ""
    total = args.expected_size or 0
    source = sys.stdin.buffer
    if source.isatty():
        raise common.CommandError(
            "reading the blob from standard input, which is a terminal: redirect a file "
            f"({command_line(args, 'content', 'ingest', args.ref)} < FILE)")
    stream = WriteStream(stub)
    try:
        resp = stream.send(cpb.WriteContentRequest(
            action=cpb.STAT, ref=args.ref, total=total, expected=expected))
    except grpc.RpcError as err:
        if expected and is_code(err, grpc.StatusCode.ALREADY_EXISTS):
            _print_digest(args, expected)  # already there: nothing to send
            return
        raise
    offset = resp.offset
    digest = resp.digest
    bar = None
    pending: collections.deque[int] = collections.deque()  # offsets the responses must show

    def receive() -> None:
        nonlocal digest, offset
        resp = stream.get()
        want = pending.popleft()
        if resp.offset != want:
            raise common.CommandError(f"short write: the daemon is at {resp.offset}, "
                                      f"expected {want}")
        offset, digest = resp.offset, resp.digest
        if bar is not None:
            bar.update(offset)

    try:
        if offset:
            _skip(source, offset, args.ref)
            print(f"fusesnap: resuming ingest {args.ref} at {offset} bytes", file=sys.stderr)
        if sys.stderr.isatty():
            size = total
            if not size and source.seekable():
                size = os.fstat(source.fileno()).st_size - source.tell() + offset
            bar = ProgressBar(sys.stderr, args.ref, offset, size)
        sent = offset
        while chunk := source.read(CHUNK):
            stream.put(cpb.WriteContentRequest(action=cpb.WRITE, offset=sent, data=chunk))
            sent += len(chunk)
            pending.append(sent)
            if len(pending) >= WINDOW:
                receive()
        while pending:
            receive()
    except KeyboardInterrupt:
        _interrupted(args, stub, stream, receive, pending, offset, bar is not None)
        raise
    if bar is not None:
        bar.update(offset, final=True)
    try:
        resp = stream.send(cpb.WriteContentRequest(
            action=cpb.COMMIT, offset=offset, total=total, expected=expected,
            labels=common.kept(args, common.labels_of(args.label))))
    except grpc.RpcError as err:
        if is_code(err, grpc.StatusCode.ALREADY_EXISTS):
            _print_digest(args, digest)  # the same bytes are committed already
            return
        raise
    stream.close()
    _print_digest(args, resp.digest)


def _print_digest(args: argparse.Namespace, digest: str) -> None:
    if args.json:
        common.print_json({"ref": args.ref, "digest": digest})
    else:
        print(digest)


def _interrupted(args: argparse.Namespace, stub: ContentStub, stream: WriteStream,
                 receive: Callable[[], None], pending: collections.deque[int],
                 offset: int, bar: bool) -> None:
    """Ctrl-C during an ingest: let the daemon take what was sent, end the
    stream without a commit (the ingest stays, unlocked) and say how to resume
    or abort it."""
    try:
        while pending:
            receive()
        stream.close()
    except (grpc.RpcError, common.CommandError):
        stream.cancel()
    try:
        offset = stub.Status(cpb.StatusRequest(ref=args.ref)).status.offset
    except grpc.RpcError:
        pass
    if bar:
        sys.stderr.write("\n")
    options = [*(["--expected-digest", args.expected_digest] if args.expected_digest else []),
               *(["--expected-size", str(args.expected_size)] if args.expected_size else [])]
    resume = command_line(args, "content", "ingest", args.ref, *options)
    abort = command_line(args, "content", "abort", args.ref)
    common.error(f"interrupted: ingest {args.ref} is kept at {offset} bytes; resume it with "
                 f"`{resume} < FILE` (it skips the first {offset} bytes of FILE), or abort "
                 f"it with `{abort}`")


# ---------------------------------------------------------------------- other commands


class ContentClient(ContentStub):
    """The Content stub plus `read`: Read whose responses are decoded into
    (offset, view of the received bytes) without protobuf objects, which copy
    every chunk twice (see fusesnap/content/wire.py)."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.read = channel.unary_stream(
            "/containerd.services.content.v1.Content/Read",
            request_serializer=cpb.ReadContentRequest.SerializeToString,
            response_deserializer=wire.decode_read_response)


def _get(args: argparse.Namespace, stub: ContentClient) -> None:
    out = sys.stdout.buffer
    for _, data in stub.read(cpb.ReadContentRequest(digest=args.digest)):
        out.write(data)
    out.flush()


def list_all(stub: ContentStub, filters: list[str]) -> list[cpb.Info]:
    infos: list[cpb.Info] = []
    for batch in stub.List(cpb.ListContentRequest(filters=filters)):
        infos.extend(batch.info)
    return infos


def _ls(args: argparse.Namespace, stub: ContentStub) -> None:
    infos = list_all(stub, args.filters)
    if args.json:
        common.print_json([info_json(i) for i in infos])
    elif args.quiet:
        for info in infos:
            print(info.digest)
    else:
        common.print_table(["digest", "size", "age", "labels"],
                           [(i.digest, common.human_size(i.size), age(i.created_at),
                             labels_text(dict(i.labels))) for i in infos])


def _info(args: argparse.Namespace, stub: ContentStub) -> None:
    common.print_json(info_json(stub.Info(cpb.InfoRequest(digest=args.digest)).info))


def _rm(args: argparse.Namespace, stub: ContentStub) -> None:
    for digest in args.digests:
        try:
            stub.Delete(cpb.DeleteContentRequest(digest=digest))
        except grpc.RpcError as err:
            if common.is_connect_failure(err):
                raise
            raise common.CommandError(f"rm {digest}: {common.describe(err)}") from err


def _label(args: argparse.Namespace, stub: ContentStub) -> None:
    wanted = common.labels_of(args.labels)
    resp = stub.Update(cpb.UpdateRequest(
        info=cpb.Info(digest=args.digest, labels={k: v for k, v in wanted.items() if v}),
        update_mask={"paths": [f"labels.{k}" for k in wanted]}))
    if args.json:
        common.print_json(dict(resp.info.labels))
    else:
        common.print_labels(resp.info.labels)


def _active(args: argparse.Namespace, stub: ContentStub) -> None:
    statuses = stub.ListStatuses(cpb.ListStatusesRequest(filters=args.filters)).statuses
    if args.json:
        common.print_json([status_json(s) for s in statuses])
    elif args.quiet:
        for s in statuses:
            print(s.ref)
    else:
        common.print_table(
            ["ref", "size", "total", "started", "updated"],
            [(s.ref, common.human_size(s.offset),
              common.human_size(s.total) if s.total else "-",
              age(s.started_at), age(s.updated_at)) for s in statuses])


def _abort(args: argparse.Namespace, stub: ContentStub) -> None:
    stub.Abort(cpb.AbortRequest(ref=args.ref))


PRUNE_AGE = 24 * 3600.0
"""`content prune`'s default --older-than: a day, long enough that no
interrupted ingest someone means to resume goes by mistake."""


def _in_use(stub: ContentStub, ref: str) -> bool:
    """Whether a Write stream holds `ref`: a STAT of our own is refused then.
    Ours changes nothing (no total, no expected digest) and ends at once."""
    stream = WriteStream(stub)
    try:
        stream.send(cpb.WriteContentRequest(action=cpb.STAT, ref=ref))
    except grpc.RpcError as err:
        stream.cancel()
        if is_code(err, grpc.StatusCode.UNAVAILABLE) and not common.is_connect_failure(err):
            return True
        raise
    stream.close()
    return False


def _prune(args: argparse.Namespace, stub: ContentStub) -> None:
    cutoff = time.time() - args.older_than
    for status in stub.ListStatuses(cpb.ListStatusesRequest()).statuses:
        if status.updated_at.ToNanoseconds() / 1e9 > cutoff or _in_use(stub, status.ref):
            continue
        if not args.dry_run:
            stub.Abort(cpb.AbortRequest(ref=status.ref))
        print(status.ref)


def _duration(text: str) -> float:
    from fusesnap.cli.leases import duration_arg  # leases imports this module

    return duration_arg(text)


# ---------------------------------------------------------------------- parser



def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("content", help="manage content (like `ctr content`)",
                           description="Blobs and ingests of the fusesnap daemon.")
    add_socket_option(group)
    command = common.subcommands(group, "content_command", ContentClient)

    p = command("ingest", _ingest, "store standard input as a blob and print its digest",
                json=True)
    p.add_argument("ref", metavar="REF", help="ingest name (resumed if it exists)")
    p.add_argument("--expected-digest", metavar="DIGEST", default="",
                   help="fail unless the content has this digest")
    p.add_argument("--expected-size", metavar="N", type=_size, default=0,
                   help="fail unless the content has N bytes")
    p.add_argument("--label", action="append", type=common.label_arg, default=[],
                   metavar="KEY=VALUE", help="label of the new blob (repeatable)")
    common.add_keep_option(p)

    p = command("get", _get, "write a blob to standard output")
    p.add_argument("digest", metavar="DIGEST",
                   help="the blob's digest (sha256:...)")

    p = command("ls", _ls, "list blobs (filters are OR-ed, e.g. labels.team==infra)",
                aliases=["list"], json=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the digests")
    p.add_argument("filters", metavar="FILTER", nargs="*",
                   help="containerd filters, e.g. digest==sha256:..., labels.team==infra")

    p = command("info", _info, "print a blob's info as JSON (--json: the same)", json=True)
    p.add_argument("digest", metavar="DIGEST",
                   help="the blob's digest (sha256:...)")

    p = command("rm", _rm, "delete blobs, stopping at the first failure",
                aliases=["remove", "delete"])
    p.add_argument("digests", metavar="DIGEST", nargs="+",
                   help="blobs to delete")

    p = command("label", _label, "set labels (KEY= removes one) and print the result",
                json=True)
    p.add_argument("digest", metavar="DIGEST",
                   help="the blob's digest (sha256:...)")
    p.add_argument("labels", metavar="KEY=VALUE", nargs="+", type=common.label_arg,
                   help="labels to set; KEY= removes KEY")

    p = command("active", _active, "list ingests in progress (filters on ref, e.g. "
                "ref~=^layer-)", json=True)
    p.add_argument("filters", metavar="FILTER", nargs="*",
                   help="containerd filters, e.g. ref==layer-1")
    common.add_quiet_option(p, "the refs")

    p = command("abort", _abort, "abandon an ingest and delete its bytes")
    p.add_argument("ref", metavar="REF",
                   help="the ingest's ref (as given to ingest)")

    p = command("prune", _prune, "abort the ingests no Write stream holds that have not "
                "grown for a while, printing each ref")
    p.add_argument("--older-than", type=_duration, default=PRUNE_AGE, metavar="DURATION",
                   help="how long an ingest has not been written to (24h, 30m, 90s, 0s; "
                        "default: 24h)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the refs it would abort, abort none")
