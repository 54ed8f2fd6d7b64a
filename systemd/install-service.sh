#!/usr/bin/env bash
# `make install-service`: writes fusesnap's systemd unit with the path of the
# virtual environment's fusesnap. As root, the system unit (systemd/fusesnap.service)
# into /etc/systemd/system; as an ordinary user, the user unit
# (systemd/user/fusesnap.service) into ~/.config/systemd/user. It enables and
# starts nothing: it prints the systemctl line that does. A second run with
# nothing new says "nothing to do".
#
# Environment: FUSESNAP_VENV (default REPO/.venv); FUSESNAP_UNIT (system or user:
# default system for root, user otherwise); UNIT_DIR (default: systemd's
# directory for that kind of unit).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${FUSESNAP_VENV:-$repo/.venv}
fusesnap="$venv/bin/fusesnap"

say() { echo "install-service: $*"; }

if [ "$(id -u)" -eq 0 ]; then kind=${FUSESNAP_UNIT:-system}; else kind=${FUSESNAP_UNIT:-user}; fi
case $kind in
    system) template="$repo/systemd/fusesnap.service"
            dir=${UNIT_DIR:-/etc/systemd/system}
            systemctl="systemctl" ;;
    user) template="$repo/systemd/user/fusesnap.service"
          dir=${UNIT_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user}
          systemctl="systemctl --user" ;;
    *) echo "install-service: FUSESNAP_UNIT=$kind: must be system or user" >&2; exit 2 ;;
esac

if [ ! -x "$fusesnap" ]; then
    echo "install-service: $fusesnap is missing: run make setup (or make run) first" >&2
    exit 1
fi
case $fusesnap in
    *[\"\\$'\n']*)
        echo "install-service: $fusesnap: a path with a quote, a backslash or a newline" \
             "cannot be written in a unit file" >&2
        exit 1 ;;
esac
# In a unit, % starts a specifier: %% is a percent sign.
escaped=${fusesnap//%/%%}
# The template less its first comment lines (how to install it), under a line that
# says where the unit comes from.
text="# Written by \`make install-service\` from $template.
# Run that again rather than editing this file (\`$systemctl edit fusesnap\` keeps
# local settings apart).
$(sed '/^\[Unit\]/,$!d' "$template")"
text=${text//@FUSESNAP@/"\"$escaped\""}

unit="$dir/fusesnap.service"
if [ -f "$unit" ] && [ "$(<"$unit")" = "$text" ]; then
    say "$unit (ExecStart: $fusesnap serve): nothing to do"
else
    mkdir -p "$dir"
    tmp=$(mktemp "$dir/.fusesnap.service.XXXXXX")
    printf '%s\n' "$text" > "$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$unit"
    say "wrote $unit (ExecStart: $fusesnap serve)"
fi
say "to start it now and at every $([ "$kind" = system ] && echo boot || echo login):" \
    "$systemctl daemon-reload && $systemctl enable --now fusesnap"
