"""One CLI grammar (issue 19, item 8), read from the parser itself so that a
command added later is held to it too: every argument explains itself in
`--help`; commands that make something take the new name first, as `ctr`
does (`snapshots commit NAME KEY`, `images commit NAME KEY`); listings have
`--json` and `-q`; and nothing a user can type ends in a traceback: every
subcommand, run against a real daemon with no arguments, with an unknown
option and with arguments that name nothing, exits 1 or 2 with a short
message on stderr."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from fusesnap.cli import build_parser
from tests.conftest import Daemon, module_daemon

# Commands that do not talk to the daemon, or that would wait or change the
# machine when given arguments that name nothing.
NOT_RUN = {("serve",), ("exec",)}


def commands() -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(path, parser) of every leaf subcommand, aliases left out."""
    def walk(parser: argparse.ArgumentParser,
             path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
            return
        seen: set[int] = set()
        for name, child in subs[0].choices.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield from walk(child, (*path, name))
    yield from walk(build_parser(), ())


COMMANDS = dict(commands())


def test_every_argument_of_every_command_has_help() -> None:
    missing = []
    for path, parser in COMMANDS.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help and action.help.strip()):
                missing.append(f"{' '.join(path)}: {action.option_strings or action.dest}")
    assert not missing, "\n".join(missing)


def _positionals(path: tuple[str, ...]) -> list[str]:
    return [a.dest for a in COMMANDS[path]._actions if not a.option_strings]


def test_commit_takes_the_new_name_first_in_every_group() -> None:
    assert _positionals(("snapshots", "commit"))[:2] == ["name", "key"]
    assert _positionals(("images", "commit"))[:2] == ["name", "key"]


def test_every_listing_has_json_and_quiet() -> None:
    lacking = []
    for path, parser in COMMANDS.items():
        if path[-1] in ("ls", "active", "resources"):
            options = {o for a in parser._actions for o in a.option_strings}
            if not {"--json", "-q"} <= options:
                lacking.append(" ".join(path))
    assert not lacking, lacking


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory, "grammar")


def _bad_invocations(path: tuple[str, ...]) -> list[list[str]]:
    parser = COMMANDS[path]
    positionals = [a for a in parser._actions if not a.option_strings]
    nothing = ["no-such-thing-" + a.dest for a in positionals
               if a.nargs not in ("?", "*", argparse.REMAINDER)]
    return [[*path], [*path, "--no-such-option"], [*path, *nothing, "extra-arg"],
            [*path, *nothing]]


def test_nothing_a_user_types_ends_in_a_traceback(daemon: Daemon) -> None:
    runs = [(path, args) for path in COMMANDS if path not in NOT_RUN
            for args in _bad_invocations(path)]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fusesnap", "--socket",
                               str(daemon.socket), *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [args for _, args in runs]))
    bad = []
    for (_, args), proc in zip(runs, results, strict=True):
        if "Traceback" in proc.stderr or proc.returncode not in (0, 1, 2) or (
                proc.returncode and not proc.stderr.strip()):
            bad.append(f"{' '.join(args)} -> {proc.returncode}: {proc.stderr[-300:]}")
    assert not bad, "\n".join(bad)
