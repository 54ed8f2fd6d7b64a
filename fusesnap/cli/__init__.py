"""The `fusesnap` command: `serve`, and client subcommands in the style of `ctr`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from fusesnap import __version__, logs
from fusesnap.config import Config, Role, default_socket


def _serve(args: argparse.Namespace) -> int:
    import trio

    from fusesnap.daemon import StartupError, serve

    config = Config.make(args.root, args.socket, args.mountpoint, args.role,
                         args.ingest_grace, args.gc_delay, args.socket_group,
                         args.fuse_busy_poll, args.insecure_registry, args.registry_ca)
    if args.userns:
        from fusesnap import userns

        try:
            mapped = userns.plan()
            userns.enter(mapped)
        except userns.NamespaceError as e:
            logging.getLogger("fusesnap").error("%s", e)
            return 1
        logging.getLogger("fusesnap").info(
            "serving as root of a user namespace (pid %d): uids %s, gids %s; run programs "
            "in it with: fusesnap exec", os.getpid(), mapped.uids.describe(),
            mapped.gids.describe())
    try:
        trio.run(serve, config)
    except StartupError as e:
        logging.getLogger("fusesnap").error("%s", e)
        return 1
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _microseconds(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of microseconds from 0 to 1000000, got {text!r}")
    return int(text)


def _env_microseconds(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return _microseconds(text)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"fusesnap: {name}: {e}") from None


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    """`--socket` is accepted after the subcommand too (`fusesnap serve --socket …`)."""
    parser.add_argument("--socket", default=argparse.SUPPRESS, help="daemon socket")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusesnap",
        description="A userspace snapshotter for containers: snapshots as directories "
                    "on a FUSE mount, containerd's gRPC APIs on a unix socket.",
    )
    parser.add_argument("--version", action="version", version=f"fusesnap {__version__}")
    parser.add_argument("--socket", default=None,
                        help=f"daemon socket (env FUSESNAP_SOCKET; default {default_socket()})")
    parser.add_argument("--namespace", "-n",
                        default=os.environ.get("FUSESNAP_NAMESPACE") or "default",
                        help="namespace of leases and images (env FUSESNAP_NAMESPACE; "
                             "default: default)")
    parser.add_argument("--lease", default=os.environ.get("FUSESNAP_LEASE") or None,
                        help="lease that created snapshots and content join "
                             "(env FUSESNAP_LEASE)")
    parser.add_argument("--log-level", default=os.environ.get("FUSESNAP_LOG_LEVEL") or "INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG adds a line per gRPC call (method, namespace, names, "
                             "status, time; env FUSESNAP_LOG_LEVEL; default INFO)")
    parser.add_argument("--log-format", choices=list(logs.FORMATS),
                        default=logs.default_format(),
                        help="text lines, or one JSON object a line (env "
                             "FUSESNAP_LOG_FORMAT; default text)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    add_socket_option(serve)
    serve.add_argument("--root", default=None,
                       help="store directory (env FUSESNAP_ROOT; default "
                            "$XDG_DATA_HOME/fusesnap)")
    serve.add_argument("--mountpoint", default=None,
                       help="FUSE mountpoint (env FUSESNAP_MOUNTPOINT; default ROOT/mnt)")
    serve.add_argument("--role", choices=[r.value for r in Role], default=None,
                       help="direct: fusesnap keeps leases and images and collects garbage "
                            "(the CLI, rootless engines); proxy: containerd is the client "
                            "and owns all of that (env FUSESNAP_ROLE; default direct)")
    serve.add_argument("--ingest-grace", type=_seconds, default=None, metavar="SECONDS",
                       help="how long an ingest on no lease is safe from garbage "
                            "collection (default 86400, as containerd)")
    serve.add_argument("--gc-delay", type=_seconds, default=None, metavar="SECONDS",
                       help="delay between a deletion and the background collection "
                            "(default 1)")
    serve.add_argument("--socket-group", default=None, metavar="GROUP",
                       help="group that may connect to the socket (mode 0660) besides the "
                            "daemon's user (env FUSESNAP_SOCKET_GROUP; default: root for a "
                            "root daemon, none (mode 0600) for an ordinary user's)")
    serve.add_argument("--fuse-busy-poll", type=_microseconds, metavar="MICROSECONDS",
                       default=_env_microseconds("FUSESNAP_FUSE_BUSY_POLL"),
                       help="how long the FUSE loop polls for the next request before it "
                            "sleeps: cheaper than a wake-up where waking a CPU is dear (env "
                            "FUSESNAP_FUSE_BUSY_POLL; default 50; 0 never polls)")
    serve.add_argument("--insecure-registry", action="append", default=[],
                       metavar="HOST[:PORT]",
                       help="a registry the daemon fetches lazy layers from over plain HTTP "
                            "(repeatable; 'images pull --lazy --plain-http' needs it)")
    serve.add_argument("--registry-ca", default=None, metavar="FILE",
                       help="a CA certificate file the daemon trusts for registries, besides "
                            "the system's (lazy layers)")
    serve.add_argument("--userns", action="store_true",
                       help="for an ordinary user: serve as root of a user namespace of its "
                            "own that maps 0 to the user and 1-65536 to the user's /etc/subuid "
                            "and /etc/subgid ranges (with newuidmap and newgidmap); the mount "
                            "is seen inside it, through 'fusesnap exec'")
    serve.set_defaults(func=_serve)

    from fusesnap.cli import content, debug, gc, images, leases, namespace, snapshots, status

    snapshots.register(sub)
    content.register(sub)
    leases.register(sub)
    gc.register(sub)
    images.register(sub)
    debug.register(sub)
    namespace.register(sub)
    status.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    return int(args.func(args) or 0)
