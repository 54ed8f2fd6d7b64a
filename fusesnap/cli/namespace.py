"""`fusesnap exec`: run a program inside a `serve --userns` daemon's namespaces.

    fusesnap exec [--] [COMMAND [ARG...]]

runs COMMAND (default: $SHELL, else /bin/sh) as uid and gid 0 of the user
namespace of the daemon on the socket, in its mount namespace (where its
mount is), in the same working directory. Inside, every id the namespace maps
is itself: files of root, uid 33 or 1000 show with those owners, and chown,
chmod and xattrs work as root's. FUSESNAP_SOCKET is set to the socket, so
client commands run inside reach the same daemon.

The daemon is found from its socket (the kernel gives a client the pid of the
process listening on it); a daemon that runs in no user namespace of its own
gets one line saying how to start one that does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fusesnap import userns
from fusesnap.cli import add_socket_option, common


def _exec(args: argparse.Namespace) -> int:
    sock = Path(common.socket_path(args)).absolute()
    try:
        userns.join(userns.daemon_pid(sock), sock)
    except userns.NamespaceError as e:
        common.error(str(e))
        return 1
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        argv = [os.environ.get("SHELL") or "/bin/sh"]
    os.environ["FUSESNAP_SOCKET"] = str(sock)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        common.error(f"cannot run {argv[0]}: {e.strerror}")
        return 127
    return 0  # not reached: execvp replaced this process


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "exec", help="run a program as root inside a 'serve --userns' daemon's namespaces",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_socket_option(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="the program and its arguments (default: $SHELL)")
    p.set_defaults(func=_exec)
