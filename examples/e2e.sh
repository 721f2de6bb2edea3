#!/usr/bin/env bash
# End-to-end check of the example clients (Python, Node.js, Rust, shell) against a running cluster.
#
#   PGHOST=/tmp/pgc-it PGPORT=54329 PGUSER=postgres PGDATABASE=conveyor_it examples/e2e.sh
#
# Needs: a cluster reached through the PG* variables, with `create extension pg_conveyor` done
# in PGDATABASE (and the background worker ticking it, conveyor.database; without one the
# script calls conveyor.tick() itself); python3, node/npm, cargo and psql on PATH.
# Optional: E2E_COUNT (3 runs per demo task), E2E_TIMEOUT (120 seconds for the workers to drain).
#
# Installs each language's dependencies if missing (a venv in examples/python/.venv, npm ci,
# a debug cargo build in examples/rust/target), then for each language, on its own queue:
#   1. its producer defines the tasks and enqueues E2E_COUNT (3) runs of each demo task,
#   2. its app example enqueues in the same transaction as an insert (commit: both; rollback: neither),
#   3. its worker runs with --drain, all languages at once, until its queue is empty,
#   4. SQL checks that every run of this batch succeeded, the flaky ones after a retry, the
#      wait ones after two releases, the slow ones after heartbeats, all worked by that
#      language's worker, and that the transactional enqueue held.
# Every payload carries a fresh batch tag, so earlier runs in the database do not matter and
# the script can run again and again. Exits non-zero on any failure (logs are then kept).
set -euo pipefail

EXAMPLES=$(cd "$(dirname "$0")" && pwd)
COUNT=${E2E_COUNT:-3}
WORKER_TIMEOUT=${E2E_TIMEOUT:-120}
BATCH="e2e-$(date +%Y%m%d%H%M%S)-$$"
LOGS=$(mktemp -d /tmp/conveyor-e2e.XXXXXX)
# E2E_LANGS: a subset, e.g. "python node" (make test runs all four again behind PgBouncer with
# CONVEYOR_POOLED=1: every client's statements are unnamed there)
read -r -a LANGS <<<"${E2E_LANGS:-python node rust shell}"
started=$SECONDS

say() { printf 'e2e: %s\n' "$*"; }
die() { say "FAILED: $*"; say "logs kept in $LOGS"; exit 1; }
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# --- the cluster -----------------------------------------------------------------------------
ext=$(psql_q -c "select extversion from pg_extension where extname = 'pg_conveyor'" 2>"$LOGS/psql.err") ||
    die "cannot reach PostgreSQL with PGHOST=${PGHOST:-} PGPORT=${PGPORT:-} PGUSER=${PGUSER:-} PGDATABASE=${PGDATABASE:-}: $(cat "$LOGS/psql.err")"
[ -n "$ext" ] || die "pg_conveyor is not created in database ${PGDATABASE:-} (create extension pg_conveyor)"
say "pg_conveyor $ext in ${PGDATABASE:-?} on ${PGHOST:-localhost}:${PGPORT:-5432}; batch $BATCH, $COUNT runs per task"
# retries and releases come back through tick: without a background worker serving this
# database (conveyor.database), tick from here while the workers run
ticker=$(psql_q -c "select count(*) from pg_stat_activity where backend_type = 'pg_conveyor' and datname = current_database()")
tick_pid=
if [ "$ticker" = 0 ]; then
    say "no pg_conveyor background worker ticks this database: calling conveyor.tick() every 200ms from here"
    ( while :; do psql_q -c "select from conveyor.tick()" >/dev/null 2>&1; sleep 0.2; done ) &
    tick_pid=$!
    trap 'kill "$tick_pid" 2>/dev/null || true' EXIT
fi

# --- dependencies (quiet; their output goes to the logs) ------------------------------------
deps_started=$SECONDS
"$EXAMPLES/python/venv.sh" >"$LOGS/deps-python.log" 2>&1 ||
    { cat "$LOGS/deps-python.log"; die "python: installing the pg_conveyor package into examples/python/.venv"; }
(
    # the example links the package (file:../../clients/node), whose own dependency (pg) is
    # resolved from clients/node/node_modules
    for dir in "$EXAMPLES/../clients/node" "$EXAMPLES/node"; do
        cd "$dir"
        if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
            npm ci --no-audit --no-fund --loglevel=error
        fi
    done
) >"$LOGS/deps-node.log" 2>&1 || { cat "$LOGS/deps-node.log"; die "node: npm ci"; }
(
    cd "$EXAMPLES/rust"
    # a debug build: much faster to build than --release, and these clients wait on I/O anyway
    CARGO_TARGET_DIR="$EXAMPLES/rust/target" cargo build --locked --quiet --bins
) >"$LOGS/deps-rust.log" 2>&1 || { cat "$LOGS/deps-rust.log"; die "rust: cargo build"; }
say "dependencies ready ($((SECONDS - deps_started))s)"

# cmd LANG producer|app|worker: sets CMD to that program of that language
cmd() {
    case $1 in
    python) CMD=("$EXAMPLES/python/.venv/bin/python" "$EXAMPLES/python/$2.py") ;;
    node) CMD=(node "$EXAMPLES/node/$2.js") ;;
    rust) CMD=("$EXAMPLES/rust/target/debug/$2") ;;
    shell) CMD=("$EXAMPLES/shell/$2.sh") ;;
    esac
}

