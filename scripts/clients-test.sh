#!/usr/bin/env bash
# The client packages' own test suites (clients/), against a running cluster reached through the
# PG* variables (a database with `create extension pg_conveyor`, ticked by the background worker
# or, failing that, by the suites themselves):
#   Python  clients/python  a fresh virtual environment, `pip install` of the package, pytest;
#                           a wheel built with the standard frontend (`python -m build`)
#   Node.js clients/node    npm ci, the declarations type-checked (tsc), `node --test`; the packed
#                           package installed into a clean project
#   Rust    clients/rust    cargo test (unit tests and tests/client.rs); a clean cargo project
#                           that depends on the crate builds
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

step "Node.js: the packed package installs into a clean project's node_modules"
project=$(mktemp -d /tmp/pgc-clients-node.XXXXXX)
tarball=$(cd clients/node && npm pack --silent --pack-destination "$project")
(
    cd "$project"
    npm init -y >/dev/null
    npm install --no-audit --no-fund --loglevel=error "./$tarball"
    node --input-type=module -e "
        import { Worker, enqueue, enqueueMany, Release, Fail, Cancelled, Interrupted, duration } from 'pg-conveyor';
        const w = new Worker({ queues: 'q' }).task('t', () => null);
        if (typeof enqueue !== 'function' || duration(1500) !== '1500ms' || !(new Release('1s') instanceof Error)) process.exit(1);
        console.log('pg-conveyor imports from a clean node_modules:', w.name);"
    test -f node_modules/pg-conveyor/src/index.d.ts
)
rm -rf "$project"

step "Rust: cargo test"
# examples/e2e.sh builds the example, which depends on this crate, in examples/rust/target: share it
CARGO_TARGET_DIR=examples/rust/target cargo test --locked --quiet --manifest-path clients/rust/Cargo.toml

step "Rust: a clean cargo project depends on the crate and builds"
project=$(mktemp -d /tmp/pgc-clients-rust.XXXXXX)
cat >"$project/Cargo.toml" <<TOML
[package]
name = "uses-pg-conveyor-client"
version = "0.0.0"
edition = "2021"
[workspace]
[dependencies]
pg-conveyor-client = { path = "$PWD/clients/rust" }
TOML
mkdir "$project/src"
cat >"$project/src/main.rs" <<'RS'
use pg_conveyor_client::{Duration, Ulid, Worker, WorkerConfig};
fn main() {
    let id: Ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
    let worker = Worker::new(WorkerConfig { lease: Duration::from_secs(5), ..WorkerConfig::default() }).unwrap();
    let _ = worker.stop_handle();
    println!("pg-conveyor-client builds in a clean project: {id}");
}
RS
# its own lock file (resolved from the crate's), the shared target directory
cp clients/rust/Cargo.lock "$project/Cargo.lock"
CARGO_TARGET_DIR=$PWD/examples/rust/target cargo run --quiet --manifest-path "$project/Cargo.toml"
rm -rf "$project"
