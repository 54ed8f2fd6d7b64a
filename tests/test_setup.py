"""The one set-up path and the checks CI runs on it.

vagrant/provision.sh sets up `make setup` (so `make test`), `.ci/run` and the
Vagrant VM. These tests prove that a second run of it changes nothing, that
the three callers go through it, that `make vagrant-test` drives the VM as the
README says (against a stand-in `vagrant`: CI machines have no nested
virtualization, so no VM is booted), that every shell script passes shellcheck
and that vagrant/Vagrantfile validates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROVISION = REPO / "vagrant" / "provision.sh"
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak into a child `make`,
    `vagrant` or set-up from the run of the suite (`make test` sets MAKEFLAGS; the
    VM's suite runs with WITH_VAGRANT=0) or from the user's shell."""
    leaks = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "WITH_VAGRANT", "VAGRANT_CWD",
             "VAGRANT_DOTFILE_PATH", "FUSESNAP_VM_CPUS", "FUSESNAP_VM_MEMORY",
             "FUSESNAP_VM_BOX")
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    env.update(extra)
    return env


def _make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `make ARGS` on the repository (env may put stand-ins first on PATH)."""
    make = shutil.which("make") or "make"
    return subprocess.run([make, "--no-print-directory", "-C", str(REPO), *args],
                          env=_clean_env(**env), capture_output=True, text=True, timeout=60)


# --- the set-up runs twice and the second run changes nothing -----------------------


def _venv() -> Path:
    """The virtual environment this suite runs from: the one `make test` set up."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else REPO / ".venv"


def _provision(venv: Path) -> subprocess.CompletedProcess[str]:
    """One run of the set-up as `make test` runs it."""
    flags = ["--with-vagrant"] if shutil.which("vagrant") else []
    return subprocess.run([str(PROVISION), *flags], env=_clean_env(FUSESNAP_VENV=str(venv)),
                          capture_output=True, text=True, timeout=1800)


def _state(venv: Path) -> dict[str, object]:
    """Everything the set-up may change, item by item: Debian packages (version and
    status), the virtual environment's distributions and every file in it (size and
    mtime: a reinstall rewrites them), /etc/fuse.conf and the mode of /dev/fuse.
    __pycache__ is left out: the running suite compiles modules as it imports them."""
    state: dict[str, object] = {}
    packages = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\n"],
                              capture_output=True, text=True, check=True).stdout
    for line in packages.splitlines():
        name, _, rest = line.partition(" ")
        state[f"package {name}"] = rest
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"],
                            env=_clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
                            capture_output=True, text=True, check=True).stdout
    for line in freeze.splitlines():
        state[f"pip {line}"] = True
    for top, dirs, files in os.walk(venv):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            path = os.path.join(top, name)
            info = os.lstat(path)
            state[f"file {path}"] = None if stat.S_ISDIR(info.st_mode) else \
                (info.st_size, info.st_mtime_ns)
    fuse_conf = Path("/etc/fuse.conf")
    if fuse_conf.exists():
        state["/etc/fuse.conf"] = hashlib.sha256(fuse_conf.read_bytes()).hexdigest()
    if os.path.exists("/dev/fuse"):
        state["/dev/fuse mode"] = oct(stat.S_IMODE(os.stat("/dev/fuse").st_mode))
    return state


@dataclass
class Twice:
    """The second of two set-up runs in a row, and the state before and after it."""
    second: subprocess.CompletedProcess[str]
    before: dict[str, object]
    after: dict[str, object]


@pytest.fixture(scope="module")
def provisioned_twice() -> Twice:
    """The set-up run twice in a row (the first is what `make test` has just done, so
    it has nothing to do either unless this suite was started without make), with the
    state before and after the second run."""
    if os.geteuid() != 0:
        pytest.skip("the set-up installs Debian packages and sets /dev/fuse: it needs root")
    if shutil.which("dpkg-query") is None:
        pytest.skip("the set-up is for Debian (dpkg-query is missing)")
    venv = _venv()
    first = _provision(venv)
    assert first.returncode == 0, f"first run failed:\n{first.stdout}{first.stderr}"
    before = _state(venv)
    second = _provision(venv)
    assert second.returncode == 0, f"second run failed:\n{second.stdout}{second.stderr}"
    return Twice(second, before, _state(venv))