# --- produce ---------------------------------------------------------------------------------
for lang in "${LANGS[@]}"; do
    cmd "$lang" producer
    "${CMD[@]}" --count "$COUNT" --batch "$BATCH" >"$LOGS/$lang-producer.log" 2>&1 ||
        { cat "$LOGS/$lang-producer.log"; die "$lang: producer"; }
    cmd "$lang" app
    "${CMD[@]}" --batch "$BATCH" >"$LOGS/$lang-app.log" 2>&1 ||
        { cat "$LOGS/$lang-app.log"; die "$lang: transactional enqueue (app example)"; }
done
say "produced $((4 * COUNT + 1)) runs per language"

# --- work: the workers at once, each on its own queue, until drained ---------------------------
work_started=$SECONDS
declare -A pids
for lang in "${LANGS[@]}"; do
    cmd "$lang" worker
    # (timeout exits 124 if the worker has not drained by then, whatever the worker answers)
    CONVEYOR_POLL_SECONDS=2 CONVEYOR_HEARTBEAT_SECONDS=1 timeout "$WORKER_TIMEOUT" "${CMD[@]}" "$lang" --drain \
        >"$LOGS/$lang-worker.out" 2>"$LOGS/$lang-worker.err" &
    pids[$lang]=$!
done
failed=0
for lang in "${LANGS[@]}"; do
    if ! wait "${pids[$lang]}"; then
        say "$lang: the worker did not drain its queue and exit 0 within ${WORKER_TIMEOUT}s"
        tail -n 20 "$LOGS/$lang-worker.err" "$LOGS/$lang-worker.out"
        failed=1
    fi
done
[ "$failed" = 0 ] || die "workers"
say "workers drained their queues ($((SECONDS - work_started))s)"

# --- check -----------------------------------------------------------------------------------
check() { # check LANG: one line of figures, or the problems found
    local lang=$1
    psql_q -F ' ' -v lang="$lang" -v batch="$BATCH" -v count="$COUNT" <<'SQL'
with r as (
    select * from conveyor.runs where queue = :'lang' and payload->>'batch' = :'batch'
), figures as (
    select
        count(*) as runs,
        count(*) filter (where status = 'succeeded') as succeeded,
        coalesce(sum(attempts), 0) as attempts,
        coalesce(sum(retries), 0) as retries,
        coalesce(sum(releases), 0) as releases,
        count(*) filter (where task = :'lang' || '.flaky' and status = 'succeeded' and retries >= 1) as flaky_retried,
        count(*) filter (where task = :'lang' || '.wait' and status = 'succeeded' and releases >= 2) as wait_released,
        count(*) filter (where task = :'lang' || '.slow' and status = 'succeeded'
                           and (result->>'heartbeats')::int >= 1) as slow_heartbeats,
        coalesce(sum((result->>'heartbeats')::int) filter (where task = :'lang' || '.slow'), 0) as heartbeats,
        (select count(*) from conveyor.attempts a join r on a.run_id = r.id
          where a.worker not like :'lang' || ':%') as foreign_attempts,
        (select count(*) from conveyor.attempts a join r on a.run_id = r.id) as attempt_rows,
        (select count(*) from r where payload->>'order_ref' = :'batch' || '-commit' and status = 'succeeded') as committed_runs,
        (select count(*) from r where payload->>'order_ref' = :'batch' || '-rollback') as rolled_back_runs
    from r
)
select f.runs, f.attempts, f.retries, f.releases, f.heartbeats, concat_ws('; ',
    case when f.runs <> 4 * :count + 1 then format('%s runs, expected %s', f.runs, 4 * :count + 1) end,
    case when f.succeeded <> f.runs then format('%s of %s runs did not succeed', f.runs - f.succeeded, f.runs) end,
    case when f.flaky_retried < 1 then 'no flaky run succeeded after a retry' end,
    case when f.wait_released < 1 then 'no wait run succeeded after two releases' end,
    case when f.slow_heartbeats < 1 then 'no slow run succeeded after heartbeats' end,
    case when f.attempt_rows < f.attempts then format('%s attempt rows for %s attempts', f.attempt_rows, f.attempts) end,
    case when f.foreign_attempts > 0 then format('%s attempts by another worker than %s', f.foreign_attempts, :'lang') end,
    case when f.committed_runs <> 1 then format('%s succeeded runs for the committed order, expected 1', f.committed_runs) end,
    case when f.rolled_back_runs <> 0 then format('%s runs for the rolled-back order, expected 0', f.rolled_back_runs) end)
from figures f;
SQL
}
check_orders() { # check_orders LANG: the app table rows of the committed and rolled-back orders
    psql_q -F ' ' -c "select (select count(*) from $1_orders where ref = '$BATCH-commit'),
                             (select count(*) from $1_orders where ref = '$BATCH-rollback')"
}

failed=0
for lang in "${LANGS[@]}"; do
    read -r runs attempts retries releases heartbeats problems <<<"$(check "$lang")" || die "$lang: checking"
    read -r committed rolled_back <<<"$(check_orders "$lang")" || die "$lang: checking ${lang}_orders"
    [ "$committed" = 1 ] || problems="${problems:+$problems; }$committed order rows committed, expected 1"
    [ "$rolled_back" = 0 ] || problems="${problems:+$problems; }$rolled_back order rows rolled back, expected 0"
    if [ -n "$problems" ]; then
        say "$lang: FAILED: $problems"
        failed=1
    else
        printf 'e2e: %-6s ok: %s runs succeeded in %s attempts, retries %s, releases %s, heartbeats %s (slow runs), transactional enqueue held\n' \
            "$lang" "$runs" "$attempts" "$retries" "$releases" "$heartbeats"
    fi
done
[ "$failed" = 0 ] || die "checks"
rm -rf "$LOGS"
say "all passed in $((SECONDS - started))s"
