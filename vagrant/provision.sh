#!/usr/bin/env bash
# The one set-up script of fusesnap: Debian packages, FUSE access, the virtual
# environment and the package. Three callers share it: `make setup` (and so
# `make test` and `make run`), `.ci/run` (through `make test`) and the Vagrant
# VM (vagrant/Vagrantfile). Idempotent: a step with nothing to do says "nothing
# to do" and changes nothing, so a second run changes nothing
# (tests/test_setup.py runs it twice).
#
# Usage: vagrant/provision.sh [--run] [--link] [--with-vagrant]
#   (no option)     everything the test suite and the benchmarks need: the Debian
#                   packages below, the package with its `test` extra. `make setup`,
#                   `make test`, CI and the VM.
#   --run           only what the daemon needs (`make run`): FUSE, a compiler and
#                   Python's headers for the patched pyfuse3, the virtual environment,
#                   the package with its runtime dependencies. Whatever a full set-up
#                   installed stays.
#   --link          then link `fusesnap` into ~/.local/bin (created if missing), unless
#                   something else already has that name there, and say where it is
#                   and, if ~/.local/bin is not on PATH, the line that puts it there.
#   --link-only     that step alone (tests/test_service.py), on an installed venv.
#   --with-vagrant  also install vagrant, with which the suite validates
#                   vagrant/Vagrantfile. `make test` passes it, so a workstation
#                   checks what CI checks; `make run` does not need vagrant, and
#                   the VM does not either (its host has just used the file).
# Environment: FUSESNAP_VENV (default REPO/.venv), PYTHON (default python3).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${FUSESNAP_VENV:-$repo/.venv}
python=${PYTHON:-python3}

with_vagrant=0
run_only=0
link=0
for arg in "$@"; do
    case $arg in
        --with-vagrant) with_vagrant=1 ;;
        --run) run_only=1 ;;
        --link) link=1 ;;
        --link-only) link=2 ;;
        *) echo "usage: $0 [--run] [--link | --link-only] [--with-vagrant]" >&2; exit 2 ;;
    esac
done

say() { echo "provision: $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "provision: needs root (or sudo) for: $*" >&2
        exit 1
    fi
}

# Debian packages the daemon needs (`--run`): FUSE (fusermount3), and to build the
# patched pyfuse3 its headers, pkg-config, a compiler, patch and Python's headers
# and venv; uidmap (newuidmap, newgidmap) for `serve --userns`.
run_packages=(fuse3 libfuse3-dev pkg-config gcc patch python3 python3-dev python3-venv uidmap)
# What the suites and benchmarks add: containerd and runc for the containerd
# suites; umoci, busybox and zstd for their images; attr for the xattr tests;
# fuse-overlayfs and fio for the benchmarks; shellcheck for the scripts' check;
# systemd for `systemd-analyze verify` of the units (systemd/); make for the VM,
# whose box has none; rootlesskit and slirp4netns (its network where /dev/net/tun
# is usable) for scripts/rootless-containerd; docker-registry (the distribution
# registry 2.8), skopeo (to fill it) and apache2-utils (htpasswd -B) for the
# `images pull` tests (tests/registry_env.py).
test_packages=(make attr golang-github-containerd-containerd-dev containerd
               runc umoci busybox-static zstd fuse-overlayfs fio shellcheck systemd
               rootlesskit slirp4netns docker-registry skopeo apache2-utils)
packages=("${run_packages[@]}")
if [ "$run_only" -eq 0 ]; then packages+=("${test_packages[@]}"); fi

# `fusesnap` on PATH: a link in ~/.local/bin (Debian's ~/.profile puts that directory
# on PATH at login when it exists), never over a file that is not this link.
link_fusesnap() {
    local bin="$HOME/.local/bin" target="$venv/bin/fusesnap" hint=""
    if [ ! -x "$target" ]; then
        echo "provision: $target is missing: nothing to link" >&2
        exit 1
    fi
    # The line that puts it on PATH, if the PATH of this shell lacks it.
    # shellcheck disable=SC2016  # the line to run: $HOME and $PATH stay unexpanded
    case ":$PATH:" in
        *":$bin:"*) ;;
        *) hint='; not on PATH: export PATH="$HOME/.local/bin:$PATH" (and in ~/.profile)' ;;
    esac
    if [ "$(readlink "$bin/fusesnap" 2>/dev/null)" = "$target" ]; then
        say "$bin/fusesnap -> $target: nothing to do$hint"
    elif [ -e "$bin/fusesnap" ] || [ -L "$bin/fusesnap" ]; then
        say "$bin/fusesnap exists and is not a link to $target: left alone" \
            "(run $target, or remove it and run this again)"
    else
        mkdir -p "$bin"
        ln -s "$target" "$bin/fusesnap"
        say "$bin/fusesnap -> $target: linked$hint"
    fi
}

if [ "$link" -eq 2 ]; then
    link_fusesnap
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Any vagrant will do (HashiCorp's is not Debian's package), hence command -v.
need_vagrant=0
if [ "$with_vagrant" -eq 1 ] && ! command -v vagrant >/dev/null; then need_vagrant=1; fi

