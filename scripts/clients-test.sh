#!/usr/bin/env bash
# The client packages' own test suites (clients/), against a running cluster reached through the
# PG* variables (a database with `create extension pg_conveyor`, ticked by the background worker
# or, failing that, by the suites themselves):
#   Python  clients/python  a fresh virtual environment, `pip install` of the package, pytest;
#                           a wheel built with the standard frontend (`python -m build`)
#   Node.js clients/node    npm ci, the declarations type-checked (tsc), `node --test`
#   Rust    clients/rust    cargo test (unit tests and tests/client.rs)
# CONVEYOR_PGBOUNCER_PORT (with PGHOST's socket directory or host): a PgBouncer in transaction
# mode in front of the same server; each suite's pooled tests run through it, else they skip.
#   PGHOST=/tmp/pgc-it PGPORT=54329 PGUSER=postgres PGDATABASE=conveyor_clients scripts/clients-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PGHOST:?}" "${PGPORT:?}" "${PGDATABASE:?}"
if [ -n "${CONVEYOR_PGBOUNCER_PORT:-}" ]; then
    export CONVEYOR_PGBOUNCER="host=${CONVEYOR_PGBOUNCER_HOST:-$PGHOST} port=$CONVEYOR_PGBOUNCER_PORT"
fi
step() { printf '\n--- %s\n' "$*"; }

step "Python: a clean virtual environment, pip install clients/python, pytest"
venv=/tmp/pgc-clients-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'clients/python[test]' build
"$venv/bin/python" -c 'import pg_conveyor, sys; print("installed pg_conveyor", pg_conveyor.__version__, "into", sys.prefix)'
(cd clients/python && "$venv/bin/pytest" -q -p no:cacheprovider)
"$venv/bin/python" -m build --wheel --outdir /tmp/pgc-clients-wheel clients/python >/dev/null
ls /tmp/pgc-clients-wheel/pg_conveyor-*.whl

step "Node.js: npm ci, tsc --noEmit over the declarations, node --test"
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error && npm run --silent typecheck && npm test)

step "Rust: cargo test"
# examples/e2e.sh builds the example, which depends on this crate, in examples/rust/target: share it
CARGO_TARGET_DIR=examples/rust/target cargo test --locked --quiet --manifest-path clients/rust/Cargo.toml
