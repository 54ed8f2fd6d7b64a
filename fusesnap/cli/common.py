"""Plumbing shared by the client subcommands (`snapshots`, `content`, `leases`,
`images`, `gc`, `debug`, `status`): the socket, the channel, one-line errors, tables and JSON.

A command handler is ``fn(channel) -> int | None``; :func:`run` opens the
channel, calls it and turns failures into one line on stderr and exit code 1:

    fusesnap: not found: snapshot foo does not exist
    fusesnap: cannot reach fusesnap at /run/fusesnap/fusesnap.sock: is the daemon running?

Output is a text table by default and one JSON document (sorted keys) with
``--json``. Times are RFC 3339 UTC; sizes are human readable in tables and
plain byte counts in JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import grpc
import grpc.experimental
from google.protobuf.timestamp_pb2 import Timestamp

from fusesnap.config import default_socket

MAX_MESSAGE = 16 * 1024 * 1024
"""Send and receive limit of the channel, as the daemon allows (spec §9.5)."""

EXIT_FAILURE = 1
EXIT_USAGE = 2  # what argparse uses


class CommandError(Exception):
    """A failure found by the client itself, reported as ``fusesnap: <message>``."""


# ---------------------------------------------------------------------- arguments


def add_quiet_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`-q`/`--quiet`: a listing prints only `what`, one a line."""
    parser.add_argument("-q", "--quiet", action="store_true", help=f"print only {what}")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of text")