if [ ${#missing[@]} -eq 0 ] && [ "$need_vagrant" -eq 0 ]; then
    say "Debian packages: nothing to do"
else
    as_root apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        say "Debian packages: installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    if [ "$need_vagrant" -eq 1 ]; then
        # Its Recommends are a hypervisor (qemu, libvirt, a kernel: 400 packages);
        # `vagrant validate` needs none of them.
        say "Debian packages: installing vagrant"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant
    fi
fi

if [ "$(id -u)" -eq 0 ]; then
    # Distributions ship /dev/fuse 0666; some sandboxes make it 0600.
    if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
        chmod 0666 /dev/fuse
        say "/dev/fuse: made 0666"
    else
        say "/dev/fuse: nothing to do"
    fi
    # Lets a daemon of an ordinary user mount with allow_other (other users see snapshots).
    if grep -qs '^user_allow_other' /etc/fuse.conf; then
        say "/etc/fuse.conf: nothing to do"
    else
        echo user_allow_other >> /etc/fuse.conf
        say "/etc/fuse.conf: user_allow_other added"
    fi
else
    say "/dev/fuse, /etc/fuse.conf: left as they are (not root)"
fi

if [ -x "$venv/bin/python" ]; then
    say "virtual environment $venv: nothing to do"
else
    "$python" -m venv "$venv"
    say "virtual environment $venv: created"
fi

# pyfuse3, built from its source release with our patches applied in order
# (patches/pyfuse3/*.patch; its README says what each does): the release cannot
# set cache_readdir or noflush on an open reply, nor ask to cache symlinks, and
# it takes two trio scheduler passes per request. Cython regenerates the C code,
# the Cython that generated the release's own C file. Cython and setuptools live
# in a throw-away build environment, so the virtual environment gets the wheel
# alone. Its local version (+fusesnapN) satisfies the package's `pyfuse3>=3.3`,
# so installing the package leaves it in place. The stamp records the release,
# Cython and the patches' digest: a change to any of them rebuilds (about a minute).
pyfuse3_version=3.5.0
pyfuse3_sdist_sha256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
pyfuse3_local=fusesnap3
cython_version=3.2.4
patches=()
for p in "$repo"/patches/pyfuse3/*.patch; do
    if [ -e "$p" ]; then patches+=("$p"); fi
done
if [ ${#patches[@]} -eq 0 ]; then
    echo "provision: no patches in $repo/patches/pyfuse3" >&2
    exit 1
fi
pyfuse3_stamp="$venv/.pyfuse3-patched"
pyfuse3_want="pyfuse3 $pyfuse3_version+$pyfuse3_local sdist $pyfuse3_sdist_sha256"
pyfuse3_want+=" Cython $cython_version patches $(cd "$repo/patches/pyfuse3" &&
    sha256sum ./*.patch | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$pyfuse3_stamp" 2>/dev/null)" = "$pyfuse3_want" ] && compgen -G \
        "$venv/lib/python3*/site-packages/pyfuse3-$pyfuse3_version+$pyfuse3_local.dist-info" \
        >/dev/null; then
    say "pyfuse3 $pyfuse3_version+$pyfuse3_local (patched) in $venv: nothing to do"
else
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    bpip=("$build/env/bin/pip" --disable-pip-version-check -q)
    "$venv/bin/python" -m venv "$build/env"
    "${bpip[@]}" install "Cython==$cython_version" "setuptools>=78.1.1" "setuptools_scm>=8.0"
    "${bpip[@]}" download --no-deps --no-binary pyfuse3 --no-build-isolation -d "$build" \
        "pyfuse3==$pyfuse3_version"
    sdist="$build/pyfuse3-$pyfuse3_version.tar.gz"
    echo "$pyfuse3_sdist_sha256  $sdist" | sha256sum -c --quiet -
    tar -xzf "$sdist" -C "$build" --no-same-owner
    src="$build/pyfuse3-$pyfuse3_version"
    for p in "${patches[@]}"; do
        patch -d "$src" -p1 --forward --quiet < "$p"
    done
    rm "$src/src/pyfuse3/__init__.c"  # the release's; Cython writes ours
    SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3="$pyfuse3_version+$pyfuse3_local" \
        "${bpip[@]}" wheel --no-deps --no-build-isolation -w "$build/wheel" "$src"
    wheel=("$build"/wheel/pyfuse3-*.whl)
    # The same version may be installed, built from other patches: replace it,
    # then add its dependencies where missing.
    "$venv/bin/pip" install -q --force-reinstall --no-deps "${wheel[0]}"
    "$venv/bin/pip" install -q "${wheel[0]}"
    printf '%s\n' "$pyfuse3_want" > "$pyfuse3_stamp"
    rm -rf "$build"
    trap - EXIT
    say "pyfuse3 $pyfuse3_version+$pyfuse3_local in $venv: built from its sdist with ${#patches[@]} patches"
fi

# The install is editable, so it goes stale only when the package's metadata
# (pyproject.toml) changes or the checkout moves: the stamp records both, and the
# extras installed. A full install (with `test`) also does for `--run`.
stamp="$venv/.fusesnap-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) $repo"
extras="[test]"
if [ "$run_only" -eq 1 ]; then extras=""; fi
have=$(cat "$stamp" 2>/dev/null || true)
if { [ "$have" = "$want $extras" ] || [ "$have" = "$want [test]" ]; } &&
        compgen -G "$venv/lib/python3*/site-packages/fusesnap-*.dist-info" >/dev/null; then
    say "fusesnap in $venv: nothing to do"
else
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "${repo}${extras}"
    printf '%s\n' "$want $extras" > "$stamp"
    say "fusesnap in $venv: installed from $repo${extras:+ with the ${extras//[][]/} extra}"
fi

if [ "$link" -eq 1 ]; then
    link_fusesnap
fi
