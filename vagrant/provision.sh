#!/usr/bin/env bash
# The one set-up script of fusesnap: Debian packages, FUSE access, the virtual
# environment and the package. `make setup` (and so `make test`/`make run`),
# `.ci/run` and the Vagrant VM all run it. Idempotent: a second run changes nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${FUSESNAP_VENV:-$repo/.venv}
python=${PYTHON:-python3}

# Debian packages the daemon and its test suite need.
packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr
          golang-github-containerd-containerd-dev containerd
          runc umoci busybox-static zstd)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
        echo "provision: missing Debian packages: ${missing[*]} (install them as root)" >&2; exit 1
    fi
    echo "provision: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

if [ "$(id -u)" -eq 0 ]; then
    # Distributions ship /dev/fuse 0666; some sandboxes make it 0600.
    [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ] && chmod 0666 /dev/fuse
    # Lets a daemon of an ordinary user mount with allow_other (other users see snapshots).
    if ! grep -qs '^user_allow_other' /etc/fuse.conf; then echo user_allow_other >> /etc/fuse.conf; fi
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.fusesnap-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "${repo}[test]"
    touch "$stamp"
fi