def test_second_set_up_changes_nothing(provisioned_twice: Twice) -> None:
    before, after = provisioned_twice.before, provisioned_twice.after
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, "the second run changed:\n" + "\n".join(
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:50])


def test_second_set_up_says_nothing_to_do_at_every_step(provisioned_twice: Twice) -> None:
    steps = provisioned_twice.second.stdout.splitlines()
    assert steps, "the set-up printed no steps"
    assert all(line.endswith(": nothing to do") for line in steps), \
        provisioned_twice.second.stdout


def test_the_daemon_only_set_up_after_the_full_one_has_nothing_to_do(
        provisioned_twice: Twice) -> None:
    """`make run` (--run) after `make test`: its packages and the package without the
    test extra are all there already."""
    run = subprocess.run([str(PROVISION), "--run"], env=_clean_env(FUSESNAP_VENV=str(_venv())),
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = run.stdout.splitlines()
    assert steps and all(line.endswith(": nothing to do") for line in steps), run.stdout


# --- one set-up path, three callers ---------------------------------------------------


def test_ci_runs_make_test(tmp_path: Path) -> None:
    log = tmp_path / "make.log"
    fake = tmp_path / "make"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\n')
    fake.chmod(0o755)
    run = subprocess.run([str(REPO / ".ci" / "run")],
                         env=_clean_env(PATH=f"{tmp_path}:{os.environ['PATH']}"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines()[0] == "test"


@pytest.mark.parametrize(("args", "flags"), [
    (("test",), " --with-vagrant"),
    (("test", "WITH_VAGRANT=0"), ""),
    (("run",), " --run --link"),
    (("install-service",), " --run"),
    (("setup",), ""),
])
def test_make_sets_up_with_the_provision_script_first(args: tuple[str, ...],
                                                      flags: str) -> None:
    """Only `make test` installs vagrant (to validate the Vagrantfile); the VM's suite
    runs with WITH_VAGRANT=0. `make run` and `make install-service` install only what
    the daemon needs (--run), and `make run` links `fusesnap` into ~/.local/bin."""
    dry = _make("-n", *args)
    assert dry.returncode == 0, dry.stderr
    first = dry.stdout.splitlines()[0].rstrip()
    assert first == f"FUSESNAP_VENV={REPO}/.venv ./vagrant/provision.sh{flags}"


# A stand-in for Vagrant's configuration objects that records every setting and
# call the Vagrantfile makes, printed as JSON.
RECORDER = textwrap.dedent("""
    require "json"

    class Recorder < BasicObject
      def initialize(path, log)
        @path = path
        @log = log
      end

      def method_missing(name, *args, **options, &block)
        name = name.to_s
        if name.end_with?("=")
          @log << {"set" => (@path + [name.chomp("=")]).join("."), "value" => args.first}
          return args.first
        end
        path = @path + [name]
        @log << {"call" => path.join("."), "args" => args, "options" => options}
        child = ::Recorder.new(path + args.map(&:to_s), @log)
        block.call(child, child) if block
        child
      end
    end

    module Vagrant
      LOG = []

      def self.configure(_version)
        yield ::Recorder.new([], LOG)
      end
    end

    load ARGV.fetch(0)
    puts JSON.generate(Vagrant::LOG)
""")


def _vagrantfile_log(**env: str) -> list[dict]:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is needed to read the Vagrantfile (Debian's vagrant depends on it)")
    run = subprocess.run(["ruby", "-e", RECORDER, str(VAGRANTFILE)], env=_clean_env(**env),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_vm_is_set_up_by_the_provision_script_of_the_synced_checkout() -> None:
    log = _vagrantfile_log()
    provisioners = [e for e in log if e.get("call") == "vm.provision"]
    assert provisioners == [{"call": "vm.provision", "args": ["shell"],
                             "options": {"inline": "/vagrant/vagrant/provision.sh"}}]
    synced = [e for e in log if e.get("call") == "vm.synced_folder"]
    assert [(e["args"], e["options"]["type"]) for e in synced] == [(["..", "/vagrant"], "rsync")]
    assert "/.venv/" in synced[0]["options"]["rsync__exclude"]


@pytest.mark.parametrize(("env", "cpus", "memory"), [
    ({}, 2, 4096),
    ({"FUSESNAP_VM_CPUS": "3", "FUSESNAP_VM_MEMORY": "3072"}, 3, 3072),
])
def test_both_providers_get_the_cpus_and_memory_of_the_environment(
        env: dict[str, str], cpus: int, memory: int) -> None:
    settings = {e["set"]: e["value"] for e in _vagrantfile_log(**env) if "set" in e}
    for provider in ("libvirt", "virtualbox"):
        assert settings[f"vm.provider.{provider}.cpus"] == cpus
        assert settings[f"vm.provider.{provider}.memory"] == memory
    assert settings["vm.box"] == "debian/bookworm64"


# --- make vagrant-test, against a stand-in vagrant ------------------------------------

# Stand-ins: `vagrant` logs its command and runs `ssh -c` commands here, with the
# VM's /vagrant in $VM and `sudo` and `make` logging who runs what; make writes the
# JUnit file its PYTEST_ARGS name and fails for the user named in $FAIL_AS.
FAKE_VAGRANT = """#!/usr/bin/env bash
echo "vagrant $* [$VAGRANT_CWD]" >> "$LOG"
if [ "$1" = ssh ]; then
    while [ "$1" != -c ]; do shift; done
    cd "$VM" && PATH="$FAKES:$PATH" bash -c "${2//\\/vagrant/$VM}"
fi
"""
FAKE_SUDO = """#!/usr/bin/env bash
AS=root "$@"
"""
FAKE_MAKE = """#!/usr/bin/env bash
echo "${AS:-vagrant}: make $*" >> "$LOG"
for arg; do
    case $arg in PYTEST_ARGS=*)
        xml=$(grep -o -- '--junitxml=[^ ]*' <<< "$arg" | cut -d= -f2)
        mkdir -p "$(dirname "$xml")" && echo "<testsuites/>" > "$xml" ;;
    esac
done
[ "${AS:-vagrant}" != "$FAIL_AS" ]
"""


@dataclass
class VagrantTest:
    """A `make vagrant-test` run: its result, the stand-ins' log and the results directory."""
    run: subprocess.CompletedProcess[str]
    log: list[str]
    results: Path

    def vagrant_commands(self) -> list[str]:
        return [line.split(" [")[0] for line in self.log if line.startswith("vagrant ")]

    def makes(self) -> list[str]:
        return [line for line in self.log if not line.startswith("vagrant ")]


def _vagrant_test(tmp_path: Path, *args: str, fail_as: str = "") -> VagrantTest:
    fakes, vm, results, log = (tmp_path / "fakes", tmp_path / "vm", tmp_path / "results",
                               tmp_path / "log")
    fakes.mkdir()
    vm.mkdir()
    log.touch()
    for name, text in (("vagrant", FAKE_VAGRANT), ("sudo", FAKE_SUDO), ("make", FAKE_MAKE)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    (vm / "results").mkdir()
    (vm / "results" / "stale.xml").write_text("from an earlier run")
    run = _make("vagrant-test", f"VM_RESULTS={results}", *args,
                PATH=f"{fakes}:{os.environ['PATH']}", LOG=str(log), VM=str(vm),
                FAKES=str(fakes), FAIL_AS=fail_as)
    return VagrantTest(run, log.read_text().splitlines(), results)


def test_vagrant_test_runs_make_test_in_the_vm_as_the_vagrant_user_then_as_root(
        tmp_path: Path) -> None:
    done = _vagrant_test(tmp_path, "PYTEST_ARGS=-k 'posix and not \"slow\"' -x")
    assert done.run.returncode == 0, done.run.stdout + done.run.stderr
    assert done.makes() == [
        f"{who}: make test WITH_VAGRANT=0 PYTEST_ARGS=-k 'posix and not \"slow\"' -x "
        f"--junitxml=results/junit-{who}.xml" for who in ("vagrant", "root")]
    assert all(line.endswith(f"[{REPO}/vagrant]") for line in done.log
               if line.startswith("vagrant "))


def test_vagrant_test_copies_the_junit_xml_back_and_destroys_the_vm(tmp_path: Path) -> None:
    done = _vagrant_test(tmp_path)
    assert done.run.returncode == 0, done.run.stdout + done.run.stderr
    assert sorted(p.name for p in done.results.iterdir()) == ["junit-root.xml",
                                                               "junit-vagrant.xml"]
    commands = done.vagrant_commands()
    assert commands[:3] == ["vagrant up --no-provision", "vagrant rsync", "vagrant provision"]
    assert commands[-1] == "vagrant destroy -f"


def test_vagrant_test_with_keep_leaves_the_vm(tmp_path: Path) -> None:
    done = _vagrant_test(tmp_path, "KEEP=1")
    assert done.run.returncode == 0, done.run.stdout + done.run.stderr
    assert not any("destroy" in c for c in done.vagrant_commands())


def test_vagrant_test_with_bench_runs_the_benchmarks_as_root(tmp_path: Path) -> None:
    done = _vagrant_test(tmp_path, "BENCH=1", "VM_BENCH=bench-a bench-b")
    assert done.run.returncode == 0, done.run.stdout + done.run.stderr
    assert done.makes()[-1] == "root: make bench-a bench-b"


def test_vagrant_test_fails_when_a_suite_fails_and_still_copies_and_destroys(
        tmp_path: Path) -> None:
    done = _vagrant_test(tmp_path, fail_as="vagrant")
    assert done.run.returncode != 0
    assert [m.split(":")[0] for m in done.makes()] == ["vagrant", "root"]
    assert (done.results / "junit-root.xml").exists()
    assert done.vagrant_commands()[-1] == "vagrant destroy -f"


# --- shellcheck and vagrant validate --------------------------------------------------

SHELL_SHEBANG = re.compile(rb"#!\s*\S*/(?:env\s+)?(?:ba|da|k)?sh\b")
SKIPPED_DIRS = {".git", ".venv", "results", "build", "__pycache__", ".pytest_cache",
                ".hypothesis", ".mypy_cache", ".ruff_cache", ".vagrant", "node_modules"}


def _repository_files() -> list[Path]:
    """The tracked files (untracked junk is no script of the repository); every file
    outside build and cache directories where the tree is no git checkout (the VM's
    copy has no .git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                                check=True, timeout=60).stdout
        return [REPO / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for top, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            found += [Path(top) / name for name in files]
        return found


def _is_shell_script(path: Path) -> bool:
    if path.suffix in (".sh", ".bash"):
        return True
    with open(path, "rb") as f:
        return bool(SHELL_SHEBANG.match(f.readline(200)))


def _shell_scripts() -> list[Path]:
    return sorted(p for p in _repository_files() if p.is_file() and _is_shell_script(p))


def test_shell_scripts_are_found_by_suffix_and_by_shebang() -> None:
    scripts = _shell_scripts()
    assert PROVISION in scripts
    assert REPO / ".ci" / "run" in scripts


def test_every_shell_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (./vagrant/provision.sh installs it)")
    scripts = _shell_scripts()
    check = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def _vagrant(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`vagrant ARGS` on vagrant/Vagrantfile, its state in tmp_path, no network."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (`make test` installs it; the VM's suite does not)")
    return subprocess.run(
        ["vagrant", *args], cwd=VAGRANTFILE.parent, capture_output=True, text=True, timeout=120,
        env=_clean_env(VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1",
                       VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"), **env))


# `--ignore-provider`: without one of its providers installed (CI machines have neither
# VirtualBox nor vagrant-libvirt) vagrant refuses to validate at all. The provider
# blocks still run, so an error in them still fails validation.


def test_vagrantfile_validates(tmp_path: Path) -> None:
    check = _vagrant(tmp_path, "validate", "--ignore-provider")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("name", "value"), [("FUSESNAP_VM_CPUS", "lots"),
                                             ("FUSESNAP_VM_MEMORY", "0")])
def test_vagrantfile_refuses_a_size_that_is_not_a_positive_integer(
        tmp_path: Path, name: str, value: str) -> None:
    check = _vagrant(tmp_path, "validate", "--ignore-provider", **{name: value})
    assert check.returncode != 0
    assert f'{name}="{value}": must be a positive integer' in check.stdout + check.stderr
