#!/usr/bin/env bash
# Installs what building and testing pg_conveyor needs on Debian 12, skipping what is there:
# apt packages, the pinned cargo-pgrx, and pgrx's config for the system PostgreSQL 15.
set -euo pipefail

PGRX_VERSION=0.18.1
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-plproxy libclang-dev clang build-essential pkg-config libssl-dev sudo pgbouncer)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION (about 8 minutes on 2 cores)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# `cargo pgrx init` rewrites ~/.pgrx/config.toml, which makes pgrx-pg-sys rebuild: only when needed
if ! grep -q '^pg15 *= *"/usr/bin/pg_config"' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    cargo pgrx init --pg15=/usr/bin/pg_config
fi
