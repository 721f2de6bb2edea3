#!/usr/bin/env bash
# Make examples/python/.venv hold the pg_conveyor package (clients/python, installed editable by
# requirements.txt, so its source changes need no reinstall); quiet unless it fails. Used by
# examples/e2e.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")"
if .venv/bin/python -c 'import pg_conveyor' 2>/dev/null; then
    exit 0
fi
if ! python3 -m venv --clear .venv; then
    # Debian's python3 keeps venv (ensurepip) in a package of its own
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 1
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf .venv && python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
