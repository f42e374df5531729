#!/usr/bin/env bash
# Install the gateway on a Debian / Raspberry Pi OS machine as the systemd service
# `gateway` (deploy/systemd/gateway.service), from this checkout:
#   - Debian packages it needs to build (python3-venv, python3-dev, gcc) when missing
#   - the system user `gateway` (no login, no home)
#   - a virtualenv in /opt/gateway/venv with the package installed (not editable),
#     its Cython fast path compiled (a failed compile is an error)
#   - /etc/gateway/gateway.yaml: kept if present, else --config FILE, else the example
#   - the unit in /etc/systemd/system, enabled and (re)started
#   - /usr/local/bin/gateway -> the venv's command (for `gateway status`)
# With --with-master also the master station's ingest (gateway-master.service, user
# `gateway-master`, Mosquitto).  Safe to run again: each step is skipped when already
# done, and the service restarts only when the package or the unit changed.
#
#   sudo deploy/install.sh [--config FILE] [--with-master] [--no-start]
#   deploy/install.sh --dry-run ...      # print what it would do, change nothing
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/gateway
VENV=$PREFIX/venv
ETC=/etc/gateway
UNITS=/etc/systemd/system
DRY=0
START=1
MASTER=0
CONFIG=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --no-start) START=0 ;;
        --with-master) MASTER=1 ;;
        --config) CONFIG=${2:?--config needs a file}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "install: $*"; }
# run a command that changes the machine; under --dry-run only print it
run() {
    if [ "$DRY" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

if [ "$DRY" = 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo), or with --dry-run" >&2; exit 2; }
    command -v systemctl >/dev/null || { echo "install.sh: systemd is required" >&2; exit 2; }
fi
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || { echo "install.sh: no such file: $CONFIG" >&2; exit 2; }
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/deploy/systemd/gateway.service" ] \
    || { echo "install.sh: $SRC is not a gateway checkout" >&2; exit 2; }

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install.sh: python3 is $(python3 -V 2>&1); the gateway needs 3.11 (Debian 12)" >&2; exit 2; }

# --- Debian packages --------------------------------------------------------------
need=()
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
python3 - >/dev/null 2>&1 <<'PYEOF' || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ "$MASTER" = 1 ] && ! { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }; then
    need+=(mosquitto)
fi
if [ ${#need[@]} -gt 0 ]; then
    say "Debian packages: ${need[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# --- users ----------------------------------------------------------------------------
add_user() {  # name home
    if id "$1" >/dev/null 2>&1; then
        say "user $1 exists"
    else
        say "user $1"
        run useradd --system --user-group --home-dir "$2" --no-create-home \
            --shell /usr/sbin/nologin --comment "electricity gateway service" "$1"
    fi
}
add_user gateway /var/lib/gateway
[ "$MASTER" = 0 ] || add_user gateway-master /var/lib/gateway-master

# --- the package, in its own virtualenv -------------------------------------------------
# what goes into the build: a new stamp means a new install
stamp=$(cd "$SRC" && find pyproject.toml setup.py gateway -type f \
    \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.yaml' -o -name '*.toml' \
       -o -name 'py.typed' \) -not -path '*/__pycache__/*' -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
changed=0
if [ ! -x "$VENV/bin/python" ]; then
    say "virtualenv $VENV"
    run mkdir -p "$PREFIX"
    run python3 -m venv "$VENV"
fi
if [ "$DRY" = 0 ] && [ -f "$PREFIX/.build-stamp" ] && [ "$(cat "$PREFIX/.build-stamp")" = "$stamp" ] \
    && [ -x "$VENV/bin/gateway" ]; then
    say "package up to date in $VENV"
else
    say "package from $SRC into $VENV (compiling the fast path)"
    # build from a clean copy: no root-owned build files in the checkout, no stale .so
    if [ "$DRY" = 1 ]; then build=/tmp/gateway-build.XXXXXX; else build=$(mktemp -d /tmp/gateway-build.XXXXXX); fi
    run tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude='*.so' --exclude='gateway/fastpath/*.c' \
        -cf "$build.tar" pyproject.toml setup.py README.md gateway
    run tar -C "$build" -xf "$build.tar"
    run "$VENV/bin/python" -m pip install -q --upgrade pip
    run env GATEWAY_REQUIRE_COMPILED=1 "$VENV/bin/python" -m pip install -q "$build"
    run rm -rf "$build" "$build.tar"
    run "$VENV/bin/gateway" doctor
    if [ "$DRY" = 1 ]; then
        printf '+ echo %s > %q\n' "$stamp" "$PREFIX/.build-stamp"
    else
        echo "$stamp" > "$PREFIX/.build-stamp"
    fi
    changed=1
fi
run install -d -m 0755 "$PREFIX/share"
run install -m 0644 "$SRC/deploy/systemd/README.md" "$PREFIX/share/README.md"
run ln -sfn "$VENV/bin/gateway" /usr/local/bin/gateway

# --- configuration ------------------------------------------------------------------------
run install -d -m 0750 -o root -g gateway "$ETC"
fresh_example=0
if [ -f "$ETC/gateway.yaml" ]; then
    say "keeping $ETC/gateway.yaml"
elif [ -n "$CONFIG" ]; then
    say "$ETC/gateway.yaml from $CONFIG"
    run install -m 0640 -o root -g gateway "$CONFIG" "$ETC/gateway.yaml"
else
    say "$ETC/gateway.yaml from the example: edit it before the gateway starts"
    run install -m 0640 -o root -g gateway "$SRC/gateway/examples/gateway.yaml" "$ETC/gateway.yaml"
    fresh_example=1
fi
if [ "$MASTER" = 1 ] && [ ! -f "$ETC/master.env" ]; then
    say "$ETC/master.env (broker localhost:1883, prefix gw)"
    if [ "$DRY" = 1 ]; then
        printf '+ printf ... > %q\n' "$ETC/master.env"
    else
        printf 'MASTER_BROKER=localhost:1883\nMASTER_PREFIX=gw\n' > "$ETC/master.env"
        chmod 0644 "$ETC/master.env"
    fi
fi
if [ "$DRY" = 0 ] && [ "$fresh_example" = 0 ]; then
    "$VENV/bin/gateway" config check "$ETC/gateway.yaml"
fi

# --- units --------------------------------------------------------------------------------
units=(gateway.service)
[ "$MASTER" = 0 ] || units+=(gateway-master.service)
for unit in "${units[@]}"; do
    target="$UNITS/$unit"
    if [ -f "$target" ] && cmp -s "$SRC/deploy/systemd/$unit" "$target"; then
        say "$target up to date"
    else
        say "$target"
        run install -m 0644 "$SRC/deploy/systemd/$unit" "$target"
        changed=1
    fi
done
run systemctl daemon-reload
for unit in "${units[@]}"; do
    run systemctl enable "$unit"
    if [ "$START" = 0 ]; then
        say "$unit enabled, not started (--no-start)"
    elif [ "$unit" = gateway.service ] && [ "$fresh_example" = 1 ]; then
        say "$unit enabled, not started: edit $ETC/gateway.yaml, check it with"
        say "  gateway config check $ETC/gateway.yaml   then: systemctl start gateway"
    elif [ "$changed" = 1 ]; then
        run systemctl restart "$unit"
    else
        run systemctl start "$unit"
    fi
done
say "done; logs: journalctl -u gateway -f   state: gateway status"
