#!/usr/bin/env bash
# make test: every test of pg_conveyor, from a fresh Debian 12 machine.
#   1. Rust unit tests and #[pg_test] tests (cargo pgrx test; pgrx runs its own cluster)
#   2. the real build installed; a fresh cluster with the background worker preloaded
#   3. SQL scenarios (pgrx-tests/, pg_regress against that cluster)
#   4. integration tests over real connections (tests/)
#   5. the example workers in every language (and again behind PgBouncer), the client packages'
#      suites (clients/, their pooled tests through PgBouncer), the web dashboard in headless
#      Chromium, and its /metrics scraped by a real Prometheus (with the Grafana dashboard checked)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/lint.sh # rustfmt, clippy, bash -n, upgrade script current: seconds when warm

IT_DIR=/tmp/pgc-it
IT_PORT=${CONVEYOR_IT_PORT:-54329}
PGBIN=$(/usr/bin/pg_config --bindir)
PG_REGRESS=$(/usr/bin/pg_config --pkglibdir)/pgxs/src/test/regress/pg_regress

step() { printf '\n=== %s\n' "$*"; }

step "unit and in-database (#[pg_test]) tests"
if [ "$(id -u)" = 0 ]; then install -d -o postgres /tmp/pgc-test; fi
# cargo pgrx test copies its build over the installed library in place, which would crash
# servers that have it mapped: build first, then remove the old file just before the copy
cargo pgrx package --test --debug --pg-config /usr/bin/pg_config --out-dir /tmp/pgc-testpkg >/dev/null
scripts/unlink-installed.sh
cargo pgrx test pg15 --runas postgres --pgdata /tmp/pgc-test

step "upgrade from 0.1.0: ALTER EXTENSION UPDATE on a private PostgreSQL (scripts/upgrade-check.sh)"
scripts/upgrade-check.sh

step "install the extension into the system PostgreSQL"
scripts/cluster.sh stop "$IT_DIR"
scripts/install-ext.sh

step "start a fresh cluster with the worker preloaded ($IT_DIR, port $IT_PORT)"
rm -rf "$IT_DIR"
scripts/cluster.sh start "$IT_DIR" "$IT_PORT" \
    "conveyor.database = 'conveyor_it,conveyor_examples,conveyor_clients'" \
    "conveyor.tick_interval = '200ms'" \
    "log_min_messages = warning"
trap 'scripts/cluster.sh stop "$IT_DIR"' EXIT
psql_it() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$IT_DIR" -p "$IT_PORT" -U postgres "$@"; }
for db in conveyor_it conveyor_regress conveyor_examples conveyor_clients conveyor_dashboard; do
    psql_it -d postgres -c "create database $db"
    psql_it -d "$db" -c "create extension pg_conveyor"
done
psql_it -d conveyor_regress -f pgrx-tests/helpers.sql

step "SQL scenarios (pgrx-tests/)"
scenarios=$(cd pgrx-tests/sql && ls *.sql | sed 's/\.sql$//')
mkdir -p /tmp/pgc-regress-out
if ! "$PG_REGRESS" --use-existing --host="$IT_DIR" --port="$IT_PORT" --user=postgres \
        --dbname=conveyor_regress --inputdir=pgrx-tests --outputdir=/tmp/pgc-regress-out \
        --bindir="$PGBIN" $scenarios; then
    cat /tmp/pgc-regress-out/regression.diffs
    exit 1
fi

step "integration tests (tests/)"
CONVEYOR_TEST_HOST="$IT_DIR" CONVEYOR_TEST_PORT="$IT_PORT" CONVEYOR_TEST_DB=conveyor_it \
    cargo test --features integration --test integration -- --test-threads=4 --show-output

step "hostile clients against the worker for ${CONVEYOR_SOAK_SECS:-30}s (tests/integration/hostile.rs; make soak: 180s)"
CONVEYOR_TEST_HOST="$IT_DIR" CONVEYOR_TEST_PORT="$IT_PORT" CONVEYOR_TEST_DB=conveyor_it \
    CONVEYOR_SOAK_SECS="${CONVEYOR_SOAK_SECS:-30}" \
    cargo test --features integration --test integration -- --ignored hostile:: --show-output

step "example workers and producers in Python, Node.js, Rust (examples/e2e.sh)"
PGHOST="$IT_DIR" PGPORT="$IT_PORT" PGUSER=postgres PGDATABASE=conveyor_examples examples/e2e.sh

step "the examples again, behind PgBouncer in transaction mode (scripts/pgbouncer.sh)"
POOLER_DIR=/tmp/pgc-pooler
POOLER_PORT=${CONVEYOR_POOLER_PORT:-6439}
scripts/pgbouncer.sh stop "$POOLER_DIR"
scripts/pgbouncer.sh start "$POOLER_DIR" "$POOLER_PORT" "$IT_DIR" "$IT_PORT" 3
trap 'scripts/pgbouncer.sh stop "$POOLER_DIR"; scripts/cluster.sh stop "$IT_DIR"' EXIT
PGHOST="$POOLER_DIR" PGPORT="$POOLER_PORT" PGUSER=postgres PGDATABASE=conveyor_examples CONVEYOR_POOLED=1 \
    CONVEYOR_POLL_SECONDS=1 examples/e2e.sh

step "the client packages' suites: Python, Node.js, Rust (scripts/clients-test.sh), pooled tests through PgBouncer"
PGHOST="$IT_DIR" PGPORT="$IT_PORT" PGUSER=postgres PGDATABASE=conveyor_clients \
    CONVEYOR_PGBOUNCER_HOST="$POOLER_DIR" CONVEYOR_PGBOUNCER_PORT="$POOLER_PORT" scripts/clients-test.sh
scripts/pgbouncer.sh stop "$POOLER_DIR"

step "the web dashboard in headless Chromium (examples/dashboard/test.sh)"
PGHOST="$IT_DIR" PGPORT="$IT_PORT" PGUSER=postgres PGDATABASE=conveyor_dashboard \
    DASHBOARD_SCREENSHOT=/tmp/conveyor-dashboard.png examples/dashboard/test.sh

step "metrics scraped by a real Prometheus under load, promtool, the Grafana dashboard (examples/dashboard/test/prometheus.sh)"
PGHOST="$IT_DIR" PGPORT="$IT_PORT" PGUSER=postgres PGDATABASE=conveyor_dashboard examples/dashboard/test/prometheus.sh

step "all tests passed"