def label_arg(text: str) -> tuple[str, str]:
    """argparse ``type=`` for ``KEY=VALUE`` (VALUE may be empty); anything else is a
    usage error (exit 2)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


GC_ROOT = "containerd.io/gc.root"


def add_keep_option(parser: argparse.ArgumentParser) -> None:
    """`--no-gc-root`: what the command makes is left to garbage collection."""
    parser.add_argument("--no-gc-root", action="store_true",
                        help="leave what this makes to garbage collection, as containerd's "
                             "clients do (default: labelled containerd.io/gc.root, kept until "
                             "removed, unless the global --lease holds it)")


def kept(args: argparse.Namespace, labels: dict[str, str]) -> dict[str, str]:
    """`labels`, plus ``containerd.io/gc.root`` (the time now) so that what a
    command makes stays until the user removes it: not under the global
    ``--lease`` (the lease holds it) nor with ``--no-gc-root``."""
    if getattr(args, "lease", None) or getattr(args, "no_gc_root", False) or GC_ROOT in labels:
        return labels
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {**labels, GC_ROOT: now.replace("+00:00", "Z")}


def labels_of(pairs: Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """The map of ``--label`` pairs, the last value winning for a repeated key."""
    return dict(pairs or ())


# ---------------------------------------------------------------------- channel


def socket_path(args: argparse.Namespace) -> str:
    """`--socket` (global or after the subcommand), else the default socket."""
    given = getattr(args, "socket", None)
    return str(given) if given else str(default_socket())


def open_channel(path: str) -> grpc.Channel:
    """A channel to the daemon's socket with containerd's message limits.
    Server-streaming calls (a Read moves a blob in 1 MiB messages) are received
    in the calling thread rather than handed over from grpc's channel thread
    one message at a time."""
    return grpc.insecure_channel(f"unix:{path}", options=[
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ])


# Texts grpc core puts in UNAVAILABLE when there is no server behind the socket
# (as opposed to an Unavailable status the daemon itself returns).
_CONNECT_FAILURES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "no such file or directory",
    "connection refused",
    "socket closed",
    "connection reset",
)


def is_connect_failure(err: grpc.RpcError) -> bool:
    if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (err.details() or "").lower()
    return any(text in details for text in _CONNECT_FAILURES)


def code_name(code: grpc.StatusCode) -> str:
    """``StatusCode.NOT_FOUND`` -> ``"not found"``."""
    return code.name.lower().replace("_", " ")


def one_line(text: str) -> str:
    return " ".join(text.split())


_CONTAINERD_CLASS = {grpc.StatusCode.UNIMPLEMENTED: "not implemented"}


def describe(err: grpc.RpcError) -> str:
    """``<code, lower-case with spaces>: <details>`` of a failed call, on one line."""
    if not isinstance(err, grpc.Call):
        return one_line(str(err))
    name = code_name(err.code())
    details = one_line(err.details() or "")
    # The daemon ends its messages with containerd's class string
    # ("snapshot x does not exist: not found"); say it once, in front.
    for suffix in (name, _CONTAINERD_CLASS.get(err.code(), name)):
        if details.endswith(f": {suffix}"):
            details = details[:-len(suffix) - 2]
            break
    return f"{name}: {details}" if details else name


def _unreachable(err: grpc.RpcError, socket: str) -> str:
    details = (err.details() or "").lower() if isinstance(err, grpc.Call) else ""
    if "permission denied" in details:
        return f"cannot reach fusesnap at {socket}: permission denied"
    return f"cannot reach fusesnap at {socket}: is the daemon running?"


def error(message: str) -> None:
    print(f"fusesnap: {one_line(message)}", file=sys.stderr)


class _Headers(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds containerd's namespace and lease headers (spec §1.3) to every call."""

    def __init__(self, headers: Sequence[tuple[str, str]]) -> None:
        self.headers = list(headers)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=list(details.metadata or ()) + self.headers)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def headers(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The namespace (always) and lease (when given) headers of the command's calls."""
    out = [("containerd-namespace", getattr(args, "namespace", None) or "default")]
    lease = getattr(args, "lease", None)
    if lease:
        out.append(("containerd-lease", lease))
    return out


def run(args: argparse.Namespace, fn: Callable[[grpc.Channel], int | None]) -> int:
    """Call ``fn`` with a channel to the daemon; the exit code of the command."""
    socket = socket_path(args)
    try:
        with open_channel(socket) as raw:
            channel = grpc.intercept_channel(raw, _Headers(headers(args)))
            code = int(fn(channel) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except grpc.RpcError as err:
        if is_connect_failure(err):
            error(_unreachable(err, socket))
        else:
            error(describe(err))
        return EXIT_FAILURE
    except CommandError as err:
        error(str(err))
        return EXIT_FAILURE
    except BrokenPipeError:
        # `fusesnap … | head`: stop quietly; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- output


def rfc3339(ts: Timestamp) -> str:
    """RFC 3339 in UTC, e.g. ``2024-05-01T12:00:00.123456789Z``."""
    return ts.ToJsonString()


_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """``512 B``, ``4.0 KiB``, ``1.5 MiB`` (binary units)."""
    if abs(n) < 1024:
        return f"{n} B"
    value = n / 1024
    i = 0
    while abs(value) >= 1024 and i < len(_UNITS) - 1:
        value /= 1024
        i += 1
    return f"{value:.1f} {_UNITS[i]}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, an upper-case header row, no
    trailing spaces; ends with a newline."""
    cells = [[h.upper() for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    sys.stdout.write(table(headers, rows))


def print_json(doc: Any) -> None:
    print(json.dumps(doc, sort_keys=True, indent=2))


def print_labels(labels: Mapping[str, str]) -> None:
    for key in sorted(labels):
        print(f"{key}={labels[key]}")


Stub = TypeVar("Stub")


def subcommands(
    group: argparse.ArgumentParser, dest: str, stub: Callable[[grpc.Channel], Stub]
) -> Callable[..., argparse.ArgumentParser]:
    """Add a subcommand list to `group`; returns `command(name, fn, help, *,
    aliases=None, json=False)`, which adds one subcommand whose `fn(args, stub)`
    runs with a stub on the daemon's channel (errors handled by `run`)."""
    from fusesnap.cli import add_socket_option

    cmds = group.add_subparsers(dest=dest, metavar="COMMAND")
    cmds.required = True

    def command(name: str, fn: Callable[[argparse.Namespace, Stub], int | None], help: str,
                *, aliases: list[str] | None = None,
                json: bool = False) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, aliases=aliases or [], help=help, description=help)
        add_socket_option(p)
        if json:
            add_json_option(p)
        p.set_defaults(func=lambda args: run(args, lambda channel: fn(args, stub(channel))))
        return p

    return command


# ---------------------------------------------------------------------- files written


@contextlib.contextmanager
def output(path: str, force: bool = False, what: str = "a tar") -> Iterator[IO[bytes]]:
    """Where a command writes `what`, never replacing a path it was not asked
    to create:

    - ``-`` is standard output (refused when it is a terminal);
    - a character device, FIFO or socket, or any path under /dev or /proc
      (``/dev/stdout``, ``/dev/fd/3``), is opened and written in place;
    - a directory is refused;
    - an existing file is replaced only with `force`;
    - otherwise the bytes go to a temporary file beside `path`, renamed to it
      once complete: a failed write leaves nothing.
    CommandError for each refusal, before anything is written."""
    if path == "-":
        out = sys.stdout.buffer
        if out.isatty():
            raise CommandError(f"refusing to write {what} to a terminal: redirect it")
        yield out
        out.flush()
        return
    absolute = os.path.abspath(path)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None
    in_place = absolute.startswith(("/dev/", "/proc/")) or (
        st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)
                            or stat.S_ISSOCK(st.st_mode)))
    if in_place:
        try:
            f = open(path, "wb")  # noqa: SIM115 (closed below)
        except OSError as e:
            raise CommandError(f"{path}: {e.strerror}") from None
        with f:
            if f.isatty():
                raise CommandError(f"refusing to write {what} to a terminal ({path}): "
                                   "redirect it")
            yield f
        return
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise CommandError(f"{path} is a directory: give a file name")
    if st is not None and not force:
        raise CommandError(f"{path} exists: --force replaces it")
    tmp = f"{absolute}.tmp-{os.getpid()}"
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, absolute)
    except OSError as e:
        _discard(tmp)
        raise CommandError(f"{path}: {e.strerror}") from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
